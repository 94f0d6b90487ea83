"""Asking a healthy machine where it is: Xen's debug keys answer over the target's console (a board's serial
line too), QEMU's vCPUs are sampled, every PC is named, nothing is concluded, and the guest keeps its input.

The hangs themselves are injected and diagnosed in test_faults.py.
"""

from __future__ import annotations

import pytest

from harness.boot import BootSession
from harness.debugkeys import KEYS, PROBE_KEYS
from harness.monitor import SERIAL_INPUT

pytestmark = [pytest.mark.boot, pytest.mark.requires("dom0")]


def test_probing_a_healthy_machine_concludes_nothing(booted: BootSession) -> None:
    """A probe on a healthy machine: Xen answers every key, no pattern is concluded (no false red), and
    the console guest still answers afterwards (the serial input was given back)."""
    strategy = booted.strategy
    focus = strategy.monitor.focus
    diag = strategy.probe()
    assert diag.xen_answered, f"Xen did not answer its debug keys: {diag.conclusion}"
    assert diag.complete, f"keys answered: {diag.dump.keys!r}, expected all of {PROBE_KEYS!r}"
    assert not diag.conclusive, f"a healthy machine was concluded {diag.signature}: {diag.conclusion}"
    assert strategy.monitor.focus == focus, "the serial input was not given back"
    shell = booted.shell()
    assert shell.run("echo still-here") == ["still-here"]
    host = diag.dump.host()
    assert host and all(r.el == 2 and r.symbol for r in host), f"Xen's pCPUs without symbols: {host}"
    if strategy.machine is not None:  # QEMU: every vCPU sampled, and each PC named
        assert diag.latest(), "no QEMU vCPU sample"
        unnamed = [str(s) for s in diag.latest() if not s.symbol]
        assert not unnamed, f"PCs without a symbol: {unnamed}"


def test_debug_keys_exist_on_this_xen(booted: BootSession) -> None:
    """Every key the harness presses is one this Xen lists in its own 'h' output."""
    strategy = booted.strategy
    before = strategy.monitor.line_count
    strategy.prober.probe(keys="h", samples=0)
    lines = [ln.text for ln in strategy.monitor.lines[before:] if ln.source == "xen"]
    assert any(SERIAL_INPUT.match(text) for text in lines), "Xen never took the serial input"
    listed = {text.split("'")[1] for text in lines if text.lstrip().startswith("key '")}
    missing = set(KEYS) - listed
    assert not missing, f"keys this Xen does not list: {sorted(missing)}; it lists {sorted(listed)}"
