"""The diagnosis in the text reports: `harness boot`'s summary, and `harness triage` of a log with debug-key dumps."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from captured import COMPLAINTS_LOG, DEBUGKEYS_ARM32_LOG, DEBUGKEYS_ARM64_LOG, DEBUGKEYS_EVENTS_LOG, HEALTHY_LOG
from test_cli_check import harness

from harness import targets
from harness.cli import summary
from harness.debugkeys import DebugDump, Registers
from harness.diagnose import Diagnosis, VcpuSample, diagnose_log
from harness.monitor import ConsoleMonitor, Failure, Verdict
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


# --- harness triage -------------------------------------------------------------------------------


@pytest.mark.parametrize(("log", "registers"), [
    (DEBUGKEYS_ARM64_LOG, ["    Xen: CPU0 guest d0v0 pc 0xffffdf39418de4c0",
                           "    Xen: CPU1 host pc 0x25b0c8 domain.c#idle_loop+0x128/0x140",
                           "    Xen: Dom0 vcpu#0 pc 0xffffdf39423af4fc", "    Xen: Dom0 vcpu#1 pc 0xffffdf39423af4fc"]),
    (DEBUGKEYS_ARM32_LOG, ["    Xen: CPU0 host pc 0x258bbc domain.c#idle_loop+0x138/0x150",
                           "    Xen: CPU1 host pc 0x258bbc domain.c#idle_loop+0x138/0x150",
                           "    Xen: Dom0 vcpu#0 pc 0xc041fcc8", "    Xen: Dom0 vcpu#1 pc 0xc041fcc8"]),
], ids=["arm64", "arm32"])
def test_triage_reads_the_debug_key_dumps_in_a_log(tmp_path: Path, log: Path, registers: list[str]):
    path = tmp_path / "console.log"
    path.write_bytes(gzip.decompress(log.read_bytes()))
    proc = harness("triage", "--prompt", "dom0# ", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    at = lines.index("verdict: passed")
    assert lines[at + 1].startswith("diagnosis (debug-keys (log)): ") and lines[at + 2:] == registers
    record = json.loads(harness("triage", "--prompt", "dom0# ", "--json", path).stdout)["diagnosis"]
    assert (record["method"], record["stage"], record["xen_answered"], record["quiet_since"]) == (
        "debug-keys (log)", "dom0:shell", True, 0.0)
    listed = [f"    Xen: {r['who']} pc {r['pc']} {r['symbol'] or ''}".rstrip() for r in record["xen_registers"]]
    assert listed == registers


@pytest.mark.parametrize("log", [HEALTHY_LOG, COMPLAINTS_LOG], ids=["healthy", "console-ring-dumped"])
def test_triage_of_a_log_without_debug_key_dumps_has_no_diagnosis(log: Path):
    """A console ring dump ('w') is a debug key's too, but says nothing of where the machine is."""
    proc = harness("triage", "--prompt", "dom0# ", log)
    assert "diagnosis" not in proc.stdout and any(line.startswith("verdict: ") for line in proc.stdout.splitlines())
    assert json.loads(harness("triage", "--prompt", "dom0# ", "--json", log).stdout)["diagnosis"] is None


def test_a_log_read_whole_is_decided_and_dated():
    """With every line kept (not triage's last ones), the dumps are judged as a live boot's and quiet_since is
    the time of the last line before the first dump."""
    ticks = itertools.count()
    monitor = ConsoleMonitor(prompt="dom0# ", clock=lambda: next(ticks) / 1000)
    monitor.replay(gzip.decompress(DEBUGKEYS_ARM64_LOG.read_bytes()))
    diag = diagnose_log(monitor)
    first = next(i for i, line in enumerate(monitor.lines) if line.text == "'d' pressed -> dumping registers")
    assert diag.quiet_since == monitor.lines[first - 1].t > 0
    assert diag.conclusion and diag.signature is None  # a healthy machine: nothing conclusive
    assert [r.who for r in diag.dump.host()] == ["CPU1 host"]


def test_triage_of_a_log_whose_dumps_prove_a_hang_says_hung(tmp_path: Path):
    """dom0 printed its prompt, then stopped answering: the dumps taken after show its events undelivered,
    which outweighs the prompt (a log's verdict follows what its dumps prove)."""
    path = tmp_path / "console.log"
    path.write_bytes(gzip.decompress(DEBUGKEYS_EVENTS_LOG.read_bytes()))
    proc = harness("triage", "--prompt", "dom0# ", path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    verdict = next(line for line in proc.stdout.splitlines() if line.startswith("verdict: "))
    assert "hung after stage 'dom0:shell': the event channel interrupt does not reach dom0" in verdict
    assert "port 2 (VIRQ_CONSOLE)" in verdict and "Xen raises PPI 16" in verdict
    record = json.loads(harness("triage", "--prompt", "dom0# ", "--json", path).stdout)
    assert (record["verdict"], record["failure"]["signature"], record["diagnosis"]["signature"]) == (
        "hung", "events-undelivered", "events-undelivered")
