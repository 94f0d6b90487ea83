"""`harness bisect`: the commit (or prebuilt build) that broke a boot, found by booting, and proven.

Like Xen's own bisector (OSSTest's), it names a culprit only when it can prove it, on the same target:

1. both ends are reproduced first: the good end must pass and the bad end must fail, else the outcome is
   **unreproducible** (nothing was bisected);
2. `git bisect` (in a scratch worktree: the user's checkout, index and branch are never touched) or a
   binary search over ordered builds picks each step; each is built (harness/xenbuild.py, cached by tree
   hash + config, incremental in the worktree) and booted with the harness's own boot (BootSession);
3. the culprit's parent and the culprit are then booted alternately, pass, fail, pass, fail: anything else
   is **inconsistent** (no commit is named; the results are shown); skips that hide the culprit make it
   **inconclusive** (the candidate range is given); else it is **complete**.

A step is classed (`classify`): a build that fails or cannot be booted is skipped; a lab error is retried
once, then skipped; passed is good; failed, crashed or hung is bad, with `--same-failure` only when its
class, stage and signature are the bad end's (else skipped). A guard stops a revision booted more than
MAX_BOOTS_PER_REVISION times. Without flakes the boots stay within ⌈log2 N⌉ + 6 (N: the candidates).

The proof (`prove`) runs over any step runner (a function revision -> Trial), so it is unit-tested with a
fake one; `BootRunner` is the real one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from .errors import HarnessError, InfrastructureError, UsageError

# Exit statuses of `harness bisect`, one per outcome (bad input: 2; the lab or a missing tool: 128).
EXIT_BY_OUTCOME = {"complete": 0, "inconclusive": 3, "inconsistent": 4, "unreproducible": 5}
MAX_BOOTS_PER_REVISION = 6  # ends and bisect steps boot once, confirmation twice more, lab retries double that
FLAKE_ENV = "HARNESS_BISECT_FLAKE"  # test hook: REV[:FAULT], the first boot of REV gets the fault (harness/faults.py)
FLAKE_FAULT = "impossible-dom0-mem"  # Xen panics building dom0: a real crash, in seconds


class Mark(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


FAILED_VERDICTS = ("failed", "crashed", "hung")
LAB = "infrastructure-error"
BUILD_FAILED = "build-failed"


@dataclass
class Trial:
    """One attempt at a revision: built (or not), booted (or not), and what the boot said."""

    verdict: str  # a boot's verdict (passed, failed, crashed, hung, infrastructure-error, untestable) or build-failed
    stage: str | None = None
    signature: str | None = None
    why: str = ""  # one line: the failure's description, the lab's sentence, the build's error
    evidence: list[str] = field(default_factory=list)  # console lines (or failing findings) that show it
    build_s: float | None = None
    boot_s: float | None = None
    build: str = ""  # "cached", "built", "" (prebuilt or none)
    image: str | None = None  # the Xen image booted
    artifacts: str | None = None  # the boot's artifacts directory
    booted: bool = True  # a boot was attempted (not a build failure)

    @property
    def failure(self) -> tuple[str, str | None, str | None]:
        """What --same-failure compares: class (the verdict), stage and signature."""
        return (self.verdict, self.stage, self.signature)


@dataclass
class Step:
    """A revision tested once in one phase of the proof: its trials (two when the lab failed once) and its mark."""

    n: int
    phase: str  # good-end, bad-end, bisect, confirm-parent, confirm-culprit
    rev: str
    mark: Mark
    trials: list[Trial]
    note: str = ""  # why the mark is what it is, when not plain

    @property
    def last(self) -> Trial:
        return self.trials[-1]

    def to_dict(self) -> dict:
        return {"n": self.n, "phase": self.phase, "rev": self.rev, "mark": str(self.mark), "note": self.note,
                "trials": [asdict(t) for t in self.trials]}


def classify(trial: Trial, reference: Trial | None = None, same_failure: bool = False) -> tuple[Mark, str]:
    """A trial's mark, and why when it is not the verdict's plain meaning. A lab error is SKIP here: the caller
    retries it once first."""
    if trial.verdict == "passed":
        return Mark.GOOD, ""
    if trial.verdict in FAILED_VERDICTS:
        if same_failure and reference is not None and trial.failure != reference.failure:
            want = "/".join(str(x) for x in reference.failure)
            got = "/".join(str(x) for x in trial.failure)
            return Mark.SKIP, f"failed otherwise than the bad end ({got}, not {want})"
        return Mark.BAD, ""
    if trial.verdict == BUILD_FAILED:
        return Mark.SKIP, "the build failed"
    if trial.verdict == LAB:
        return Mark.SKIP, "the lab failed twice"
    return Mark.SKIP, f"cannot be tested ({trial.verdict})"


class Bisector:
    """What picks the steps: git bisect in a worktree (GitBisector) or a search over ordered builds (ListBisector)."""

    good: str
    bad: str
    count: int  # candidates: the revisions after good up to bad

    def start(self) -> None: ...
    def next(self) -> str | None: ...  # the revision to test, None when done
    def mark(self, rev: str, mark: Mark) -> None: ...
    def found(self) -> tuple[str | None, list[str]]: ...  # (culprit, []) or (None, the candidates skips hide it among)
    def parent(self, rev: str) -> str: ...
    def steps_left(self) -> int: ...  # steps after the one being tested
    def describe(self, rev: str) -> dict: ...  # hash/name, subject, author


class ListBisector(Bisector):
    """Binary search over ordered revisions (revs[0] good, revs[-1] bad); a skipped one is stepped around, as git
    bisect does, and the culprit stays unknown when only skipped ones are left between the last good and first bad."""

    def __init__(self, revs: Sequence[str], describe: Callable[[str], dict] | None = None) -> None:
        self.revs = list(revs)
        self.good, self.bad = self.revs[0], self.revs[-1]
        self.count = len(self.revs) - 1
        self.lo, self.hi = 0, len(self.revs) - 1  # last known good, first known bad
        self.skipped: set[int] = set()
        self._describe = describe

    def start(self) -> None:
        pass

    def next(self) -> str | None:
        inside = [i for i in range(self.lo + 1, self.hi) if i not in self.skipped]
        if not inside:
            return None
        mid = (self.lo + self.hi) // 2

        def worst(i: int) -> int:  # the untested revisions left when `i` turns out good, or bad: the larger
            return max(sum(1 for j in inside if j > i), sum(1 for j in inside if j < i))

        return self.revs[min(inside, key=lambda i: (worst(i), abs(i - mid), i))]

    def mark(self, rev: str, mark: Mark) -> None:
        i = self.revs.index(rev)
        if mark is Mark.GOOD:
            self.lo = max(self.lo, i)
        elif mark is Mark.BAD:
            self.hi = min(self.hi, i)
        else:
            self.skipped.add(i)

    def found(self) -> tuple[str | None, list[str]]:
        if self.hi - self.lo == 1:
            return self.revs[self.hi], []
        return None, self.revs[self.lo + 1:self.hi + 1]

    def parent(self, rev: str) -> str:
        return self.revs[self.revs.index(rev) - 1]

    def steps_left(self) -> int:  # after the one being tested, as git bisect counts them
        candidates = self.hi - self.lo - sum(1 for i in self.skipped if self.lo < i < self.hi)
        return max(0, math.ceil(math.log2(max(1, candidates))) - 1)

    def describe(self, rev: str) -> dict:
        return self._describe(rev) if self._describe else {"rev": rev}


def git(repo: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"})
    except FileNotFoundError:
        raise InfrastructureError("bisecting a repository needs git: install Debian's `git` package.") from None
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"`git {' '.join(args)}` in {repo} took over {timeout:.0f} s.") from None
    if check and proc.returncode != 0:
        raise InfrastructureError(f"`git {' '.join(args)}` failed in {repo}: {proc.stderr.strip()}")
    return proc


def check_range(repo: Path, good: str, bad: str) -> tuple[str, str, int]:
    """(good hash, bad hash, the commits in good..bad), or one sentence on what is wrong with the input."""
    if not repo.is_dir():
        raise UsageError(f"--repo {repo} is no directory: give the top of a Xen git checkout.")
    top = git(repo, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise UsageError(f"--repo {repo} is not a git repository: give the top of a Xen git checkout.")
    hashes = []
    for option, rev in (("--good", good), ("--bad", bad)):
        proc = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if proc.returncode != 0:
            raise UsageError(f"{option} {rev} is no commit in {repo}: give a hash, tag or branch that "
                             f"`git -C {repo} rev-parse` knows.")
        hashes.append(proc.stdout.strip())
    good_hash, bad_hash = hashes
    if good_hash == bad_hash:
        raise UsageError(f"--good {good} and --bad {bad} are the same commit ({good_hash[:12]}): give a good commit "
                         "older than the bad one.")
    if git(repo, "merge-base", "--is-ancestor", good_hash, bad_hash, check=False).returncode != 0:
        raise UsageError(f"--good {good} is not an ancestor of --bad {bad}: give a good commit in the bad one's "
                         "history (git bisect looks between them).")
    count = int(git(repo, "rev-list", "--count", f"{good_hash}..{bad_hash}").stdout)
    return good_hash, bad_hash, count


class GitBisector(Bisector):
    """`git bisect --no-checkout` in the scratch worktree `tree`: it picks (BISECT_HEAD), the runner checks out."""

    def __init__(self, tree: Path, good: str, bad: str, count: int) -> None:
        self.tree, self.good, self.bad, self.count = tree, good, bad, count
        self._next: str | None = None
        self._culprit: str | None = None
        self._candidates: list[str] = []
        self._left = math.ceil(math.log2(max(1, count)))

    def start(self) -> None:
        self._read(git(self.tree, "bisect", "start", "--no-checkout", self.bad, self.good))

    def next(self) -> str | None:
        return self._next

    def mark(self, rev: str, mark: Mark) -> None:
        self._read(git(self.tree, "bisect", str(mark), rev, check=False))

    def _read(self, proc: subprocess.CompletedProcess) -> None:
        """What git bisect said: the next revision (BISECT_HEAD), the first bad commit, or only skipped ones left."""
        out = proc.stdout
        self._next = None
        if m := re.search(r"^([0-9a-f]{40}) is the first bad commit", out, re.M):
            self._culprit = m.group(1)
        elif "There are only 'skip'ped commits left to test" in out:
            listed = set(re.findall(r"^([0-9a-f]{40})$", out, re.M))
            order = git(self.tree, "rev-list", "--reverse", f"{self.good}..{self.bad}").stdout.split()
            self._candidates = [c for c in order if c in listed]
        elif m := re.search(r"^Bisecting: .*\(roughly (\d+) steps?\)", out, re.M):
            self._left = int(m.group(1))
            self._next = git(self.tree, "rev-parse", "BISECT_HEAD").stdout.strip()
        else:
            raise InfrastructureError(f"git bisect said what the harness cannot read: {(out + proc.stderr).strip()}")

    def found(self) -> tuple[str | None, list[str]]:
        return self._culprit, self._candidates

    def parent(self, rev: str) -> str:
        return git(self.tree, "rev-parse", f"{rev}^").stdout.strip()

    def steps_left(self) -> int:
        return self._left

    def describe(self, rev: str) -> dict:
        return describe_commit(self.tree, rev)


def describe_commit(repo: Path, rev: str) -> dict:
    """A commit as git prints it: hash, subject, `Author: Name <email>`."""
    h, subject, author = git(repo, "log", "-1", "--format=%H%n%s%n%an <%ae>", rev).stdout.splitlines()[:3]
    return {"rev": h, "subject": subject, "author": author}


def budget(count: int) -> int:
    """Boots a bisection may take when nothing flakes: ⌈log2 N⌉ steps, both ends, four confirmation boots."""
    return math.ceil(math.log2(max(1, count))) + 6


@dataclass
class Report:
    outcome: str
    why: str
    target: str
    mode: str  # "git" or "builds"
    good: dict
    bad: dict
    count: int
    budget: int
    boots: int = 0
    culprit: dict | None = None
    parent: dict | None = None
    failure: dict | None = None  # the culprit's failure: class, stage, signature, why, console lines
    candidates: list[dict] = field(default_factory=list)
    inconsistent: list[dict] = field(default_factory=list)  # the results that disagree (revision, phase, mark)
    steps: list[Step] = field(default_factory=list)
    reproduce: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    artifacts: str = ""

    @property
    def exit_status(self) -> int:
        return EXIT_BY_OUTCOME[self.outcome]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["steps"] = [s.to_dict() for s in self.steps]
        data["exit_status"] = self.exit_status
        return data


class GuardTripped(Exception):
    def __init__(self, rev: str) -> None:
        super().__init__(rev)
        self.rev = rev


class Proof:
    """The bisection and its proof over a step runner: ends, steps, alternation; each boot counted."""

    def __init__(self, bisector: Bisector, run: Callable[[str], Trial], same_failure: bool = False,
                 on_step: Callable[[Step, str], None] | None = None,
                 max_boots: int = MAX_BOOTS_PER_REVISION) -> None:
        self.bisector, self.run, self.same_failure = bisector, run, same_failure
        self.on_step = on_step or (lambda step, progress: None)
        self.max_boots = max_boots
        self.steps: list[Step] = []
        self.boots = 0
        self.boots_of: dict[str, int] = {}
        self.reference: Trial | None = None  # the bad end's failure
        self.bisect_steps = 0

    def test(self, rev: str, phase: str) -> Step:
        """Build and boot `rev` once (a lab error: once more), classed."""
        trials = []
        for _attempt in range(2):
            if self.boots_of.get(rev, 0) >= self.max_boots:
                raise GuardTripped(rev)
            trial = self.run(rev)
            trials.append(trial)
            if trial.booted:
                self.boots += 1
                self.boots_of[rev] = self.boots_of.get(rev, 0) + 1
            if trial.verdict != LAB:
                break
        mark, note = classify(trials[-1], self.reference, self.same_failure)
        if len(trials) == 2 and trials[0].verdict == LAB and trials[1].verdict != LAB:
            note = f"the lab failed once, then {trials[1].verdict}" + (f"; {note}" if note else "")
        step = Step(len(self.steps) + 1, phase, rev, mark, trials, note)
        self.steps.append(step)
        if phase == "bisect":
            self.bisect_steps += 1
            progress = f"step {self.bisect_steps} of ~{self.bisect_steps + self.bisector.steps_left()}"
        else:
            progress = phase.replace("-", " ")
        self.on_step(step, progress)
        return step

    def run_all(self) -> tuple[str, str, dict]:
        """(outcome, why, details): details may hold culprit, parent, candidates, inconsistent."""
        b = self.bisector
        try:
            good = self.test(b.good, "good-end")
            if good.mark is not Mark.GOOD:
                return "unreproducible", f"the good end did not pass ({_said(good)})", {}
            bad = self.test(b.bad, "bad-end")
            if bad.mark is not Mark.BAD:
                return "unreproducible", f"the bad end did not fail ({_said(bad)})", {}
            self.reference = bad.last
            b.start()
            while (rev := b.next()) is not None:
                b.mark(rev, self.test(rev, "bisect").mark)
            culprit, candidates = b.found()
            if culprit is None:
                return "inconclusive", (f"skipped revisions hide the first bad one among {len(candidates)} "
                                        "candidates"), {"candidates": candidates}
            parent = b.parent(culprit)
            for rev, phase, want in ((parent, "confirm-parent", Mark.GOOD), (culprit, "confirm-culprit", Mark.BAD)) * 2:
                step = self.test(rev, phase)
                if step.mark is not want:
                    who = "parent" if rev == parent else "candidate"
                    said = (f"could not be tested in confirmation ({_said(step)})" if step.mark is Mark.SKIP else
                            f"gave both results: {want} before, {step.mark} in confirmation ({_said(step)})")
                    return "inconsistent", f"{_short(rev)} ({who}) {said}; no commit is named", \
                        {"inconsistent": self._results(culprit, parent)}
            return "complete", "both ends reproduced; parent and culprit alternated pass, fail, pass, fail", \
                {"culprit": culprit, "parent": parent}
        except GuardTripped as exc:
            return "inconclusive", (f"{exc.rev[:12]} was booted {self.boots_of[exc.rev]} times, the most a revision "
                                    "may be: the guard stopped the bisection"), {"candidates": []}

    def _results(self, *revs: str) -> list[dict]:
        """Every result of these revisions (and any other revision that gave both), in order."""
        marks: dict[str, set] = {}
        for s in self.steps:
            marks.setdefault(s.rev, set()).add(s.mark)
        both = {r for r, m in marks.items() if {Mark.GOOD, Mark.BAD} <= m}
        return [{"n": s.n, "rev": s.rev, "phase": s.phase, "mark": str(s.mark), "verdict": s.last.verdict}
                for s in self.steps if s.rev in revs or s.rev in both]


def _said(step: Step) -> str:
    t = step.last
    return t.verdict + (f": {t.why}" if t.why else "") + (f"; {step.note}" if step.note else "")


def bisect(bisector: Bisector, run: Callable[[str], Trial], *, target: str, mode: str, same_failure: bool = False,
           on_step: Callable[[Step, str], None] | None = None, reproduce: Callable[[str, str], list[str]] | None = None,
           max_boots: int = MAX_BOOTS_PER_REVISION) -> Report:
    """Bisect and prove: the report (outcome, culprit, steps, boots, reproduction)."""
    started = time.monotonic()
    proof = Proof(bisector, run, same_failure, on_step, max_boots)
    outcome, why, details = proof.run_all()
    report = Report(outcome, why, target, mode, bisector.describe(bisector.good), bisector.describe(bisector.bad),
                    bisector.count, budget(bisector.count), proof.boots, steps=proof.steps)
    report.candidates = [bisector.describe(c) for c in details.get("candidates", [])]
    report.inconsistent = details.get("inconsistent", [])
    if culprit := details.get("culprit"):
        report.culprit = bisector.describe(culprit)
        report.parent = bisector.describe(details["parent"])
        failing = next(s.last for s in reversed(proof.steps) if s.rev == culprit and s.mark is Mark.BAD)
        report.failure = {"class": failing.verdict, "stage": failing.stage, "signature": failing.signature,
                          "why": failing.why, "console": failing.evidence, "artifacts": failing.artifacts}
        if reproduce:
            report.reproduce = reproduce(culprit, details["parent"])
    report.wall_s = round(time.monotonic() - started, 1)
    return report


# --- the real step runner -------------------------------------------------------------------------


def flake_hook(value: str | None) -> tuple[str, str] | None:
    """HARNESS_BISECT_FLAKE=REV[:FAULT]: (revision prefix, fault name), or None."""
    if not value:
        return None
    rev, _, fault = value.partition(":")
    return rev, fault or FLAKE_FAULT


class BootRunner:
    """A revision built (or taken from --builds), checked out first in git mode, and booted on the target."""

    def __init__(self, spec, artifacts: Path, image_of: Callable[[str], tuple[Path, str, float]],
                 images=None, flake: tuple[str, str] | None = None) -> None:
        self.spec, self.artifacts, self.image_of, self.images = spec, artifacts, image_of, images
        self.flake = flake
        self.tried = 0
        self.boots_of: dict[str, int] = {}

    def __call__(self, rev: str) -> Trial:
        from .boot import BootSession
        from .faults import BY_NAME
        from .findings import failures
        from .monitor import BootFailure
        from .xenbuild import BuildFailed

        self.tried += 1
        started = time.monotonic()
        try:
            image, how, build_s = self.image_of(rev)
        except BuildFailed as exc:
            return Trial(BUILD_FAILED, why=str(exc).splitlines()[0], evidence=str(exc).splitlines()[1:],
                         build_s=round(time.monotonic() - started, 1), build="cached" if exc.cached else "built",
                         booted=False)
        run_dir = self.artifacts / f"{self.tried:02d}-{_short(rev)}"
        tweaks = None
        nth = self.boots_of[rev] = self.boots_of.get(rev, 0) + 1
        if self.flake and rev.startswith(self.flake[0]) and nth == 1:
            tweaks = BY_NAME[self.flake[1]].tweaks  # the test hook: this boot fails for real
        session = BootSession(self.spec, run_dir, overrides={"xen": image}, images=self.images, tweaks=tweaks)
        boot_started = time.monotonic()
        try:
            session.boot()
            session.check()
        except (BootFailure, HarnessError):
            pass  # recorded in the result
        finally:
            result = session.close()
        boot_s = round(time.monotonic() - boot_started, 1)
        verdict = str(result.verdict)
        trial = Trial(verdict, build_s=build_s, boot_s=boot_s, build=how, image=str(image), artifacts=str(run_dir))
        if result.failure is not None and verdict != "passed":
            f = result.failure
            trial.stage, trial.signature, trial.why = f.stage, f.signature, f.description
            trial.evidence = [str(line) for line in f.evidence]
        elif result.error:
            trial.why = result.error.splitlines()[0]
        elif bad := failures(result.findings):
            trial.stage, trial.signature = "checks", ",".join(sorted({f.rule for f in bad}))
            trial.why = f"{len(bad)} failing finding{'s' if len(bad) > 1 else ''}"
            trial.evidence = [str(f) for f in bad]
        return trial


def _short(rev: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", rev[:12] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev)


class Worktree:
    """A scratch `git worktree` of `repo` (detached, under `parent`), removed on exit, on Ctrl-C too: the user's
    checkout, index and branch are never touched (git keeps a worktree's HEAD and bisect refs its own)."""

    def __init__(self, repo: Path, rev: str, parent: Path) -> None:
        self.repo, self.rev = repo, rev
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="bisect-", dir=parent)) / "tree"

    def __enter__(self) -> Worktree:
        git(self.repo, "worktree", "add", "--detach", "--quiet", str(self.path), self.rev, timeout=600)
        return self

    def __exit__(self, *exc) -> None:
        git(self.repo, "worktree", "remove", "--force", str(self.path), check=False, timeout=600)
        shutil.rmtree(self.path.parent, ignore_errors=True)
        git(self.repo, "worktree", "prune", check=False)

    def checkout(self, rev: str) -> None:
        git(self.path, "checkout", "--detach", "--force", "--quiet", rev, timeout=600)


def builds_in(directory: Path) -> list[tuple[str, Path]]:
    """--builds DIR: (name, Xen image) of each entry in order (names compared with their numbers as numbers): a file
    is an image; a directory holds one as `xen` (or `xen/xen`, a built tree)."""
    if not directory.is_dir():
        raise UsageError(f"--builds {directory} is no directory: give one holding a Xen image per build, in order.")
    found = []
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue
        image = next((p for p in (entry, entry / "xen", entry / "xen" / "xen") if p.is_file()), None)
        if image is not None:
            found.append((entry.name, image))
    found.sort(key=lambda item: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                 for part in re.split(r"(\d+)", item[0]) if part])
    if len(found) < 2:
        raise UsageError(f"--builds {directory} holds {len(found)} Xen image(s): give at least two builds, "
                         "named so that their order is the order they were made (e.g. 001-…, 002-…).")
    return found


def pick_builds(found: list[tuple[str, Path]], good: str | None, bad: str | None) -> list[tuple[str, Path]]:
    """The builds from --good to --bad (default: the first and the last)."""
    names = [name for name, _ in found]
    first, last = 0, len(found) - 1
    for option, name in (("--good", good), ("--bad", bad)):
        if name is not None and name not in names:
            raise UsageError(f"{option} {name} is not one of the builds ({', '.join(names[:8])}"
                             f"{', …' if len(names) > 8 else ''}): give a build's name.")
    if good is not None:
        first = names.index(good)
    if bad is not None:
        last = names.index(bad)
    if first == last:
        raise UsageError(f"--good and --bad are the same build ({names[first]}): give a good build older than the bad.")
    if first > last:
        raise UsageError(f"--good {names[first]} comes after --bad {names[last]} in the builds' order: give the "
                         "older build as --good.")
    return found[first:last + 1]


def bisect_repo(spec, target: str, repo: Path, good: str, bad: str, count: int, config: dict, run_dir: Path, images,
                flake: tuple[str, str] | None, same_failure: bool, say: Callable[[str], None]) -> Report:
    """Bisect good..bad of the git checkout `repo` in a scratch worktree (under the cache; removed afterwards, on
    Ctrl-C too): each step checked out, built incrementally (cached by tree hash + config), booted on `spec`."""
    from .xenbuild import build_git_tree

    built: dict[str, Path] = {}
    with Worktree(repo, bad, images.cache.dir("bisect")) as tree:

        def image_of(rev: str) -> tuple[Path, str, float]:
            started = time.monotonic()
            tree.checkout(rev)
            artifact, cached = build_git_tree(images.cache, tree.path, spec.arch, config)
            built[rev] = artifact.path
            return artifact.path, "cached" if cached else "built", round(time.monotonic() - started, 1)

        bisector = GitBisector(tree.path, good, bad, count)
        say(f"harness: {count} commits in {good[:12]}..{bad[:12]}: about {budget(count) - 6} steps, at most "
            f"{budget(count)} boots without flakes; scratch worktree {tree.path}")
        return bisect(bisector, BootRunner(spec, run_dir, image_of, images, flake), target=spec.name, mode="git",
                      same_failure=same_failure,
                      on_step=lambda step, progress: say(step_line(step, progress, bisector.describe)),
                      reproduce=lambda culprit, parent: reproduce_git(target, repo, config, spec.arch, culprit,
                                                                      parent, built))


def bisect_builds(spec, target: str, found: list[tuple[str, Path]], run_dir: Path, images,
                  flake: tuple[str, str] | None, same_failure: bool, say: Callable[[str], None]) -> Report:
    """Bisect ordered prebuilt Xen images (--builds) on `spec`: the same proof as over commits."""
    paths = dict(found)
    bisector = ListBisector([name for name, _ in found], lambda name: {"rev": name, "path": str(paths[name])})
    say(f"harness: {bisector.count} builds after {found[0][0]}: at most {budget(bisector.count)} boots without flakes")
    return bisect(bisector, BootRunner(spec, run_dir, lambda name: (paths[name], "", None), images, flake),
                  target=spec.name, mode="builds", same_failure=same_failure,
                  on_step=lambda step, progress: say(step_line(step, progress, bisector.describe)),
                  reproduce=lambda culprit, parent: [f"harness boot --target {target} --xen {paths[culprit]}",
                                                     f"harness boot --target {target} --xen {paths[parent]}"])


def reproduce_git(target: str, repo: Path, config: dict, arch: str, culprit: str, parent: str,
                  built: dict[str, Path]) -> list[str]:
    """The commands that rebuild and boot the culprit, and boot the very images the bisection booted."""
    from .xenbuild import TOOLCHAINS

    tree = f"/tmp/xen-{culprit[:12]}"
    make = f"make -C {tree}/xen XEN_TARGET_ARCH={arch} CROSS_COMPILE={TOOLCHAINS[arch][0]}"
    lines = [f"git -C {repo} worktree add --detach {tree} {culprit}", f"{make} defconfig"]
    if config:
        items = "\\n".join(f"{k}={v}" for k, v in sorted(config.items()))
        lines += [f"printf '{items}\\n' >> {tree}/xen/.config", f"{make} olddefconfig"]
    lines += [f"{make} -j$(nproc)", f"harness boot --target {target} --xen {tree}/xen/xen",
              "# the very images the bisection booted: the culprit's, then its parent's",
              f"harness boot --target {target} --xen {built[culprit]}",
              f"harness boot --target {target} --xen {built[parent]}"]
    return lines


# --- the report -------------------------------------------------------------------------------------


def step_line(step: Step, progress: str, describe: Callable[[str], dict]) -> str:
    """One progress line: which step, the revision, build and boot times, the result."""
    t = step.last
    d = describe(step.rev)
    times = []
    if t.build_s is not None:
        times.append(f"build {t.build_s:.1f} s{f' ({t.build})' if t.build else ''}")
    if t.boot_s is not None:
        times.append(f"boot {t.boot_s:.1f} s")
    what = t.verdict + (f" at {t.stage}: {t.signature}" if t.signature else "")
    note = f"; {step.note}" if step.note else ""
    subject = f" {d['subject'][:50]!r}" if d.get("subject") else ""
    return f"{progress}: {_short(step.rev)}{subject}  {', '.join(times) or '-'}  => {step.mark} ({what}{note})"


def render_text(report: Report) -> str:
    lines = [f"bisect: {report.outcome.upper()}: {report.why}"]
    if report.culprit:
        c = report.culprit
        lines += ["", f"first bad {'commit' if report.mode == 'git' else 'build'}: {c['rev']}"]
        if "author" in c:
            lines += [f"Author: {c['author']}", f"    {c['subject']}"]
        f = report.failure
        lines += [f"its failure: {f['class']} at stage '{f['stage']}', signature {f['signature']} ({f['why']})"]
        lines += [f"    {line}" for line in f["console"][:12]]
        if f["artifacts"]:
            lines.append(f"    (its boot: {f['artifacts']}/console.log, result.json)")
    if report.candidates:
        lines += ["", "the first bad one is among:"] + [f"    {c['rev']} {c.get('subject', '')}"
                                                        for c in report.candidates]
    if report.inconsistent:
        lines += ["", "results that disagree (no commit is named):"]
        lines += [f"    #{r['n']:<3} {r['phase']:16} {_short(r['rev'])}  {r['mark']} ({r['verdict']})"
                  for r in report.inconsistent]
    lines += ["", f"{'#':>3} {'phase':16} {'revision':14} {'build':>10} {'boot':>8}  result"]
    for s in report.steps:
        t = s.last
        build = f"{t.build_s:.1f} s" if t.build_s is not None else "-"
        boot = f"{t.boot_s:.1f} s" if t.boot_s is not None else "-"
        retried = " (2 tries)" if len(s.trials) > 1 else ""
        what = t.verdict + (f" {t.stage}/{t.signature}" if t.signature else "")
        lines.append(f"{s.n:>3} {s.phase:16} {_short(s.rev):14} {build:>10} {boot:>8}  {s.mark} ({what}){retried}")
    lines += ["", f"boots: {report.boots} (budget without flakes: ⌈log2 {report.count}⌉ + 6 = {report.budget}); "
                  f"wall time {report.wall_s:.0f} s"]
    if report.reproduce:
        lines += ["", "reproduce the culprit's boot (and its parent's):"] + [f"    {c}" for c in report.reproduce]
    if report.artifacts:
        lines += ["", f"report: {report.artifacts}/bisect.md, bisect.json"]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    out = [f"# harness bisect: {report.outcome}", "", report.why, "",
           f"- target: `{report.target}`", f"- good: `{report.good['rev']}` {report.good.get('subject', '')}",
           f"- bad: `{report.bad['rev']}` {report.bad.get('subject', '')}",
           f"- candidates: {report.count}; boots: {report.boots} (budget ⌈log2 {report.count}⌉ + 6 = {report.budget});"
           f" wall time {report.wall_s:.0f} s", ""]
    if report.culprit:
        c, f = report.culprit, report.failure
        out += ["## Culprit", "", "```", f"{'commit' if report.mode == 'git' else 'build'} {c['rev']}"]
        if "author" in c:
            out += [f"Author: {c['author']}", "", f"    {c['subject']}"]
        out += ["```", "", f"Fails: **{f['class']}** at stage `{f['stage']}`, signature `{f['signature']}` "
                f"({f['why']})", "", "```", *f["console"], "```", "",
                f"Its boot's console and result: `{f['artifacts']}/console.log`, `result.json`." if f["artifacts"]
                else "", ""]
    if report.candidates:
        out += ["## Candidates (skips hide the culprit among them)", ""]
        out += [f"- `{c['rev']}` {c.get('subject', '')}" for c in report.candidates] + [""]
    if report.inconsistent:
        out += ["## Results that disagree", "", "| # | phase | revision | result |", "|---|---|---|---|"]
        out += [f"| {r['n']} | {r['phase']} | `{_short(r['rev'])}` | {r['mark']} ({r['verdict']}) |"
                for r in report.inconsistent] + [""]
    out += ["## Steps", "", "| # | phase | revision | build | boot | result | artifacts |",
            "|---|---|---|---|---|---|---|"]
    for s in report.steps:
        t = s.last
        build = f"{t.build_s:.1f} s {t.build}".strip() if t.build_s is not None else "-"
        boot = f"{t.boot_s:.1f} s" if t.boot_s is not None else "-"
        what = t.verdict + (f" `{t.stage}`/`{t.signature}`" if t.signature else "") + (f"; {s.note}" if s.note else "")
        out.append(f"| {s.n} | {s.phase} | `{_short(s.rev)}` | {build} | {boot} | **{s.mark}** ({what}) | "
                   f"{Path(t.artifacts).name if t.artifacts else '-'} |")
    if report.reproduce:
        out += ["", "## Reproduce", "", "```", *report.reproduce, "```"]
    return "\n".join(out) + "\n"


def save(report: Report, directory: Path) -> None:
    report.artifacts = str(directory)
    (directory / "bisect.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (directory / "bisect.md").write_text(render_markdown(report))
