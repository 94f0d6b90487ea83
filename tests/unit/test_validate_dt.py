"""Unit tests of harness.validate.dt: the /hypervisor node validator.

The good inputs are real: the DT a real Xen 4.17 gave a real Linux dom0 on QEMU virt
(GICv3), and QEMU's own machine DTs. Each bad input is one of those edited with libfdt,
or a small tree built with libfdt's FdtSw, so every rule is shown to fire on exactly the
defect it names.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable

import libfdt
import pytest
from fdtree import flatten, write_procfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import UnusableInput
from harness.findings import MAX_PER_RULE, Finding, Severity, failures
from harness.validate import dt
from harness.validate.dt import (
    PROFILES,
    RULES,
    Expectation,
    HypervisorNode,
    Region,
    read_hypervisor_node,
    validate_dtb,
)
from harness.validate.dt_input import check_path, dtb_from_procfs

DATA = pathlib.Path(__file__).parent / "data"
DOM0_PATH = DATA / "qemu-virt-gicv3-dom0.dtb"
DOM0 = DOM0_PATH.read_bytes()
HOST = (DATA / "qemu-virt-gicv3-host.dtb").read_bytes()
# QEMU 7.2 `-machine virt,gic-version=2,dumpdtb=...`, packed with libfdt: a GICv2 machine
GICV2_HOST = (DATA / "dt" / "qemu-virt-gicv2-host.dtb").read_bytes()
# dom0's /sys/firmware/fdt from a qemu-a15 boot (Debian's Xen 4.17.5 armhf, Cortex-A15, GICv2): a 32-bit dom0
A15_DOM0 = (DATA / "dt" / "qemu-a15-dom0.dtb").read_bytes()
A15_GRANT = Region(0x40010000, 0x40000)  # Xen: "Grant table range: 0x00000040010000-0x00000040050000"

# What Xen 4.17 printed on the boot that produced DOM0
GRANT = Region(0x40200000, 0x40000)
EXT = (Region(0x40400000, 0x60000000 - 0x40400000), Region(0x80000000, 0xC0000000 - 0x80000000))
EXPECT = Expectation(xen_version="4.17", grant=GRANT, extended=EXT, event_intid=16)
GIC_PHANDLE = 0x8003
MiB = 1 << 20


# --- helpers -------------------------------------------------------------------------------


def cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def reg22(*pairs: tuple[int, int]) -> bytes:
    """reg entries for #address-cells = 2, #size-cells = 2."""
    return b"".join(a.to_bytes(8, "big") + s.to_bytes(8, "big") for a, s in pairs)


def edit(change: Callable[[libfdt.Fdt], object], blob: bytes = DOM0, room: int = 65536) -> bytes:
    fdt = libfdt.Fdt(blob)
    fdt.resize(len(blob) + room)
    change(fdt)
    fdt.pack()
    return bytes(fdt.as_bytearray())


def setprop(path: str, name: str, value: bytes, blob: bytes = DOM0) -> bytes:
    return edit(lambda f: f.setprop(f.path_offset(path), name, value), blob, len(value) + 65536)


def delprop(path: str, name: str, blob: bytes = DOM0) -> bytes:
    return edit(lambda f: f.delprop(f.path_offset(path), name), blob)


def set_hyp_reg(*pairs: tuple[int, int], blob: bytes = DOM0) -> bytes:
    return setprop("/hypervisor", "reg", reg22(*pairs), blob)


Tree = list[tuple[str, "bytes | Tree"]]


def build(items: Tree) -> bytes:
    """A DTB from nested (name, bytes-or-children) pairs; duplicates allowed, unlike libfdt's Fdt."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()

    def emit(name: str, body: Tree) -> None:
        sw.begin_node(name)
        for key, value in body:
            if isinstance(value, bytes):
                sw.property(key, value)
        for key, value in body:
            if not isinstance(value, bytes):
                emit(key, value)
        sw.end_node()

    emit("", items)
    return bytes(sw.as_fdt().as_bytearray())


def run(dtb: bytes, profile: str = "dom0", expect: Expectation | None = None) -> list[Finding]:
    found = validate_dtb(dtb, profile, expect)
    for f in found:  # every id a validator emits is documented
        assert f.rule in RULES, f.rule
        assert f.where and f.expected and f.found
    return found


def only(findings: list[Finding], rule: str) -> Finding:
    hits = [f for f in findings if f.rule == rule]
    assert len(hits) == 1, f"wanted one {rule}, got {[str(f) for f in findings]}"
    return hits[0]


def rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def failing_rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in failures(findings)}


# --- the real captured DT -------------------------------------------------------------------


def test_real_dom0_dtb_passes_with_xens_logged_values():
    assert run(DOM0, "dom0", EXPECT) == []


def test_real_dom0_node_decodes_to_what_xen_logged():
    node = read_hypervisor_node(DOM0)
    assert node == HypervisorNode(
        path="/hypervisor",
        compatible=("xen,xen-4.17", "xen,xen"),
        regions=(GRANT, *EXT),
        interrupts=(1, 0, 0xF08),
        event_intid=16,
    )
    assert node.grant == GRANT and str(node.grant) == "0x40200000-0x40240000"
    assert node.extended == EXT
    assert [str(r) for r in EXT] == ["0x40400000-0x60000000", "0x80000000-0xc0000000"]
    assert GRANT.end == 0x40240000


def test_real_gicv2_machine_with_a_xen_node_passes():
    """A GICv2 parent ("arm,cortex-a15-gic", QEMU's real machine DT) is accepted too."""

    def add_node(f: libfdt.Fdt) -> None:
        off = f.add_subnode(0, "hypervisor")
        f.setprop(off, "compatible", b"xen,xen-4.17\0xen,xen\0")
        f.setprop(off, "reg", reg22((0x38000000, 0x1000000), (0xC0000000, 0x40000000)))
        f.setprop(off, "interrupts", cells(1, 0, 0xF08))
        f.setprop_u32(off, "interrupt-parent", 0x8002)

    blob = edit(add_node, GICV2_HOST)
    assert run(blob, "dom0", Expectation(grant=Region(0x38000000, 0x1000000), event_intid=16)) == []


def test_machine_dt_without_hypervisor_node_is_a_finding_not_an_error():
    finding = only(run(HOST), "dt.node.count")
    assert finding.severity is Severity.ERROR
    assert "exactly one" in finding.expected and finding.found == "none"
    assert read_hypervisor_node(HOST) is None


def test_rules_table_is_documented():
    assert len(RULES) >= 30
    for rule, text in RULES.items():
        assert rule.startswith("dt.") and rule == rule.strip() and " " not in rule
        assert text and "\n" not in text


# --- node name and count --------------------------------------------------------------------


def test_node_with_unit_address_is_not_found_by_linux():
    blob = edit(lambda f: f.set_name(f.path_offset("/hypervisor"), "hypervisor@40200000"))
    found = run(blob, "dom0", EXPECT)
    finding = only(found, "dt.node.unit-address")
    assert finding.where == "/hypervisor@40200000"
    assert "exactly 'hypervisor'" in finding.expected and "hypervisor@40200000" in finding.found
    assert "dt.node.count" not in rules(found)
    assert read_hypervisor_node(blob).path == "/hypervisor@40200000"


def test_bare_and_unit_address_nodes_together_are_two_nodes():
    blob = edit(lambda f: f.add_subnode(0, "hypervisor@40200000"))
    found = run(blob, "dom0", EXPECT)
    assert only(found, "dt.node.count").found == "/hypervisor, /hypervisor@40200000"
    assert only(found, "dt.node.unit-address").where == "/hypervisor@40200000"
    assert read_hypervisor_node(blob).path == "/hypervisor"  # the one Linux uses is still checked


def xen_node(
    reg: bytes = reg22((0x38000000, 0x1000000)),
    irq: bytes = cells(1, 15, 0xF08),
    compat: bytes = b"xen,xen-4.17\0xen,xen\0",
) -> Tree:
    return [("compatible", compat), ("reg", reg), ("interrupts", irq), ("interrupt-parent", cells(0xFDE8))]


GUEST_GIC: Tree = [
    ("compatible", b"arm,gic-v3\0"),
    ("#interrupt-cells", cells(3)),
    ("#address-cells", cells(0)),
    ("interrupt-controller", b""),
    ("reg", reg22((0x03001000, 0x10000), (0x03020000, 0x1000000))),
    ("phandle", cells(0xFDE8)),
]


def guest(hyp: Tree | None = None, *extra: tuple[str, bytes | Tree]) -> bytes:
    """A libxl-style domU tree: 256 MiB RAM at GUEST_RAM0_BASE, a guest GICv3, /hypervisor."""
    return build(
        [
            ("#address-cells", cells(2)),
            ("#size-cells", cells(2)),
            ("interrupt-parent", cells(0xFDE8)),
            ("compatible", b"xen,xenvm-4.17\0xen,xenvm\0"),
            ("chosen", [("bootargs", b"console=hvc0\0")]),
            ("memory@40000000", [("device_type", b"memory\0"), ("reg", reg22((0x40000000, 0x10000000)))]),
            ("interrupt-controller@3001000", GUEST_GIC),
            ("hypervisor", hyp if hyp is not None else xen_node(reg22((0x38000000, 0x1000000)))),
            *extra,
        ]
    )


def test_two_bare_hypervisor_nodes():
    blob = guest(None, ("hypervisor", xen_node()))
    finding = only(run(blob, "domU"), "dt.node.count")
    assert finding.found == "/hypervisor, /hypervisor"
    assert "exactly one" in finding.expected


def test_stray_xen_compatible_node_elsewhere():
    blob = guest(None, ("soc", [("xen", [("compatible", b"xen,xen\0")])]))
    finding = only(run(blob, "domU"), "dt.node.stray")
    assert finding.where == "/soc/xen" and "'xen,xen'" in finding.found
    assert "/hypervisor" in finding.expected


def test_hypervisor_node_nested_too_deep_is_missing_and_stray():
    blob = build(
        [
            ("#address-cells", cells(2)),
            ("#size-cells", cells(2)),
            ("soc", [("hypervisor", [("compatible", b"xen,xen-4.17\0xen,xen\0")])]),
        ]
    )
    found = run(blob)
    assert only(found, "dt.node.count").found == "none"
    assert only(found, "dt.node.stray").where == "/soc/hypervisor"


def test_absurdly_deep_tree_is_walked_with_a_bound():
    deep: Tree = [("leaf", b"\0")]
    for _ in range(dt.MAX_DEPTH + 5):
        deep = [("n", deep)]
    blob = guest(None, ("deep", deep))
    finding = only(run(blob, "domU"), "dt.tree.depth")
    assert finding.severity is Severity.WARNING
    assert f"at most {dt.MAX_DEPTH}" in finding.expected and "not checked" in finding.found


# --- compatible -------------------------------------------------------------------------


def test_compatible_reordered():
    blob = setprop("/hypervisor", "compatible", b"xen,xen\0xen,xen-4.17\0")
    finding = only(run(blob, "dom0", EXPECT), "dt.compatible.order")
    assert finding.expected.startswith('"xen,xen-<major>.<minor>", "xen,xen"')
    assert finding.found == '"xen,xen", "xen,xen-4.17"'
    assert "first string" in finding.note


def test_compatible_without_generic_string():
    blob = setprop("/hypervisor", "compatible", b"xen,xen-4.17\0")
    finding = only(run(blob), "dt.compatible.order")
    assert finding.found == '"xen,xen-4.17"' and "does not detect Xen" in finding.note


def test_compatible_missing_or_not_strings():
    finding = only(run(delprop("/hypervisor", "compatible")), "dt.compatible.missing")
    assert finding.found == "absent"
    finding = only(run(setprop("/hypervisor", "compatible", b"xen,xen")), "dt.compatible.missing")
    assert "NUL-terminated" in finding.expected and "7 bytes" in finding.found


def test_compatible_version_against_the_booted_xen():
    finding = only(run(DOM0, "dom0", Expectation(xen_version="4.18")), "dt.compatible.version")
    assert '"xen,xen-4.18"' in finding.expected and finding.found == '"xen,xen-4.17"'
    # the banner's full version "4.17.2" or "4.17-unstable" is the same major.minor
    assert run(DOM0, "dom0", Expectation(xen_version="4.17.2")) == []
    assert run(DOM0, "dom0", Expectation(xen_version="4.17-unstable")) == []


# --- reg ----------------------------------------------------------------------------------


def test_grant_region_shifted_by_a_page():
    blob = set_hyp_reg((0x40201000, 0x40000), (EXT[0].start, EXT[0].size), (EXT[1].start, EXT[1].size))
    finding = only(run(blob, "dom0", EXPECT), "dt.dom0.grant")
    assert finding.where == "/hypervisor reg[0]"
    assert "0x40200000-0x40240000" in finding.expected and "grant table" in finding.expected
    assert finding.found == "0x40201000-0x40241000"


def test_grant_region_empty_and_misaligned():
    finding = only(run(set_hyp_reg((0x40200000, 0))), "dt.reg.grant.empty")
    assert finding.found == "size 0 at 0x40200000" and "non-empty" in finding.expected
    finding = only(run(set_hyp_reg((0x40200800, 0x40000))), "dt.reg.grant.align")
    assert "4 KiB" in finding.expected and "start 0x40200800" in finding.found


def test_reg_missing_or_ragged():
    assert only(run(delprop("/hypervisor", "reg")), "dt.reg.missing").found == "absent"
    assert only(run(setprop("/hypervisor", "reg", b"")), "dt.reg.missing").found == "empty"
    finding = only(run(setprop("/hypervisor", "reg", reg22((0x40200000, 0x40000)) + cells(1))), "dt.reg.length")
    assert "multiple of 16 bytes" in finding.expected and finding.found.startswith("20 bytes")


@pytest.mark.parametrize("value", [cells(0), cells(5), b"\0\0\0\2\0"])
def test_absurd_root_cell_counts_are_findings(value):
    found = run(setprop("/", "#address-cells", value), "dom0", EXPECT)
    assert rules(found) == {"dt.reg.cells"}  # nothing else is guessed from an undecodable reg
    finding = only(found, "dt.reg.cells")
    assert "1..4" in finding.expected and "#address-cells" in finding.found


def test_default_root_cells_are_two_and_one():
    """Without #size-cells the 48-byte reg reads as four <addr addr size> entries, per the DT spec."""
    node = read_hypervisor_node(delprop("/", "#size-cells"))
    assert node.regions[0] == Region(0x40200000, 0)
    assert len(node.regions) == 4
    assert "dt.reg.grant.empty" in rules(run(delprop("/", "#size-cells")))


# --- extended regions -------------------------------------------------------------------


def test_extended_region_misaligned():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x40500000, 0x1FB00000))
    finding = only(run(blob), "dt.ext.align")
    assert finding.where == "/hypervisor reg[1]"
    assert "2 MiB" in finding.expected and "start 0x40500000" in finding.found


def test_extended_region_under_64_mib():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x40400000, 62 * MiB))
    finding = only(run(blob), "dt.ext.min-size")
    assert "64 MiB" in finding.expected and "62 MiB" in finding.found


def test_extended_regions_overlapping_each_other_and_the_grant_table():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x40400000, 0x8000000), (0x44000000, 0x8000000))
    finding = only(run(blob), "dt.ext.overlap")
    assert finding.where == "/hypervisor reg[2]"
    assert "reg[1] 0x40400000-0x48400000" in finding.expected
    assert finding.found == "0x44000000-0x4c000000 overlaps reg[1] 0x40400000-0x48400000"
    blob = set_hyp_reg((0x40200000, 0x40000), (0x40000000, 0x4000000))
    finding = only(run(blob), "dt.ext.overlap")
    assert "the grant table reg[0] 0x40200000-0x40240000" in finding.expected


def test_extended_region_overlapping_guest_ram():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x40400000, 0x20000000))
    finding = only(run(blob), "dt.ext.ram")
    assert "/memory@60000000 reg[0] 0x60000000-0x80000000" in finding.expected
    assert finding.found == "0x40400000-0x60400000 overlaps /memory@60000000 reg[0] 0x60000000-0x80000000"


def test_extended_region_overlapping_a_device():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x8000000, 0x4000000))
    finding = only(run(blob), "dt.ext.device")
    assert "/interrupt-controller reg[0] 0x8000000-0x8010000" in finding.expected
    assert "more)" in finding.found  # the GIC, the UART, 32 virtio-mmio... are counted, not all listed
    assert finding.severity is Severity.ERROR


def bus_with_child(ranges: bytes | None) -> bytes:
    """dom0 DT plus /bus: a 1-cell bus whose child sits at bus address 0x1000."""

    def change(f: libfdt.Fdt) -> None:
        bus = f.add_subnode(0, "bus")
        f.setprop_u32(bus, "#address-cells", 1)
        f.setprop_u32(bus, "#size-cells", 1)
        if ranges is not None:
            f.setprop(bus, "ranges", ranges)
        dev = f.add_subnode(f.path_offset("/bus"), "dev@1000")
        f.setprop(dev, "reg", cells(0x1000, 0x100))

    return edit(change)


def test_device_reg_is_translated_through_bus_ranges():
    # bus address 0 maps to CPU 0x50000000, so dev@1000 is at 0x50001000: inside extended region 0
    blob = bus_with_child(cells(0, 0, 0x50000000, 0x10000))
    found = run(blob, "dom0", EXPECT)
    finding = only(found, "dt.ext.device")
    assert finding.where == "/hypervisor reg[1]"
    assert finding.found == "0x40400000-0x60000000 overlaps /bus/dev@1000 reg[0] 0x50001000-0x50001100"
    window = only(found, "dt.ext.bus-window")
    assert "/bus ranges[0] 0x50000000-0x50010000" in window.found


def test_identity_and_absent_ranges():
    # empty ranges: bus address = CPU address 0x1000, clear of the extended regions
    assert run(bus_with_child(b""), "dom0", EXPECT) == []
    # no ranges: the child is not memory-mapped, so its reg is not an address to avoid
    assert run(bus_with_child(None), "dom0", EXPECT) == []


def test_extended_region_overlapping_reserved_memory():
    def change(f: libfdt.Fdt) -> None:
        rsv = f.add_subnode(0, "reserved-memory")
        f.setprop_u32(rsv, "#address-cells", 2)
        f.setprop_u32(rsv, "#size-cells", 2)
        f.setprop(rsv, "ranges", b"")
        buf = f.add_subnode(f.path_offset("/reserved-memory"), "buffer@50000000")
        f.setprop(buf, "reg", reg22((0x50000000, 0x100000)))

    finding = only(run(edit(change), "dom0", EXPECT), "dt.ext.reserved")
    assert "/reserved-memory/buffer@50000000 reg[0] 0x50000000-0x50100000" in finding.found


def test_extended_region_in_a_pci_mmio_window_is_a_warning():
    blob = set_hyp_reg((GRANT.start, GRANT.size), (0x10000000, 0x4000000))
    finding = only(run(blob), "dt.ext.bus-window")
    assert finding.severity is Severity.WARNING
    assert "/pcie@10000000 ranges[1] 0x10000000-0x3eff0000" in finding.found


def test_extended_regions_on_a_32bit_domain():
    finding = only(run(DOM0, "dom0", Expectation(is_32bit=True)), "dt.ext.32bit")
    assert "no extended regions" in finding.expected
    assert finding.found == "0x40400000-0x60000000, 0x80000000-0xc0000000"
    assert run(set_hyp_reg((GRANT.start, GRANT.size)), "dom0", Expectation(is_32bit=True)) == []


def test_a_32bit_domain_is_recognised_from_its_cpus():
    assert dt.domain_arch(A15_DOM0) == dt.Arch("arm32", "from /cpus: arm,cortex-a15, 32-bit only")
    assert run(A15_DOM0, "dom0", Expectation(xen_version="4.17", grant=A15_GRANT, event_intid=16)) == []
    arm64 = dt.domain_arch(DOM0)
    assert arm64.name == "arm64" and arm64.why.startswith("from /cpus: arm,cortex-a57, which a 32-bit domain")
    assert dt.domain_arch(guest()).why.startswith("assumed: the tree has no /cpus/cpu nodes")


def test_extended_region_on_the_real_32bit_dom0_in_every_profile():
    """The real arm32 dom0's tree with one extended region past its grant table, as a 64-bit dom0 would get."""
    blob = set_hyp_reg((A15_GRANT.start, A15_GRANT.size), (0x80000000, 0x40000000), blob=A15_DOM0)
    for profile in ("dom0", "domU"):
        finding = only(run(blob, profile), "dt.ext.32bit")
        assert finding.where == "/hypervisor reg[1..]" and finding.found == "0x80000000-0xc0000000"
        assert finding.expected.endswith("a 32-bit domain (from /cpus: arm,cortex-a15, 32-bit only)")
        assert finding.note == "Xen gives no extended regions to 32-bit guests"
    # --arch arm64 overrides what the CPUs say
    assert "dt.ext.32bit" not in rules(run(blob, "dom0", Expectation(is_32bit=False)))


def test_extended_regions_differ_from_xens_log():
    finding = only(run(DOM0, "dom0", Expectation(extended=EXT[::-1])), "dt.dom0.ext")
    assert finding.expected.startswith("0x80000000-0xc0000000, 0x40400000-0x60000000")
    assert finding.found == "0x40400000-0x60000000, 0x80000000-0xc0000000"
    finding = only(run(DOM0, "dom0", Expectation(extended=())), "dt.dom0.ext")
    assert finding.expected.startswith("none")


# --- interrupts -------------------------------------------------------------------------


def test_wrong_ppi_expected():
    finding = only(run(DOM0, "dom0", Expectation(event_intid=17)), "dt.dom0.irq")
    assert "INTID 17" in finding.expected and "Allocating PPI 17" in finding.expected
    assert finding.found == "INTID 16 from <0x1 0x0 0xf08>"


def test_interrupts_cells_changed():
    blob = setprop("/hypervisor", "interrupts", cells(1, 1, 0xF08))
    finding = only(run(blob, "dom0", EXPECT), "dt.dom0.irq")
    assert "INTID 16" in finding.expected and finding.found == "INTID 17 from <0x1 0x1 0xf08>"
    assert read_hypervisor_node(blob).event_intid == 17


def test_wrong_trigger():
    finding = only(run(setprop("/hypervisor", "interrupts", cells(1, 0, 0xF04))), "dt.irq.trigger")
    assert "level-low" in finding.expected and finding.found == "flags 0xf04 (level-high)"


def test_interrupts_shape():
    found = run(setprop("/hypervisor", "interrupts", cells(1, 0)))
    assert only(found, "dt.irq.cells").found == "8 bytes <0x1 0x0>"
    found = run(setprop("/hypervisor", "interrupts", cells(0, 5, 0xF08)), "dom0", EXPECT)
    assert "(SPI)" in only(found, "dt.irq.type").found
    assert "no PPI" in only(found, "dt.dom0.irq").found
    found = run(setprop("/hypervisor", "interrupts", cells(1, 16, 0xF08)))
    assert only(found, "dt.irq.ppi-range").found == "cell 1 = 0x10 (INTID 32)"
    finding = only(run(delprop("/hypervisor", "interrupts")), "dt.irq.missing")
    assert finding.found == "absent" and "<1 PPI 0xf08>" in finding.expected


def test_interrupt_parent_inherited_from_root():
    assert run(delprop("/hypervisor", "interrupt-parent"), "dom0", EXPECT) == []
    blob = delprop("/", "interrupt-parent", delprop("/hypervisor", "interrupt-parent"))
    finding = only(run(blob), "dt.irq.parent")
    assert finding.found == "none on the node, its ancestors or /"


def test_dangling_interrupt_parent():
    finding = only(run(setprop("/hypervisor", "interrupt-parent", cells(0x1234))), "dt.irq.parent")
    assert finding.found == "phandle 0x1234 matches no node"
    assert "phandle of an existing node" in finding.expected


def point_hypervisor_at(path: str, blob: bytes = DOM0, phandle: int = 0x78) -> bytes:
    """dom0's tree with /hypervisor's interrupt-parent naming the node at `path` (given a phandle)."""
    def change(f: libfdt.Fdt) -> None:
        f.setprop_u32(f.path_offset(path), "phandle", phandle)
        f.setprop_u32(f.path_offset("/hypervisor"), "interrupt-parent", phandle)

    return edit(change, blob)


def test_interrupt_parent_naming_a_node_that_is_no_controller():
    """/psci has no #interrupt-cells: Linux would walk on from it to / and its GIC, but the event channel's
    parent must be the GIC itself, and the finding names the node the phandle found."""
    finding = only(run(point_hypervisor_at("/psci"), "dom0", EXPECT), "dt.irq.parent.gic")
    assert finding.where == "/hypervisor interrupt-parent -> /psci"
    assert finding.found.startswith("/psci: no interrupt-controller property; compatible 'arm,psci-1.0'")
    assert "#interrupt-cells = 0 bytes <>" in finding.found
    # a node that is its own interrupt parent is named the same way
    own = only(run(point_hypervisor_at("/hypervisor")), "dt.irq.parent.gic")
    assert own.where == "/hypervisor interrupt-parent -> /hypervisor" and own.found.startswith("/hypervisor: ")


def test_inherited_interrupt_parent_naming_a_non_gic():
    def change(f: libfdt.Fdt) -> None:
        f.setprop_u32(f.path_offset("/psci"), "phandle", 0x78)
        f.setprop_u32(0, "interrupt-parent", 0x78)
        f.delprop(f.path_offset("/hypervisor"), "interrupt-parent")

    finding = only(run(edit(change), "dom0", EXPECT), "dt.irq.parent.gic")
    assert finding.where == "/hypervisor interrupt-parent -> /psci (inherited from / interrupt-parent)"
    assert finding.found.startswith("/psci: ")


def test_non_gic_interrupt_parent():
    # the PCIe host bridge has #interrupt-cells (1) but is no GIC
    blob = edit(lambda f: f.setprop_u32(f.path_offset("/pcie@10000000"), "phandle", 0x99))
    blob = setprop("/hypervisor", "interrupt-parent", cells(0x99), blob)
    finding = only(run(blob), "dt.irq.parent.gic")
    assert finding.where == "/hypervisor interrupt-parent -> /pcie@10000000"
    assert "arm,gic-v3" in finding.expected and "#interrupt-cells = 3" in finding.expected
    assert finding.found.startswith("/pcie@10000000: no interrupt-controller")
    assert "#interrupt-cells = 1" in finding.found and "'pci-host-ecam-generic'" in finding.found


def test_gic_with_four_interrupt_cells_is_flagged():
    blob = setprop("/interrupt-controller", "#interrupt-cells", cells(4))
    assert only(run(blob), "dt.irq.parent.gic").found == "/interrupt-controller: #interrupt-cells = 4"


# --- profiles -------------------------------------------------------------------------------


def test_domu_profile_passes_on_a_libxl_style_guest():
    ext = reg22((0x38000000, 0x1000000), (0x50000000, 0x70000000))
    blob = guest(xen_node(ext))
    assert run(blob, "domU") == []
    want = Expectation(xen_version="4.17", extended=(Region(0x50000000, 0x70000000),), event_intid=31)
    assert run(blob, "domU", want) == []


def test_domu_profile_fails_on_dom0_values():
    found = run(DOM0, "domU")
    grant = only(found, "dt.domU.grant")
    assert "0x38000000-0x39000000" in grant.expected and grant.found == "0x40200000-0x40240000"
    irq = only(found, "dt.domU.irq")
    assert "<0x1 0xf 0xf08>" in irq.expected and irq.found == "12 bytes <0x1 0x0 0xf08>"


def test_domu_compared_with_what_xen_logged():
    blob = guest()
    finding = only(run(blob, "domU", Expectation(event_intid=16)), "dt.domU.irq")
    assert "INTID 16" in finding.expected and finding.found == "INTID 31 from <0x1 0xf 0xf08>"
    finding = only(run(blob, "domU", Expectation(grant=Region(0x39000000, 0x1000000))), "dt.domU.grant")
    assert finding.expected == "0x39000000-0x3a000000 (Xen's grant table range)"
    assert finding.found == "0x38000000-0x39000000"


def test_domu_extended_region_over_guest_ram():
    blob = guest(xen_node(reg22((0x38000000, 0x1000000), (0x48000000, 0x10000000))))
    finding = only(run(blob, "domU"), "dt.ext.ram")
    assert "/memory@40000000 reg[0] 0x40000000-0x50000000" in finding.found


def test_domu_extended_regions_differ_from_xens_log():
    blob = guest(xen_node(reg22((0x38000000, 0x1000000), (0x50000000, 0x70000000))))
    finding = only(run(blob, "domU", Expectation(extended=())), "dt.domU.ext")
    assert finding.found == "0x50000000-0xc0000000"


def acpi_tree(hyp_extra: Tree = (), uefi: Tree | None = None) -> bytes:
    uefi_props: Tree = [
        ("xen,uefi-system-table", (0xBF7E0018).to_bytes(8, "big")),
        ("xen,uefi-mmap-start", (0xBF7D0000).to_bytes(8, "big")),
        ("xen,uefi-mmap-size", cells(40 * 30)),
        ("xen,uefi-mmap-desc-size", cells(40)),
        ("xen,uefi-mmap-desc-ver", cells(1)),
    ]
    return build(
        [
            ("#address-cells", cells(2)),
            ("#size-cells", cells(2)),
            ("chosen", [("bootargs", b"console=hvc0\0")]),
            (
                "hypervisor",
                [
                    ("compatible", b"xen,xen-4.17\0xen,xen\0"),
                    *hyp_extra,
                    ("uefi", uefi_props if uefi is None else uefi),
                ],
            ),
        ]
    )


def test_acpi_dom0_profile_passes_on_xens_minimal_tree():
    assert run(acpi_tree(), "acpi-dom0", Expectation(xen_version="4.17")) == []


def test_acpi_dom0_profile_fails_on_a_dt_dom0():
    found = run(DOM0, "acpi-dom0")
    assert rules(found) == {"dt.acpi.reg", "dt.acpi.irq", "dt.acpi.uefi"}
    assert only(found, "dt.acpi.reg").expected.startswith("no reg")
    assert only(found, "dt.acpi.uefi").found == "no 'uefi' child"


def test_acpi_dom0_with_reg_or_interrupts():
    found = run(acpi_tree([("reg", reg22((0x40200000, 0x40000))), ("interrupts", cells(1, 0, 0xF08))]), "acpi-dom0")
    assert rules(found) == {"dt.acpi.reg", "dt.acpi.irq"}
    assert only(found, "dt.acpi.reg").found == "16 bytes <0x0 0x40200000 0x0 0x40000>"
    assert only(found, "dt.acpi.irq").found == "12 bytes <0x1 0x0 0xf08>"


def test_acpi_dom0_uefi_properties_missing():
    found = run(acpi_tree(uefi=[("xen,uefi-system-table", cells(0, 0xBF7E0018))]), "acpi-dom0")
    missing = [f for f in found if f.rule == "dt.acpi.uefi"]
    assert [f.where.split()[-1] for f in missing] == list(dt.UEFI_PROPS[1:])
    assert all(f.found == "absent" and f.where.startswith("/hypervisor/uefi ") for f in missing)


def test_acpi_dom0_uefi_values_are_checked():
    bad = [
        ("xen,uefi-system-table", b"\0" * 3),
        ("xen,uefi-mmap-start", cells(0, 0xBF7D0000)),
        ("xen,uefi-mmap-size", cells(41)),
        ("xen,uefi-mmap-desc-size", cells(40)),
        ("xen,uefi-mmap-desc-ver", cells(2)),
    ]
    found = run(acpi_tree(uefi=bad), "acpi-dom0")
    wheres = {f.where.split()[-1]: f for f in found}
    assert set(wheres) == {"xen,uefi-system-table", "xen,uefi-mmap-size", "xen,uefi-mmap-desc-ver"}
    assert wheres["xen,uefi-system-table"].expected == "one or two cells (4 or 8 bytes)"
    assert wheres["xen,uefi-mmap-size"].found == "41"
    assert wheres["xen,uefi-mmap-desc-ver"].found == "2"


# --- unusable inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"", "is empty"),
        (b"\x7fELF" + bytes(100), "bad magic 0x7f454c46"),
        (DOM0[:2], "bad magic"),
        (DOM0[:1000], "truncated (1000 bytes, header says 7391)"),
        (DOM0[:60] + b"\xff" * (len(DOM0) - 60), "fails libfdt's check"),
    ],
)
def test_unreadable_blobs_raise_unusable_input(blob, words):
    for call in (lambda: validate_dtb(blob), lambda: read_hypervisor_node(blob)):
        with pytest.raises(UnusableInput) as info:
            call()
        assert words in str(info.value)
        assert "/sys/firmware/fdt" in str(info.value) or "copy the whole blob" in str(info.value)


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(UnusableInput, match="unknown DT profile 'dom1': use one of dom0, domU, acpi-dom0"):
        validate_dtb(DOM0, "dom1")
    with pytest.raises(UnusableInput, match="unknown DT profile"):
        check_path(DOM0_PATH, "xen")
    with pytest.raises(UnusableInput, match="does not exist: pass a .dtb"):
        check_path(tmp_path / "nope.dtb")
    (tmp_path / "empty.dtb").write_bytes(b"")
    with pytest.raises(UnusableInput, match=r"empty\.dtb is empty"):
        check_path(tmp_path / "empty.dtb")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UnusableInput, match="emptydir is empty"):
        check_path(tmp_path / "emptydir")
    assert PROFILES == ("dom0", "domU", "acpi-dom0")


def test_check_path_on_a_dtb_file():
    assert check_path(DOM0_PATH, "dom0", EXPECT) == []
    assert "dt.dom0.irq" in rules(check_path(DOM0_PATH, "dom0", Expectation(event_intid=20)))


# --- /proc/device-tree copies ---------------------------------------------------------------


def test_procfs_copy_round_trips(tmp_path):
    write_procfs(DOM0, tmp_path / "device-tree")
    assert (tmp_path / "device-tree/hypervisor/name").read_bytes() == b"hypervisor\0"
    assert (tmp_path / "device-tree/hypervisor/interrupts").read_bytes() == cells(1, 0, 0xF08)
    rebuilt = dtb_from_procfs(tmp_path / "device-tree")
    assert flatten(rebuilt) == flatten(DOM0)
    assert read_hypervisor_node(rebuilt) == read_hypervisor_node(DOM0)
    assert check_path(tmp_path / "device-tree", "dom0", EXPECT) == []
    # and a defect survives the trip
    (tmp_path / "device-tree/hypervisor/interrupts").write_bytes(cells(1, 1, 0xF08))
    finding = only(check_path(tmp_path / "device-tree", "dom0", EXPECT), "dt.dom0.irq")
    assert finding.found == "INTID 17 from <0x1 0x1 0xf08>"


def test_procfs_keeps_a_real_name_property_and_skips_symlinks(tmp_path):
    root = tmp_path / "dt"
    write_procfs(guest(), root)
    (root / "hypervisor" / "name").write_bytes(b"other\0")  # not Linux's pseudo-property: kept
    (root / "loop").symlink_to(root)  # a symlink loop must not be followed
    rebuilt = flatten(dtb_from_procfs(root))
    assert rebuilt["/hypervisor"]["name"] == b"other\0"
    assert "name" not in rebuilt["/chosen"] and "/loop" not in rebuilt


def test_procfs_non_ascii_name_is_refused(tmp_path):
    write_procfs(guest(), tmp_path / "dt")
    (tmp_path / "dt" / "chosen" / "b\u00e4d").write_bytes(b"x")
    with pytest.raises(UnusableInput, match="is not an ASCII node or property name"):
        check_path(tmp_path / "dt", "domU")


def test_procfs_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(UnusableInput, match="f is a regular file, not a directory"):
        dtb_from_procfs(tmp_path / "f")


# --- robustness -----------------------------------------------------------------------------


def strings_block_edit(old: bytes, new: bytes) -> bytes:
    """Replace a property name in dom0's strings block (the blob's tail), leaving the struct alone."""
    at = DOM0.rindex(old)
    assert at > len(DOM0) - 0x300 and len(old) == len(new)
    return DOM0[:at] + new + DOM0[at + len(old) :]


def test_non_utf8_property_name_is_skipped_like_any_unknown_property():
    blob = strings_block_edit(b"enable-method\0", b"\x80nable-method\0")
    assert run(blob, "dom0", EXPECT) == []
    # the same corruption of a name the node needs reads as that property missing, as Linux sees it
    blob = strings_block_edit(b"\0interrupts\0", b"\0\xffnterrupts\0")
    assert only(run(blob, "dom0", EXPECT), "dt.irq.missing").found == "absent"


def test_non_utf8_node_name_is_reported_printably():
    at = DOM0.index(b"psci\0")
    renamed = DOM0[:at] + b"\xffsci\0" + DOM0[at + 5 :]  # same length: the struct stays valid
    assert run(renamed, "dom0", EXPECT) == []

    def point_at_it(f: libfdt.Fdt) -> None:
        off = f.first_subnode(0)
        while f.get_name(off) != "\udcffsci":  # how libfdt's binding hands over the raw byte
            off = f.next_subnode(off)
        f.setprop_u32(off, "phandle", 0x78)
        f.setprop_u32(f.path_offset("/hypervisor"), "interrupt-parent", 0x78)

    finding = only(run(edit(point_at_it, renamed)), "dt.irq.parent.gic")
    assert finding.where == "/hypervisor interrupt-parent -> /\\xffsci"
    str(finding).encode("utf-8")  # printable: no lone surrogates


REAL_BLOBS = (DOM0, HOST, GICV2_HOST)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def survive(blob: bytes) -> None:
    """Only UnusableInput may escape; a readable blob yields documented findings for every profile."""
    try:
        node = read_hypervisor_node(blob)
    except UnusableInput as exc:
        assert str(exc)
        with pytest.raises(UnusableInput):
            validate_dtb(blob)
        return
    assert node is None or node.path.startswith("/hypervisor")
    for profile in PROFILES:
        for expect in (None, EXPECT, Expectation(is_32bit=True, extended=())):
            for f in validate_dtb(blob, profile, expect):
                assert f.rule in RULES
                str(f).encode("utf-8")  # printable


# dom0's /hypervisor node in the struct block: from its name to the next node ("psci")
HYP_SPAN = (DOM0.index(b"hypervisor\0"), DOM0.index(b"psci\0"))


@st.composite
def mutated_blobs(draw: st.DrawFn) -> bytes:
    """Byte flips anywhere or (so more inputs stay readable) inside dom0's node; sometimes cut short."""
    blob = bytearray(draw(st.sampled_from(REAL_BLOBS)))
    lo, hi = HYP_SPAN if blob == DOM0 and draw(st.booleans()) else (0, len(blob) - 1)
    for _ in range(draw(st.integers(0, 6))):
        blob[draw(st.integers(lo, hi))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        blob = blob[: draw(st.integers(0, len(blob)))]
    return bytes(blob)


@FUZZ
@given(mutated_blobs())
def test_mutated_real_blobs_never_crash(blob):
    survive(blob)


@FUZZ
@given(st.binary(max_size=512) | st.just(b"") | st.binary(max_size=64).map(lambda b: DOM0[:40] + b))
def test_garbage_never_crashes(blob):
    survive(blob)


TARGETS = [
    ("/hypervisor", "reg"),
    ("/hypervisor", "interrupts"),
    ("/hypervisor", "interrupt-parent"),
    ("/hypervisor", "compatible"),
    ("/hypervisor", "phandle"),
    ("/", "#address-cells"),
    ("/", "#size-cells"),
    ("/", "interrupt-parent"),
    ("/interrupt-controller", "#interrupt-cells"),
    ("/interrupt-controller", "phandle"),
    ("/interrupt-controller", "compatible"),
    ("/platform-bus@c000000", "ranges"),
    ("/platform-bus@c000000", "#address-cells"),
    ("/memory@60000000", "reg"),
    ("/psci", "interrupt-parent"),
]
VALUES = st.one_of(
    st.binary(max_size=40),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=12).map(lambda v: cells(*v)),
    st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 15, 16, 0xF08, 0x8003, 0x40200000, 0xFFFFFFFF]), max_size=12).map(
        lambda v: cells(*v)
    ),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(TARGETS), VALUES), min_size=1, max_size=4))
def test_random_property_values_never_crash(changes):
    def change(f: libfdt.Fdt) -> None:
        for (path, name), value in changes:
            f.setprop(f.path_offset(path), name, value)

    survive(edit(change))


def test_many_overlaps_are_summarised():
    """A hostile-but-valid blob (many devices, long chains): one finding names a few and counts the rest
    (how fast is benchmarks/inputs.py's to say)."""

    def many(f: libfdt.Fdt) -> None:
        for i in range(400):
            off = f.add_subnode(0, f"dev@{i:x}")
            f.setprop(off, "reg", reg22((0x40400000 + i * 0x1000, 0x1000)))

    finding = only(run(edit(many), "dom0", EXPECT), "dt.ext.device")
    assert "(+397 more)" in finding.found


# --- bounded work: many regions -------------------------------------------------------------


def per_rule_totals(findings: list[Finding]) -> dict[str, int]:
    """How many findings each rule had before capping: those listed plus the count in the last one."""
    totals: dict[str, int] = {}
    for f in findings:
        more = re.fullmatch(r"(\d+) more like them, not listed", f.found)
        totals[f.rule] = totals.get(f.rule, 0) + (int(more.group(1)) if more else 1)
    return totals


def test_twenty_thousand_copies_of_one_region_give_bounded_findings():
    # the hostile blob: /hypervisor reg = the grant table + one region over /memory@60000000, 20,000 times
    ext = (0x40400000, 0x20000000)
    blob = set_hyp_reg((GRANT.start, GRANT.size), *[ext] * 20_000)
    assert len(blob) > 320_000
    found = run(blob)
    overlap = [f for f in found if f.rule == "dt.ext.overlap"]
    assert [f.where for f in overlap] == [f"/hypervisor reg[{i}]" for i in range(2, 2 + MAX_PER_RULE)] + [
        f"/hypervisor reg[{2 + MAX_PER_RULE}] ... /hypervisor reg[20000]"
    ]
    assert overlap[0].found == "0x40400000-0x60400000 overlaps reg[1] 0x40400000-0x60400000"
    assert overlap[-1].found == f"{19_999 - MAX_PER_RULE} more like them, not listed"
    ram = [f for f in found if f.rule == "dt.ext.ram"]
    assert len(ram) == MAX_PER_RULE + 1
    assert ram[0].found == "0x40400000-0x60400000 overlaps /memory@60000000 reg[0] 0x60000000-0x80000000"
    assert ram[-1].where == f"/hypervisor reg[{1 + MAX_PER_RULE}] ... /hypervisor reg[20000]"
    assert ram[-1].found == f"{20_000 - MAX_PER_RULE} more like them, not listed" and ram[-1].severity is Severity.ERROR
    assert per_rule_totals(found) == {"dt.ext.overlap": 19_999, "dt.ext.ram": 20_000}
    # with what Xen logged: the mismatch is one finding whose text counts the regions, not lists them
    mismatch = only(run(blob, "dom0", EXPECT), "dt.dom0.ext")
    assert mismatch.found.endswith(", ... (20000 regions)") and len(mismatch.found) < 400


def brute_force(regions: list[Region], occupied: list[Region]) -> tuple[set[int], int]:
    """(indexes of extended regions that overlap another one, extended regions over an occupied range)."""
    ext = range(1, len(regions))
    clustered = {i for i in ext for j in ext if i != j and regions[i].overlaps(regions[j])}
    return clustered, sum(any(regions[i].overlaps(o) for o in occupied) for i in ext)


@pytest.mark.parametrize("seed", range(4))
def test_sweep_finds_what_comparing_every_pair_finds(seed):
    import random

    rng = random.Random(seed)
    ram = [Region(0x60000000, 0x20000000)]  # the captured DT's only bank, /memory@60000000
    regions = [GRANT] + [
        Region(0x40000000 + rng.randrange(0, 0x100) * 0x1000000, rng.randrange(1, 8) * 0x1000000) for _ in range(60)
    ]
    found = validate_dtb(set_hyp_reg(*((r.start, r.size) for r in regions)), "dom0")
    clustered, over_ram = brute_force(regions, ram)
    totals = per_rule_totals([f for f in found if f.rule in ("dt.ext.overlap", "dt.ext.ram")])
    assert totals.get("dt.ext.ram", 0) == over_ram
    # every region that overlaps another is in a reported pair, and no pair is reported twice
    pairs = [(int(m.group(1)), int(m.group(2))) for f in validate_dtb_uncapped(regions)
             if (m := re.search(r"reg\[(\d+)\] .* overlaps reg\[(\d+)\]", f"{f.where} {f.found}"))]
    assert len(set(pairs)) == len(pairs)
    assert {i for pair in pairs if pair[1] for i in pair} == clustered
    assert {i for i, j in pairs if j == 0} == {i for i in range(1, len(regions)) if regions[i].overlaps(GRANT)}
    assert totals.get("dt.ext.overlap", 0) == len(pairs)


def validate_dtb_uncapped(regions: list[Region]) -> list[Finding]:
    return list(dt._check_ext_shape("/hypervisor", regions))


def test_range_map_gives_each_address_to_the_first_entry_that_holds_it():
    import random

    rng = random.Random(7)
    fixed = [(0x800, 0x50000800, 0x1000), (0, 0x90000000, 0x10000), (0x1000, 0x70000000, 0x100), (0x20000, 1, 0)]
    shuffled = [(rng.randrange(0, 0x100) * 0x100, rng.randrange(0, 1 << 40), rng.randrange(0, 0x40) * 0x100)
                for _ in range(40)]
    for table in (fixed, shuffled):
        ranges = dt._RangeMap(table)
        for addr in [*range(0, 0x11000, 0x80), 0x7FF, 0x17FF, 0x20000, 0x123456]:
            first = next((parent + addr - child for child, parent, size in table if child <= addr < child + size), None)
            assert ranges.translate(addr) == first, hex(addr)


def test_thousands_of_bus_windows_and_devices_are_translated():
    # /bus maps bus address i*0x1000 to CPU 0x50000000 + i*0x1000, one ranges entry per device
    n = 2_000

    def change(f: libfdt.Fdt) -> None:
        bus = f.add_subnode(0, "bus")
        f.setprop_u32(bus, "#address-cells", 1)
        f.setprop_u32(bus, "#size-cells", 1)
        f.setprop(bus, "ranges", b"".join(cells(i * 0x1000, 0, 0x50000000 + i * 0x1000, 0x1000) for i in range(n)))
        for i in reversed(range(n)):
            dev = f.add_subnode(f.path_offset("/bus"), f"dev@{i * 0x1000:x}")
            f.setprop(dev, "reg", cells(i * 0x1000 + 0x10, 0x10))

    found = run(edit(change, room=64 * n + 65536), "dom0", EXPECT)
    device, window = only(found, "dt.ext.device"), only(found, "dt.ext.bus-window")
    assert device.found == (f"{EXT[0]} overlaps /bus/dev@0 reg[0] 0x50000010-0x50000020, /bus/dev@1000 reg[0] "
                            f"0x50001010-0x50001020, /bus/dev@2000 reg[0] 0x50002010-0x50002020 (+{n - 3} more)")
    assert window.found.endswith(f"/bus ranges[2] 0x50002000-0x50003000 (+{n - 3} more)")
