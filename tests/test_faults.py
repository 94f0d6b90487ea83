"""Real faults injected into real boots: each must get the right class, stage and signature, with evidence.

Hang deadlines are shortened here so the suite stays quick; the target's own (longer) deadlines are
what a nightly run uses. How fast each verdict comes is measured by benchmarks/boot.py, not asserted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import targets
from harness.boot import BootSession, Tweaks
from harness.monitor import BootFailure, Verdict

pytestmark = [pytest.mark.boot, pytest.mark.requires("dom0"), pytest.mark.requires("device-tree"),
              pytest.mark.requires("qemu")]

SHORT_HANG = {"silence": 15, "stages": {"power-on": 10}}


@dataclass(frozen=True)
class Fault:
    name: str
    tweaks: Tweaks
    verdict: Verdict
    stage: str
    signature: str
    evidence: str | None = None  # text the quoted console lines must contain


FAULTS = [
    Fault("impossible-dom0-mem", Tweaks(xen_args="dom0_mem=4000M"),
          Verdict.CRASHED, "dom0-loading", "xen-dom0-memory", "Failed to allocate requested dom0 memory"),
    Fault("missing-dom0-kernel", Tweaks(omit_modules=frozenset({"kernel"})),
          Verdict.CRASHED, "dom0-loading", "xen-missing-module", "Missing kernel boot module?"),
    Fault("dom0-init-missing-panic-reboots", Tweaks(dom0_args="rdinit=/no/such/init"),
          Verdict.CRASHED, "dom0:events", "kernel-panic", "Kernel panic - not syncing"),
    Fault("dom0-init-missing-panic-hangs",
          Tweaks(dom0_cmdline="console=hvc0 earlycon=xenboot rdinit=/no/such/init guest=dom0"),
          Verdict.CRASHED, "dom0:events", "kernel-panic", "Kernel panic - not syncing"),
    Fault("dom0-console-not-hvc0", Tweaks(dom0_cmdline="console=ttyAMA0 rdinit=/init guest=dom0",
                                          deadlines=SHORT_HANG),
          Verdict.HUNG, "xen-handover", "silence", "unhandled word write"),
    Fault("wrong-dtuart", Tweaks(xen_args="dtuart=/pl011@9001000", deadlines=SHORT_HANG),
          Verdict.HUNG, "power-on", "silence"),
    Fault("no-virtualization", Tweaks(edit_qemu_args=lambda a: a.replace("virtualization=on,", ""),
                                      deadlines=SHORT_HANG),
          Verdict.HUNG, "power-on", "silence"),
    Fault("qemu-rejects-option", Tweaks(edit_qemu_args=lambda a: f"{a} -no-such-option"),
          Verdict.INFRASTRUCTURE, "power-on", "qemu-bad-option"),
    # A blob loaded over Xen: the harness's layout never does this, a hand-written boot plan might.
    Fault("qemu-overlapping-images",
          Tweaks(edit_qemu_args=lambda a: f"{a} -device loader,file=/etc/hostname,addr=0x40200000,force-raw=on"),
          Verdict.INFRASTRUCTURE, "power-on", "qemu-rom-overlap"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_classified(fault: Fault, target_name: str, session_artifacts: Path, overrides,
                             record_property) -> None:
    session = BootSession(targets.load_spec(target_name), session_artifacts / f"{target_name}-{fault.name}",
                          overrides, tweaks=fault.tweaks)
    with pytest.raises(BootFailure) as raised:
        try:
            session.boot()
        finally:
            result = session.close()
    failure = raised.value.failure
    record_property("verdict", str(failure.verdict))
    record_property("stage", failure.stage)
    record_property("signature", failure.signature)
    got = (failure.verdict, failure.stage, failure.signature)
    assert got == (fault.verdict, fault.stage, fault.signature), failure.message(fault.name)
    assert result.verdict is fault.verdict
    if fault.evidence:
        assert any(fault.evidence in line.text for line in failure.evidence), failure.message(fault.name)
    if failure.line is not None:  # a signature line: the verdict came after it, and says so
        assert failure.decided is not None and failure.decided >= failure.line.t
        assert failure.line in failure.evidence
    if failure.verdict is Verdict.INFRASTRUCTURE:  # QEMU never ran: its own words are the evidence
        assert failure.detail, failure.message(fault.name)
    else:
        assert (session.artifacts / "console.log").exists()
    assert (session.artifacts / "result.json").exists()
