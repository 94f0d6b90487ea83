"""`harness report`'s work: gather the sessions, judge the newest, and say it as text, JSON, HTML or KCIDB."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

from ..errors import UsageError
from . import html, judge, session
from .judge import CLASSES, Report

REPORT_FILE = "report.html"
SCREENSHOT_FILE = "report.png"


def gather(paths: list[Path], history: Path | None) -> list[session.Session]:
    """The sessions given, and every session directory under --history (a directory without session.json
    there is skipped: a history may hold other runs; one given by name must be a session)."""
    sessions = [session.load(p) for p in paths]
    if history is not None:
        if not history.is_dir():
            raise UsageError(f"--history {history} is not a directory: give the directory holding earlier sessions.")
        given = {p.resolve() for p in paths}
        sessions += [session.load(d) for d in sorted(history.iterdir())
                     if (d / session.FILE).is_file() and d.resolve() not in given]
    return sessions


def margin(text: str) -> float:
    """--slowdown '25%' or '0.25' -> 0.25."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not m:
        raise UsageError(f"--slowdown {text!r} is not a margin: give a percentage like 25% (or a fraction, 0.25).")
    value = float(m[1]) / (100 if m[2] else 1)
    if value <= 0:
        raise UsageError(f"--slowdown {text!r} must be above zero: give a margin like 25%.")
    return value


def fail_on(text: str | None) -> set[str]:
    names = {c.strip() for c in (text or "").split(",") if c.strip()}
    if unknown := names - set(CLASSES):
        raise UsageError(f"--fail-on {', '.join(sorted(unknown))}: not a class; choose among {', '.join(CLASSES)}.")
    return names


def as_text(report: Report) -> str:
    lines = [f"session {report.newest.name} ({report.newest.started}), against {len(report.earlier)} earlier"]
    counts = report.counts()
    lines.append("failures: " + (", ".join(f"{k} {n}" for k, n in counts.items()) if counts else "none"))
    for f in report.failures:
        how = " ".join(x for x in (f.boot_verdict if f.boot_verdict != "passed" else None, f.stage and f"at {f.stage}",
                                   f.signature and f"[{f.signature}]") if x)
        lines.append(f"  {f.klass:20} {f.target}::{f.test}  {f.verdict}{' (' + how + ')' if how else ''}: {f.why}")
    for e in report.expired:
        lines.append(f"expired quarantine: {e['pattern']} (expired {e['expires']}: {e['reason']})")
    for target, t in report.trends.items():
        red = t["red"]
        if red["red"]:
            lines.append(f"{target}: red since {red['since_session']} ({red['attempts']} session(s))")
        for s in t["slowdowns"]:
            lines.append(f"{target}: {s['milestone']} slower: {s['seconds']:.2f} s against a median of "
                         f"{s['median']:.2f} s over {s['sessions']} sessions")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    """The report as JSON, each failure on one line of its list (grep finds a failure whole)."""
    doc = report.to_dict()
    rows = doc.pop("failures")
    head = json.dumps(doc, indent=2)[:-2]
    body = ",\n".join(f"    {json.dumps(f)}" for f in rows)
    return f'{head},\n  "failures": [\n{body}\n  ]\n}}' if rows else f'{head},\n  "failures": []\n}}'


def write_session_report(directory: Path) -> list[Path]:
    """`./run test`'s own report: its session against the sessions beside it in the artifacts root."""
    report = judge.judge(gather([directory], directory.parent), [], date.today())
    return [html.write(report, directory / REPORT_FILE)]
