"""No QEMU outlives the session: SIGKILL a pytest run mid-boot, plain or with xdist, and look for QEMU."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import SESSION_ARTIFACTS_ENV

pytestmark = [pytest.mark.boot, pytest.mark.requires("qemu")]

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


@pytest.mark.parametrize("xdist", [[], ["-n", "1"]], ids=["plain", "xdist"])
def test_killed_pytest_leaves_no_qemu(xdist: list[str], target_name: str, tmp_path: Path) -> None:
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, f"--target={target_name}",
         f"--artifacts={tmp_path}", "tests/test_dom0.py::test_boot"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # its own session and options, not ours (./run test sets -n auto in PYTEST_ADDOPTS)
        env={k: v for k, v in os.environ.items()
             if k not in (SESSION_ARTIFACTS_ENV, "PYTEST_ADDOPTS", "HARNESS_TARGET")},
    )
    try:
        deadline = time.monotonic() + 120
        qemu: dict[int, str] = {}
        while not qemu and time.monotonic() < deadline and run.poll() is None:
            qemu = {p: c for p, c in children(run.pid).items() if "qemu-system" in c}
            time.sleep(0.1)
        assert qemu, "QEMU never started under the pytest run"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in qemu) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: c for p, c in qemu.items() if alive(p)}
        assert not left, f"QEMU outlived the killed pytest run: {left}"
    finally:  # whatever happened above, leave nothing of that run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
