"""How much time and memory `harness triage` and `harness check dtb` spend on big or hostile inputs, in figures.

    .venv/bin/python benchmarks/inputs.py [--log-mb 200] [--no-newline-mb 200] [--regions 20000] [--timeout 600]

Inputs are generated in a temporary directory from the project's own captured data:

1. a console log of `--log-mb` MB: the captured healthy qemu-virt boot (tests/unit/data/logs) repeated;
2. the same log with every newline removed, `--no-newline-mb` MB: one endless line;
3. the captured dom0 DTB whose /hypervisor reg holds the grant table and `--regions` copies of one extended
   region (edited with libfdt).

Each is judged by the `harness` CLI in a child process, as a user runs it. The figures are the child's wall
time and its peak resident memory (ru_maxrss from wait4), the most honest single number for "how much memory".
A child still running after `--timeout` seconds is killed and reported as such.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libfdt

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "unit" / "data"
HEALTHY_LOG = DATA / "logs" / "qemu-virt-healthy.log"
DOM0_DTB = DATA / "qemu-virt-gicv3-dom0.dtb"
MB = 1000 * 1000


def repeated_log(path: Path, size: int, newlines: bool = True) -> Path:
    """At least `size` bytes of the healthy log, written whole copy by whole copy (never all in memory)."""
    unit = HEALTHY_LOG.read_bytes()
    if not newlines:
        unit = unit.replace(b"\r", b"").replace(b"\n", b"")
    with path.open("wb") as out:
        written = 0
        while written < size:
            out.write(unit)
            written += len(unit)
    return path


def many_regions_dtb(path: Path, regions: int) -> Path:
    """The captured dom0 DTB, its /hypervisor reg = the grant table + `regions` copies of one extended region."""
    fdt = libfdt.Fdt(DOM0_DTB.read_bytes())
    node = fdt.path_offset("/hypervisor")
    reg = bytes(fdt.getprop(node, "reg"))
    grant, ext = reg[:16], reg[16:32]  # #address-cells = #size-cells = 2 in this tree
    fdt.resize(len(fdt.as_bytearray()) + 16 * regions + 4096)
    fdt.setprop(node, "reg", grant + ext * regions)
    fdt.pack()
    path.write_bytes(bytes(fdt.as_bytearray()))
    return path


def run(args: list[str], timeout: float) -> tuple[int | None, float, float]:
    """(exit status or None when killed, wall seconds, peak RSS in MiB) of `python -m harness.cli ARGS`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            proc.send_signal(signal.SIGKILL)
            killed = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; keep Popen from waiting again
    wall = time.monotonic() - started
    return (None if killed else proc.returncode), wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-mb", type=float, default=200, help="size of the repeated healthy log (MB)")
    parser.add_argument("--no-newline-mb", type=float, default=200, help="size of the log without newlines (MB)")
    parser.add_argument("--regions", type=int, default=20000, help="extended regions in the hostile DTB")
    parser.add_argument("--timeout", type=float, default=600, help="kill a run after this many seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="harness-bench-inputs-") as tmp:
        work = Path(tmp)
        cases = [
            ("triage, healthy log repeated", ["triage"],
             repeated_log(work / "healthy.log", int(args.log_mb * MB))),
            ("triage, no newline at all", ["triage"],
             repeated_log(work / "one-line.log", int(args.no_newline_mb * MB), newlines=False)),
            (f"check dtb, {args.regions} extended regions", ["check", "dtb"],
             many_regions_dtb(work / "regions.dtb", args.regions)),
        ]
        print(f"{'input':40} {'size':>10} {'exit':>6} {'wall':>9} {'peak RSS':>10}")
        for label, verb, path in cases:
            status, wall, peak = run([*verb, str(path)], args.timeout)
            size = path.stat().st_size
            shown_size = f"{size / MB:.1f} MB" if size >= MB else f"{size / 1000:.0f} kB"
            shown_status = "killed" if status is None else str(status)
            print(f"{label:40} {shown_size:>10} {shown_status:>6} {wall:8.2f}s {peak:7.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
