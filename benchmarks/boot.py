"""How fast the harness boots and judges, in figures (speed goals live here, not in timed tests).

    .venv/bin/python benchmarks/boot.py [--target qemu-virt] [--repeat 3] [--no-faults]

1. A good boot, `--repeat` times: the harness's time from QEMU's start to dom0's shell prompt and its
   wall time from `boot()` to the prompt (image checks, DTB build and labgrid included), against
   plain QEMU started by hand on the very same command line and files, reading its serial console
   from a pipe until the same prompt.
2. Each injected fault the target takes (harness/faults.py): seconds from the first failure line on
   the console to the verdict, for a hang seconds from the last console byte to the verdict (its
   diagnosis), and the wall time of the whole failing boot (start to clean-up).
"""

from __future__ import annotations

import argparse
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import targets  # noqa: E402
from harness.boot import BootSession  # noqa: E402
from harness.faults import BOARD_HANG_FAULTS, FAULTS, XEN_HOOK_FAULTS  # noqa: E402
from harness.lab.process import dying_with_us  # noqa: E402
from harness.monitor import BootFailure  # noqa: E402

PROMPT = b"dom0# "


def harness_boot(spec, workdir: Path) -> tuple[float, float, list[str] | None]:
    """(power-on to prompt, boot() call to prompt, the raw QEMU command line to replay; None for a board)."""
    session = BootSession(spec, workdir)
    started = time.monotonic()
    try:
        session.boot()
        wall = time.monotonic() - started
        qemu = session.strategy.machine
        if qemu is None:  # a board: no QEMU command line to replay
            return session.result.milestones["dom0:shell"], wall, None
        # The same machine, files and options, minus labgrid's QMP and socket console: serial on stdio.
        raw = [*qemu.get_qemu_base_args(), *qemu.loader_args]
        return session.result.milestones["dom0:shell"], wall, raw
    finally:
        session.close()


def raw_qemu_boot(command: list[str], deadline: float = 300.0) -> float:
    """Seconds from starting QEMU by hand to dom0's prompt on its stdout."""
    started = time.monotonic()
    proc = subprocess.Popen(dying_with_us(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    seen = b""
    try:
        while PROMPT not in seen:
            if time.monotonic() - started > deadline:
                raise RuntimeError(f"raw QEMU: no prompt within {deadline:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    raise RuntimeError("raw QEMU exited before the prompt")
                seen = seen[-64:] + chunk
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def fault_boot(spec, fault, workdir: Path) -> tuple[float | None, float | None, float, str]:
    """(first failure line to verdict, last console byte to a hang's verdict, whole failing boot, signature)."""
    session = BootSession(spec, workdir, tweaks=fault.tweaks)
    started = time.monotonic()
    failure = None
    try:
        session.boot()
        session.check()  # some faults let dom0 reach its prompt and stop answering afterwards
    except BootFailure as exc:
        failure = exc.failure
    finally:
        result = session.close()
    wall = time.monotonic() - started
    quiet = result.diagnosis.seconds_from_quiet if result.diagnosis is not None else None
    signature = failure.signature if failure is not None else "(passed)"
    if failure is None or failure.line is None or failure.decided is None:
        return None, quiet, wall, signature
    return failure.decided - failure.line.t, quiet, wall, signature


def faults_for(spec) -> list:
    """The faults this target can take (test_faults.py runs the same)."""
    chosen = list(FAULTS) if spec.can("fault-injection") else []
    chosen += [f for f in BOARD_HANG_FAULTS if spec.can("uboot") and f not in chosen]
    return chosen + (list(XEN_HOOK_FAULTS) if spec.can("xen-fault-hooks") else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qemu-virt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-faults", action="store_true")
    args = parser.parse_args()
    spec = targets.load_spec(args.target)

    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        work = Path(tmp)
        harness_prompt, harness_wall, raw_times = [], [], []
        for i in range(args.repeat):
            to_prompt, wall, command = harness_boot(spec, work / f"good-{i}")
            harness_prompt.append(to_prompt)
            harness_wall.append(wall)
            if command is not None:
                raw_times.append(raw_qemu_boot(command))
        print(f"good boot on {spec.name}, {args.repeat} runs (median, min, max in seconds)")
        for label, values in (
            ("harness: power-on -> dom0 prompt", harness_prompt),
            ("harness: boot() call -> dom0 prompt", harness_wall),
            ("raw QEMU: start -> dom0 prompt", raw_times),
        ):
            if not values:
                print(f"  {label:40}    n/a (a board: no QEMU command line to replay)")
                continue
            print(f"  {label:40} {statistics.median(values):6.2f} {min(values):6.2f} {max(values):6.2f}")

        if args.no_faults:
            return 0
        print("\ninjected faults: first failure line -> verdict, last console byte -> a hang's verdict, whole boot")
        print(f"  {'fault':34} {'line->verdict':>13} {'quiet->verdict':>14} {'wall':>8}   verdict / signature")
        for fault in faults_for(spec):
            to_verdict, quiet, wall, signature = fault_boot(spec, fault, work / fault.name)
            line = f"{to_verdict:12.2f}s" if to_verdict is not None else "            -"
            hang = f"{quiet:13.2f}s" if quiet is not None else "             -"
            mark = "" if signature == fault.signature else f"   (expected {fault.signature})"
            print(f"  {fault.name:34} {line} {hang} {wall:7.2f}s   {fault.verdict} / {signature}{mark}")
        print("  -: no failure line (a hang, or QEMU refusing to start), or no diagnosis (not a hang)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
