"""Each boot check passes on a real healthy boot and fails, saying expected vs found, on a bad input."""

from __future__ import annotations

import dataclasses
import struct

import libfdt
import pytest

from harness import checks, xenlog
from harness.findings import failures
from harness.guest import EventIrq, GuestView, parse_interrupts
from harness.validate.dt import Region

INTERRUPTS = """           CPU0       CPU1
  0:          0          0   xen-dyn     Edge    -event     xenbus
 11:        870        815     GICv3  27 Level     arch_timer
 12:          6          1     GICv3  16 Level     events
 14:         59          0   xen-dyn     Edge    -virq      hvc_console
IPI0:        55         30       Rescheduling interrupts
Err:          0"""


def healthy_view(dtb: bytes, dmesg: list[str]) -> GuestView:
    fdt = libfdt.Fdt(dtb)
    node = fdt.path_offset("/hypervisor")
    return GuestView(
        guest="dom0",
        hypervisor_type="xen",
        hypervisor_version="4.17",
        dmesg=dmesg,
        interrupts=INTERRUPTS,
        event_irq=EventIrq(irq=12, hwirq=16, chip="GICv3", trigger="level", counts=[6, 1]),
        event_count_later=61,
        fdt=dtb,
        live_tree=True,
        procfs_hypervisor={p: bytes(fdt.getprop(node, p)) for p in ("compatible", "reg", "interrupts")},
    )


def with_prop(dtb: bytes, prop: str, value: bytes) -> bytes:
    fdt = libfdt.Fdt(bytearray(dtb))
    fdt.resize(fdt.totalsize() + 1024)
    fdt.setprop(fdt.path_offset("/hypervisor"), prop, value)
    return bytes(fdt.as_bytearray())


def rules(findings) -> set[str]:
    return {f.rule for f in failures(findings)}


def only(findings, rule):
    matching = [f for f in failures(findings) if f.rule == rule]
    assert matching, f"no {rule} finding among {[str(f) for f in findings]}"
    return matching[0]


@pytest.fixture
def view(dom0_dtb, dom0_dmesg) -> GuestView:
    return healthy_view(dom0_dtb, dom0_dmesg)


def test_healthy_boot_has_no_findings(healthy_claims, view):
    assert failures(checks.check_xen_claims(healthy_claims)) == []
    assert failures(checks.check_guest(healthy_claims, view, 0, event_chip="GICv3")) == []


def test_xen_claims_parsed_from_real_console(healthy_claims):
    assert healthy_claims.version == "4.17"
    assert healthy_claims.release == "4.17.7"
    assert healthy_claims.grant == Region(0x40200000, 0x40000)
    assert healthy_claims.event_ppi == 16
    assert healthy_claims.extended[0] == [Region(0x40400000, 0x1FC00000), Region(0x80000000, 0x40000000)]


def test_xen_claims_missing_lines_are_findings():
    findings = checks.check_xen_claims(xenlog.parse(["Xen version 4.17.7 (Debian)"]))
    assert rules(findings) == {"xen.grant", "xen.event-ppi", "xen.extended"}
    assert only(findings, "xen.grant").found == "none"


def test_xen_claims_32bit_dom0_needs_no_extended_regions():
    claims = xenlog.parse(["Xen version 4.17.7", "Grant table range: 0x00000040200000-0x00000040240000",
                           "Allocating PPI 16 for event channel interrupt"])
    assert failures(checks.check_xen_claims(claims, is_32bit=True)) == []


def test_xen_claims_ppi_outside_ppi_range():
    claims = xenlog.parse(["Xen version 4.17.7", "Grant table range: 0x40200000-0x40240000",
                           "Allocating PPI 40 for event channel interrupt", "d0: extended region 0: 0x1->0x2"])
    finding = only(checks.check_xen_claims(claims), "xen.event-ppi")
    assert (finding.expected, finding.found) == ("a PPI INTID in 16..31", "40")


def test_wrong_ppi_is_caught_by_dt_and_irq_checks(healthy_claims, view):
    claims = dataclasses.replace(healthy_claims, event_ppi=17)
    dt_finding = only(checks.check_device_tree(view, checks.expectation(claims)), "dt.dom0.irq")
    assert "17" in dt_finding.expected and "16" in dt_finding.found
    irq_finding = only(checks.check_event_irq(view, 17), "irq.events.hwirq")
    assert irq_finding.expected.startswith("17") and irq_finding.found == "16"


def test_shifted_grant_region_is_caught(healthy_claims, view):
    claims = dataclasses.replace(healthy_claims, grant=Region(0x40201000, 0x40000))
    finding = only(checks.check_device_tree(view, checks.expectation(claims)), "dt.dom0.grant")
    assert "0x40201000" in finding.expected and "0x40200000" in finding.found


def test_reordered_compatible_is_caught(healthy_claims, view):
    bad = dataclasses.replace(view, fdt=with_prop(view.fdt, "compatible", b"xen,xen\0xen,xen-4.17\0"))
    findings = checks.check_device_tree(bad, checks.expectation(healthy_claims))
    assert "dt.compatible.order" in rules(findings)
    # the live tree (procfs) still has the old order: the cross-witness check names that too
    assert "dt.procfs.match" in rules(findings)


def test_node_with_unit_address_is_caught(healthy_claims, view):
    fdt = libfdt.Fdt(bytearray(view.fdt))
    fdt.resize(fdt.totalsize() + 64)
    fdt.set_name(fdt.path_offset("/hypervisor"), "hypervisor@40200000")
    bad = dataclasses.replace(view, fdt=bytes(fdt.as_bytearray()))
    findings = checks.check_device_tree(bad, checks.expectation(healthy_claims))
    finding = only(findings, "dt.node.unit-address")
    assert "hypervisor@40200000" in finding.found


def test_missing_fdt_is_a_finding(healthy_claims, view):
    finding = only(checks.check_device_tree(dataclasses.replace(view, fdt=None), checks.expectation(healthy_claims)),
                   "dt.missing")
    assert finding.found == "no /sys/firmware/fdt"


def test_procfs_differs_from_flat_tree(healthy_claims, view):
    live = dict(view.procfs_hypervisor, interrupts=struct.pack(">3I", 1, 1, 0xF08))
    finding = only(checks.check_device_tree(dataclasses.replace(view, procfs_hypervisor=live),
                                            checks.expectation(healthy_claims)), "dt.procfs.match")
    assert finding.expected == "00000001 00000000 00000f08"
    assert finding.found == "00000001 00000001 00000f08"


def test_kernel_log_without_xen_lines(view):
    bare = [line for line in view.dmesg if "Xen" not in line and "xen" not in line and "Grant" not in line]
    findings = checks.check_kernel_log(dataclasses.replace(view, dmesg=bare), "4.17")
    assert rules(findings) == {"kernel.xen-found", "kernel.grant-layout", "kernel.grant-init", "kernel.events-abi"}


def test_kernel_log_version_mismatch(view):
    finding = only(checks.check_kernel_log(view, "4.18"), "kernel.xen-found")
    assert (finding.expected, finding.found) == ("Xen 4.18 (the booted Xen)", "Xen 4.17")


def test_kernel_log_discovery_error(view):
    log = [*view.dmesg, "[    0.1] xen:grant_table: Xen grant table region is not found"]
    finding = only(checks.check_kernel_log(dataclasses.replace(view, dmesg=log), "4.17"), "kernel.xen-error")
    assert "region is not found" in finding.found


def test_event_irq_row_missing(view):
    finding = only(checks.check_event_irq(dataclasses.replace(view, event_irq=None), 16), "irq.events.row")
    assert finding.found == "none"


def test_event_irq_not_firing(view):
    finding = only(checks.check_event_irq(dataclasses.replace(view, event_count_later=7), 16), "irq.events.count")
    assert (finding.expected, finding.found) == ("a count above 7 after the probes ran", "7")


def test_event_irq_edge_triggered(view):
    irq = dataclasses.replace(view.event_irq, trigger="edge")
    finding = only(checks.check_event_irq(dataclasses.replace(view, event_irq=irq), 16), "irq.events.trigger")
    assert finding.found == "edge"


def test_sys_hypervisor(view):
    findings = checks.check_hypervisor_sysfs(dataclasses.replace(view, hypervisor_type="", hypervisor_version="4.16"),
                                             "4.17")
    assert rules(findings) == {"sys.hypervisor.type", "sys.hypervisor.version"}
    assert only(findings, "sys.hypervisor.type").found == "absent"


def test_parse_interrupts_finds_events_row_by_name():
    rows = parse_interrupts(INTERRUPTS)
    assert rows["events"][0] == 12 and rows["events"][1] == [6, 1]
    assert rows["events"][2][:2] == ["GICv3", "16"]
    assert "Rescheduling" not in str(rows)  # IPI rows have no Linux IRQ number


def test_memory_regions_agree_with_the_boot_plans_reading(dom0_dtb):
    from captured import DATA

    from harness.plan.dtb import memory_bank
    from harness.validate.dt import memory_regions

    host = (DATA / "qemu-virt-gicv3-host.dtb").read_bytes()
    assert memory_regions(host) == [Region(*memory_bank(host))] == [Region(0x40000000, 0x80000000)]
    assert memory_regions(dom0_dtb) == [Region(0x60000000, 0x20000000)]  # dom0_mem=512M, 1:1 mapped


def test_xen_booted_on_other_firmware_tables_than_the_target_gives(healthy_claims):
    acpi_claims = dataclasses.replace(healthy_claims, boot="ACPI")
    finding = only(checks.check_xen_claims(acpi_claims), "xen.boot")
    assert (finding.expected, finding.found) == ("Device Tree", "ACPI")
    finding = only(checks.check_xen_claims(healthy_claims, acpi=True), "xen.boot")
    assert (finding.expected, finding.found) == ("ACPI", "Device Tree")
    # an ACPI dom0 gets no extended regions from Xen 4.17: none expected
    no_ext = dataclasses.replace(acpi_claims, extended={})
    assert failures(checks.check_xen_claims(no_ext, acpi=True)) == []


def test_xen_claims_acpi_detected_from_its_madt_lines():
    gicc = "ACPI: GICC (acpi_id[0x0000] address[0x0] MPIDR[0x0] enabled)"
    claims = xenlog.parse(["Xen version 4.17.5 (Debian)", gicc])
    assert claims.boot == "ACPI"
    assert xenlog.parse(["Xen version 4.17.5"]).boot is None


def test_event_irq_on_another_chip(view):
    finding = only(checks.check_event_irq(view, 16, "GIC-0"), "irq.events.chip")
    assert (finding.expected, finding.found) == ("GIC-0 (the target's interrupt controller)", "GICv3")
    assert failures(checks.check_event_irq(view, 16, "GICv3")) == []


@pytest.mark.parametrize(("xen_cmdline", "cpus", "vcpus"), [
    ("dom0_mem=512M", 2, 2),
    ("dom0_mem=512M dom0_max_vcpus=1", 2, 1),
    ("dom0_max_vcpus=1-3", 4, 3),
    ("dom0_max_vcpus=4 dom0_max_vcpus=1", 4, 1),
    ("", 4, 4),
])
def test_dom0_vcpus(xen_cmdline, cpus, vcpus):
    assert checks.dom0_vcpus(xen_cmdline, cpus) == vcpus


@pytest.fixture
def domu_view(dom0_dmesg) -> GuestView:
    from captured import DATA

    tree = (DATA / "qemu-dom0less-domU1.dtb").read_bytes()
    return GuestView(guest="domU1", hypervisor_type="xen", hypervisor_version="4.17", dmesg=dom0_dmesg,
                     event_irq=EventIrq(13, 31, "GICv3", "level", [1]), event_count_later=1, fdt=tree)


DOMU_CLAIMS = ["Xen version 4.17.7 (Debian)", "d1: extended region 0: 0x50000000->0x100000000",
               "d1: extended region 1: 0x200000000->0x10000000000"]


def test_a_real_dom0less_domu_passes(domu_view):
    claims = xenlog.parse(DOMU_CLAIMS)
    assert failures(checks.check_guest(claims, domu_view, 1, event_chip="GICv3")) == []


def test_domu_checks_fail_on_bad_inputs(domu_view):
    claims = xenlog.parse(DOMU_CLAIMS)
    reg = struct.pack(">4Q", 0x39000000, 0x01000000, 0x50000000, 0xB0000000)
    moved = dataclasses.replace(domu_view, fdt=with_prop(domu_view.fdt, "reg", reg))
    assert "dt.domU.grant" in rules(checks.check_guest(claims, moved, 1))
    wrong_irq = dataclasses.replace(domu_view, event_irq=dataclasses.replace(domu_view.event_irq, hwirq=16))
    finding = only(checks.check_guest(claims, wrong_irq, 1), "irq.events.hwirq")
    assert finding.expected.startswith("31")
    other_regions = xenlog.parse([*DOMU_CLAIMS[:1], "d1: extended region 0: 0x60000000->0x100000000"])
    assert "dt.domU.ext" in rules(checks.check_guest(other_regions, domu_view, 1))
