"""harness.bisect without booting: the step classes, the proof and its outcomes over fake step runners (results per
revision, with flakes, lab errors and skips), the boot budget, git bisect driven in a real scratch worktree of a tiny
repository, and bad input. The real bisection of Xen is tests/test_bisect.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import bisect
from harness.bisect import BUILD_FAILED, LAB, GitBisector, ListBisector, Mark, Trial, budget, classify
from harness.errors import UsageError

FAIL = Trial("failed", "checks", "dt.hypervisor.reg", "1 failing finding", ["[dt.hypervisor.reg] …"])


def runner(first_bad: int, *, breaks=(), flakes=(), lab=()) -> Callable[[str], Trial]:
    """Revisions r0, r1, …: passed before `first_bad`, failed from it; `breaks` do not build; the first boot of each
    of `flakes` fails; the first attempt at each of `lab` is a lab error."""
    seen: dict[str, int] = {}

    def run(rev: str) -> Trial:
        i = int(rev[1:])
        seen[rev] = seen.get(rev, 0) + 1
        if i in breaks:
            return Trial(BUILD_FAILED, why="make exited 2", booted=False)
        if i in lab and seen[rev] == 1:
            return Trial(LAB, why="QEMU died")
        if i >= first_bad or (i in flakes and seen[rev] == 1):
            return Trial(FAIL.verdict, FAIL.stage, FAIL.signature, FAIL.why, list(FAIL.evidence))
        return Trial("passed")

    return run


def revs(n: int) -> list[str]:
    return [f"r{i}" for i in range(n + 1)]


def run_list(n: int, run, **kw) -> bisect.Report:
    return bisect.bisect(ListBisector(revs(n)), run, target="qemu-virt", mode="builds", **kw)


# --- classification -----------------------------------------------------------------------------------


@pytest.mark.parametrize("verdict, mark", [
    ("passed", Mark.GOOD), ("failed", Mark.BAD), ("crashed", Mark.BAD), ("hung", Mark.BAD),
    (BUILD_FAILED, Mark.SKIP), (LAB, Mark.SKIP), ("untestable", Mark.SKIP)])
def test_each_verdict_has_its_mark(verdict, mark):
    assert classify(Trial(verdict))[0] is mark


def test_same_failure_marks_bad_only_the_bad_ends_failure():
    same = Trial("failed", "checks", "dt.hypervisor.reg")
    other = Trial("crashed", "dom0-loading", "xen-panic")
    assert classify(same, FAIL, same_failure=True)[0] is Mark.BAD
    mark, why = classify(other, FAIL, same_failure=True)
    assert mark is Mark.SKIP and "crashed/dom0-loading/xen-panic, not failed/checks/dt.hypervisor.reg" in why
    assert classify(other, FAIL, same_failure=False)[0] is Mark.BAD


# --- outcomes -----------------------------------------------------------------------------------------


def test_complete_names_the_culprit_after_pass_fail_pass_fail():
    report = run_list(7, runner(5))
    assert report.outcome == "complete" and report.exit_status == 0
    assert report.culprit == {"rev": "r5"} and report.parent == {"rev": "r4"}
    confirm = [(s.rev, str(s.mark)) for s in report.steps if s.phase.startswith("confirm")]
    assert confirm == [("r4", "good"), ("r5", "bad")] * 2
    assert [s.phase for s in report.steps[:2]] == ["good-end", "bad-end"]
    assert report.failure["signature"] == "dt.hypervisor.reg" and report.failure["console"] == FAIL.evidence


def test_a_build_break_is_skipped_and_costs_no_boot():
    report = run_list(7, runner(6, breaks={3}))
    assert report.outcome == "complete" and report.culprit["rev"] == "r6"
    skipped = [s for s in report.steps if s.mark is Mark.SKIP]
    assert [s.rev for s in skipped] == ["r3"] and skipped[0].note == "the build failed"
    assert report.boots == sum(1 for s in report.steps for t in s.trials if t.booted)
    assert report.boots <= report.budget


def test_skips_next_to_the_culprit_make_it_inconclusive_with_the_range():
    report = run_list(7, runner(4, breaks={3}))
    assert report.outcome == "inconclusive" and report.exit_status == 3
    assert report.culprit is None
    assert [c["rev"] for c in report.candidates] == ["r3", "r4"]


def test_a_flake_ends_inconsistent_and_blames_no_neighbour():
    report = run_list(7, runner(6, flakes={3}))  # r3 is good, its first boot fails
    assert report.outcome == "inconsistent" and report.exit_status == 4
    assert report.culprit is None and report.failure is None
    shown = {(r["rev"], r["mark"]) for r in report.inconsistent}
    assert {("r3", "bad"), ("r3", "good")} <= shown  # both results of the flaky revision are shown
    assert "no commit is named" in report.why


@pytest.mark.parametrize("good_fails", [True, False])
def test_an_end_that_does_not_reproduce_is_unreproducible(good_fails):
    report = run_list(7, runner(0) if good_fails else runner(99))
    assert report.outcome == "unreproducible" and report.exit_status == 5
    assert report.why.startswith("the good end did not pass" if good_fails else "the bad end did not fail")
    assert len(report.steps) == (1 if good_fails else 2)  # nothing bisected


def test_a_lab_error_is_retried_once():
    report = run_list(7, runner(5, lab={4}))
    step = next(s for s in report.steps if s.rev == "r4")
    assert [t.verdict for t in step.trials] == [LAB, "passed"] and step.mark is Mark.GOOD
    assert "the lab failed once" in step.note
    assert report.outcome == "complete" and report.culprit["rev"] == "r5"


def test_a_lab_error_twice_is_a_skip():
    always_lab = {"r4"}
    base = runner(5)
    report = run_list(7, lambda rev: Trial(LAB, why="QEMU died") if rev in always_lab else base(rev))
    step = next(s for s in report.steps if s.rev == "r4")
    assert len(step.trials) == 2 and step.mark is Mark.SKIP and step.note == "the lab failed twice"
    assert report.outcome == "inconclusive"  # r4 is the culprit's parent: it cannot be proven good


def test_same_failure_skips_a_step_that_fails_otherwise():
    base = runner(5)

    def run(rev: str) -> Trial:
        return Trial("crashed", "dom0-loading", "xen-panic") if rev == "r3" else base(rev)

    report = run_list(7, run, same_failure=True)
    assert next(s for s in report.steps if s.rev == "r3").mark is Mark.SKIP
    assert report.outcome == "complete" and report.culprit["rev"] == "r5"


def test_the_guard_stops_a_revision_booted_too_often():
    report = run_list(3, runner(2), max_boots=2)  # confirmation needs a third boot of the culprit
    assert report.outcome == "inconclusive" and "the guard stopped the bisection" in report.why
    assert max(sum(1 for s in report.steps if s.rev == r for _ in s.trials) for r in revs(3)) <= 2


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 16, 33, 100])
def test_boots_stay_within_the_budget_wherever_the_culprit_is(n):
    for first_bad in range(1, n + 1):
        report = run_list(n, runner(first_bad))
        assert report.outcome == "complete" and report.culprit["rev"] == f"r{first_bad}"
        assert report.boots <= budget(n), f"n={n}, culprit r{first_bad}: {report.boots} boots > {budget(n)}"


def test_the_budget_is_log2_plus_six():
    assert [budget(n) for n in (1, 2, 7, 8, 9, 1000)] == [6, 7, 9, 9, 10, 16]


def test_the_report_renders_as_text_json_and_markdown(tmp_path):
    report = run_list(7, runner(5))
    bisect.save(report, tmp_path)
    data = json.loads((tmp_path / "bisect.json").read_text())
    assert data["outcome"] == "complete" and data["exit_status"] == 0 and data["culprit"]["rev"] == "r5"
    assert [s["mark"] for s in data["steps"]][:2] == ["good", "bad"]
    text = bisect.render_text(report)
    assert "bisect: COMPLETE" in text and "first bad build: r5" in text and f"boots: {report.boots}" in text
    assert "# harness bisect: complete" in (tmp_path / "bisect.md").read_text()


def test_a_progress_line_says_step_revision_times_and_result():
    lines = []
    bisect.bisect(ListBisector(revs(7)), lambda r: Trial("passed" if int(r[1:]) < 5 else "failed", build_s=1.5,
                                                         boot_s=12.25, build="built"),
                  target="t", mode="builds", on_step=lambda s, p: lines.append(bisect.step_line(s, p, lambda r: {})))
    assert lines[0].startswith("good end: r0")
    step = next(line for line in lines if line.startswith("step 1 of ~"))
    assert "build 1.5 s (built), boot 12.2 s" in step and "=> " in step


def test_the_flake_hook_reads_rev_and_fault():
    assert bisect.flake_hook("abc123") == ("abc123", bisect.FLAKE_FAULT)
    assert bisect.flake_hook("abc:wrong-dtuart") == ("abc", "wrong-dtuart")
    assert bisect.flake_hook("") is None


# --- git bisect, for real, on a tiny repository ---------------------------------------------------------


def sh(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "A U Thor", "GIT_AUTHOR_EMAIL": "a@example.invalid",
           "GIT_COMMITTER_NAME": "A U Thor", "GIT_COMMITTER_EMAIL": "a@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> tuple[Path, list[str]]:
    """c0..c7, each writing its number to `level`; the user's own checkout is on branch `work` with a staged edit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    sh(repo, "init", "-q", "-b", "work")
    hashes = []
    for i in range(8):
        (repo / "level").write_text(f"{i}\n")
        sh(repo, "add", "level")
        sh(repo, "commit", "-q", "-m", f"commit {i}")
        hashes.append(sh(repo, "rev-parse", "HEAD"))
    (repo / "level").write_text("user's own edit\n")
    sh(repo, "add", "level")
    return repo, hashes


def git_runner(tree: bisect.Worktree, first_bad: int, breaks=(), flakes=()) -> Callable[[str], Trial]:
    """Checks `rev` out in the scratch worktree and judges what is there, as the real runner builds what is there."""
    seen: dict[str, int] = {}

    def run(rev: str) -> Trial:
        tree.checkout(rev)
        level = int((tree.path / "level").read_text())
        seen[rev] = seen.get(rev, 0) + 1
        if level in breaks:
            return Trial(BUILD_FAILED, booted=False)
        return Trial("failed" if level >= first_bad or (level in flakes and seen[rev] == 1) else "passed")

    return run


def user_state(repo: Path) -> tuple:
    return (sh(repo, "rev-parse", "HEAD"), sh(repo, "symbolic-ref", "HEAD"), sh(repo, "diff", "--cached"),
            sh(repo, "status", "--porcelain"), (repo / "level").read_text())


def git_bisect(repo: Path, hashes: list[str], good: int, bad: int, first_bad: int, **kw) -> bisect.Report:
    g, b, count = bisect.check_range(repo, hashes[good], hashes[bad])
    with bisect.Worktree(repo, b, repo.parent / "scratch") as tree:
        return bisect.bisect(GitBisector(tree.path, g, b, count), git_runner(tree, first_bad, **kw),
                             target="t", mode="git")


def test_git_bisect_in_a_scratch_worktree_names_the_commit_and_leaves_the_user_alone(repo):
    repo, hashes = repo
    before = user_state(repo)
    report = git_bisect(repo, hashes, 0, 7, 6, breaks={3})
    assert report.outcome == "complete", report.why
    assert report.culprit == {"rev": hashes[6], "subject": "commit 6", "author": "A U Thor <a@example.invalid>"}
    assert any(s.rev == hashes[3] and s.mark is Mark.SKIP for s in report.steps)
    assert report.boots <= report.budget
    assert user_state(repo) == before  # checkout, branch, index and working tree untouched
    assert sh(repo, "worktree", "list", "--porcelain").count("worktree ") == 1  # the scratch one is gone
    assert sh(repo, "for-each-ref", "refs/bisect") == "" and not (repo / ".git" / "BISECT_LOG").exists()


def test_git_bisect_with_a_skip_next_to_the_culprit_is_inconclusive(repo):
    repo, hashes = repo
    report = git_bisect(repo, hashes, 0, 7, 4, breaks={3})
    assert report.outcome == "inconclusive"
    assert [c["rev"] for c in report.candidates] == [hashes[3], hashes[4]]


def test_git_bisect_with_a_flake_is_inconsistent(repo):
    repo, hashes = repo
    first = ListBisector(revs(7)).next()  # the midpoint git picks too, for a straight history
    report = git_bisect(repo, hashes, 0, 7, 6, flakes={int(first[1:])})
    assert report.outcome == "inconsistent" and report.culprit is None


def test_the_worktree_goes_away_on_ctrl_c(repo):
    repo, hashes = repo
    with pytest.raises(KeyboardInterrupt), bisect.Worktree(repo, hashes[7], repo.parent / "scratch") as tree:
        assert (tree.path / "level").is_file()
        raise KeyboardInterrupt
    assert not tree.path.exists()
    assert sh(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


# --- bad input: one sentence each ------------------------------------------------------------------------


def test_bad_input_is_one_sentence(repo, tmp_path):
    repo, hashes = repo
    cases = [
        ((tmp_path, "a", "b"), "is not a git repository"),
        ((repo, "no-such-rev", hashes[7]), "--good no-such-rev is no commit in"),
        ((repo, hashes[2], hashes[2]), "are the same commit"),
        ((repo, hashes[5], hashes[2]), "is not an ancestor of --bad"),
    ]
    (tmp_path / "plain").mkdir()
    cases[0] = ((tmp_path / "plain", "a", "b"), "is not a git repository")
    for (path, good, bad), said in cases:
        with pytest.raises(UsageError, match=said) as err:
            bisect.check_range(path, good, bad)
        assert "\n" not in str(err.value)


def test_builds_are_ordered_by_their_numbers_and_checked(tmp_path):
    for name in ("build-10", "build-9", "build-100"):
        (tmp_path / name).write_bytes(b"image")
    (tmp_path / "build-2").mkdir()
    (tmp_path / "build-2" / "xen").write_bytes(b"image")
    found = bisect.builds_in(tmp_path)
    assert [name for name, _ in found] == ["build-2", "build-9", "build-10", "build-100"]
    assert [n for n, _ in bisect.pick_builds(found, "build-9", None)] == ["build-9", "build-10", "build-100"]
    for good, bad, said in (("nope", None, "is not one of the builds"), ("build-9", "build-9", "same build"),
                            ("build-10", "build-9", "comes after --bad")):
        with pytest.raises(UsageError, match=said):
            bisect.pick_builds(found, good, bad)
    with pytest.raises(UsageError, match="give at least two builds"):
        bisect.builds_in(tmp_path / "build-2")


@pytest.mark.parametrize("argv, said", [
    ([], "give --repo XEN_SRC (a git checkout) or --builds DIR"),
    (["--repo", "."], "--repo needs --good REV and --bad REV"),
    (["--builds", ".", "--build-config", "CONFIG_DEBUG=y"], "--build-config goes with --repo"),
    (["--repo", ".", "--good", "a", "--bad", "b", "--build-config", "DEBUG"], "is not K=V"),
])
def test_the_cli_refuses_bad_arguments_in_one_sentence(argv, said):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bisect", *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
