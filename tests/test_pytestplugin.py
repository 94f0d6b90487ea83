"""The pytest plugin's promises, in real pytest sessions of their own: each target boots once per session
(its tests together, on one xdist worker), with `-n 2`, `-n 0` and `-p no:xdist`; a second boot of a target
is an error; `--lg-env` and a target given as a file are honoured.

The sessions run a small test module against the real plugin and its real boot guard (`claim_boot`);
only the boot itself is replaced (by a conftest fixture), so that they take seconds, not boots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

import pytest

from harness import targets
from harness.artifacts import SESSION_ENV
from harness.errors import HarnessError
from harness.pytestplugin import claim_boot, target_scope

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = '''
import types, pytest
from harness.pytestplugin import RUNNING, claim_boot
from harness.result import BootResult

pytest_plugins = ("harness.pytestplugin",)

@pytest.fixture(scope="session")
def booted(pytestconfig, target_spec, session_artifacts):
    claim_boot(session_artifacts / target_spec.name)  # the real guard: a second boot of a target fails here
    result = BootResult(target_spec.name, session_artifacts / target_spec.name)  # a boot that passed
    pytestconfig.stash[RUNNING][target_spec.name] = types.SimpleNamespace(result=result, close=lambda: None)
    yield target_spec.name
'''

TESTS = '''
import json, os, pytest

def record(kind, target):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps({"kind": kind, "target": target,
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\\n")

@pytest.mark.parametrize("n", range(8))
def test_shares_the_boot(booted, n):
    record("shared", booted)

@pytest.mark.parametrize("n", range(3))
def test_boots_on_its_own(target_name, n):
    record("own", target_name)

@pytest.mark.parametrize("n", range(12))
def test_needs_no_target(n):
    record("free", None)

@pytest.mark.parametrize("m", range(4))
def test_shares_again_later_in_the_module(booted, m):
    record("shared", booted)
'''

THREE = "qemu-virt,qemu-virt-gicv2,qemu-a15"


def session(tmp_path: Path, *args: str, conftest: str = CONFTEST) -> tuple[subprocess.CompletedProcess, list[dict]]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "conftest.py").write_text(conftest)
    (project / "test_spread.py").write_text(TESTS)
    record = tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (SESSION_ENV, "PYTEST_ADDOPTS", "HARNESS_TARGET")}
    env |= {"RECORD": str(record), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--artifacts={tmp_path / 'artifacts'}",
         *args], cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return run, rows


def workers_per_target(rows: list[dict]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["target"]:
            seen[row["target"]].add(row["worker"])
    return seen


@pytest.mark.parametrize("mode", [["-n", "2"], ["-n", "0"], ["-p", "no:xdist"]], ids=["n2", "n0", "no-xdist"])
def test_each_target_boots_once_and_its_tests_stay_on_one_worker(mode: list[str], tmp_path: Path) -> None:
    run, rows = session(tmp_path, *mode, f"--target={THREE}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(rows) == 3 * (8 + 3 + 4) + 12, f"expected every test to run once, found {len(rows)} records"
    spread = workers_per_target(rows)
    assert set(spread) == set(THREE.split(","))
    assert all(len(w) == 1 for w in spread.values()), f"a target's tests ran on several workers: {spread}"
    claims = sorted(p.parent.name for p in (tmp_path / "artifacts").glob("*/*/.booted-by"))
    assert claims == sorted(THREE.split(",")), f"expected one boot per target, found claims {claims}"
    if mode == ["-n", "2"]:
        assert len({w for ws in spread.values() for w in ws}) == 2, f"expected both workers used: {spread}"


def test_junit_carries_each_boots_facts_and_the_sessions_artifacts_from_xdist_workers(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    run, _ = session(tmp_path, "-n", "2", f"--target={THREE}", f"--junitxml={junit}")
    assert run.returncode == 0, run.stdout[-3000:]
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    suite_props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert suite_props["harness_artifacts"].startswith(str(tmp_path / "artifacts")), suite_props
    for case in suite.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "shares" in case.get("name"):
            target = case.get("name").split("[")[1].rsplit("-", 1)[0]
            assert (props.get("harness:target"), props.get("harness:verdict"), props.get("harness:class")) == (
                target, "passed", "passed"), props
        else:
            assert not props, f"{case.get('name')} shares no boot, yet carries {props}"


def test_a_session_that_booted_ends_with_its_matrix_and_one_that_did_not_without(tmp_path: Path) -> None:
    writing = CONFTEST.replace("    yield target_spec.name",
                               "    result.decide(); result.write()\n    yield target_spec.name")
    run, _ = session(tmp_path, "-n", "2", f"--target={THREE}", conftest=writing)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (artifacts,) = (tmp_path / "artifacts").iterdir()
    cells = json.loads((artifacts / "matrix.json").read_text())
    assert sorted(c["target"] for c in cells) == sorted(THREE.split(",")), cells
    assert (artifacts / "matrix.md").read_text().count("| Xen's log |") == 3
    assert f"harness matrix (Xen x Linux, each witness): {artifacts / 'matrix.md'}" in run.stdout
    shutil.rmtree(tmp_path / "artifacts")
    run, _ = session(tmp_path, "-n", "0", f"--target={THREE}", "-k", "needs_no_target", conftest=writing)
    assert run.returncode == 0, run.stdout[-3000:]
    assert not list((tmp_path / "artifacts").rglob("matrix.*")) and "harness matrix" not in run.stdout


def test_a_second_boot_of_a_target_is_an_error_not_a_silent_reboot(tmp_path: Path) -> None:
    claim_boot(tmp_path / "qemu-virt")
    with pytest.raises(HarnessError, match=r"qemu-virt was already booted in this session by \S+ \(pid \d+\)"):
        claim_boot(tmp_path / "qemu-virt")


def test_target_of_a_test_id() -> None:
    names = ["qemu-virt", "qemu-virt-gicv2", "qemu-virt-acpi", "qemu-a15"]
    assert target_scope("tests/test_dom0.py::test_boot[qemu-virt-gicv2]", names) == "qemu-virt-gicv2"
    assert target_scope("tests/test_dom0.py::test_boot[qemu-virt]", names) == "qemu-virt"
    assert target_scope("tests/test_faults.py::test_fault_is_classified[qemu-virt-acpi-wrong-dtuart]", names) \
        == "qemu-virt-acpi"
    assert target_scope("tests/test_faults.py::test_fault_is_classified[missing-kernel-qemu-a15]", names) == "qemu-a15"
    assert target_scope("tests/unit/test_monitor.py::test_x[1]", names) is None
    assert target_scope("tests/unit/test_monitor.py::test_y", names) is None


def test_lg_env_and_a_target_file_are_honoured(tmp_path: Path) -> None:
    board = tmp_path / "my-board.yaml"
    board.write_text((targets.TARGETS_DIR / "qemu-virt.yaml").read_text())
    run, rows = session(tmp_path, "-n", "0", f"--lg-env={board}", "-k", "shares_the_boot")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {r["target"] for r in rows} == {"my-board"}, rows
    run, rows = session(tmp_path, "-n", "0", f"--target={board}", "-k", "shares_the_boot")
    assert run.returncode == 0 and {r["target"] for r in rows} == {"my-board"}, run.stdout[-3000:]
    run, _ = session(tmp_path, "-n", "0", f"--lg-env={board}", "--target=qemu-virt")
    assert run.returncode == 4 and "give one of them" in run.stderr, run.stdout + run.stderr


def test_an_untestable_build_is_one_error_and_blocks_the_targets_other_tests(tmp_path: Path) -> None:
    """The real plugin and boot: --xen names no file, so nothing boots (git bisect's 'skip this commit')."""
    env = {k: v for k, v in os.environ.items() if k not in (SESSION_ENV, "PYTEST_ADDOPTS", "HARNESS_TARGET")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-n", "0", "--target=qemu-virt",
         f"--xen={tmp_path / 'no-such-xen'}", f"--artifacts={tmp_path}", "tests/test_dom0.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert "1 error" in summary and "skipped" in summary and "passed" not in summary, run.stdout[-3000:]
    assert "qemu-virt: untestable build: --xen" in run.stdout, run.stdout[-3000:]
    assert "blocked: qemu-virt could not be booted (untestable build" in run.stdout, run.stdout[-3000:]


VERDICTS = '''
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("planted setup failure")

def test_fails(booted):
    assert 1 == 2, "planted failure"

def test_skips(booted):
    pytest.skip("planted skip")

def test_errors(booted, broken):
    pass
'''


def test_the_session_writes_session_json_and_its_report_from_xdist_workers(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "test_verdicts.py").write_text(VERDICTS)
    run, _ = session(tmp_path, "-n", "2", "--target=qemu-virt,qemu-a15", "test_verdicts.py",
                     "test_spread.py::test_shares_the_boot", "test_spread.py::test_needs_no_target")
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    [directory] = (tmp_path / "artifacts").glob("*-pytest-*")
    doc = json.loads((directory / "session.json").read_text())
    assert (doc["schema"], doc["kind"], sorted(doc["targets"])) == (1, "pytest", ["qemu-a15", "qemu-virt"]), doc
    for target in doc["targets"].values():
        verdicts = {test: t["verdict"] for test, t in target["tests"].items()}
        assert verdicts == {"test_verdicts.py::test_fails": "failed", "test_verdicts.py::test_skips": "skipped",
                            "test_verdicts.py::test_errors": "error",
                            **{f"test_spread.py::test_shares_the_boot[{n}]": "passed" for n in range(8)}}, verdicts
        assert "planted failure" in target["tests"]["test_verdicts.py::test_fails"]["message"]
        assert "planted setup failure" in target["tests"]["test_verdicts.py::test_errors"]["message"]
        assert target["boot"] is None and target["versions"]["xen"] in ("4.17", "4.20"), target  # the fake boot
    assert f"harness session.json: {directory / 'session.json'}" in run.stdout, run.stdout[-2000:]
    assert f"harness report.html: {directory / 'report.html'}" in run.stdout, run.stdout[-2000:]
    assert 'id="target-qemu-a15"' in (directory / "report.html").read_text()


LAB_MIDWAY = '''
import pytest
from harness.monitor import BootFailure, Failure, Verdict

def test_1_passes(booted):
    pass

def test_2_loses_the_console(booted):
    raise BootFailure(Failure(Verdict.INFRASTRUCTURE, "dom0:shell", "console-lost", "the console went away", None))

def test_3_after(booted):
    pass

def test_4_after(booted):
    pass
'''


def test_a_lab_failure_midway_ends_that_targets_session_and_the_rest_are_errors_not_run(tmp_path: Path) -> None:
    """The console gone in a test: that test reports it, the target's remaining tests are errors "not run (lab)"
    (never failures, never passes), and the other target's tests go on."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "test_lab.py").write_text(LAB_MIDWAY)
    run, _ = session(tmp_path, "-n", "0", "-rE", "--target=qemu-virt", "test_lab.py",
                     "test_spread.py::test_needs_no_target")
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 failed, 13 passed") and "2 errors" in summary and "skipped" not in summary, \
        run.stdout[-3000:]  # 13: test_1 and the other target-free tests
    for test in ("test_3_after", "test_4_after"):
        assert f"ERROR test_lab.py::{test}[qemu-virt] - Failed: not run (lab): qemu-virt" in run.stdout, run.stdout
    assert "not run (lab): qemu-virt: infrastructure error: infrastructure-error after stage 'dom0:shell': the " \
           "console went away" in run.stdout, run.stdout[-3000:]


RETEST_CONFTEST = '''
import itertools, types, pytest
from harness.pytestplugin import RUNNING, SHARED, SharedBoot, claim_boot
from harness.result import BootResult

pytest_plugins = ("harness.pytestplugin",)

@pytest.fixture(scope="session")
def booted(pytestconfig, target_spec, session_artifacts):
    numbers = itertools.count(1)

    def boot():  # a boot that passed, numbered: the real guard claims each boot's directory
        n = next(numbers)
        claim_boot(session_artifacts / f"{target_spec.name}-{n}")
        result = BootResult(target_spec.name, session_artifacts / target_spec.name)
        session = types.SimpleNamespace(result=result, close=lambda: None, number=n)
        pytestconfig.stash[RUNNING][target_spec.name] = session
        return session

    shared = pytestconfig.stash[SHARED][target_spec.name] = SharedBoot(boot(), boot)
    yield shared
'''

RETESTED = '''
def test_flaky(booted):
    assert booted.number == 2, f"planted: fails on boot {booted.number}"

def test_broken(booted):
    assert False, "planted: fails on every boot"

def test_new(booted):
    assert False, "planted: no baseline"

def test_after(booted):
    assert booted.number == 3, "the tests after a retest use the fresh boot (test_broken's retest was the third)"
'''


def test_a_failure_that_passed_in_the_baseline_is_retested_once_on_a_fresh_boot(tmp_path: Path) -> None:
    """The baseline (an earlier session in the artifacts root) passed test_flaky and test_broken: each is retested
    once on a fresh boot, its failed attempt reported as a rerun; test_new has no baseline and is not retested;
    session.json keeps both attempts, and harness report calls the pass on retest intermittent."""
    from harness.report import session as sessions

    earlier = tmp_path / "artifacts" / "20261201-000000-pytest-1"
    earlier.mkdir(parents=True)
    entry = sessions.target_entry(["xen-4.17", "linux-6.1"], None, "qemu-virt/result.json")
    for test in ("test_retest.py::test_flaky", "test_retest.py::test_broken"):
        sessions.record_attempt(entry, test, "passed")
    sessions.write(earlier, sessions.document("pytest", "2026-12-01T00:00:00Z", {"qemu-virt": entry}))
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "test_retest.py").write_text(RETESTED)
    run, _ = session(tmp_path, "-n", "0", "--target=qemu-virt", "test_retest.py", conftest=RETEST_CONFTEST)
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("2 failed, 2 passed") and "2 rerun" in summary, run.stdout[-3000:]
    [directory] = [d for d in (tmp_path / "artifacts").glob("*-pytest-*") if d != earlier]
    tests = json.loads((directory / "session.json").read_text())["targets"]["qemu-virt"]["tests"]
    assert {t: e["attempts"] for t, e in tests.items()} == {
        "test_retest.py::test_flaky": ["failed", "passed"], "test_retest.py::test_broken": ["failed", "failed"],
        "test_retest.py::test_new": ["failed"], "test_retest.py::test_after": ["passed"]}, tests
    report = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(directory), "--history",
                             str(tmp_path / "artifacts"), "--json"], capture_output=True, text=True, cwd=ROOT)
    classes = {f["test"]: f["class"] for f in json.loads(report.stdout)["failures"]}
    assert classes == {"test_retest.py::test_flaky": "intermittent", "test_retest.py::test_broken": "regression",
                       "test_retest.py::test_new": "never-passed"}, report.stdout + report.stderr


def test_quarantine_verify_runs_only_the_quarantined_tests_and_says_which_entries_can_go(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "test_verdicts.py").write_text(VERDICTS)
    quarantine = tmp_path / "quarantine.yaml"
    quarantine.write_text("- pattern: 'qemu-virt::test_spread.py::test_shares_the_boot*'\n  reason: bug 1\n"
                          "  expires: 2099-01-01\n"
                          "- pattern: 'qemu-virt::test_verdicts.py::test_fails'\n  reason: bug 2\n"
                          "  expires: 2099-01-01\n"
                          "- pattern: 'qemu-virt::test_verdicts.py::test_skips'\n  reason: bug 3, long gone\n"
                          "  expires: 2000-01-01\n")
    run, rows = session(tmp_path, "-n", "2", "--target=qemu-virt", f"--quarantine-verify={quarantine}",
                        "test_verdicts.py", "test_spread.py")
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 failed, 8 passed"), run.stdout[-3000:]  # nothing else ran: not the expired entry's
    assert {r["kind"] for r in rows} == {"shared"}, rows
    assert "harness quarantine: release qemu-virt::test_spread.py::test_shares_the_boot*: its 8 test(s) passed " \
           "(bug 1, until 2099-01-01)" in run.stdout, run.stdout[-3000:]
    assert "harness quarantine: keep    qemu-virt::test_verdicts.py::test_fails: still failing: " \
           "qemu-virt::test_verdicts.py::test_fails (bug 2)" in run.stdout, run.stdout[-3000:]
    assert "bug 3" not in run.stdout  # expired: it quarantines nothing, so there is nothing to verify
