"""No false reds: healthy boots of every target back to back while every core is kept busy.

    .venv/bin/python benchmarks/soak.py [--rounds 2] [--targets qemu-virt,…] [--load N]

A loaded host makes consoles go quiet (initramfs unpacking, TCG starved of CPU): the hang diagnosis
(harness/diagnose.py) then asks the machine where it is, and must never conclude a hang on a boot
that is only slow. Each boot is `harness boot`'s (boot, then every probe and check); the script prints
each verdict, how many times the quiet console was probed, and the count of verdicts other than
passed (false reds), and exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import targets  # noqa: E402
from harness.boot import BootSession  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.monitor import BootFailure, Verdict  # noqa: E402


def spin() -> None:
    """Burn one core until killed."""
    while True:
        pass


def soak_boot(spec, workdir: Path) -> tuple[str, int, float, str]:
    """(verdict, probes of a quiet console, wall seconds, what went wrong) of one healthy boot under load."""
    session = BootSession(spec, workdir)
    probes = []
    session.on_diagnosis = probes.append
    started = time.monotonic()
    problem = ""
    try:
        session.boot()
        session.check()
    except (BootFailure, HarnessError) as exc:
        problem = str(exc).splitlines()[0]
    finally:
        result = session.close()
    return str(result.verdict), len(probes), time.monotonic() - started, problem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--targets", default=",".join(targets.target_names()))
    parser.add_argument("--load", type=int, default=os.cpu_count(), help="busy processes (default: one per core)")
    args = parser.parse_args()
    specs = [targets.load_spec(name) for name in args.targets.split(",")]
    burners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for burner in burners:
        burner.start()
    bad = boots = probes = 0
    try:
        with tempfile.TemporaryDirectory(prefix="harness-soak-") as tmp:
            print(f"soak: {len(specs)} targets x {args.rounds} rounds, {args.load} busy processes")
            for round_ in range(args.rounds):
                for spec in specs:
                    verdict, probed, wall, problem = soak_boot(spec, Path(tmp) / f"{spec.name}-{round_}")
                    boots, probes = boots + 1, probes + probed
                    bad += verdict != Verdict.PASSED
                    print(f"  round {round_ + 1} {spec.name:18} {verdict:22} {wall:6.1f} s  {probed} probe(s)"
                          + (f"  {problem}" if problem else ""), flush=True)
    finally:
        for burner in burners:
            burner.kill()
    print(f"soak: {boots} boots, {probes} probes of a quiet console, {bad} false red(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
