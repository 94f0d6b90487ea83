"""The diagnosis in the text reports: `harness boot`'s summary, and `harness triage` of a log with debug-key dumps."""

from __future__ import annotations

from pathlib import Path

from harness import targets
from harness.cli import summary
from harness.debugkeys import DebugDump, Registers
from harness.diagnose import Diagnosis, VcpuSample
from harness.monitor import Failure, Verdict
from harness.result import BootResult

HOST = Registers("CPU1 host", 1, None, None, 0x25b0c8, "domain.c#idle_loop+0x128/0x140", "Hypervisor", 2)


def report(result: BootResult) -> list[str]:
    lines = summary(result, targets.load_spec("qemu-virt")).splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("verdict: ")):]


def test_a_hung_boot_reports_its_diagnosis_and_names_the_dump(tmp_path: Path):
    result = BootResult("qemu-virt", tmp_path)
    result.record_failure(Failure(Verdict.HUNG, "dom0:init", "silence", "no console output", None))
    result.diagnosis = Diagnosis("debug-keys+qmp", "dom0:init", 4.5, [[VcpuSample(0, 0x25b0c8, 2, "EL2h", 6.5)]],
                                 DebugDump("d0qreg", [HOST]), True, ["xen-debugkeys.txt"], "Xen answers its console",
                                 seconds_from_quiet=3.2)
    result.decide()
    assert report(result) == [
        f"verdict: HUNG (silence after 'dom0:init')   artifacts: {tmp_path}",
        "diagnosis (debug-keys+qmp): Xen answers its console",
        "    CPU0 EL2 pc 0x25b0c8 (no symbol)",
        "    Xen: CPU1 host pc 0x25b0c8 domain.c#idle_loop+0x128/0x140",
        "    3.2 s from the last console byte to the verdict",
        "    debug-key dump: xen-debugkeys.txt",  # relative to the artifacts on the verdict line
    ]


def test_a_passed_boot_that_was_asked_reports_it_too_and_one_never_asked_nothing(tmp_path: Path):
    result = BootResult("qemu-virt", tmp_path)
    result.decide()
    assert report(result) == [f"verdict: PASSED   artifacts: {tmp_path}"]
    result.diagnosis = Diagnosis("qmp", "dom0:kernel", 2.0)
    assert report(result)[1:] == ["diagnosis (qmp): inconclusive"]
