"""Everything Xen's domain builder gave each guest, from three sides (harness/witnesses.py): Xen's log, the
guest's firmware tables (its device tree; an ACPI dom0's minimal tree, EFI map and tables), the guest's
kernel; and a device-tree dom0's tree against the host tree it was made from.

Every test reads the one boot of its target; each item is its own test, so a red one names the item.
"""

from __future__ import annotations

import pytest
from probing import assert_clean, probed

from harness.boot import BootSession

pytestmark = [pytest.mark.boot]

# Each item's rules (harness/witnesses.py RULES, harness/validate/dtbuild.py RULES), by prefix.
ITEMS = {
    "memory": ("dt.memory.", "dt.build.memory", "xen.memory.", "kernel.memory."),
    "vcpus": ("dt.cpus.", "dt.build.cpus", "xen.vcpus", "kernel.cpus"),
    "gic": ("dt.gic.", "dt.build.gic", "kernel.gic"),
    "timer": ("dt.timer.", "dt.build.timer", "kernel.timer"),
    "chosen": ("dt.chosen.", "dt.build.bootargs", "dt.build.initrd", "kernel.cmdline", "kernel.initrd"),
    "host-tree": ("dt.host.",),
}


def witnessed(session: BootSession):
    """(guest spec, its witness) for every guest the boot probed: each must have been witnessed."""
    result = probed(session, *(g.name for g in session.spec.guests))
    missing = [g.name for g in session.spec.guests if g.name not in result.witnesses]
    assert not missing, f"{session.spec.name}: no build witnesses for {missing}"
    return [(g, result.witnesses[g.name]) for g in session.spec.guests]


@pytest.mark.parametrize("item", list(ITEMS))
def test_build_item_agrees_from_three_sides(booted: BootSession, item: str) -> None:
    """Xen's log, the guest's tree and its kernel say the same of this item, for every guest."""
    witnessed(booted)
    findings = [f for f in booted.result.findings if f.rule.startswith(ITEMS[item])]
    assert_clean(findings, f"the {item} Xen built", booted)


def test_every_side_was_heard(booted: BootSession) -> None:
    """Each witness spoke: Xen's BANK and initrd lines, the tree's banks, cpus, GIC, timer and /chosen, the
    kernel's memory total, CPUs, timer and command line (a silent witness would make agreement empty)."""
    for guest, w in witnessed(booted):
        assert w.xen.banks and w.xen.initrd, f"{guest.name}: Xen's log gave no BANK or initrd line"
        tree = w.tree
        assert tree.bootargs and tree.initrd, f"{guest.name}: /chosen without bootargs or initrd: {tree}"
        if booted.spec.can("device-tree"):
            assert tree.banks and tree.cpus and tree.gic and tree.timer, f"{guest.name}: {tree}"
        k = w.kernel
        assert None not in (k.memory_kb, k.memtotal_kb, k.cpus_up, k.cpus_online, k.timer, k.cmdline), \
            f"{guest.name}: {k}"
        assert k.iomem_ram, f"{guest.name}: no System RAM in /proc/iomem"


@pytest.mark.requires("dom0")
@pytest.mark.requires("device-tree")
def test_dom0_tree_diff_is_saved_and_judged(booted: BootSession) -> None:
    """dom0-dt.diff is in the artifacts, names Xen's console UART as hidden, and every line has its reason."""
    witnessed(booted)
    diff = (booted.artifacts / "dom0-dt.diff").read_text()
    assert "Xen's console UART: Xen keeps it" in diff, diff
    assert "UNEXPLAINED" not in diff, diff
    assert booted.result.witnesses["dom0"].to_dict()["host_diff"] == "dom0-dt.diff"
