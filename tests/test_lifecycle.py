"""No QEMU (nor a virtual lab's in.tftpd) outlives the session: SIGKILL a pytest run mid-boot, plain or
with xdist, and look for them; a machine killed or a board that loses its power is the lab's fault."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.artifacts import SESSION_ENV as SESSION_ARTIFACTS_ENV
from harness.targets import TargetSpec

pytestmark = [pytest.mark.boot]

ROOT = Path(__file__).resolve().parent.parent



def children(pid: int) -> dict[int, str]:
    """Every descendant of `pid`: pid -> command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# What a session may start: machines, a virtual lab's TFTP server, a farm and its coordinator and exporter.
LAB_PROCESSES = ("qemu-system", "in.tftpd", "harness.lab.farm", "labgrid-coordinator", "labgrid-exporter")



@pytest.mark.parametrize("xdist", [[], ["-n", "1"]], ids=["plain", "xdist"])
def test_killed_pytest_leaves_no_lab_behind(xdist: list[str], target_spec: TargetSpec, tmp_path: Path) -> None:
    kill_a_session_and_look_for_its_lab(target_spec, tmp_path, [*xdist, "tests/test_dom0.py::test_boot"])


@pytest.mark.requires("virtual-board")
def test_killed_pytest_leaves_no_farm_behind(target_spec: TargetSpec, tmp_path: Path) -> None:
    kill_a_session_and_look_for_its_lab(target_spec, tmp_path, ["-n", "1", "-m", "farm",
                                        "tests/test_farm.py::test_a_board_boots_through_its_place"], farm=True)


def kill_a_session_and_look_for_its_lab(target_spec: TargetSpec, tmp_path: Path, args: list[str],
                                        farm: bool = False) -> None:
    """SIGKILL a pytest session once its QEMU runs; then nothing it started may be left."""
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--target={target_spec.path}",
         f"--artifacts={tmp_path}", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # its own session and options, not ours (./run test sets -n auto in PYTEST_ADDOPTS)
        env={k: v for k, v in os.environ.items()
             if k not in (SESSION_ARTIFACTS_ENV, "PYTEST_ADDOPTS", "HARNESS_TARGET")},
    )
    try:
        deadline = time.monotonic() + 180
        qemu: dict[int, str] = {}
        while not qemu and time.monotonic() < deadline and run.poll() is None:
            qemu = {p: c for p, c in children(run.pid).items() if "qemu-system" in c}
            time.sleep(0.1)
        assert qemu, "QEMU never started under the pytest run"
        lab = {p: c for p, c in children(run.pid).items() if any(name in c for name in LAB_PROCESSES)}
        if farm:
            assert any("labgrid-coordinator" in c for c in lab.values()), f"no coordinator among {lab}"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in lab) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: c for p, c in lab.items() if alive(p)}
        assert not left, f"the lab outlived the killed pytest run: {left}"
    finally:  # whatever happened above, leave nothing of that run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)


def kill_qemu_under_harness_boot(target_spec: TargetSpec, tmp_path: Path, sig: signal.Signals,
                                 printed: bytes) -> tuple[int, str]:
    """`harness boot`, its machine's QEMU killed with `sig` once the console holds `printed`: (exit status, output)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "boot", "--target", str(target_spec.path), "--artifacts", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        console, deadline = tmp_path / "console.log", time.monotonic() + 180
        while run.poll() is None and time.monotonic() < deadline and not (
                console.is_file() and printed in console.read_bytes()):
            time.sleep(0.05)
        qemu = [p for p, c in children(run.pid).items() if "qemu-system" in c]
        assert qemu and run.poll() is None, f"QEMU never printed {printed!r} under `harness boot`"
        os.kill(qemu[0], sig)
        out, _ = run.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    return run.returncode, out


@pytest.mark.requires("qemu")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_machine_killed_mid_boot_is_the_labs_fault(sig: signal.Signals, target_spec: TargetSpec,
                                                     tmp_path: Path) -> None:
    """kill -9 (or the OOM killer), or a SIGTERM QEMU catches: exit 128 and the signal named, never a
    verdict against the build (which `git bisect run` would take for a bad commit)."""
    status, out = kill_qemu_under_harness_boot(target_spec, tmp_path, sig, b"Xen")
    assert status == 128, out
    assert f"killed by {sig.name} (signal {int(sig)})" in out, out
    assert "verdict: INFRASTRUCTURE-ERROR" in out, out


@pytest.mark.requires("virtual-board")
def test_a_board_that_loses_its_power_is_the_labs_fault(target_spec: TargetSpec, tmp_path: Path) -> None:
    """A board's console never closes: the harness asks the PDU when the console goes quiet, and a board
    found off (its QEMU killed: the outlet's state follows) is an infrastructure error within seconds,
    not a hang at the silence deadline."""
    status, out = kill_qemu_under_harness_boot(target_spec, tmp_path, signal.SIGKILL, b"Xen version")
    assert status == 128, out
    assert "without the guests or Xen asking it to stop (its power went off)" in out, out
