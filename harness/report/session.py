"""session.json: one summary per session, written into its artifacts directory; its schema, here.

A pytest session writes it when it ends (harness/pytestplugin.py), a `harness boot` run writes one of
its single boot (the same schema: one target, one test named `harness boot`). Everything in it comes
from the session's own test reports and each boot's result.json; `harness report` reads nothing else.

    {"schema": SCHEMA_VERSION, "kind": "pytest" | "boot", "started": ISO 8601 UTC, "finished": …,
     "harness": {version, commit}, "host": the machine that ran the session,
     "targets": {NAME: {
        "arch": the target's architecture (arm64, arm32), "capabilities": [the target's capabilities],
        "versions": {xen: "X.Y" (capability xen-X.Y, else Xen's banner), linux: "X.Y" (likewise),
                     xen_release: Xen's banner release, linux_release: dom0's uname -r,
                     xen_image: the Xen image's origin, kernel_image: the kernel's origin,
                     xen_sha256, kernel_sha256: the files booted (what "the same versions" compares)},
        "where": {host, place: the labgrid place or null, board: the board's name or null,
                  lab: what ran the machine (QEMU's version line)},
        "boot": {verdict (result.json's: passed, failed, crashed, hung, infrastructure-error, untestable),
                 class (who it blames: passed, build, lab, untestable-build), stage, signature,
                 description, evidence: [console lines], error, milestones: {key: seconds since power-on},
                 result: result.json and console: console.log, relative to the session directory}
                or null when the target never booted,
        "tests": {TEST: {verdict: passed | failed | error | skipped (the last attempt's),
                         attempts: [every attempt's verdict, in order], message: the first line of why}}}}}

TEST is the test's pytest id with the target's parameter taken out of its brackets
(`tests/test_dom0.py::test_boot`), so the same test lines up across targets and sessions.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import data
from ..errors import UsageError
from ..monitor import Verdict, verdict_class

SCHEMA_VERSION = 1  # bump when a field changes meaning or goes away; adding one is compatible
FILE = "session.json"
TEST_VERDICTS = ("passed", "failed", "error", "skipped")
BOOT_TEST = "harness boot"  # the one test of a `harness boot` session
VERSION_CAPABILITY = re.compile(r"^(xen|linux)-(\d+\.\d+)$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions(capabilities: list[str], result: dict | None) -> dict[str, str | None]:
    """The versions a target booted: X.Y from its capabilities (else what Xen and dom0 said), and the exact
    builds from result.json (Xen's banner, dom0's uname, the images' origins and hashes)."""
    named = {m[1]: m[2] for c in capabilities if (m := VERSION_CAPABILITY.match(c))}
    result = result or {}
    xen = result.get("xen") or {}
    images = result.get("images") or {}
    kernel = next((g.get("kernel") for g in (result.get("guests") or {}).values() if g.get("kernel")), None)
    return {
        "xen": named.get("xen") or xen.get("version"),
        "linux": named.get("linux") or (".".join(kernel.split(".")[:2]) if kernel else None),
        "xen_release": xen.get("release"),
        "linux_release": kernel,
        "xen_image": (images.get("xen") or {}).get("origin"),
        "kernel_image": (images.get("kernel") or {}).get("origin"),
        "xen_sha256": (images.get("xen") or {}).get("sha256"),
        "kernel_sha256": (images.get("kernel") or {}).get("sha256"),
    }


def boot_summary(result: dict, result_path: str) -> dict:
    """A boot's line in session.json, from its result.json (`result_path` relative to the session)."""
    verdict = result.get("verdict")
    failure = result.get("failure") or {}
    try:
        klass = verdict_class(Verdict(verdict))
    except ValueError:
        klass = "unknown"
    console = str(Path(result_path).parent / "console.log")
    return {
        "verdict": verdict,
        "class": klass,
        "stage": failure.get("stage"),
        "signature": failure.get("signature"),
        "description": failure.get("description"),
        "evidence": failure.get("evidence") or [],
        "error": result.get("error") or "",
        "milestones": result.get("milestones") or {},
        "result": result_path,
        "console": console.removeprefix("./"),
    }


def target_entry(capabilities: list[str], result: dict | None, result_path: str, place: str | None = None,
                 board: str | None = None, arch: str | None = None) -> dict:
    """One target of a session: its versions, where it ran, its boot (null if it never booted); no tests yet."""
    result = result or None
    return {
        "arch": arch,
        "capabilities": sorted(capabilities),
        "versions": versions(capabilities, result),
        "where": {"host": (result or {}).get("host") or platform.node(), "place": place, "board": board,
                  "lab": ((result or {}).get("lab") or {}).get("qemu")},
        "boot": boot_summary(result, result_path) if result else None,
        "tests": {},
    }


def read_result(path: Path) -> dict | None:
    """A boot's result.json, or None when the boot never wrote one (it never started)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_attempt(entry: dict, test: str, verdict: str, message: str = "") -> None:
    """One attempt of a test: the last attempt's verdict is the test's; every attempt is kept (a retest)."""
    test_entry = entry["tests"].setdefault(test, {"verdict": verdict, "attempts": [], "message": ""})
    test_entry["attempts"].append(verdict)
    test_entry["verdict"] = verdict
    if verdict != "passed" and message.strip():
        test_entry["message"] = message.strip().splitlines()[0][:300]


def document(kind: str, started: str, targets: dict[str, dict]) -> dict:
    return {"schema": SCHEMA_VERSION, "kind": kind, "started": started, "finished": now(),
            "harness": {"version": data.version(), "commit": data.commit()}, "host": platform.node(),
            "targets": targets}


def write(directory: Path, doc: dict) -> Path:
    path = directory / FILE
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def test_name(nodeid: str, target: str) -> str:
    """A test's pytest id without its target's parameter: `t.py::test_x[qemu-virt-3]` -> `t.py::test_x[3]`."""
    head, bracket, params = nodeid.partition("[")
    if not bracket:
        return nodeid
    parts = f"-{params.rstrip(']')}-".replace(f"-{target}-", "-", 1).strip("-")
    return f"{head}[{parts}]" if parts else head


# --- reading ----------------------------------------------------------------------------------------------


@dataclass
class Session:
    directory: Path
    doc: dict

    @property
    def started(self) -> str:
        return self.doc["started"]

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def targets(self) -> dict[str, dict]:
        return self.doc["targets"]


def _bad(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not a harness session summary ({why}): give a session directory written by "
                      "`./run test` or `harness boot --artifacts DIR`.")


def load(directory: Path) -> Session:
    """A session directory's session.json, checked enough that the report can trust its shape."""
    path = directory / FILE
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory: give a session directory (one holding {FILE}).")
    if not path.is_file():
        raise UsageError(f"{directory} holds no {FILE}: give a directory written by `./run test` or "
                         "`harness boot --artifacts DIR` (sessions before the summary existed have none).")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(path, f"expected an object, found {type(doc).__name__}")
    if doc.get("schema") != SCHEMA_VERSION:
        raise _bad(path, f"expected schema {SCHEMA_VERSION}, found {doc.get('schema')!r}")
    if not isinstance(doc.get("started"), str) or not isinstance(doc.get("targets"), dict):
        raise _bad(path, "expected 'started' (a time) and 'targets' (an object)")
    for name, target in doc["targets"].items():
        tests = target.get("tests") if isinstance(target, dict) else None
        if not isinstance(tests, dict):
            raise _bad(path, f"target {name!r}: expected an object with 'tests'")
        boot = target.get("boot")
        if boot is not None and not (isinstance(boot, dict) and isinstance(boot.get("milestones", {}), dict)
                                     and all(isinstance(s, int | float) for s in boot.get("milestones", {}).values())):
            raise _bad(path, f"target {name!r}: expected 'boot' to be null or an object with milestones in seconds")
        if not isinstance(target.get("versions", {}), dict) or not isinstance(target.get("where", {}), dict):
            raise _bad(path, f"target {name!r}: expected 'versions' and 'where' to be objects")
        for test, entry in tests.items():
            if not isinstance(entry, dict) or entry.get("verdict") not in TEST_VERDICTS \
                    or not isinstance(entry.get("attempts", []), list):
                found = entry.get("verdict") if isinstance(entry, dict) else entry
                raise _bad(path, f"{name}::{test}: expected a verdict among {', '.join(TEST_VERDICTS)}, "
                                 f"found {found!r}")
            entry.setdefault("attempts", [entry["verdict"]])  # a file written by hand may leave them out
            entry.setdefault("message", "")
    return Session(directory, doc)


def boot_document(name: str, capabilities: list[str], directory: Path, started: str, place: str | None = None,
                  board: str | None = None, arch: str | None = None) -> dict:
    """A `harness boot` run as a session of one boot: its one test passed, failed, or was an error of the lab
    or of a build that cannot be booted (as pytest reports a boot that could not be had)."""
    result = read_result(directory / "result.json")
    entry = target_entry(capabilities, result, "result.json", place=place, board=board, arch=arch)
    boot = entry["boot"] or {}
    verdict = "passed" if boot.get("verdict") == "passed" else \
        "error" if boot.get("class") in ("lab", "untestable-build") or not boot else "failed"
    why = boot.get("error") or " ".join(filter(None, [boot.get("signature"), boot.get("stage")]))
    record_attempt(entry, BOOT_TEST, verdict, why)
    return document("boot", started, {name: entry})
