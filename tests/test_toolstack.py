"""dom0 with Debian's toolstack (targets with the `toolstack` capability): dom0 drives a real disk, xenstore and xl
answer as Xen said, and a domU that `xl create` builds finds Xen where the bindings say and moves data through
its PV disk and network: grants and event channels that work, not only found. One boot per target; the probes
run once in the session's check (harness/toolstack.py) and each test judges its part."""

from __future__ import annotations

import pytest
from probing import assert_clean, probed

from harness import checks, toolstack
from harness.boot import BootSession
from harness.validate import dt

pytestmark = [pytest.mark.boot, pytest.mark.requires("toolstack")]


def exercised(session: BootSession) -> toolstack.ToolstackReport:
    result = probed(session, "dom0", session.spec.toolstack.domu.name)
    return result.toolstack


def judged(session: BootSession, *rules: str) -> list:
    """The boot's findings of the toolstack checks whose rule ids start with `rules`."""
    exercised(session)
    return [f for f in session.result.findings if f.rule.startswith(rules)]


def test_dom0_reads_known_bytes_from_its_virtio_disk_through_its_routed_spi(booted: BootSession) -> None:
    """Xen mapped the disk's MMIO into dom0 and routed its SPI: the known file's SHA256 matches, the row counts."""
    assert_clean(judged(booted, "disk."), "dom0's root disk", booted)
    assert exercised(booted).disk_irq["hwirq"] >= 32


def test_xenstore_and_xl_agree_with_what_xen_printed(booted: BootSession) -> None:
    assert_clean(judged(booted, "toolstack."), "xenstore, xl info and xl list", booted)


def test_the_domu_xl_built_boots_on_its_relayed_console(booted: BootSession) -> None:
    """The monitor reads the domU's console through `xl console` like any guest's: every milestone, in order."""
    domu = booted.spec.toolstack.domu
    reached = list(booted.result.milestones)
    steps = [f"{domu.source}:{step}" for step in ("xl-create", "kernel", "xen-found", "grant-table", "events",
                                                   "init", "shell")]
    missing = [s for s in steps if s not in reached]
    assert not missing, f"{domu.name}: no {missing} milestone; seen: {reached}"
    assert [reached.index(s) for s in steps] == sorted(reached.index(s) for s in steps), reached


def test_libxls_domu_tree_has_xens_guest_layout(booted: BootSession) -> None:
    """Built by libxl, not by the harness: grant region 0x38000000 + 16 MiB, <1 15 0xf08>, extended regions
    outside its memory; the kernel found Xen, its grant table, its events ABI; events row hwirq 31 counting up."""
    domu = booted.spec.toolstack.domu
    view = probed(booted, domu.name).views[domu.name]
    is_32bit = booted.spec.arch == "arm32"
    found = checks.check_guest(booted.result.claims, view, domu.domid, is_32bit=is_32bit, event_chip=domu.event_chip,
                               events_fire=True)
    assert_clean(toolstack.known_libxl_defects(found, is_32bit), f"{domu.name}'s witnesses", booted)
    node = dt.read_hypervisor_node(view.fdt)
    assert node.grant == dt.Region(0x38000000, 0x01000000), f"{domu.name} grant region: found {node.grant}"
    assert node.interrupts == (1, 15, 0xF08), f"{domu.name} interrupts: found {node.interrupts}"
    ram = dt.memory_regions(view.fdt)
    assert not [(e, m) for e in node.extended for m in ram if e.overlaps(m)], f"{node.extended} overlap {ram}"
    assert view.event_irq.hwirq == dt.GUEST_EVTCHN_PPI, view.event_irq


def test_pv_devices_connect_in_xenbus(booted: BootSession) -> None:
    assert_clean(judged(booted, "xenbus."), "xenbus states", booted)
    devices = " ".join(exercised(booted).domu_devices)
    assert "vbd-51712" in devices and "vif-0" in devices, f"the domU's xen bus: {devices}"


def test_pv_disk_moves_data_both_ways_through_grants_and_events(booted: BootSession) -> None:
    assert_clean(judged(booted, "pv.disk", "pv.events"), "the PV disk", booted)


def test_pv_network_answers_both_ways(booted: BootSession) -> None:
    assert_clean(judged(booted, "pv.net"), "the PV network", booted)
