"""What result.json keeps for `harness diff` and the matrix, read from captured real guests: the hypervisor node
dom0 got, its kernel's lines about Xen and its 'Linux version', and /proc/iomem's lines naming Xen."""

from __future__ import annotations

from pathlib import Path

from harness import guest, witnesses, xenlog
from harness.report import matrix

DATA = Path(__file__).parent / "data" / "witnesses"
# dom0's kernel log of a qemu-virt boot (Xen 4.17.7, Debian's 6.1.0-56-cloud-arm64), its first 140 lines: up to
# the balloon driver, past every line the kernel prints as it finds Xen.
DMESG = Path(__file__).parent / "data" / "report" / "qemu-virt-dom0-dmesg.txt"


def dmesg() -> list[str]:
    return DMESG.read_text().splitlines()


def test_the_hypervisor_node_is_kept_whole_and_says_what_xens_log_says():
    node = guest.hypervisor_node((DATA / "qemu-virt-dom0.dtb").read_bytes())
    claims = xenlog.parse((DATA / "qemu-virt-xen.log").read_text().splitlines())
    assert node is not None
    assert node["compatible"] == [f"xen,xen-{claims.version}", "xen,xen"]
    assert node["reg"] == [str(claims.grant), *map(str, claims.extended[0])]  # grant table first, then extended
    assert node["event_intid"] == claims.event_ppi and node["interrupts"][0] == 1  # a PPI
    assert node["path"] == "/hypervisor"


def test_a_tree_that_is_no_dtb_or_none_keeps_no_node():
    assert guest.hypervisor_node(b"not a device tree at all") is None  # the checks report it (dt.missing and others)
    assert guest.hypervisor_node(None) is None


def test_the_kernels_xen_lines_keep_its_wording_without_times_and_without_its_command_line():
    lines = guest.kernel_xen_lines(dmesg())
    assert lines[0] == "Xen 4.17 support found"
    assert "xen:grant_table: Grant tables using version 1 layout" in lines
    assert "Grant table initialized" in lines and "xen:events: Using FIFO-based ABI" in lines
    assert not any(line.startswith(("[", "Kernel command line")) or "xenboot" in line for line in lines), lines


def test_too_many_xen_lines_are_cut():
    many = dmesg() * 20
    assert len(guest.kernel_xen_lines(many)) == guest.MAX_XEN_LINES


def test_the_linux_version_line_is_found_or_none():
    version = guest.linux_version(dmesg())
    assert version is not None and version.startswith("Linux version 6.1.0-") and "Debian" in version
    assert guest.linux_version(["[    0.000000] Booting Linux on physical CPU 0x0"]) is None


def test_iomem_keeps_the_lines_naming_xen_at_any_depth():
    probe = (DATA / "qemu-virt-dom0-probe.txt").read_text().splitlines()
    facts = witnesses.kernel_facts(dmesg(), "", probe)
    assert facts.iomem_xen == []  # Debian's 6.1 lists no Xen entry in /proc/iomem
    assert facts.summary()["iomem_xen"] == []


def test_xen_saying_a_32bit_dom0_gets_no_extended_regions_is_kept_and_the_matrix_says_none():
    a15 = xenlog.parse((DATA / "qemu-a15-xen.log").read_text().splitlines()).to_dict()
    virt = xenlog.parse((DATA / "qemu-virt-xen.log").read_text().splitlines()).to_dict()
    assert (a15["no_extended_32bit"], a15["extended"]) == (["d0"], {})
    assert virt["no_extended_32bit"] == [] and virt["extended"]["d0"]
    said = matrix.cell({"xen": a15})["witnesses"]["xen"]
    assert said == {"grant": a15["grant"], "event_ppi": a15["event_ppi"], "extended": "none (32-bit dom0)"}
    assert matrix.cell({"xen": virt | {"extended": {}}})["witnesses"]["xen"]["extended"] == matrix.NOT_STATED


def test_a_kernel_that_lists_its_xen_resources_has_them_read_as_used_regions():
    """Debian's 6.1 lists none: the real probe with the lines a kernel using the extended regions adds (Linux's
    arch/arm/xen/enlighten.c 'Xen unused space' over an extended region, unpopulated-alloc's 'Xen scratch' in it)."""
    probe = (DATA / "qemu-virt-dom0-probe.txt").read_text().splitlines()
    at = probe.index("60000000-7fffffff : System RAM")
    planted = ["40400000-5fffffff : Xen unused space", "  40400000-4040ffff : Xen scratch"]
    facts = witnesses.kernel_facts(dmesg(), "", [*probe[:at], *planted, *probe[at:]])
    assert facts.iomem_xen == planted
    assert [name for _, name in facts.iomem].count("Xen unused space") == 1  # still one top-level entry among all
    record = {"guests": {"dom0": {"xen_lines": []}}, "witnesses": {"dom0": {"kernel": facts.summary()}}}
    cell = matrix.cell(record)
    assert cell["witnesses"]["kernel"]["extended"] == ["0x40400000-0x60000000"]  # end exclusive, as Xen says it
    assert cell["kernel_used"] == {"grant": matrix.NOT_STATED, "unpopulated": ["0x40400000-0x40410000"]}
