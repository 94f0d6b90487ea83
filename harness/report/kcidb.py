"""A judged session in KernelCI's KCIDB schema (the latest `kcidb-io` knows), validated before it is written.

What maps to what: one checkout per pair of Xen and kernel booted (KCIDB's checkout is what was tested: here
Debian's or a user's Xen and dom0 kernel, named in git_commit_name and misc), one build per target (what
the harness composed and booted: the target, its architecture, the images and their hashes in misc), one
test per target × test (status PASS, FAIL, ERROR or SKIP; misc: the harness's class against the earlier
sessions, the boot's verdict, stage and signature; log_url: the boot's console.log; log_excerpt: its
quoted lines). Ids are `ORIGIN:` + a local id made of the session, target and test names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UsageError
from .judge import Report

STATUS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
ORIGIN = re.compile(r"^[a-z0-9_]+$")  # KCIDB's origin pattern: said before the schema would say it less plainly


def path_of(test: str) -> str:
    """A pytest id as a KCIDB test path: `tests/test_dom0.py::test_boot[3]` -> `xen_harness.test_dom0.test_boot.3`."""
    parts = [re.sub(r"[^A-Za-z0-9_-]", "_", p) for p in re.split(r"::|/|\[|\]|\.py\b|-(?=\d+\]$)", test) if p]
    return ".".join(["xen_harness", *[p for p in parts if p not in ("tests", "")]])


def document(report: Report, origin: str) -> dict:
    from kcidb_io.schema import LATEST

    newest = report.newest
    classes = {(f.target, f.test): f.klass for f in report.failures}
    checkouts: dict[str, dict] = {}
    builds, tests = [], []
    for target, entry in newest.targets.items():
        v = entry.get("versions") or {}
        xen, kernel = (v.get("xen_sha256") or "")[:12], (v.get("kernel_sha256") or "")[:12]
        key = f"{xen or v.get('xen_release')}-{kernel or v.get('linux_release')}"
        checkout_id = f"{origin}:{newest.name}:checkout:{key}"
        checkouts.setdefault(checkout_id, {
            "id": checkout_id, "origin": origin, "tree_name": "xen-on-arm",
            "git_commit_name": f"Xen {v.get('xen_release') or v.get('xen')} + Linux "
                               f"{v.get('linux_release') or v.get('linux')}",
            "start_time": newest.started, "valid": True,
            "misc": {k: v.get(k) for k in ("xen", "xen_release", "xen_image", "xen_sha256", "linux",
                                           "linux_release", "kernel_image", "kernel_sha256")},
        })
        boot = entry.get("boot") or {}
        build_id = f"{origin}:{newest.name}:{target}"
        build = {"id": build_id, "checkout_id": checkout_id, "origin": origin, "config_name": target,
                 "start_time": newest.started, "status": "FAIL" if boot.get("class") == "untestable-build" else "PASS",
                 "comment": f"{target}: Xen {v.get('xen_release')} and Linux {v.get('linux_release')} as booted",
                 "misc": {"versions": v, "capabilities": entry.get("capabilities", [])}}
        if entry.get("arch"):
            build["architecture"] = entry["arch"]
        builds.append(build)
        where = entry.get("where") or {}
        console = newest.directory.resolve() / boot["console"] if boot.get("console") else None
        for test, t in entry["tests"].items():
            record = {
                "id": f"{origin}:{newest.name}:{target}:{test}", "build_id": build_id, "origin": origin,
                "path": path_of(test), "status": STATUS[t["verdict"]], "start_time": newest.started,
                "environment": {"comment": f"host {where.get('host')}" + (f", place {where['place']}"
                                                                          if where.get("place") else ""),
                                "misc": {k: x for k, x in where.items() if x}},
                "misc": {"class": classes.get((target, test), t["verdict"]), "attempts": t["attempts"],
                         "boot_verdict": boot.get("verdict"), "stage": boot.get("stage"),
                         "signature": boot.get("signature")},
            }
            if t.get("message"):
                record["comment"] = t["message"]
            if console is not None and console.is_file():
                record["log_url"] = console.as_uri()
            if t["verdict"] in ("failed", "error") and boot.get("evidence"):
                record["log_excerpt"] = "\n".join(boot["evidence"])[-16000:]
            tests.append(record)
    return {"version": {"major": LATEST.major, "minor": LATEST.minor}, "checkouts": list(checkouts.values()),
            "builds": builds, "tests": tests}


def validate(data: dict, source: str) -> None:
    """kcidb-io's own check of a document made from `source`, its complaint said as one sentence."""
    import jsonschema
    from kcidb_io.schema import LATEST

    try:
        LATEST.validate(data)
    except jsonschema.exceptions.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the document"
        raise UsageError(f"the KCIDB document made from {source} does not fit schema v{LATEST.major}.{LATEST.minor} "
                         f"at {where}: {exc.message[:300]}; nothing was written: fix what the session says "
                         "there, or report the exporter's mistake.") from None


def write(report: Report, path: Path, origin: str) -> Path:
    if not ORIGIN.match(origin):
        raise UsageError(f"--kcidb-origin {origin!r} is not a KCIDB origin: give lower-case letters, digits and _.")
    data = document(report, origin)
    validate(data, str(report.newest.directory / "session.json"))
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
