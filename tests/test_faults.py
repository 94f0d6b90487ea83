"""Real faults injected into real boots: each must get the right class, stage and signature, with evidence.

The faults and their expected verdicts live in harness/faults.py. How fast each verdict comes is
measured by benchmarks/boot.py, not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.boot import BootSession
from harness.faults import (
    ACPI_WITNESS_FAULTS,
    BOARD_HANG_FAULTS,
    FAULTS,
    TOOLSTACK_FAULTS,
    UBOOT_FAULTS,
    WITNESS_FAULTS,
    XEN_HOOK_FAULTS,
    Fault,
)
from harness.findings import failures
from harness.monitor import BootFailure, Verdict
from harness.targets import TargetSpec

# The expected stages assume dom0 is the only guest (a dom0less domU keeps booting past dom0's fault).
pytestmark = [pytest.mark.boot]


@pytest.mark.requires("fault-injection")
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_classified(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                             record_property) -> None:
    check_fault(fault, target_spec, session_artifacts, overrides, record_property)


@pytest.mark.requires("xen-fault-hooks")
@pytest.mark.parametrize("fault", XEN_HOOK_FAULTS, ids=[f.name for f in XEN_HOOK_FAULTS])
def test_xen_hang_is_diagnosed(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                               record_property) -> None:
    """A Xen that spins with its interrupts off, or that tells dom0 of an event PPI it never raises: the
    verdict names it, within seconds of quiet, on QEMU (vCPUs sampled too) and over a board's serial line."""
    check_fault(fault, target_spec, session_artifacts, overrides, record_property)


@pytest.mark.requires("xen-fault-hooks")
@pytest.mark.parametrize("fault", WITNESS_FAULTS, ids=[f.name for f in WITNESS_FAULTS])
def test_xen_build_regression_is_named(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                                       record_property) -> None:
    """A Xen whose domain builder writes dom0's tree wrong (a bank 2 MiB short, a vCPU missing, other bootargs)
    boots, and dom0 runs: only the witnesses of what Xen built can fail it, and the failing rule names the item."""
    check_build_regression(fault, target_spec, session_artifacts, overrides, record_property)
    assert (session_artifacts / f"{target_spec.name}-{fault.name}" / "dom0-dt.diff").is_file()


@pytest.mark.requires("acpi")
@pytest.mark.parametrize("fault", ACPI_WITNESS_FAULTS, ids=[f.name for f in ACPI_WITNESS_FAULTS])
def test_acpi_build_regression_is_named(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                                        record_property) -> None:
    """The same on an ACPI dom0: Xen's EFI memory map gives dom0 2 MiB less than Xen's BANK lines say."""
    check_build_regression(fault, target_spec, session_artifacts, overrides, record_property)


def check_build_regression(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                           record_property) -> None:
    session = BootSession(target_spec, session_artifacts / f"{target_spec.name}-{fault.name}", overrides,
                          tweaks=fault.tweaks)
    try:
        session.boot()
        session.check()
    finally:
        result = session.close()
    record_property("verdict", str(result.verdict))
    failing = {f.rule for f in failures(result.findings)}
    record_property("signature", ",".join(sorted(failing)))
    assert result.verdict is fault.verdict, f"{fault.name}: verdict {result.verdict}, findings {failing}"
    assert fault.signature in failing, f"{fault.name}: expected {fault.signature} among {failing}"


@pytest.mark.requires("uboot")
@pytest.mark.parametrize("fault", BOARD_HANG_FAULTS, ids=[f.name for f in BOARD_HANG_FAULTS])
def test_board_hang_is_diagnosed(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                                 record_property) -> None:
    """No QEMU to ask on a board: Xen's debug keys over its serial console alone say where dom0 is."""
    check_fault(fault, target_spec, session_artifacts, overrides, record_property)


@pytest.mark.requires("uboot")
@pytest.mark.parametrize("fault", UBOOT_FAULTS, ids=[f.name for f in UBOOT_FAULTS])
def test_lab_path_fault_is_the_labs(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                                    record_property) -> None:
    """A file the lab serves damaged or not at all, or a boot command that points nowhere: caught before
    or at U-Boot's boot command, and an infrastructure error, never a verdict against the build."""
    check_fault(fault, target_spec, session_artifacts, overrides, record_property)
    assert (session_artifacts / f"{target_spec.name}-{fault.name}" / "boot.cmd").is_file()


@pytest.mark.requires("toolstack")
@pytest.mark.parametrize("fault", TOOLSTACK_FAULTS, ids=[f.name for f in TOOLSTACK_FAULTS])
def test_toolstack_fault_is_named(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides,
                                  record_property) -> None:
    """A backend dom0 never loads, a domU that panics: named on the domU's console that dom0 relays, with the
    stage the domU reached."""
    check_fault(fault, target_spec, session_artifacts, overrides, record_property)


def check_fault(fault: Fault, target_spec: TargetSpec, session_artifacts: Path, overrides, record_property) -> None:
    session = BootSession(target_spec, session_artifacts / f"{target_spec.name}-{fault.name}",
                          overrides, tweaks=fault.tweaks)
    with pytest.raises(BootFailure) as raised:
        try:
            session.boot()
            session.check()  # a fault may let dom0 reach its prompt and stop answering afterwards
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
    elif failure.verdict is Verdict.INFRASTRUCTURE:  # QEMU's own words, or the command's answer the harness saw
        assert failure.detail, failure.message(fault.name)
    if failure.signature not in ("qemu-bad-option", "qemu-rom-overlap"):  # QEMU never ran for those
        assert (session.artifacts / "console.log").exists()
    assert (session.artifacts / "result.json").exists()
    if failure.verdict is Verdict.HUNG:
        check_diagnosis(failure, session, json.loads((session.artifacts / "result.json").read_text()))


def check_diagnosis(failure, session: BootSession, result: dict) -> None:
    """A hang's verdict carries where the machine was: the diagnosis that concluded it, in result.json."""
    diagnosis = result["diagnosis"]
    assert diagnosis is not None, failure.message()
    assert diagnosis["signature"] == failure.signature and diagnosis["conclusion"] == failure.description
    assert diagnosis["seconds_from_quiet"] is not None and diagnosis["seconds_from_quiet"] >= 0
    if session.strategy.machine is not None and failure.signature != "xen-hung":
        assert diagnosis["vcpus"], "QEMU's vCPUs were not sampled"
    if failure.signature in ("dom0-console-silent", "events-undelivered"):  # Xen answered: its dump is kept
        assert diagnosis["dumps"] and (session.artifacts / diagnosis["dumps"][0]).is_file()
