"""`harness report`: each failure's class against earlier sessions, on small synthetic session.json files built
by the harness's own writer; trends and slowdowns; bad inputs refused in one sentence."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from test_cli_check import harness

from harness.cli import main
from harness.errors import UsageError
from harness.report import judge, outputs, session

TODAY = date(2026, 12, 3)
GOOD_BOOT = {"verdict": "passed", "milestones": {"xen-banner": 0.05, "dom0:kernel": 0.6, "dom0:shell": 4.0}}
CRASH = {"verdict": "crashed", "failure": {"verdict": "crashed", "stage": "dom0:kernel", "signature": "guest-panic",
                                           "evidence": ["    1.20s  Kernel panic - not syncing: planted"]},
         "milestones": {"xen-banner": 0.05, "dom0:kernel": 0.6}}
HANG = {"verdict": "hung", "failure": {"verdict": "hung", "stage": "dom0:init", "signature": "dom0-console-silent",
                                       "evidence": ["    9.00s  (XEN) silence"]},
        "milestones": {"xen-banner": 0.05, "dom0:kernel": 0.6}}
LAB = {"verdict": "infrastructure-error", "error": "QEMU exited before Xen's banner (planted)", "milestones": {}}
TESTS = ("tests/test_dom0.py::test_boot", "tests/test_dom0.py::test_grant_table")


def build(xen: str = "sha-a") -> dict:
    return {"images": {"xen": {"sha256": xen, "origin": f"debian xen {xen}"},
                       "kernel": {"sha256": "k1", "origin": "debian linux"}}}


def make(root: Path, name: str, started: str, targets: dict[str, tuple[dict, dict[str, list[str]]]],
         xen: str = "sha-a") -> Path:
    """A session directory: {target: (result.json's fields, {test: attempts})}."""
    directory = root / name
    directory.mkdir(parents=True)
    entries = {}
    for target, (result, tests) in targets.items():
        entry = session.target_entry(["xen-4.17", "linux-6.1"], result | build(xen) | {"host": "lab1"},
                                     f"{target}/result.json")
        for test, attempts in tests.items():
            for verdict in attempts:
                session.record_attempt(entry, test, verdict, f"planted {verdict}" if verdict != "passed" else "")
        entries[target] = entry
    doc = session.document("pytest", started, entries)
    session.write(directory, doc)
    return directory


def report_cli(capsys, *args) -> tuple[int, str, str]:
    """`harness report ARGS` in this process (the real exit status is tested once, in a subprocess)."""
    code = main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_sentence(capsys, *args) -> str:
    code, out, err = report_cli(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("harness: "), (code, out, err)
    return err


def passing(*targets: str, boot: dict = GOOD_BOOT) -> dict:
    return {t: (boot, {test: ["passed"] for test in TESTS}) for t in targets}


def classes(report: judge.Report) -> dict[str, str]:
    return {f"{f.target}::{f.test}": f.klass for f in report.failures}


def load(*dirs: Path) -> list[session.Session]:
    return [session.load(d) for d in dirs]


def test_a_planted_regression_is_the_one_regression_and_the_rest_is_as_before(tmp_path: Path):
    before = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt", "qemu-a15"))
    targets = passing("qemu-virt") | {"qemu-a15": (CRASH, {TESTS[0]: ["failed"], TESTS[1]: ["passed"]})}
    after = make(tmp_path, "s2", "2026-12-02T00:00:00Z", targets, xen="sha-b")  # a new Xen
    report = judge.judge(load(after, before), [], TODAY)
    assert classes(report) == {f"qemu-a15::{TESTS[0]}": "regression"}, classes(report)
    failure = report.failures[0]
    assert (failure.baseline, failure.stage, failure.signature) == ("s1", "dom0:kernel", "guest-panic"), failure
    assert failure.evidence == CRASH["failure"]["evidence"] and failure.console == "qemu-a15/console.log"
    assert report.cell("qemu-virt", TESTS[0]) == "passed" and report.cell("qemu-a15", TESTS[1]) == "passed"


def test_fail_on_regression_exits_1_only_for_a_regression(tmp_path: Path):
    before = make(tmp_path, "h/s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    after = make(tmp_path, "s2", "2026-12-02T00:00:00Z", {"qemu-virt": (CRASH, {TESTS[0]: ["failed"]})}, xen="sha-b")
    proc = harness("report", after, "--history", before.parent, "--fail-on", "regression")
    assert proc.returncode == 1 and "regression" in proc.stdout, proc.stdout + proc.stderr
    assert harness("report", after, "--history", before.parent, "--fail-on", "lab,never-passed").returncode == 0


def test_same_failure_as_the_baseline_is_still_failing_and_another_is_failing_differently(tmp_path: Path):
    s0 = make(tmp_path, "s0", "2026-11-30T00:00:00Z", passing("qemu-virt"))
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", {"qemu-virt": (CRASH, {TESTS[0]: ["failed"]})}, xen="sha-b")
    same = make(tmp_path, "s2", "2026-12-02T00:00:00Z", {"qemu-virt": (CRASH, {TESTS[0]: ["failed"]})}, xen="sha-c")
    other = make(tmp_path, "s3", "2026-12-02T00:00:00Z", {"qemu-virt": (HANG, {TESTS[0]: ["failed"]})}, xen="sha-c")
    assert classes(judge.judge(load(same, s1, s0), [], TODAY)) == {f"qemu-virt::{TESTS[0]}": "still-failing"}
    report = judge.judge(load(other, s1, s0), [], TODAY)
    assert classes(report) == {f"qemu-virt::{TESTS[0]}": "failing-differently"}
    assert "crashed / dom0:kernel / guest-panic then, failed / hung / dom0:init" in report.failures[0].why, \
        report.failures[0].why


def test_a_test_that_never_passed_is_never_passed_with_or_without_history(tmp_path: Path):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", {"qemu-virt": (CRASH, {TESTS[0]: ["failed"]})})
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z", {"qemu-virt": (HANG, {TESTS[0]: ["failed"]})}, xen="sha-b")
    assert classes(judge.judge(load(s2, s1), [], TODAY)) == {f"qemu-virt::{TESTS[0]}": "never-passed"}
    assert classes(judge.judge(load(s2), [], TODAY)) == {f"qemu-virt::{TESTS[0]}": "never-passed"}


def test_a_pass_on_retest_or_with_the_same_versions_is_intermittent(tmp_path: Path):
    retest = make(tmp_path, "r", "2026-12-02T00:00:00Z", {"qemu-virt": (GOOD_BOOT, {TESTS[0]: ["failed", "passed"]})})
    report = judge.judge(load(retest), [], TODAY)
    assert classes(report) == {f"qemu-virt::{TESTS[0]}": "intermittent"} and "retest" in report.failures[0].why
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z", {"qemu-virt": (HANG, {TESTS[0]: ["failed"]})})  # same Xen
    report = judge.judge(load(s2, s1), [], TODAY)
    assert classes(report) == {f"qemu-virt::{TESTS[0]}": "intermittent"}, report.failures
    assert "passed in s1 with the same Xen and kernel" in report.failures[0].why


def test_a_lab_failure_is_lab_whatever_the_history(tmp_path: Path):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z",
              {"qemu-virt": (LAB, {TESTS[0]: ["error"], TESTS[1]: ["skipped"]})},
              xen="sha-b")
    report = judge.judge(load(s2, s1), [], TODAY)
    assert classes(report) == {f"qemu-virt::{TESTS[0]}": "lab"}, classes(report)
    assert "QEMU exited before Xen's banner" in report.failures[0].why


def test_a_lab_failure_in_a_test_after_the_boot_is_lab_and_so_are_the_tests_it_left_unrun(tmp_path: Path):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    entry = session.target_entry(["xen-4.17", "linux-6.1"], GOOD_BOOT | build("sha-b"), "qemu-virt/result.json")
    session.record_attempt(entry, TESTS[0], "failed", "infrastructure-error after stage 'dom0:shell': its power "
                                                      "went off")
    session.record_attempt(entry, TESTS[1], "error", "not run (lab): qemu-virt: infrastructure error: …")
    s2 = tmp_path / "s2"
    s2.mkdir()
    session.write(s2, session.document("pytest", "2026-12-02T00:00:00Z", {"qemu-virt": entry}))
    report = judge.judge(load(s2, s1), [], TODAY)
    assert classes(report) == {f"qemu-virt::{t}": "lab" for t in TESTS}, classes(report)  # not regressions


def quarantine_file(tmp_path: Path, expires: str) -> Path:
    path = tmp_path / "quarantine.yaml"
    path.write_text(f"- pattern: 'qemu-a15::*test_boot'\n  reason: bug 42, a15 panics under TCG\n"
                    f"  expires: {expires}\n")
    return path


def test_quarantine_until_it_expires_then_the_failure_is_classed_and_the_entry_reported(tmp_path: Path):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-a15"))
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z", {"qemu-a15": (CRASH, {TESTS[0]: ["failed"]})}, xen="sha-b")
    active = judge.load_quarantine(quarantine_file(tmp_path, "2026-12-31"))
    report = judge.judge(load(s2, s1), active, TODAY)
    assert classes(report) == {f"qemu-a15::{TESTS[0]}": "quarantined"} and report.expired == []
    assert report.failures[0].quarantine == "bug 42, a15 panics under TCG"
    expired = judge.load_quarantine(quarantine_file(tmp_path, "2026-12-01"))
    report = judge.judge(load(s2, s1), expired, TODAY)
    assert classes(report) == {f"qemu-a15::{TESTS[0]}": "regression"}
    assert report.expired == [{"pattern": "qemu-a15::*test_boot", "reason": "bug 42, a15 panics under TCG",
                               "expires": "2026-12-01", "would_match": [f"qemu-a15::{TESTS[0]}"]}], report.expired
    assert "expired 2026-12-01" in report.failures[0].quarantine


def test_red_since_its_first_failing_session_with_the_attempts_since(tmp_path: Path):
    red = {"qemu-virt": (CRASH, {TESTS[0]: ["failed"]})}
    dirs = [make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt")),
            make(tmp_path, "s2", "2026-12-02T00:00:00Z", red),
            make(tmp_path, "s3", "2026-12-03T00:00:00Z", passing("qemu-a15")),  # another target only
            make(tmp_path, "s4", "2026-12-04T00:00:00Z", red)]
    trend = judge.judge(load(*dirs), [], TODAY).trends["qemu-virt"]["red"]
    assert trend == {"red": True, "since": "2026-12-02T00:00:00Z", "since_session": "s2", "attempts": 2,
                     "last_green": "s1"}, trend


def boot_at(shell: float, banner: float = 0.05) -> dict:
    return {"verdict": "passed", "milestones": {"xen-banner": banner, "dom0:shell": shell}}


@pytest.mark.parametrize(("newest", "banner", "flagged"), [
    (6.0, 0.05, ["dom0:shell"]),  # 50% and 2 s slower than the median 4.0
    (4.3, 0.05, []),  # within 25%
    (4.0, 0.2, []),  # xen-banner 4x slower, but by 0.15 s: TCG's jitter, not a slowdown
])
def test_a_milestone_slower_than_its_recent_median_by_the_margin_is_flagged(tmp_path: Path, newest, banner, flagged):
    earlier = [make(tmp_path, f"s{i}", f"2026-12-0{i}T00:00:00Z", {"qemu-virt": (boot_at(s), {TESTS[0]: ["passed"]})})
               for i, s in enumerate([3.9, 4.0, 4.2], 1)]
    last = make(tmp_path, "s9", "2026-12-09T00:00:00Z",
                {"qemu-virt": (boot_at(newest, banner), {TESTS[0]: ["passed"]})})
    trend = judge.judge(load(last, *earlier), [], TODAY, margin=0.25).trends["qemu-virt"]
    assert [s["milestone"] for s in trend["slowdowns"]] == flagged, trend["slowdowns"]
    assert [m["session"] for m in trend["milestones"]] == ["s9", "s3", "s2", "s1"]
    if flagged:
        assert trend["slowdowns"][0]["median"] == 4.0 and trend["slowdowns"][0]["sessions"] == 3


def test_json_has_one_line_per_failure_and_text_names_each(tmp_path: Path, capsys):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z",
              {"qemu-virt": (CRASH, {TESTS[0]: ["failed"], TESTS[1]: ["error"]})},
              xen="sha-b")
    code, out, _ = report_cli(capsys, s2, s1, "--json")
    assert code == 0
    doc = json.loads(out)
    lines = [line for line in out.splitlines() if '"class": ' in line]
    assert len(lines) == 2 == len(doc["failures"]), out
    assert {f["class"] for f in doc["failures"]} == {"regression"} and doc["counts"] == {"regression": 2}
    text = report_cli(capsys, s2, s1)[1]
    assert f"regression           qemu-virt::{TESTS[0]}  failed (crashed at dom0:kernel [guest-panic])" in text, text


def test_a_harness_boot_run_is_a_session_of_one_boot(tmp_path: Path):
    (tmp_path / "result.json").write_text(json.dumps(CRASH | build() | {"target": "qemu-virt"}))
    doc = session.boot_document("qemu-virt", ["xen-4.17", "linux-6.1"], tmp_path, "2026-12-02T00:00:00Z")
    target = doc["targets"]["qemu-virt"]
    assert target["tests"] == {session.BOOT_TEST: {"verdict": "failed", "attempts": ["failed"],
                                                  "message": "guest-panic dom0:kernel"}}, target["tests"]
    assert (target["boot"]["class"], target["boot"]["console"], target["versions"]["xen"]) == \
        ("build", "console.log", "4.17")
    (tmp_path / "result.json").write_text(json.dumps(LAB))
    doc = session.boot_document("qemu-virt", [], tmp_path, "2026-12-02T00:00:00Z")
    assert doc["targets"]["qemu-virt"]["tests"][session.BOOT_TEST]["verdict"] == "error"


def test_a_test_id_loses_only_its_target_parameter():
    assert session.test_name("t.py::test_boot[qemu-virt]", "qemu-virt") == "t.py::test_boot"
    assert session.test_name("t.py::test_x[qemu-virt-3]", "qemu-virt") == "t.py::test_x[3]"
    assert session.test_name("t.py::test_x[missing-kernel-qemu-a15]", "qemu-a15") == "t.py::test_x[missing-kernel]"


@pytest.mark.parametrize(("content", "expected"), [
    (None, "holds no session.json"),
    ("{not json", "not JSON"),
    ("[]", "expected an object, found list"),
    ('{"schema": 99, "started": "x", "targets": {}}', "expected schema 1, found 99"),
    ('{"schema": 1, "started": "x", "targets": {"q": {"tests": {"t": {"verdict": "green"}}}}}',
     "q::t: expected a verdict among passed, failed, error, skipped, found 'green'"),
    ('{"schema": 1, "started": "x", "targets": {"q": {"tests": {}, "boot": {"milestones": {"x": "slow"}}}}}',
     "target 'q': expected 'boot' to be null or an object with milestones in seconds"),
    ('{"schema": 1, "started": "x", "targets": {"q": {"tests": {}, "versions": []}}}',
     "target 'q': expected 'versions' and 'where' to be objects"),
])
def test_a_bad_session_is_one_sentence_and_exit_2(tmp_path: Path, capsys, content: str | None, expected: str):
    if content is not None:
        (tmp_path / "session.json").write_text(content)
    line = one_sentence(capsys, tmp_path)
    assert expected in line, line


@pytest.mark.parametrize(("content", "expected"), [
    ("- pattern: 'a::b'\n  reason: r\n", "entry 1: expected pattern, reason and expires, found ['pattern', 'reason']"),
    ("- pattern: 'a::b'\n  reason: r\n  expires: soon\n", "entry 1: expires 'soon' is not a date"),
    ("- pattern: 'no-separator'\n  reason: r\n  expires: 2026-01-01\n", "expected a 'target::test' pattern"),
    ("pattern: x\n", "expected a list, found dict"),
    ("[{", "not YAML or JSON"),
])
def test_a_bad_quarantine_file_is_one_sentence(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "q.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match="--quarantine") as caught:
        judge.load_quarantine(path)
    assert expected in str(caught.value), caught.value


def test_bad_flags_and_files_are_one_sentence(tmp_path: Path, capsys):
    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt"))
    assert "not a class; choose among regression" in one_sentence(capsys, s1, "--fail-on", "regresion")
    assert "is not a margin" in one_sentence(capsys, s1, "--slowdown", "fast")
    assert "is not a directory" in one_sentence(capsys, s1, "--history", tmp_path / "nope")
    assert "cannot be read" in one_sentence(capsys, s1, "--quarantine", tmp_path / "nope.yaml")
    (tmp_path / "q.yaml").write_text("[{")
    assert "not YAML or JSON" in one_sentence(capsys, s1, "--quarantine", tmp_path / "q.yaml")
    assert outputs.margin("25%") == 0.25 and outputs.margin("0.4") == 0.4


def test_kcidb_output_of_a_judged_session_validates_with_kcidb_io(tmp_path: Path, capsys):
    from kcidb_io.schema import LATEST

    s1 = make(tmp_path, "s1", "2026-12-01T00:00:00Z", passing("qemu-virt", "qemu-a15"))
    s2 = make(tmp_path, "s2", "2026-12-02T00:00:00Z", passing("qemu-virt") | {
        "qemu-a15": (CRASH, {TESTS[0]: ["failed"], TESTS[1]: ["skipped"]})}, xen="sha-b")
    (s2 / "qemu-a15").mkdir()
    (s2 / "qemu-a15" / "console.log").write_text("Kernel panic - not syncing: planted\n")
    out = tmp_path / "kcidb.json"
    assert report_cli(capsys, s2, s1, "--kcidb", out)[0] == 0
    data = json.loads(out.read_text())
    LATEST.validate(data)  # kcidb-io's own check, again, on what was written
    assert len(data["checkouts"]) == 1 and len(data["builds"]) == 2 and len(data["tests"]) == 4, data
    failed = next(t for t in data["tests"] if t["status"] == "FAIL")
    assert failed["id"] == f"xenarmharness:s2:qemu-a15:{TESTS[0]}" and failed["misc"]["class"] == "regression"
    assert failed["path"] == "xen_harness.test_dom0.test_boot" and "planted" in failed["log_excerpt"]
    assert failed["log_url"] == (s2 / "qemu-a15" / "console.log").resolve().as_uri()
    a15 = next(c for c in data["checkouts"] if c["id"] == next(b["checkout_id"] for b in data["builds"]
                                                               if b["config_name"] == "qemu-a15"))
    assert a15["misc"]["xen_sha256"] == "sha-b" and a15["misc"]["xen"] == "4.17" and a15["misc"]["linux"] == "6.1"
    assert {t["status"] for t in data["tests"]} == {"PASS", "FAIL", "SKIP"}


def test_what_would_break_the_kcidb_schema_is_one_sentence_and_nothing_written(tmp_path: Path, capsys):
    s1 = make(tmp_path, "s1", "last night", passing("qemu-virt"))  # not a time: KCIDB's start_time must be one
    out = tmp_path / "kcidb.json"
    line = one_sentence(capsys, s1, "--kcidb", out)
    assert "does not fit schema v5." in line and "at checkouts/0/start_time: 'last night' is not a 'date-time'" in line
    assert not out.exists()
    assert "is not a KCIDB origin" in one_sentence(capsys, s1, "--kcidb", out, "--kcidb-origin", "Xen Lab")
