"""report.html: one self-contained file (inline CSS and SVG; no script, no fetch), readable offline.

What it shows, each with a stable id a test (or a reader's link) can find: the target × test matrix
(`#matrix`, a row `#target-NAME` per target), each failure (`.failure`) with its class, stage,
signature, the console lines quoted and a relative link to its console.log, a milestone timeline per
target (`svg#timeline-NAME`: each milestone's seconds since power-on over the last sessions, the newest
solid, a slowdown red), and the trends (`#trends`: since when red, and a `svg.trend` per target of its
last milestone over the sessions).
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from .judge import CLASSES, MIN_SLOWDOWN_SECONDS, Report

COLOURS = {"passed": "#2e7d32", "skipped": "#9e9e9e", "regression": "#c62828", "still-failing": "#ef6c00",
           "failing-differently": "#d84315", "never-passed": "#6d4c41", "intermittent": "#f9a825",
           "lab": "#5e35b1", "quarantined": "#546e7a", "": "#eeeeee"}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th.test{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;font-size:11px;max-height:22em}
td.cell{color:#fff;font-size:11px;text-align:center;white-space:nowrap;padding:2px 3px}
tr.target-row th{white-space:nowrap}.matrix-box{overflow-x:auto}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:0 6px;margin-right:4px}
.failure{border-left:6px solid;padding:2px 10px;margin:10px 0;background:#fafafa}
pre{background:#263238;color:#eceff1;padding:6px;overflow-x:auto;font-size:12px}
.versions{color:#555;font-size:12px}figure{margin:10px 0}figcaption{font-weight:bold}
.slow{color:#c62828;font-weight:bold}
""" + "".join(f".c-{k or 'none'}{{background:{v}}}.failure.c-{k}{{border-color:{v};background:#fafafa}}"
              for k, v in COLOURS.items() if k)


def ident(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def short(test: str) -> str:
    return test.rsplit("::", 1)[-1]


def versions_line(v: dict | None) -> str:
    v = v or {}
    xen = v.get("xen_release") or v.get("xen") or "?"
    return f"Xen {xen}, Linux {v.get('linux_release') or v.get('linux') or '?'}"


def matrix(report: Report) -> str:
    tests = report.tests()
    head = "".join(f'<th class="test" title="{escape(t)}">{escape(short(t))}</th>' for t in tests)
    rows = []
    for target, entry in report.newest.targets.items():
        cells = []
        for test in tests:
            klass = report.cell(target, test)
            word = {"passed": "pass", "skipped": "skip", "": "not run"}.get(klass, klass)  # failures in full
            cells.append(f'<td class="cell c-{klass or "none"}" title="{escape(target)}::{escape(test)}: '
                         f'{escape(klass or "not run")}">{escape(word)}</td>')
        where = entry.get("where") or {}
        rows.append(f'<tr id="target-{ident(target)}" class="target-row"><th>{escape(target)}'
                    f'<div class="versions">{escape(versions_line(entry.get("versions")))}'
                    f'{" on " + escape(where["place"]) if where.get("place") else ""}</div></th>{"".join(cells)}</tr>')
    return f'<div class="matrix-box"><table id="matrix"><tr><th>target</th>{head}</tr>{"".join(rows)}</table></div>'


def failures(report: Report, out_dir: Path) -> str:
    if not report.failures:
        return "<p>No failures.</p>"
    parts = []
    for f in report.failures:
        link = ""
        if f.console:
            console = report.newest.directory / f.console
            rel = os.path.relpath(console, out_dir)
            link = f' <a href="{escape(rel)}">console.log</a>'
        where = " / ".join(escape(x) for x in (f.boot_verdict or "", f.stage or "", f.signature or "") if x)
        quoted = f"<pre>{escape(chr(10).join(f.evidence))}</pre>" if f.evidence else ""
        parts.append(
            f'<section class="failure c-{f.klass}"><h3>{escape(f.target)}::{escape(f.test)} '
            f'<span class="badge c-{f.klass}">{escape(f.klass)}</span></h3>'
            f'<p>{escape(f.why)}</p><p>test: {escape(f.verdict)} (attempts: {escape(", ".join(f.attempts))})'
            f'{"; boot: " + where if where else ""}{link}</p>'
            f'{"<p>" + escape(f.message) + "</p>" if f.message else ""}{quoted}</section>')
    return "".join(parts)


def timeline(target: str, series: list[dict], slow: set[str]) -> str:
    """Each milestone a row, its seconds over the sessions as dots (older fainter), the newest labelled."""
    if not series:
        return f'<p id="timeline-{ident(target)}-none">{escape(target)}: no milestones recorded.</p>'
    keys = list(series[0]["milestones"])
    for entry in series[1:]:
        keys += [k for k in entry["milestones"] if k not in keys]
    top = max(max(e["milestones"].values(), default=0) for e in series) or 1.0
    left, width, row = 170, 520, 18
    height = row * len(keys) + 30
    x = lambda s: left + width * s / top  # noqa: E731
    out = [f'<svg id="timeline-{ident(target)}" class="timeline" xmlns="http://www.w3.org/2000/svg" '
           f'width="{left + width + 70}" height="{height}" role="img" aria-label="{escape(target)} milestones">']
    for i, key in enumerate(keys):
        y = 15 + i * row
        colour = "#c62828" if key in slow else "#222"
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="11" fill="{colour}">'
                   f'{escape(key)}</text><line x1="{left}" y1="{y}" x2="{left + width}" y2="{y}" stroke="#eee"/>')
        for age, entry in reversed(list(enumerate(series))):
            if key not in entry["milestones"]:
                continue
            s = entry["milestones"][key]
            opacity = 1.0 if age == 0 else max(0.15, 0.6 - 0.1 * age)
            out.append(f'<circle cx="{x(s):.1f}" cy="{y}" r="{4 if age == 0 else 3}" fill="{colour}" '
                       f'fill-opacity="{opacity:.2f}"><title>{escape(entry["session"])}: {s:.2f} s</title></circle>')
            if age == 0:
                out.append(f'<text x="{x(s) + 7:.1f}" y="{y + 4}" font-size="10" fill="{colour}">{s:.2f} s</text>')
    axis = height - 10
    out.append(f'<line x1="{left}" y1="{axis - 6}" x2="{left + width}" y2="{axis - 6}" stroke="#999"/>'
               f'<text x="{left}" y="{axis + 4}" font-size="10">0 s</text>'
               f'<text x="{left + width}" y="{axis + 4}" font-size="10" text-anchor="end">{top:.1f} s since power-on'
               f'</text></svg>')
    return "".join(out)


def sparkline(target: str, series: list[dict]) -> str:
    """The newest session's last milestone over the sessions, oldest to newest."""
    if not series:
        return f'<svg id="trend-{ident(target)}" class="trend" width="160" height="30"><text x="0" y="20" ' \
               f'font-size="10">no boots</text></svg>'
    key = list(series[0]["milestones"])[-1]
    points = [e["milestones"][key] for e in reversed(series) if key in e["milestones"]]
    top, w, h = max(points) or 1.0, 160, 30
    step = w / max(len(points) - 1, 1)
    coords = " ".join(f"{w - (len(points) - 1 - i) * step:.1f},{h - 4 - (h - 8) * p / top:.1f}"
                      for i, p in enumerate(points))  # the newest at the right end
    last = coords.split()[-1].split(",")
    return (f'<svg id="trend-{ident(target)}" class="trend" xmlns="http://www.w3.org/2000/svg" width="{w + 140}" '
            f'height="{h}" role="img" aria-label="{escape(key)} over {len(points)} sessions">'
            f'<polyline points="{coords}" fill="none" stroke="#1565c0" stroke-width="1.5"/>'
            f'<circle cx="{last[0]}" cy="{last[1]}" r="3" fill="#1565c0"/>'
            f'<text x="{w + 6}" y="{h / 2 + 4}" font-size="10">{escape(key)} {points[-1]:.2f} s</text></svg>')


def trends(report: Report) -> str:
    rows = []
    for target, t in report.trends.items():
        red = t["red"]
        state = (f'red since {escape(red["since_session"])} ({red["attempts"]} session'
                 f'{"s" if red["attempts"] != 1 else ""})' if red["red"] else "green")
        slow = "; ".join(f'<span class="slow">{escape(s["milestone"])} {s["seconds"]:.2f} s vs median '
                         f'{s["median"]:.2f} s</span>' for s in t["slowdowns"]) or "none"
        rows.append(f'<tr id="trend-row-{ident(target)}"><th>{escape(target)}</th><td>{state}</td>'
                    f'<td>{escape(red["last_green"] or "-")}</td>'
                    f'<td>{sparkline(target, t["milestones"])}</td>'
                    f'<td>{slow}</td></tr>')
    return (f'<table id="trends"><tr><th>target</th><th>state</th><th>last green</th><th>boot time</th>'
            f'<th>slowdowns (over {report.margin:.0%} and {MIN_SLOWDOWN_SECONDS} s above the median)</th></tr>'
            f'{"".join(rows)}</table>')


def render(report: Report, out: Path) -> str:
    out_dir = out.resolve().parent
    counts = report.counts()
    badges = "".join(f'<span class="badge c-{k}">{escape(k)}: {counts[k]}</span>' for k in CLASSES if k in counts)
    expired = "".join(f'<li>{escape(e["pattern"])}: expired {escape(e["expires"])} ({escape(e["reason"])})'
                      f'{"; would match " + escape(", ".join(e["would_match"])) if e["would_match"] else ""}</li>'
                      for e in report.expired)
    timelines = "".join(
        f'<figure><figcaption>{escape(target)}</figcaption>'
        f'{timeline(target, t["milestones"], {s["milestone"] for s in t["slowdowns"]})}</figure>'
        for target, t in report.trends.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>harness report: {escape(report.newest.name)}</title>
<style>{CSS}</style></head><body>
<h1>harness report: {escape(report.newest.name)}</h1>
<p>started {escape(report.newest.started)}; compared with {len(report.earlier)} earlier session(s)
{escape(", ".join(s.name for s in report.earlier[:5]))}{"…" if len(report.earlier) > 5 else ""}</p>
<p id="counts">{badges or '<span class="badge c-passed">no failures</span>'}</p>
<h2>Targets × tests</h2>{matrix(report)}
<h2>Failures</h2>{failures(report, out_dir)}
{"<h2>Expired quarantine</h2><ul id='expired'>" + expired + "</ul>" if expired else ""}
<h2>Milestone timelines</h2>{timelines}
<h2>Trends</h2>{trends(report)}
</body></html>
"""


def write(report: Report, out: Path) -> Path:
    out.write_text(render(report, out))
    return out
