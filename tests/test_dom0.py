"""A device-tree dom0 on a real target: three witnesses agree on the grant table and the event IRQ.

Every test reads the one boot of its target (the `booted` fixture in conftest.py) and runs one family
of checks from harness.checks on it, so a red test names the witness that disagrees.
"""

from __future__ import annotations

import pytest
from probing import assert_clean, probed

from harness import checks
from harness.boot import BootSession
from harness.guest import parse_interrupts
from harness.validate import dt

pytestmark = [pytest.mark.boot, pytest.mark.requires("dom0")]


def is_32bit(session: BootSession) -> bool:
    return session.spec.arch == "arm32"


def test_boot(booted: BootSession, record_property) -> None:
    """Xen boots, hands over to dom0, and dom0 reaches its shell, every milestone in order."""
    for key, t in booted.result.milestones.items():
        record_property(f"milestone:{key}", t)
    record_property("artifacts", str(booted.artifacts))
    failure = booted.result.failure
    assert failure is None, failure.message(booted.spec.name)
    reached = list(booted.result.milestones)
    for key in ("xen-banner", "dom0-loading", "dom0:kernel", "dom0:xen-found", "dom0:shell"):
        assert key in reached, f"milestone {key} never seen; seen: {reached}"
    assert reached.index("xen-banner") < reached.index("dom0:kernel") < reached.index("dom0:shell")


def test_xen_says_what_it_gave_dom0(booted: BootSession) -> None:
    """Xen printed its version, dom0's grant table range, event PPI and (on a DT) extended regions, and
    booted on the firmware tables the target gives (a device tree, or ACPI)."""
    result = probed(booted)
    claims = checks.check_xen_claims(result.claims, is_32bit=is_32bit(booted), acpi=booted.spec.can("acpi"))
    assert_clean(claims, "Xen's console", booted)


def test_xen_did_what_its_command_line_asked(booted: BootSession) -> None:
    """Xen complained of nothing on the target's own command line (read from its console ring too)."""
    result = probed(booted)
    assert result.claims.ring_start, "Xen's console ring was not read"
    assert_clean([f for f in result.findings if f.rule.startswith("xen.cmdline.")], "Xen's command line", booted)


@pytest.mark.requires("device-tree")
def test_dom0_device_tree_matches_xen(booted: BootSession) -> None:
    """dom0's /hypervisor node follows the binding and says exactly what Xen printed."""
    result = probed(booted)
    view = result.views["dom0"]
    assert view.fdt, "dom0 gave no /sys/firmware/fdt"
    assert (booted.artifacts / "dom0.dtb").read_bytes() == view.fdt
    expect = checks.expectation(result.claims, 0, is_32bit(booted))
    assert_clean(checks.check_device_tree(view, expect), "dom0's device tree", booted)


def test_dom0_kernel_found_xen(booted: BootSession) -> None:
    """dom0's kernel found Xen of the booted version, its grant table, and an events ABI."""
    result = probed(booted)
    assert_clean(checks.check_kernel_log(result.views["dom0"], result.claims.version), "dom0's kernel log", booted)


def test_dom0_event_irq_is_xens_ppi(booted: BootSession) -> None:
    """The `events` interrupt is Xen's PPI (hwirq via /sys/kernel/irq), on the target's GIC, level, and fired."""
    result = probed(booted)
    chip = booted.spec.dom0.event_chip
    findings = checks.check_event_irq(result.views["dom0"], result.claims.event_ppi, chip)
    assert_clean(findings, "dom0's events IRQ", booted)


def test_dom0_event_irq_keeps_firing(booted: BootSession) -> None:
    """Sampled again now, live: the events count is above what the probes first saw."""
    result = probed(booted)
    first = result.views["dom0"].event_irq
    assert first is not None, "dom0 has no events interrupt"
    now = parse_interrupts("\n".join(booted.shell("dom0").run("cat /proc/interrupts"))).get("events")
    assert now is not None, "the events row disappeared from /proc/interrupts"
    assert sum(now[1]) > first.total, f"events count: expected above {first.total}, found {sum(now[1])}"


def test_dom0_sys_hypervisor(booted: BootSession) -> None:
    """/sys/hypervisor says xen, and the version Xen's banner printed."""
    result = probed(booted)
    assert_clean(checks.check_hypervisor_sysfs(result.views["dom0"], result.claims.version), "/sys/hypervisor", booted)


@pytest.mark.requires("32-bit")
def test_32bit_dom0_gets_no_extended_regions(booted: BootSession) -> None:
    """Xen gives a 32-bit dom0 no extended regions: none printed, and only the grant region in reg."""
    result = probed(booted)
    assert 0 in result.claims.no_extended_32bit, "Xen did not say 'd0: extended regions not supported for 32-bit'"
    assert not result.claims.extended.get(0), f"Xen printed extended regions for d0: {result.claims.extended}"
    node = dt.read_hypervisor_node(result.views["dom0"].fdt)
    assert node is not None and len(node.regions) == 1, f"reg: expected only the grant region, found {node}"
