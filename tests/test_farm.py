"""The boards' path through a labgrid farm: a real coordinator on 127.0.0.1, a real exporter publishing two
virtual boards (serial, PDU outlet, TFTP) as two places, and the boot through a RemotePlace: acquire,
stage over SSH, boot, release. One farm serves the session (every xdist worker); each target's tests
run on one worker, so each worker boots on its own place.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from probing import assert_clean, probed

from harness import checks
from harness.boot import BootSession
from harness.errors import HarnessError
from harness.lab.farm import COORDINATOR_ENV, LocalFarm, labgrid_tool
from harness.lab.process import dying_with_us
from harness.monitor import Verdict
from harness.targets import TargetSpec
from harness.tweaks import Tweaks

pytestmark = [pytest.mark.boot, pytest.mark.farm, pytest.mark.requires("virtual-board")]

BOARDS = ("vboard-arm64", "vboard-a15")
FARM_DEADLINE_S = 180


@pytest.fixture(scope="session")
def farm(session_artifacts: Path) -> dict:
    """The session's farm: the first worker to ask starts it (a process that dies with that worker, which
    lives to the session's end), the others find its description."""
    state = session_artifacts / "farm"
    state.mkdir(parents=True, exist_ok=True)
    with (state / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = state / "farm.json"
        if not ready.exists():
            log = (state / "farm.out").open("wb")
            process = subprocess.Popen(
                dying_with_us([sys.executable, "-m", "harness.lab.farm", *(f"--board={b}" for b in BOARDS),
                               "--state", str(state)]),
                stdout=log, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + FARM_DEADLINE_S
            while not ready.exists():
                assert process.poll() is None, f"the farm did not start: {(state / 'farm.out').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"the farm was not up within {FARM_DEADLINE_S} s"
                time.sleep(0.2)
    described = json.loads(ready.read_text())
    os.environ[COORDINATOR_ENV] = described["coordinator"]  # labgrid's clients in this process find the farm
    os.environ["PATH"] = described["path"]  # …and the lab host's ssh
    return described


def place_holder(place: str) -> str | None:
    run = subprocess.run([labgrid_tool("labgrid-client"), "-p", place, "show"], capture_output=True, text=True,
                         timeout=60)
    line = next((ln for ln in run.stdout.splitlines() if ln.strip().startswith("acquired:")), "acquired: ?")
    holder = line.split(":", 1)[1].strip()
    return None if holder == "None" else holder


def test_a_board_boots_through_its_place(farm: dict, target_spec: TargetSpec, session_artifacts: Path) -> None:
    """Acquired, staged over the exporter host's SSH, booted through U-Boot and TFTP, checked, released."""
    place = target_spec.board.virtual
    session = BootSession(target_spec, session_artifacts / f"{target_spec.name}-farm", place=place)
    try:
        session.boot()
        assert place_holder(place) is not None, f"{place} was not acquired during the boot"
        session.check()
    finally:
        result = session.close()
    assert result.failure is None and not result.error, result.error or result.failure.message()
    assert "uboot-loaded" in result.milestones and "dom0:shell" in result.milestones, list(result.milestones)
    assert_clean(checks.check_xen_claims(probed(session).claims, is_32bit=target_spec.arch == "arm32"),
                 "Xen's console on the farm's board", session)
    assert result.verdict is Verdict.PASSED, result.verdict
    assert place_holder(place) is None, f"{place} is still acquired after the boot"


def test_a_place_someone_else_holds_is_waited_for_then_the_labs(farm: dict, target_spec: TargetSpec,
                                                                 tmp_path: Path) -> None:
    place = target_spec.board.virtual
    other = {**os.environ, "LG_USERNAME": "a-colleague"}
    client = [labgrid_tool("labgrid-client"), "-p", place]
    subprocess.run([*client, "acquire"], env=other, check=True, capture_output=True, timeout=60)
    try:
        session = BootSession(target_spec, tmp_path, place=place, tweaks=Tweaks(deadlines={"place": 3}))
        started = time.monotonic()
        with pytest.raises(HarnessError, match=rf"place {place} stayed held for 3 s \(.*a-colleague"):
            session.boot()
        waited = time.monotonic() - started
        result = session.close()
    finally:
        subprocess.run([*client, "release"], env=other, check=True, capture_output=True, timeout=60)
    assert result.verdict is Verdict.INFRASTRUCTURE and 3 <= waited < 60, (result.verdict, waited)


def test_a_coordinator_that_is_gone_is_the_labs(target_spec: TargetSpec, tmp_path: Path) -> None:
    """A farm of its own, whose coordinator goes away before the boot acquires its place."""
    with LocalFarm([target_spec.board.virtual], tmp_path / "farm") as own:
        coordinator = own.coordinator
        own.processes["coordinator"].kill()
        own.processes["coordinator"].wait(timeout=10)
        session = BootSession(target_spec, tmp_path / "boot", place=target_spec.board.virtual,
                              coordinator=coordinator)
        with pytest.raises(HarnessError, match=r"could not acquire place .*coordinator"):
            session.boot()
        assert session.close().verdict is Verdict.INFRASTRUCTURE
