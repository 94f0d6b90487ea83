"""Each failure of the newest session, judged against the earlier ones; and the trends over them.

A failure's class is decided by a fixed sequence of questions, as OSSTest's flight report does
(`sg-report-flight`), each answer kept as the failure's `why`:

1. Did the lab fail (the boot's class is lab: infrastructure-error; or a test since, so that the target's
   session ended: "not run (lab)", or the test that met it)?                        -> lab
2. Does an unexpired quarantine entry (`target::test` glob) match it?                -> quarantined
3. Did it pass on a retest in this session, or in another session of the same
   versions (the same Xen and kernel files booted)?                                 -> intermittent
4. Has it never passed, in this session or any earlier one?                         -> never-passed
5. Did it pass in the baseline (the newest earlier session that ran this test)?     -> regression
6. Did the baseline fail the same way (test verdict, boot verdict, stage, signature)?
                                                                     yes -> still-failing, no -> failing-differently

A failure is a target × test with any failed or error attempt (a test that passed on retest is one too:
intermittent). An expired quarantine entry quarantines nothing and is reported as expired.
"""

from __future__ import annotations

import fnmatch
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import yaml

from ..errors import UsageError
from .session import Session

# How the pytest plugin words a lab failure in a test after the boot, and the tests it left unrun.
LAB_MIDWAY = ("not run (lab): ", "infrastructure-error after stage ")

CLASSES = ("regression", "still-failing", "failing-differently", "never-passed", "intermittent", "lab",
           "quarantined")
FAILING = ("failed", "error")
MIN_EARLIER = 2  # earlier values a milestone needs before a slowdown can be judged against their median
MIN_SLOWDOWN_SECONDS = 0.5  # and by at least this much: TCG's timing jitters by tenths of a second


@dataclass(frozen=True)
class Quarantine:
    pattern: str  # `target::test`, fnmatch globs on both sides
    reason: str
    expires: date

    def matches(self, target: str, test: str) -> bool:
        return fnmatch.fnmatchcase(f"{target}::{test}", self.pattern)


def load_quarantine(path: Path) -> list[Quarantine]:
    """A YAML or JSON list of {pattern: 'target::test', reason: …, expires: YYYY-MM-DD}."""
    def bad(why: str) -> UsageError:
        return UsageError(f"--quarantine {path}: {why}: write a list of entries, each with pattern "
                          "('target::test', globs allowed), reason and expires (YYYY-MM-DD).")

    try:
        entries = yaml.safe_load(path.read_text())  # YAML reads JSON too
    except OSError as exc:
        raise UsageError(f"--quarantine {path} cannot be read ({exc.strerror}): give a quarantine file.") from None
    except yaml.YAMLError as exc:
        raise bad(f"not YAML or JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(entries, dict) and "quarantine" in entries:
        entries = entries["quarantine"]
    if not isinstance(entries, list):
        raise bad(f"expected a list, found {type(entries).__name__}")
    found = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) != {"pattern", "reason", "expires"}:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise bad(f"entry {n}: expected pattern, reason and expires, found {keys}")
        if "::" not in str(entry["pattern"]) or not str(entry["reason"]).strip():
            raise bad(f"entry {n}: expected a 'target::test' pattern and a reason, found {entry['pattern']!r} "
                      f"and {entry['reason']!r}")
        expires = entry["expires"]
        try:
            expires = expires if isinstance(expires, date) else date.fromisoformat(str(expires))
        except ValueError:
            raise bad(f"entry {n}: expires {expires!r} is not a date") from None
        found.append(Quarantine(str(entry["pattern"]), str(entry["reason"]).strip(), expires))
    return found


@dataclass
class Failure:
    target: str
    test: str
    klass: str  # one of CLASSES
    why: str  # the answer that decided the class, with its evidence (which session)
    verdict: str  # the test's last attempt
    attempts: list[str]
    boot_verdict: str | None
    stage: str | None
    signature: str | None
    message: str
    evidence: list[str] = field(default_factory=list)  # the boot's failure's console lines
    console: str | None = None  # the boot's console.log, relative to the session directory
    baseline: str | None = None  # the baseline session's directory name
    quarantine: str | None = None  # the reason of the entry that quarantines it (or that expired)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("klass")
        return d


def ran(session: Session, target: str, test: str) -> dict | None:
    """The test's entry when the session ran it (a skip is not a run)."""
    entry = session.targets.get(target, {}).get("tests", {}).get(test)
    return entry if entry and entry["verdict"] != "skipped" else None


def baseline(earlier: list[Session], target: str, test: str) -> tuple[Session, dict] | None:
    """The newest of `earlier` (newest first) that ran target × test, and the test's entry there."""
    return next(((s, e) for s in earlier if (e := ran(s, target, test))), None)


def how_failed(session: Session, target: str, test: str) -> tuple:
    boot = session.targets[target].get("boot") or {}
    return session.targets[target]["tests"][test]["verdict"], boot.get("verdict"), boot.get("stage"), \
        boot.get("signature")


def same_versions(a: Session, b: Session, target: str) -> bool:
    """The same Xen and kernel booted: the files' hashes when both know them, else the releases."""
    va, vb = (s.targets.get(target, {}).get("versions") or {} for s in (a, b))
    keys = ("xen_sha256", "kernel_sha256") if all(v.get("xen_sha256") for v in (va, vb)) else \
        ("xen_release", "linux_release")
    return all(va.get(k) is not None and va.get(k) == vb.get(k) for k in keys)


def classify(newest: Session, earlier: list[Session], quarantine: list[Quarantine], today: date
             ) -> tuple[list[Failure], list[dict]]:
    """Every failure of `newest` with its class, against `earlier` (newest first); and the expired
    quarantine entries, each with what it would have matched."""
    failures: list[Failure] = []
    expired = {q: [] for q in quarantine if q.expires < today}
    for target, entry in newest.targets.items():
        boot = entry.get("boot") or {}
        for test, t in entry["tests"].items():
            if not any(a in FAILING for a in t["attempts"]):
                continue
            f = Failure(target, test, "", "", t["verdict"], list(t["attempts"]), boot.get("verdict"),
                        boot.get("stage"), boot.get("signature"), t.get("message", ""), boot.get("evidence") or [],
                        boot.get("console"))
            for q in expired:
                if q.matches(target, test):
                    expired[q].append(f"{target}::{test}")
            f.klass, f.why = decide(f, newest, earlier, quarantine, today)
            failures.append(f)
    return failures, [{"pattern": q.pattern, "reason": q.reason, "expires": q.expires.isoformat(),
                       "would_match": hits} for q, hits in expired.items()]


def decide(f: Failure, newest: Session, earlier: list[Session], quarantine: list[Quarantine], today: date
           ) -> tuple[str, str]:
    target, test = f.target, f.test
    if (newest.targets[target].get("boot") or {}).get("class") == "lab":
        return "lab", f"the lab failed, not the build: {(newest.targets[target]['boot'].get('error') or '')[:200]}"
    if f.message.startswith(LAB_MIDWAY):  # the lab failed in a test after the boot (harness/pytestplugin.py)
        return "lab", f"the lab failed, not the build: {f.message[:200]}"
    for q in quarantine:
        if q.matches(target, test):
            if q.expires >= today:
                f.quarantine = q.reason
                return "quarantined", f"quarantined by {q.pattern} until {q.expires}: {q.reason}"
            f.quarantine = f"expired {q.expires}: {q.reason}"
    if f.verdict == "passed":
        return "intermittent", f"passed on retest in this session (attempts: {', '.join(f.attempts)})"
    for s in earlier:
        if (e := ran(s, target, test)) and e["verdict"] == "passed" and same_versions(newest, s, target):
            return "intermittent", f"passed in {s.name} with the same Xen and kernel"
    history = [(s, e) for s in earlier if (e := ran(s, target, test))]
    if not any(e["verdict"] == "passed" or "passed" in e["attempts"] for _, e in history):
        seen = f"in {len(history)} earlier session{'s' if len(history) != 1 else ''}" if history else "before"
        return "never-passed", f"never passed: not in this session, not {seen}"
    base_session, base = baseline(earlier, target, test)
    f.baseline = base_session.name
    if base["verdict"] == "passed":
        return "regression", f"passed in the baseline {base_session.name} ({base_session.started})"
    then, now = how_failed(base_session, target, test), how_failed(newest, target, test)
    if then == now:
        return "still-failing", f"failed the same way in the baseline {base_session.name}"
    return "failing-differently", (f"the baseline {base_session.name} failed otherwise: "
                                   f"{' / '.join(str(x) for x in then)} then, {' / '.join(str(x) for x in now)} now")


# --- trends -----------------------------------------------------------------------------------------------


def red(session: Session, target: str) -> bool | None:
    """Whether a target was red in a session (a test failed or was an error); None if it ran none there."""
    verdicts = [t["verdict"] for t in session.targets.get(target, {}).get("tests", {}).values()
                if t["verdict"] != "skipped"]
    return any(v in FAILING for v in verdicts) if verdicts else None


def red_since(sessions: list[Session], target: str) -> dict:
    """Since when a target is red: the first session of its current red streak, and the sessions since."""
    streak = []
    last_green = None
    for s in sessions:  # newest first
        state = red(s, target)
        if state is None:
            continue
        if not state:
            last_green = s
            break
        streak.append(s)
    return {"red": bool(streak), "since": streak[-1].started if streak else None,
            "since_session": streak[-1].name if streak else None, "attempts": len(streak),
            "last_green": last_green.name if last_green else None}


def milestone_series(sessions: list[Session], target: str, last: int) -> list[tuple[Session, dict[str, float]]]:
    """The target's boot milestones in the last `last` sessions that booted it, newest first."""
    found = []
    for s in sessions:
        boot = s.targets.get(target, {}).get("boot")
        if boot and boot.get("milestones"):
            found.append((s, boot["milestones"]))
        if len(found) == last:
            break
    return found


def slowdowns(series: list[tuple[Session, dict[str, float]]], margin: float) -> list[dict]:
    """Milestones of the newest session slower than their median over the earlier ones by more than `margin`
    (a fraction) and by at least MIN_SLOWDOWN_SECONDS."""
    if not series:
        return []
    (_, newest), earlier = series[0], series[1:]
    slow = []
    for key, seconds in newest.items():
        before = [m[key] for _, m in earlier if key in m]
        if len(before) < MIN_EARLIER:
            continue
        median = statistics.median(before)
        if seconds > median * (1 + margin) and seconds - median >= MIN_SLOWDOWN_SECONDS:
            slow.append({"milestone": key, "seconds": seconds, "median": median, "sessions": len(before),
                         "slower_by": round(seconds / median - 1, 3) if median else None})
    return slow


def trends(sessions: list[Session], last: int, margin: float) -> dict[str, dict]:
    """Per target of the newest session: since when it is red, its milestones over the last sessions, and
    the milestones flagged slower than their recent median."""
    out = {}
    for target in sessions[0].targets:
        series = milestone_series(sessions, target, last)
        out[target] = {"red": red_since(sessions, target),
                       "milestones": [{"session": s.name, "started": s.started, "milestones": m}
                                      for s, m in series],
                       "slowdowns": slowdowns(series, margin)}
    return out


# --- the report -------------------------------------------------------------------------------------------


@dataclass
class Report:
    newest: Session
    earlier: list[Session]
    failures: list[Failure]
    expired: list[dict]
    trends: dict[str, dict]
    margin: float

    def cell(self, target: str, test: str) -> str:
        """A matrix cell: a failure's class, else the test's verdict (passed, skipped) or '' (not run)."""
        for f in self.failures:
            if f.target == target and f.test == test:
                return f.klass
        entry = self.newest.targets.get(target, {}).get("tests", {}).get(test)
        return entry["verdict"] if entry else ""

    def tests(self) -> list[str]:
        seen: dict[str, None] = {}
        for entry in self.newest.targets.values():
            seen.update(dict.fromkeys(entry["tests"]))
        return list(seen)

    def counts(self) -> dict[str, int]:
        return {k: n for k in CLASSES if (n := sum(f.klass == k for f in self.failures))}

    def to_dict(self) -> dict:
        return {
            "session": str(self.newest.directory), "started": self.newest.started,
            "compared_with": [s.name for s in self.earlier],
            "counts": self.counts(),
            "matrix": {t: {test: self.cell(t, test) for test in self.newest.targets[t]["tests"]}
                       for t in self.newest.targets},
            "versions": {t: e.get("versions") for t, e in self.newest.targets.items()},
            "expired_quarantine": self.expired,
            "slowdown_margin": self.margin,
            "trends": self.trends,
            "failures": [f.to_dict() for f in self.failures],
        }


def judge(sessions: list[Session], quarantine: list[Quarantine], today: date, last: int = 10,
          margin: float = 0.25) -> Report:
    """The newest of `sessions` (by start time) judged against the others."""
    ordered = sorted(sessions, key=lambda s: s.started, reverse=True)
    newest, earlier = ordered[0], ordered[1:]
    failures, expired = classify(newest, earlier, quarantine, today)
    return Report(newest, earlier, failures, expired, trends(ordered, last, margin), margin)
