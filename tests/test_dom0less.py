"""dom0less domUs that Xen starts itself from /chosen: each finds Xen's grant table and event IRQ
where Xen's public header puts them for guests (GUEST_GNTTAB_BASE, GUEST_EVTCHN_PPI), with and
without a dom0 beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from probing import assert_clean, probed

from harness import checks
from harness.boot import BootSession
from harness.errors import UsageError
from harness.monitor import BootFailure
from harness.targets import TargetSpec
from harness.tweaks import Tweaks
from harness.validate import dt

pytestmark = [pytest.mark.boot, pytest.mark.requires("dom0less")]


def probed_domus(session: BootSession):
    result = probed(session, *(d.name for d in session.spec.domus))
    return [(d, result.views[d.name]) for d in session.spec.domus]


def test_domus_boot_to_their_shells(booted: BootSession) -> None:
    """Xen loads each domU, whose kernel finds Xen, initializes its grant table and events, and gives a shell."""
    reached = booted.result.milestones
    assert "domU-loading" in reached, f"Xen never said it loads a domU; seen: {list(reached)}"
    for domu in booted.spec.domus:
        for step in ("kernel", "xen-found", "grant-table", "events", "init", "shell"):
            assert f"{domu.source}:{step}" in reached, f"{domu.name}: no {step} milestone; seen: {list(reached)}"


def test_domu_hypervisor_node_is_xens_guest_layout(booted: BootSession) -> None:
    """Grant region exactly 0x38000000 + 16 MiB, interrupts exactly <1 15 0xf08>, extended regions as Xen printed."""
    for domu, view in probed_domus(booted):
        expect = checks.expectation(booted.result.claims, domu.domid, booted.spec.arch == "arm32")
        assert_clean(checks.check_device_tree(view, expect, "domU"), f"{domu.name}'s device tree", booted)
        node = dt.read_hypervisor_node(view.fdt)
        assert node.grant == dt.Region(0x38000000, 0x01000000), f"{domu.name} grant region: found {node.grant}"
        assert node.interrupts == (1, 15, 0xF08), f"{domu.name} interrupts: found {node.interrupts}"


def test_domu_extended_regions_respect_its_memory(booted: BootSession) -> None:
    """Xen printed the domU's extended regions, the node has exactly those, and none touches the domU's RAM."""
    for domu, view in probed_domus(booted):
        printed = booted.result.claims.extended.get(domu.domid)
        assert printed, f"Xen printed no extended regions for d{domu.domid}"
        node = dt.read_hypervisor_node(view.fdt)
        assert list(node.extended) == printed, f"{domu.name}: expected {printed}, found {list(node.extended)}"
        ram = dt.memory_regions(view.fdt)
        assert ram, f"{domu.name} has no /memory node"
        clashes = [(e, m) for e in node.extended for m in ram if e.overlaps(m)]
        assert not clashes, f"{domu.name}: extended regions overlap its RAM: {clashes}"


def test_domu_kernel_found_xen(booted: BootSession) -> None:
    for domu, view in probed_domus(booted):
        version = booted.result.claims.version
        assert_clean(checks.check_kernel_log(view, version), f"{domu.name}'s kernel log", booted)
        assert_clean(checks.check_hypervisor_sysfs(view, version), f"{domu.name} /sys/hypervisor", booted)


def test_domu_event_irq_is_ppi_31(booted: BootSession) -> None:
    """The domU's `events` row is INTID 31 (GUEST_EVTCHN_PPI), level-triggered, on the target's GIC."""
    for domu, view in probed_domus(booted):
        assert_clean(checks.check_event_irq(view, dt.GUEST_EVTCHN_PPI, domu.event_chip, must_fire=False),
                     f"{domu.name}'s events IRQ", booted)
        assert view.event_irq.hwirq == 31


def test_domus_without_dom0(target_spec: TargetSpec, session_artifacts: Path, overrides) -> None:
    """The same domUs with no dom0 at all: Xen gives the first the console, and it finds Xen just the same."""
    session = BootSession(target_spec, session_artifacts / f"{target_spec.name}-without-dom0",
                          overrides, tweaks=Tweaks(without_dom0=True))
    try:
        session.boot()
        session.check()
    except BootFailure as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        result = session.close()
    assert "dom0" not in result.views and "dom0:kernel" not in result.milestones
    assert_clean(result.findings, "domUs without dom0", session)
    for domu in session.spec.domus:
        assert domu.name in result.views, f"{domu.name} was not probed"


def test_xenstore_without_dom0_is_refused_before_boot(target_spec: TargetSpec, tmp_path: Path) -> None:
    """xen,enhanced = "enabled" needs dom0's xenstore; Xen would panic, so the harness says so and boots nothing."""
    session = BootSession(target_spec, tmp_path / "refused",
                          tweaks=Tweaks(without_dom0=True, enhanced="enabled"))
    with pytest.raises(UsageError, match="Xenstore support requires dom0"):
        try:
            session.boot()
        finally:
            session.close()
    assert not (tmp_path / "refused" / "console.log").exists(), "QEMU was started"
