"""Unit tests of harness.witnesses and harness.validate.dtbuild: what Xen's domain builder gave a guest.

The good inputs are real, captured from three boots of this harness (tests/unit/data/witnesses): Xen's
lines, the host DT the boot plan made, the tree each guest received, the lines of its kernel log the
witnesses read, its /proc/interrupts and the PROBE command's output (/proc/iomem, MemTotal, online
CPUs, /proc/cmdline). qemu-virt is arm64 on GICv3, qemu-a15 arm32 on GICv2, qemu-dom0less adds a
dom0less domU. Each bad input is one of those with one value changed (with libfdt for a tree), and
must fail the one rule that names it, saying expected vs found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import libfdt
import pytest

from harness import checks, witnesses
from harness.findings import Finding
from harness.validate import dt, dtbuild

DATA = Path(__file__).parent / "data" / "witnesses"
MiB = 1 << 20


@dataclass(frozen=True)
class Boot:
    """One captured guest of one captured boot."""

    target: str
    guest: str
    domid: int
    asked: witnesses.Asked

    def read(self, what: str) -> str:
        return (DATA / f"{self.target}-{self.guest}-{what}").read_text()

    @property
    def fdt(self) -> bytes:
        return (DATA / f"{self.target}-{self.guest}.dtb").read_bytes()

    @property
    def host(self) -> bytes | None:
        return (DATA / f"{self.target}-host.dtb").read_bytes() if self.domid == 0 else None

    @property
    def xen(self) -> list[str]:
        return (DATA / f"{self.target}-xen.log").read_text().splitlines()

    def judge(self, fdt: bytes | None = None, dmesg: str | None = None, probe: str | None = None,
              interrupts: str | None = None, xen: list[str] | None = None, asked: witnesses.Asked | None = None,
              host: bytes | None = None) -> list[Finding]:
        findings, _, _ = witnesses.judge(
            witnesses.parse_xen(self.xen if xen is None else xen), self.domid, self.guest, asked or self.asked,
            self.fdt if fdt is None else fdt, (self.read("dmesg.txt") if dmesg is None else dmesg).splitlines(),
            self.read("interrupts.txt") if interrupts is None else interrupts,
            (self.read("probe.txt") if probe is None else probe).splitlines(), host or self.host)
        for f in findings:  # every id is documented, and says where, what was expected and what was found
            assert f.rule in {**dtbuild.RULES, **witnesses.RULES}, f.rule
            assert f.where and f.expected and f.found
        return findings


VIRT = Boot("qemu-virt", "dom0", 0, witnesses.Asked(
    "console=hvc0 earlycon=xenboot nokaslr rdinit=/init panic=-1 guest=dom0", 512 * MiB, 2))
A15 = Boot("qemu-a15", "dom0", 0, witnesses.Asked(
    "console=hvc0 earlycon=xenboot rdinit=/init panic=-1 guest=dom0", 256 * MiB, 2, is_32bit=True))
DOMU = Boot("qemu-dom0less", "domU1", 1, witnesses.Asked(
    "console=ttyAMA0 nokaslr rdinit=/init panic=-1 guest=domU1", 256 * MiB, 1))
DOM0LESS_DOM0 = Boot("qemu-dom0less", "dom0", 0, VIRT.asked)


def edit(blob: bytes, change: Callable[[libfdt.Fdt], object]) -> bytes:
    fdt = libfdt.Fdt(blob)
    fdt.resize(len(blob) + 65536)
    change(fdt)
    fdt.pack()
    return bytes(fdt.as_bytearray())


def setprop(blob: bytes, path: str, name: str, value: bytes) -> bytes:
    return edit(blob, lambda f: f.setprop(f.path_offset(path), name, value))


def reg22(*pairs: tuple[int, int]) -> bytes:
    return b"".join(a.to_bytes(8, "big") + s.to_bytes(8, "big") for a, s in pairs)


def cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def only(findings: list[Finding], rule: str) -> Finding:
    hits = [f for f in findings if f.rule == rule]
    assert len(hits) == 1, f"wanted one {rule}, got {[str(f) for f in findings]}"
    return hits[0]


# --- the real boots pass ----------------------------------------------------------------------


@pytest.mark.parametrize("boot", [VIRT, A15, DOMU, DOM0LESS_DOM0], ids=lambda b: f"{b.target}-{b.guest}")
def test_real_boots_have_no_findings(boot: Boot):
    assert boot.judge() == []


def test_xens_claims_are_read_from_its_log():
    build = witnesses.parse_xen(DOMU.xen)
    assert build.domains[0].banks == {0: dt.Region(0x60000000, 512 * MiB)}
    assert build.domains[0].total_mb == 512
    assert build.domains[0].initrd == dt.Region(0x68200000, 0x682F17F0 - 0x68200000)
    assert build.domains[1].banks == {0: dt.Region(0x40000000, 256 * MiB)}
    assert build.domains[1].vcpus == 1
    assert (build.pcpus, build.gic, build.gic_dist, build.gic_redist) == (2, "3", 0x8000000, (0x80A0000,))
    assert (build.timer_phys, build.timer_virt) == (30, 27)
    a15 = witnesses.parse_xen(A15.xen)
    assert (a15.gic, a15.gic_dist, a15.gic_cpu) == ("2", 0x8000000, 0x8010000)


def test_the_report_says_what_each_witness_saw():
    _, witness, diff = witnesses.judge(witnesses.parse_xen(VIRT.xen), 0, "dom0", VIRT.asked, VIRT.fdt,
                                       VIRT.read("dmesg.txt").splitlines(), VIRT.read("interrupts.txt"),
                                       VIRT.read("probe.txt").splitlines(), VIRT.host)
    lines = "\n".join(witness.report())
    assert "dom0 memory                        Xen: 0x60000000-0x80000000   DT: (the same)" in lines
    assert "kernel: 2 brought up, 2 online" in lines
    assert "kernel: (virt) hwirq 27" in lines
    assert witness.to_dict()["kernel"]["memtotal_kb"] == 491260
    assert diff is not None and "UNEXPLAINED" not in diff and "- /pl011@9000000" in diff


# --- memory -----------------------------------------------------------------------------------


def test_a_bank_2mib_short_in_the_tree_fails_against_xens_bank_lines():
    short = setprop(VIRT.fdt, "/memory@60000000", "reg", reg22((0x60000000, 510 * MiB)))
    found = only(VIRT.judge(fdt=short), "dt.build.memory")
    assert found.expected == "0x60000000-0x80000000 (Xen's BANK lines)"
    assert found.found == "0x60000000-0x7fe00000"
    assert "2 MiB less" in found.note


def test_a_bank_2mib_short_in_the_kernels_view_fails_against_the_tree():
    dmesg = VIRT.read("dmesg.txt").replace("/524288K available", "/522240K available")
    assert only(VIRT.judge(dmesg=dmesg), "kernel.memory.total").found == "522240K"
    probe = VIRT.read("probe.txt").replace("60000000-7fffffff : System RAM", "60000000-7fdfffff : System RAM")
    found = only(VIRT.judge(probe=probe), "kernel.memory.iomem")
    assert found.expected.startswith("System RAM 0x60000000-0x80000000") and "0x60000000-0x7fe00000" in found.found


def test_memtotal_above_the_banks_fails():
    probe = VIRT.read("probe.txt").replace("MemTotal:         491260 kB", "MemTotal:         526336 kB")
    assert only(VIRT.judge(probe=probe), "kernel.memory.memtotal").found == "526336 kB"


def test_xens_banks_short_of_dom0_mem_fail():
    xen = [line.replace("0x00000060000000-0x00000080000000 (512MB)", "0x00000060000000-0x0000007fe00000 (510MB)")
           for line in VIRT.xen]
    found = [f for f in VIRT.judge(xen=xen) if f.rule == "xen.memory.total"]
    assert [f.expected for f in found] == ["BANK lines adding up to 512 MB (Xen's 'totalling')",
                                           "512 MiB (the memory asked for)"]


def test_a_bank_over_xens_own_image_fails():
    ring = (DATA / "qemu-virt-xen-ring.log").read_text().splitlines()
    assert witnesses.parse_xen(ring).xen_image == dt.Region(0x40200000, 0x403360C8 - 0x40200000)
    assert VIRT.judge(xen=ring + VIRT.xen) == []  # the ring repeats Xen's lines: the same claims again
    over = setprop(VIRT.fdt, "/memory@60000000", "reg", reg22((0x60000000, 512 * MiB), (0x40300000, 1 * MiB)))
    found = [f for f in VIRT.judge(fdt=over, xen=ring + VIRT.xen) if f.rule == "dt.memory.overlap"]
    assert [(f.expected, f.found) for f in found] == [
        ("no bank over Xen's own image 0x40200000-0x403360c8", "bank 0x40300000-0x40400000")]


def test_a_bank_over_the_grant_table_fails():
    over = setprop(VIRT.fdt, "/memory@60000000", "reg", reg22((0x60000000, 512 * MiB), (0x40000000, 4 * MiB)))
    found = only(dtbuild.check_build(over), "dt.memory.overlap")
    assert "grant table region 0x40200000-0x40240000" in found.expected and found.found == "bank 0x40000000-0x40400000"


# --- vCPUs ------------------------------------------------------------------------------------


def test_a_missing_cpu_node_fails_against_the_vcpus_xen_gave():
    dropped = edit(VIRT.fdt, lambda f: f.del_node(f.path_offset("/cpus/cpu@1")))
    findings = VIRT.judge(fdt=dropped)
    found = only(findings, "dt.build.cpus")
    assert (found.expected, found.found) == ("2 cpu nodes (one per vCPU Xen gave)", "1: cpu@0")
    # and the kernel, which brought up two, disagrees with the tree it was given
    assert {f.where: f.found for f in findings if f.rule == "kernel.cpus"} == {
        "dom0 kernel log 'smp: Brought up'": "2", "dom0 /sys/devices/system/cpu/online": "2"}


def test_dom0_max_vcpus_decides_the_expected_count():
    asked = replace(VIRT.asked, vcpus=checks.dom0_vcpus("dom0_mem=512M dom0_max_vcpus=1", 2))
    assert only(VIRT.judge(asked=asked), "dt.build.cpus").expected == "1 cpu nodes (one per vCPU Xen gave)"


def test_a_domu_built_with_other_cpus_than_asked_fails():
    asked = replace(DOMU.asked, vcpus=2)
    found = [f for f in DOMU.judge(asked=asked) if f.rule in ("xen.vcpus", "dt.build.cpus")]
    assert [f.found for f in found] == ["cpus=1 (Xen's LOADING DOMU line)", "1: cpu@0"]


def test_a_64bit_cpu_without_psci_fails_and_a_32bit_one_passes():
    bare = edit(VIRT.fdt, lambda f: f.delprop(f.path_offset("/cpus/cpu@0"), "enable-method"))
    assert only(VIRT.judge(fdt=bare), "dt.cpus.enable-method").found == "absent"
    assert A15.judge() == []  # Xen writes no enable-method for a 32-bit guest


def test_psci_by_smc_fails():
    smc = setprop(VIRT.fdt, "/psci", "method", b"smc\0")
    assert only(VIRT.judge(fdt=smc), "dt.cpus.enable-method").found == "'smc'"


# --- GIC and timer ----------------------------------------------------------------------------


def test_a_moved_gicv3_distributor_fails():
    moved = setprop(VIRT.fdt, "/interrupt-controller", "reg",
                    reg22((0x8010000, 0x10000), (0x80A0000, 0xF60000)))
    found = only(VIRT.judge(fdt=moved), "dt.build.gic")
    assert found.expected == "the distributor at 0x8000000 (Xen's gic_dist_addr)"
    assert found.found == "0x8010000-0x8020000"


def test_a_moved_gicv2_cpu_interface_fails():
    moved = setprop(A15.fdt, "/interrupt-controller", "reg", reg22((0x8000000, 0x10000), (0x8040000, 0x10000)))
    found = only(A15.judge(fdt=moved), "dt.build.gic")
    assert "CPU interface at 0x8010000" in found.expected and found.found == "0x8040000-0x8050000"


def test_a_gic_of_another_kind_than_the_hosts_fails():
    other = setprop(VIRT.fdt, "/interrupt-controller", "compatible", b"arm,gic-400\0")
    assert only(VIRT.judge(fdt=other), "dt.build.gic").expected == "arm,gic-v3 (the host's GIC)"


def test_the_kernels_gicd_elsewhere_fails():
    probe = VIRT.read("probe.txt").replace("08000000-0800ffff : GICD", "08010000-0801ffff : GICD")
    assert only(VIRT.judge(probe=probe), "kernel.gic").found == "0x8010000-0x8020000"


def test_a_timer_on_another_virtual_ppi_fails():
    moved = setprop(VIRT.fdt, "/timer", "interrupts", cells(1, 13, 0xF08, 1, 14, 0xF08, 1, 12, 0xF08))
    findings = VIRT.judge(fdt=moved)
    found = only(findings, "dt.build.timer")
    assert (found.expected, found.found) == (
        "the virtual timer at INTID 27 (Xen's 'Generic Timer IRQ' line)", "INTID 28")
    assert only(findings, "kernel.timer").expected == "hwirq 28 (the tree's virtual timer PPI)"


def test_a_kernel_on_the_physical_timer_fails():
    dmesg = VIRT.read("dmesg.txt").replace("(virt).", "(phys).")
    assert only(VIRT.judge(dmesg=dmesg), "kernel.timer").found == "(phys)"


# --- /chosen ----------------------------------------------------------------------------------


def test_bootargs_that_differ_from_the_plans_fail():
    other = setprop(VIRT.fdt, "/chosen", "bootargs", b"console=hvc0 rdinit=/init\0")
    findings = VIRT.judge(fdt=other)
    found = only(findings, "dt.build.bootargs")
    assert found.expected == repr(VIRT.asked.cmdline) + " (the boot plan's)"
    assert found.found == "'console=hvc0 rdinit=/init'"
    assert only(findings, "kernel.cmdline").expected == "'console=hvc0 rdinit=/init' (the tree's bootargs)"


def test_an_initrd_range_other_than_xens_fails():
    other = setprop(VIRT.fdt, "/chosen", "linux,initrd-end", (0x682F0000).to_bytes(8, "big"))
    findings = VIRT.judge(fdt=other)
    found = only(findings, "dt.build.initrd")
    assert found.expected == "0x68200000-0x682f17f0 (where Xen's log says it loaded the initrd)"
    assert found.found == "0x68200000-0x682f0000"
    assert only(findings, "kernel.initrd").found == "964K"  # the kernel freed Xen's range, not the tree's


def test_an_initrd_the_kernel_did_not_unpack_fails():
    dmesg = "\n".join(line for line in VIRT.read("dmesg.txt").splitlines() if "unpack" not in line)
    assert only(VIRT.judge(dmesg=dmesg), "kernel.initrd").found == "no such line"


def test_half_an_initrd_range_fails():
    half = edit(VIRT.fdt, lambda f: f.delprop(f.path_offset("/chosen"), "linux,initrd-end"))
    assert "end absent" in only(dtbuild.check_build(half), "dt.chosen.initrd").found


# --- dom0's tree vs the host's ----------------------------------------------------------------


def _copy_uart(fdt: libfdt.Fdt) -> None:
    """The host's UART node, copied whole into dom0's tree (as Xen would if it forgot it was its console)."""
    host = libfdt.Fdt(VIRT.host)
    source, node = host.path_offset("/pl011@9000000"), fdt.add_subnode(0, "pl011@9000000")
    offset = host.first_property_offset(source)
    while offset >= 0:
        prop = host.get_property_by_offset(offset)
        fdt.setprop(node, prop.name, bytes(prop))
        offset = host.next_property_offset(offset, (libfdt.NOTFOUND,))


def test_xens_uart_left_visible_fails():
    visible = edit(VIRT.fdt, _copy_uart)
    findings, text = dtbuild.diff_host(VIRT.host, visible)
    found = only(findings, "dt.host.uart")
    assert (found.where, found.found) == ("/pl011@9000000", "present in dom0's tree")
    assert "- /pl011@9000000" not in text


def test_a_multiboot_module_left_visible_fails():
    def keep_module(fdt: libfdt.Fdt) -> None:
        node = fdt.add_subnode(fdt.path_offset("/chosen"), "module@40400000")
        fdt.setprop(node, "compatible", b"multiboot,kernel\0multiboot,module\0")

    findings, _ = dtbuild.diff_host(VIRT.host, edit(VIRT.fdt, keep_module))
    assert only(findings, "dt.host.multiboot").where == "/chosen/module@40400000"


def test_silent_changes_to_dom0s_tree_fail():
    changed = setprop(VIRT.fdt, "/pl031@9010000", "reg", reg22((0x9011000, 0x1000)))
    changed = edit(changed, lambda f: f.del_node(f.path_offset("/pl061@9030000")))
    changed = edit(changed, lambda f: f.add_subnode(0, "surprise"))
    findings, text = dtbuild.diff_host(VIRT.host, changed)
    assert {(f.rule, f.where) for f in findings} == {
        ("dt.host.changed", "/pl031@9010000 reg"), ("dt.host.removed", "/pl061@9030000"),
        ("dt.host.added", "/surprise")}
    assert "~ /pl031@9010000 reg" in text and "UNEXPLAINED" in text


def test_a_kernel_that_claimed_xens_uart_fails():
    probe = VIRT.read("probe.txt").replace("@meminfo", "09000000-09000fff : 9000000.pl011 pl011@9000000\n@meminfo")
    found = only(VIRT.judge(probe=probe), "kernel.uart")
    assert (found.expected, found.found) == ("nothing at Xen's console UART 0x9000000-0x9001000",
                                             "0x9000000-0x9001000: 9000000.pl011 pl011@9000000")


def test_the_uart_is_found_by_alias_and_by_stdout_path():
    assert dtbuild.console_uart(VIRT.host) == "/pl011@9000000"  # dtuart= in the host's xen,xen-bootargs
    aliased = edit(VIRT.host, lambda f: f.setprop_str(f.add_subnode(0, "aliases"), "serial0", "/pl011@9000000"))
    assert dtbuild.console_uart(aliased, "console=dtuart dtuart=serial0:115200n8") == "/pl011@9000000"
    assert dtbuild.console_uart(VIRT.host, "console=dtuart") == "/pl011@9000000"  # stdout-path


# --- pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [("512M", 512 * MiB), ("1G", 1 << 30), ("262144", 256 * MiB),
                                            ("512M,max:1G", 512 * MiB), ("min:1G", None)])
def test_dom0_mem_in_xens_units(text: str, size: int | None):
    assert witnesses.dom0_mem(f"bootscrub=0 dom0_mem={text}") == size


# --- an ACPI dom0 -----------------------------------------------------------------------------

ACPI = Boot("qemu-virt-acpi", "dom0", 0, VIRT.asked)
ACPI_UART = witnesses.spcr_uart((DATA / "qemu-virt-acpi-host-SPCR").read_bytes())


def judge_acpi(probe: str | None = None, fdt: bytes | None = None, dmesg: str | None = None,
               asked: witnesses.Asked | None = None) -> list[Finding]:
    findings, witness = witnesses.judge_acpi(
        witnesses.parse_xen(ACPI.xen), "dom0", asked or ACPI.asked, fdt or ACPI.fdt,
        (dmesg or ACPI.read("dmesg.txt")).splitlines(), ACPI.read("interrupts.txt"),
        (probe or ACPI.read("probe.txt")).splitlines(), ACPI_UART)
    assert witness.kernel.memory_kb and witness.xen.banks  # both sides spoke
    for f in findings:
        assert f.rule in {**dtbuild.RULES, **witnesses.RULES}, f.rule
    return findings


def test_real_acpi_dom0_has_no_findings():
    assert dt.Region(0x9000000, 0x1000) == ACPI_UART
    assert judge_acpi() == []


def test_acpi_dom0_ram_short_of_xens_bank_fails():
    probe = ACPI.read("probe.txt").replace("60000000-7fffffff : System RAM", "60000000-7fdfffff : System RAM")
    found = only(judge_acpi(probe=probe), "kernel.memory.iomem")
    assert found.expected == "System RAM over 0x60000000-0x80000000 (Xen's BANK line)"


def test_acpi_dom0_with_a_vcpu_missing_fails():
    asked = replace(ACPI.asked, vcpus=3)
    assert {f.where for f in judge_acpi(asked=asked) if f.rule == "kernel.cpus"} == {
        "dom0 kernel log 'smp: Brought up'", "dom0 /sys/devices/system/cpu/online"}


def test_acpi_dom0_that_claimed_xens_uart_fails():
    probe = ACPI.read("probe.txt").replace("@meminfo", "09000000-09000fff : ARMH0011:00\n@meminfo")
    assert only(judge_acpi(probe=probe), "kernel.uart").found == "0x9000000-0x9001000: ARMH0011:00"


def test_acpi_dom0_bootargs_other_than_the_plans_fail():
    other = setprop(ACPI.fdt, "/chosen", "bootargs", b"console=hvc0\0")
    assert only(judge_acpi(fdt=other), "dt.build.bootargs").found == "'console=hvc0'"


EFI_MAP = (DATA / "qemu-virt-acpi-dom0-efi-mmap.bin").read_bytes()


def efi_findings(raw: bytes | None, probe: str | None = None) -> tuple[list[Finding], witnesses.Witness]:
    findings, witness = witnesses.judge_acpi(
        witnesses.parse_xen(ACPI.xen), "dom0", ACPI.asked, ACPI.fdt, ACPI.read("dmesg.txt").splitlines(),
        ACPI.read("interrupts.txt"), (probe or ACPI.read("probe.txt")).splitlines(), ACPI_UART)
    where = dtbuild.uefi_memory_map(ACPI.fdt)
    return findings + witnesses.check_efi_memory(witnesses.parse_xen(ACPI.xen), where, raw, witness, "dom0"), witness


def descriptor(kind: int, start: int, pages: int) -> bytes:
    return (kind.to_bytes(4, "little") + bytes(4) + start.to_bytes(8, "little") + bytes(8)
            + pages.to_bytes(8, "little") + bytes(8))


def test_the_real_efi_memory_map_is_xens_banks_and_acpi_tables():
    assert dtbuild.uefi_memory_map(ACPI.fdt) == (0xBC2F1368, 0x78, 0x28)
    findings, witness = efi_findings(EFI_MAP)
    assert findings == []
    assert witness.efi_memory == ["conventional 0x60000000-0x80000000", "ACPI reclaim 0xbc430000-0xbc440000",
                                  "ACPI reclaim 0xbc2f1000-0xbc2f2000"]


def test_an_efi_map_2mib_short_of_xens_bank_fails():
    short = descriptor(7, 0x60000000, (510 * MiB) // 4096) + EFI_MAP[40:]
    found = [f for f in efi_findings(short)[0] if f.rule == "efi.memory"]
    assert [(f.expected, f.found) for f in found] == [
        ("conventional memory 0x60000000-0x80000000 (Xen's BANK lines)", "0x60000000-0x7fe00000")]
    assert {f.rule for f in efi_findings(short)[0]} == {"efi.memory", "kernel.memory.iomem"}  # the kernel saw more


def test_an_efi_map_giving_more_than_ram_and_tables_fails():
    extra = EFI_MAP + descriptor(11, 0x9000000, 1)  # Xen's UART as MMIO
    assert only(efi_findings(extra)[0], "efi.memory").found == "MMIO 0x9000000-0x9001000"


def test_an_unreadable_efi_map_fails():
    assert only(efi_findings(None)[0], "efi.memory").found == "0xbc2f1368 not mapped by /proc/kcore"


def test_a_dom0less_domains_node_may_go_from_xen_4_20_on():
    """Xen 4.20 hides /chosen/domU1 (compatible "xen,domain") from dom0; 4.17 leaves it: the same dom0 tree is
    right on one release and a silent change on the other."""
    def add_domain(fdt: libfdt.Fdt) -> None:
        node = fdt.add_subnode(fdt.path_offset("/chosen"), "domU1")
        fdt.setprop(node, "compatible", b"xen,domain\0")

    host = edit(VIRT.host, add_domain)
    findings, text = dtbuild.diff_host(host, VIRT.fdt, xen_version="4.20")
    assert not [f for f in findings if f.rule == "dt.host.removed"], findings
    assert "Xen 4.20 hides it from dom0" in text
    findings, _ = dtbuild.diff_host(host, VIRT.fdt, xen_version="4.17")
    found = only(findings, "dt.host.removed")
    assert (found.where, found.expected, found.found) == ("/chosen/domU1", "present, as in the host's tree",
                                                          "absent from dom0's")
