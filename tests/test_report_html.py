"""report.html in a real headless Chromium (Debian's `chromium`): every target's row, its milestone timeline
and its trend render from a file with no script and nothing fetched; a screenshot is saved beside it.

The sessions are made from a real session.json (a `./run test --target=qemu-virt -m boot` session, its
test_dom0.py tests captured in tests/unit/data/sessions/): the same boot under other targets' names, three
sessions in a row, the newest with a planted regression (a crash with its console lines, a new Xen) and a
slower dom0:shell.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import subprocess
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

from harness.report import html, judge, session

CAPTURED = Path(__file__).parent / "unit" / "data" / "sessions" / "qemu-virt-boot.json"
TARGETS = ("qemu-virt", "qemu-a15", "qemu-virt-gicv2")
WINDOW = (1280, 2400)
CRASH = {"verdict": "crashed", "class": "build", "stage": "dom0:kernel", "signature": "guest-panic",
         "evidence": ["    1.20s  Kernel panic - not syncing: VFS: Unable to mount root fs (planted)"]}


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root (no sandbox), its own profile directory; a deadline on every run."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is not installed: ./run installs it (apt-get install chromium)"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=120)


class Elements(HTMLParser):
    """The ids in a DOM, and the drawn shapes (circle, polyline) inside each svg, by the svg's id."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}  # id -> tag
        self.shapes: dict[str, list[str]] = {}
        self.svg: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = tag
        if tag == "svg":
            self.svg = attrs.get("id")
            self.shapes[self.svg] = []
        elif self.svg and tag in ("circle", "polyline"):
            self.shapes[self.svg].append(tag)

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None


def sessions(tmp_path: Path) -> list[Path]:
    real = json.loads(CAPTURED.read_text())
    [entry] = real["targets"].values()
    dirs = []
    for n, started in enumerate(["2026-12-01T02:00:00Z", "2026-12-02T02:00:00Z", "2026-12-03T02:00:00Z"]):
        doc = copy.deepcopy(real) | {"started": started}
        doc["targets"] = {name: copy.deepcopy(entry) for name in TARGETS}
        for name, target in doc["targets"].items():
            target["boot"] |= {"result": f"{name}/result.json", "console": f"{name}/console.log"}
        if n == 2:  # the newest: qemu-a15 regresses with a new Xen, qemu-virt boots slower
            a15 = doc["targets"]["qemu-a15"]
            a15["versions"]["xen_sha256"] = "0" * 64
            a15["boot"] |= CRASH
            first = next(iter(a15["tests"]))
            a15["tests"][first] |= {"verdict": "failed", "attempts": ["failed"], "message": "crashed at dom0:kernel"}
            shell = doc["targets"]["qemu-virt"]["boot"]["milestones"]
            shell["dom0:shell"] = shell["dom0:shell"] * 2 + 1
        directory = tmp_path / f"s{n}"
        (directory / "qemu-a15").mkdir(parents=True)
        (directory / "qemu-a15" / "console.log").write_text("Kernel panic - not syncing (planted)\n")
        session.write(directory, doc)
        dirs.append(directory)
    return dirs


def test_the_report_renders_in_headless_chromium_with_every_targets_row_timeline_and_trend(tmp_path: Path):
    dirs = sessions(tmp_path)
    report = judge.judge([session.load(d) for d in dirs], [], date(2026, 12, 3))
    assert [f.klass for f in report.failures] == ["regression"], report.failures
    out = html.write(report, tmp_path / "report.html")
    text = out.read_text()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), \
        "the report must be self-contained: no script, nothing fetched"

    dom = chromium("--dump-dom", out.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    found = Elements()
    found.feed(dom.stdout)
    milestones = len(json.loads(CAPTURED.read_text())["targets"]["qemu-virt"]["boot"]["milestones"])
    for target in TARGETS:
        assert found.ids.get(f"target-{target}") == "tr", f"no matrix row for {target} in the DOM"
        assert found.ids.get(f"timeline-{target}") == "svg", f"no timeline for {target}"
        assert found.shapes[f"timeline-{target}"].count("circle") == 3 * milestones, \
            f"expected {3 * milestones} milestone dots for {target}, found {found.shapes[f'timeline-{target}']}"
        assert found.shapes[f"trend-{target}"][:1] == ["polyline"], f"no trend line for {target}"
    assert "regression" in dom.stdout and "Kernel panic - not syncing: VFS" in dom.stdout
    assert 'href="s2/qemu-a15/console.log"' in dom.stdout, "the failure links its console.log, relative"
    assert 'class="slow"' in dom.stdout and "dom0:shell" in dom.stdout, "the slower dom0:shell is flagged"

    shot = out.with_suffix(".png")
    run = chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", out.as_uri(),
                   profile=tmp_path / "profile")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == WINDOW, \
        "expected a PNG of the window's size"
    assert len(png) > 20_000, f"a {len(png)}-byte screenshot is too small to show the report"
