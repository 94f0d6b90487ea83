"""`harness bisect` for real: a git repository made from the pinned Debian xen source with a planted series
(tests/bisect_series.py: harmless commits, a build break, one regression in Xen's C code that only the
harness's checks see), bisected on the target by building and booting each step.

The first bisection must name the regression and step around the break (`complete`). The second bisects
the series' tail, c4..c7, as ordered prebuilt images (`--builds`: the first bisection's builds, from the
cache), where the harmless c5 sits right before the regression, with the test hook HARNESS_BISECT_FLAKE
failing c5's first boot: it must end `inconsistent` instead of blaming c5. So the second only boots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bisect_series import BREAK, REGRESSION, SERIES, git, make_series

from harness.bisect import Worktree
from harness.cache import Cache
from harness.targets import TargetSpec
from harness.xenbuild import build_git_tree

# arm64 Xen built from the pinned 4.17 source (the builder's arch) on a QEMU target: one target runs it.
pytestmark = [pytest.mark.boot, pytest.mark.requires("xen-fault-hooks"), pytest.mark.requires("qemu")]


@pytest.fixture(scope="session")
def series(tmp_path_factory) -> tuple[Path, list[str]]:
    directory = tmp_path_factory.mktemp("bisect-series")
    return directory / "xen", make_series(directory)


def harness_bisect(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bisect", *args, "--json"], capture_output=True,
                          text=True, timeout=1800, env={**os.environ, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout)


def user_state(repo: Path) -> tuple:
    return git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"), git(repo, "status", "--porcelain")


def test_bisect_names_the_regression_and_skips_the_break(series, target_spec: TargetSpec, session_artifacts: Path,
                                                         record_property) -> None:
    repo, hashes = series
    before = user_state(repo)
    out = session_artifacts / f"{target_spec.name}-bisect-complete"
    proc, report = harness_bisect("--repo", str(repo), "--good", hashes[0], "--bad", hashes[-1],
                                  "--target", str(target_spec.path), "--artifacts", str(out))
    record_property("boots", report["boots"])
    record_property("wall_s", report["wall_s"])
    print(proc.stderr)  # the progress lines, for the log
    assert (proc.returncode, report["outcome"]) == (0, "complete"), report["why"] + "\n" + proc.stderr[-3000:]
    culprit = report["culprit"]
    assert culprit == {"rev": hashes[REGRESSION], "subject": SERIES[REGRESSION - 1][0],
                       "author": "Planted Series <series@harness.invalid>"}
    assert report["parent"]["rev"] == hashes[REGRESSION - 1]
    assert report["failure"]["class"] == "failed" and report["failure"]["stage"] == "checks"
    assert "region" in " ".join(report["failure"]["console"]), report["failure"]  # the check that saw it
    broken = [s for s in report["steps"] if s["rev"] == hashes[BREAK]]
    assert broken and all(s["mark"] == "skip" and s["trials"][0]["verdict"] == "build-failed" for s in broken)
    assert report["boots"] <= report["budget"], f"{report['boots']} boots, budget {report['budget']}"
    assert any(f"--xen {report['steps'][-1]['trials'][-1]['image']}" in line for line in report["reproduce"])
    assert (out / "bisect.json").is_file() and "## Culprit" in (out / "bisect.md").read_text()
    assert user_state(repo) == before
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1  # the scratch worktree is gone


@pytest.fixture(scope="session")
def tail_builds(series, tmp_path_factory) -> Path:
    """c4..c7's images (built by the first bisection: taken from the cache) as ordered builds: 4-<hash>, …, 7-<hash>."""
    repo, hashes = series
    directory = tmp_path_factory.mktemp("builds")
    cache = Cache()
    with Worktree(repo, hashes[-1], cache.dir("bisect")) as tree:
        for i in range(REGRESSION - 2, len(hashes)):
            tree.checkout(hashes[i])
            image, _ = build_git_tree(cache, tree.path, "arm64", {})
            (directory / f"{i}-{hashes[i][:12]}").symlink_to(image.path)
    return directory


def test_a_flaky_step_over_builds_ends_inconsistent(tail_builds: Path, target_spec: TargetSpec,
                                                    session_artifacts: Path, record_property) -> None:
    """--builds over c4..c7: c5, harmless and right before the regression, fails its first boot (the test hook)."""
    flaky = next(p.name for p in tail_builds.iterdir() if p.name.startswith(f"{REGRESSION - 1}-"))
    out = session_artifacts / f"{target_spec.name}-bisect-flaky"
    proc, report = harness_bisect("--builds", str(tail_builds), "--target", str(target_spec.path),
                                  "--artifacts", str(out), env={"HARNESS_BISECT_FLAKE": flaky})
    record_property("boots", report["boots"])
    record_property("wall_s", report["wall_s"])
    print(proc.stderr)
    assert (proc.returncode, report["outcome"]) == (4, "inconsistent"), report["why"] + "\n" + proc.stderr[-3000:]
    assert report["culprit"] is None and report["failure"] is None
    results = {(r["rev"], r["mark"]) for r in report["inconsistent"]}
    assert {(flaky, "bad"), (flaky, "good")} <= results, report["inconsistent"]
    flaked = next(s for s in report["steps"] if s["rev"] == flaky)
    assert flaked["trials"][0]["verdict"] == "crashed"  # a real failed boot, not a fake verdict
