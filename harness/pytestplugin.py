"""The harness's pytest plugin: `--target NAME[,NAME…]|all|FILE.yaml`, one boot per target per session.

Loaded by the project's conftest.py (`pytest_plugins`), the way labgrid's own plugin is loaded by
its entry point. What it promises, and how it keeps each promise:

- Tests never branch on a target's name: a test that needs a capability is marked
  `@pytest.mark.requires("extended-regions")` and is deselected (not skipped) where it is missing.
- A target boots once per session for all the tests that share its boot (`booted`). The items of a
  target are kept together (the ones that share its boot first), and under xdist the plugin's own
  scheduler gives each target's tests to one worker. A claim file in the target's artifacts makes a
  second boot an error instead of a silent overwrite of the first one's logs.
- A boot the lab could not run, or a build that cannot be booted, is one pytest *error*. A lab failure (at
  the boot, or in a test since: the console or the power gone, a place lost) ends that target's session:
  its remaining tests are errors, "not run (lab)", never failures, and the other targets go on. After an
  untestable build they are blocked (skipped, naming it), as bisect's "skip this commit" wants.
- Every test of a boot carries the boot's facts into junit (target, Xen, kernel, verdict, stage,
  signature, artifacts); the session's artifacts directory is a junit suite property.
- A session that booted ends with the Xen x Linux matrix over its boots, matrix.md and matrix.json in its
  artifacts directory (harness/report/matrix.py), written once, by the controller.
- The session ends with its summary, session.json (harness/report/session.py), from every test's reports
  and each boot's result.json, and report.html judging it against the earlier sessions beside it
  (`harness report`); the terminal summary names both.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from . import artifacts, targets
from .boot import BootSession
from .errors import HarnessError
from .lab.process import die_with_parent
from .monitor import BootFailure, Verdict, verdict_class
from .report import session as summary
from .result import BootResult
from .targets import TargetSpec

TARGETS = pytest.StashKey[dict[str, TargetSpec]]()  # target name -> spec, in --target order
ARTIFACTS = pytest.StashKey[Path]()  # the session's artifacts directory
RUNNING = pytest.StashKey[dict[str, BootSession]]()  # booted targets whose machine still runs
BLOCKED = pytest.StashKey[dict[str, str]]()  # target -> why its shared boot could not be had
MATRIX_LEFT_OUT = pytest.StashKey[list[str]]()  # what the session's matrix.md could not show, each with why
STARTED = pytest.StashKey[str]()  # the session's start, UTC
EARLIER = pytest.StashKey[list]()  # the sessions before this one, newest first (read at the first retest question)
SHARED = pytest.StashKey[dict[str, "SharedBoot"]]()  # target -> its boot as its tests see it
WRITTEN = pytest.StashKey[list[Path]]()  # session.json and report.html, once written

SHARED_BOOT = "booted"  # the fixture whose tests share one boot of their target
CLAIM = ".booted-by"  # in a target's artifacts: who booted it in this session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "Xen on Arm boot harness")
    group.addoption("--history", default=None, type=Path,
                    help="earlier sessions (directories holding session.json) that say which tests passed in the "
                         "baseline; default: the artifacts root. A boot test that fails here but passed in its "
                         "baseline is retested once on a fresh boot")
    group.addoption("--no-retest", action="store_true", help="never retest a failure that passed in the baseline")
    group.addoption("--quarantine-verify", metavar="FILE", type=Path, default=None,
                    help="run only the tests an unexpired entry of this quarantine file (harness report's) "
                         "matches, and say which entries can be released (every test they match passed)")
    group.addoption("--target", default=None,
                    help="target(s): names from targets/, comma-separated, 'all', or a YAML file's path "
                         "(default: --lg-env's file, else $HARNESS_TARGET, else qemu-virt)")
    group.addoption("--xen", type=Path, help="boot this Xen image instead of the pinned Debian one")
    group.addoption("--kernel", type=Path, help="boot this dom0 kernel instead of the pinned Debian one")
    group.addoption("--initrd", type=Path, help="boot this dom0 initramfs instead of the built one")
    group.addoption("--artifacts", type=Path,
                    help="root of the session's artifacts (default: $HARNESS_ARTIFACTS, else ./artifacts)")
    group.addoption("--place", help="boot the target on this place of a labgrid farm (with labgrid's "
                                    "--lg-coordinator or $LG_COORDINATOR), acquired for the session")


def chosen_targets(config: pytest.Config) -> str:
    """--target, else labgrid's own --lg-env (or $LG_ENV), else $HARNESS_TARGET, else qemu-virt."""
    target = config.getoption("target")
    lg_env = config.getoption("lg_env", default=None)
    if target and lg_env and target != lg_env:
        raise pytest.UsageError(f"--target {target} and --lg-env {lg_env} both name targets: give one of them.")
    return target or lg_env or os.environ.get("LG_ENV") or os.environ.get("HARNESS_TARGET") or "qemu-virt"


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # An xdist worker dies with its controller, and its QEMU with it (parent-death signals chain).
        die_with_parent()
    config.addinivalue_line("markers", "boot: boots a real target (QEMU or board); runs once per --target")
    config.addinivalue_line("markers", "farm: boots through a labgrid farm (its coordinator and exporter on loopback)")
    config.addinivalue_line("markers", "requires(capability): run only on targets that have this capability")
    try:
        specs = [targets.load_spec(name) for name in targets.expand(chosen_targets(config))]
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("place") and len(specs) != 1:
        raise pytest.UsageError(f"--place {config.getoption('place')} is one board: give one --target with it.")
    config.stash[TARGETS] = {spec.name: spec for spec in specs}
    config.stash[RUNNING] = {}
    config.stash[BLOCKED] = {}
    config.stash[STARTED] = summary.now()
    config.stash[SHARED] = {}
    config.stash[WRITTEN] = []
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(SessionSummary(config), "harness-session-summary")
    if artifacts.SESSION_ENV not in os.environ:  # the controller (or a run without xdist): its workers inherit it
        root = (config.getoption("artifacts") or artifacts.default_root()).resolve()
        os.environ[artifacts.SESSION_ENV] = str(artifacts.run_dir_name(root, "pytest"))  # made by the first boot
    config.stash[ARTIFACTS] = Path(os.environ[artifacts.SESSION_ENV])


def pytest_sessionstart(session: pytest.Session) -> None:
    """The session's artifacts directory as a junit suite property (the process writing junit has it)."""
    from _pytest.junitxml import xml_key

    if (xml := session.config.stash.get(xml_key, None)) is not None:
        xml.add_global_property("harness_artifacts", str(session.config.stash[ARTIFACTS]))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"harness targets: {', '.join(config.stash[TARGETS])}",
        f"harness artifacts: {config.stash[ARTIFACTS]}",
    ]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The matrix over every boot of the session (its workers' too: they wrote into the same directory)."""
    config = session.config
    if hasattr(config, "workerinput") or not config.stash[ARTIFACTS].is_dir():
        return
    from .report import matrix

    try:
        left_out = matrix.write(config.stash[ARTIFACTS]).left_out
    except OSError as exc:  # a report cannot fail the tests it reports on: say why it is missing
        left_out = [f"matrix.md could not be written ({exc.strerror})"]
    config.stash[MATRIX_LEFT_OUT] = left_out


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if config.stash[ARTIFACTS].exists():
        terminalreporter.write_line(f"harness artifacts (console logs, DTBs, result.json): {config.stash[ARTIFACTS]}")
    if (table := config.stash[ARTIFACTS] / "matrix.md").is_file():
        terminalreporter.write_line(f"harness matrix (Xen x Linux, each witness): {table}")
    for why in config.stash.get(MATRIX_LEFT_OUT, []):
        terminalreporter.write_line(f"harness matrix: left out: {why}", yellow=True)
    for path in config.stash[WRITTEN]:
        terminalreporter.write_line(f"harness {path.name}: {path}")
    if (recorded := config.pluginmanager.get_plugin("harness-session-summary")) is not None:
        for line in quarantine_verdicts(config, recorded.tests):
            terminalreporter.write_line(f"harness quarantine: {line}", green=line.startswith("release"))


# --- session.json -----------------------------------------------------------------------------------------


def attempt_verdict(report: pytest.TestReport, so_far: str | None) -> str | None:
    """A test attempt's verdict after one of its phases: a setup or teardown failure is an error, a call's a
    failure, a skip wherever it happens a skip; a passing phase changes nothing."""
    if report.skipped:
        return "skipped"
    if report.outcome == RERUN:  # a failed attempt, retested
        return "failed"
    if report.failed:
        return "failed" if report.when == "call" else (so_far if so_far == "failed" else "error")
    return so_far or ("passed" if report.when == "call" else None)


def why(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    return crash.message if crash is not None else report.longreprtext


class SessionSummary:
    """The controller's record of every target's tests (xdist forwards its workers' reports to it), written
    as session.json when the session ends, with report.html judging it against the sessions beside it."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, dict[str, dict]] = {}  # target -> {test: its entry}
        self.attempt: dict[str, tuple[str | None, str]] = {}  # nodeid -> this attempt's verdict so far, why

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        target = getattr(report, "harness_target", None)  # set where the test ran (pytest_runtest_makereport)
        if target is None:
            return
        so_far, reason = self.attempt.get(report.nodeid, (None, ""))
        verdict = attempt_verdict(report, so_far)
        if verdict != so_far and verdict != "passed":
            reason = why(report)
        if report.when != "teardown":
            self.attempt[report.nodeid] = (verdict, reason)
            return
        self.attempt.pop(report.nodeid, None)
        if verdict is not None:
            entry = self.tests.setdefault(target, {"tests": {}})
            summary.record_attempt(entry, summary.test_name(report.nodeid, target), verdict, reason)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.tests:
            return  # no target's test ran (the unit tests): no session to summarize
        config = self.config
        directory = config.stash[ARTIFACTS]
        specs = config.stash[TARGETS]
        entries = {}
        for name, recorded in self.tests.items():
            spec = specs[name]
            result = summary.read_result(directory / name / "result.json")
            entry = summary.target_entry(sorted(spec.capabilities), result, f"{name}/result.json",
                                         place=config.getoption("place"), board=name if spec.board else None,
                                         arch=spec.arch)
            entries[name] = entry | {"tests": recorded["tests"]}
        try:
            artifacts.writable_dir(directory)
        except HarnessError as exc:
            session.config.get_terminal_writer().line(f"harness: no session.json: {exc}")
            return
        config.stash[WRITTEN].append(summary.write(directory, summary.document("pytest", config.stash[STARTED],
                                                                                  entries)))
        from .report.outputs import write_session_report

        try:
            config.stash[WRITTEN].extend(write_session_report(directory))
        except HarnessError as exc:  # an unreadable session beside this one: say so, keep the session's outcome
            session.config.get_terminal_writer().line(f"harness: no report.html: {exc}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target_name" in metafunc.fixturenames:
        names = list(metafunc.config.stash[TARGETS])
        metafunc.parametrize("target_name", names, ids=names, scope="session")


def target_of(item: pytest.Item | None) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target_name") if callspec is not None else None


def shares_boot(item: pytest.Item | None) -> bool:
    return item is not None and SHARED_BOOT in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after pytest's own fixture-based reordering, which would undo this
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect what a target cannot run; then each target's tests together, the shared boot's first."""
    specs = config.stash[TARGETS]
    order = {name: i for i, name in enumerate(specs)}
    quarantine = quarantined(config)
    keep, drop = [], []
    for item in items:
        name = target_of(item)
        needs = [m.args[0] for m in item.iter_markers("requires")]
        runs = name is None or all(specs[name].can(n) for n in needs)
        if quarantine is not None:  # --quarantine-verify: only the target tests an entry matches
            runs = runs and name is not None and any(q.matches(name, summary.test_name(item.nodeid, name))
                                                     for q in quarantine)
        (keep if runs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    per_target = sorted((i for i in keep if target_of(i) is not None),
                        key=lambda i: (order[target_of(i)], not shares_boot(i)))
    items[:] = per_target + [i for i in keep if target_of(i) is None]


QUARANTINE = pytest.StashKey[list]()  # --quarantine-verify's unexpired entries


def quarantined(config: pytest.Config) -> list | None:
    """--quarantine-verify's unexpired entries (harness.report.judge.Quarantine), or None without it."""
    path = config.getoption("quarantine_verify")
    if path is None:
        return None
    if QUARANTINE not in config.stash:
        from datetime import date

        from .report.judge import load_quarantine

        try:
            entries = load_quarantine(path)
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[QUARANTINE] = [q for q in entries if q.expires >= date.today()]
    return config.stash[QUARANTINE]


def quarantine_verdicts(config: pytest.Config, tests: dict[str, dict]) -> list[str]:
    """--quarantine-verify's answer, one line per entry: release it (every test it matches ran and passed) or
    keep it (naming what failed, or that nothing it matches ran)."""
    lines = []
    for q in quarantined(config) or []:  # loaded here too: under xdist the controller collects nothing
        ran = {f"{target}::{test}": entry["verdict"] for target, t in tests.items()
               for test, entry in t["tests"].items() if q.matches(target, test)}
        failed = sorted(name for name, verdict in ran.items() if verdict != "passed")
        if not ran:
            lines.append(f"keep    {q.pattern}: no test it matches ran here ({q.reason})")
        elif failed:
            lines.append(f"keep    {q.pattern}: still failing: {', '.join(failed)} ({q.reason})")
        else:
            lines.append(f"release {q.pattern}: its {len(ran)} test(s) passed ({q.reason}, until {q.expires})")
    return lines


def target_scope(nodeid: str, names: list[str]) -> str | None:
    """The target a test id belongs to: one of `names` among the '-'-joined parameter ids in its brackets."""
    _, bracket, params = nodeid.partition("[")
    if not bracket:
        return None
    joined = f"-{params.rstrip(']')}-"
    return next((name for name in sorted(names, key=len, reverse=True) if f"-{name}-" in joined), None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Each target's tests on one worker (one boot each); every other test wherever there is room."""
    from xdist.scheduler import LoadScopeScheduling

    names = list(config.stash[TARGETS])

    class TargetScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return target_scope(nodeid, names) or nodeid

    return TargetScheduling(config, log)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_artifacts(pytestconfig: pytest.Config) -> Path:
    try:
        return artifacts.writable_dir(pytestconfig.stash[ARTIFACTS])
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def overrides(pytestconfig: pytest.Config) -> dict[str, Path | None]:
    return {name: pytestconfig.getoption(name) for name in ("xen", "kernel", "initrd")}


@pytest.fixture(scope="session")
def target_spec(pytestconfig: pytest.Config, target_name: str) -> TargetSpec:
    return pytestconfig.stash[TARGETS][target_name]


def claim_boot(directory: Path) -> None:
    """Record that this process boots the target whose artifacts are `directory`; a second claim in the
    same session (its tests split over workers, or torn apart by reordering) is an error, not a reboot."""
    directory.mkdir(parents=True, exist_ok=True)
    me = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} (pid {os.getpid()})"
    try:
        fd = os.open(directory / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        first = (directory / CLAIM).read_text().strip()
        raise HarnessError(
            f"{directory.name} was already booted in this session by {first}, and {me} was about to boot it "
            "again over the same artifacts: its tests must run together, on one worker (a harness bug)."
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(me + "\n")


class SharedBoot:
    """A target's boot as its tests see it (the `booted` fixture): the BootSession's attributes, and `reboot`,
    which a retest calls to put a fresh boot of the same target in its place for the tests that follow."""

    def __init__(self, session, reboot: Callable[[], object]) -> None:
        self.__dict__.update(session=session, _reboot=reboot)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["session"], name)

    def reboot(self) -> None:
        self.__dict__["session"] = self.__dict__["_reboot"]()


def boot_target(pytestconfig: pytest.Config, spec: TargetSpec, directory: Path, overrides) -> BootSession:
    """`spec` booted into `directory` (claimed: one boot per directory), every guest probed and checked; a lab
    failure or an untestable build is recorded in BLOCKED and fails the caller (one error)."""
    name = spec.name
    try:
        claim_boot(directory)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    session = BootSession(spec, directory, overrides, place=pytestconfig.getoption("place"),
                          coordinator=pytestconfig.getoption("lg_coordinator", default=None))
    running = pytestconfig.stash[RUNNING]
    running[name] = session
    try:
        session.boot()
        session.check()
    except (BootFailure, HarnessError):
        pass  # recorded in session.result
    verdict = session.result.decide()
    if verdict in (Verdict.INFRASTRUCTURE, Verdict.UNTESTABLE):
        result = session.close()
        running.pop(name, None)
        why = result.error or (result.failure.message() if result.failure else "")
        words = "untestable build" if verdict is Verdict.UNTESTABLE else LAB
        pytestconfig.stash[BLOCKED][name] = f"{words}: {why}"
        pytest.fail(f"{name}: {words}: {why}", pytrace=False)
    return session


@pytest.fixture(scope="session")
def booted(pytestconfig: pytest.Config, target_spec: TargetSpec, session_artifacts: Path, overrides):
    """The target booted, every guest probed and checked, once for all the tests that ask (a retest boots it
    again: pytest_runtest_protocol).

    A boot that crashes or hangs is recorded, not raised: test_boot reports it as a failure with its
    evidence, and the other tests fail pointing at it. A lab failure (QEMU missing, download failed,
    the machine killed) or a build that cannot be booted is one error; the target's other tests are
    errors "not run (lab)", or blocked by the untestable build (pytest_runtest_setup).
    """
    name = target_spec.name
    retests = itertools.count(1)

    def reboot() -> BootSession:  # a retest's fresh boot, into <target>-retest-N beside the first
        if session := pytestconfig.stash[RUNNING].pop(name, None):
            session.close()
        return boot_target(pytestconfig, target_spec, session_artifacts / f"{name}-retest-{next(retests)}", overrides)

    shared = pytestconfig.stash[SHARED][name] = SharedBoot(
        boot_target(pytestconfig, target_spec, session_artifacts / name, overrides), reboot)
    yield shared
    pytestconfig.stash[RUNNING].pop(name, None)
    shared.session.close()


LAB = "infrastructure error"  # how BLOCKED words a lab failure (an untestable build is the other kind)
RERUN = "rerun"  # the outcome of a failed attempt that was retested (pytest-rerunfailures' word)


def passed_in_baseline(config: pytest.Config, target: str, test: str) -> bool:
    """Whether the baseline of target × test passed it: the newest session under --history (default: the artifacts
    root; not this one) that ran it (harness.report.judge.baseline). The sessions are read once, at the first boot
    test (a session of unit tests never reads them); one that cannot be read is passed over."""
    if EARLIER not in config.stash:
        from .report import session as sessions

        history = config.getoption("history") or config.stash[ARTIFACTS].parent
        current = config.stash[ARTIFACTS].resolve()
        found = []
        for directory in sorted(history.iterdir()) if history.is_dir() else []:
            if directory.resolve() != current and (directory / sessions.FILE).is_file():
                with contextlib.suppress(HarnessError):
                    found.append(sessions.load(directory))
        config.stash[EARLIER] = sorted(found, key=lambda s: s.started, reverse=True)
    from .report.judge import baseline

    found = baseline(config.stash[EARLIER], target, test)
    return found is not None and found[1]["verdict"] == "passed"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A boot test that fails but passed in its baseline (a regression, or a flake) is retested once, at once,
    on a fresh boot of its target: the failed attempt is reported as a rerun, the retest as the test's result,
    and session.json keeps both attempts (`harness report` calls a pass on retest intermittent)."""
    name = target_of(item)
    test = summary.test_name(item.nodeid, name) if name else None
    if (test is None or not shares_boot(item) or item.config.getoption("no_retest")
            or not passed_in_baseline(item.config, name, test)):
        return None
    from _pytest.runner import runtestprotocol

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    shared = item.config.stash[SHARED].get(name)  # set up by the first run, when this is the target's first test
    retest = shared is not None and name not in item.config.stash[BLOCKED] and any(
        r.when == "call" and r.failed for r in reports)
    if retest:
        for report in reports:
            if report.when == "call" and report.failed:
                report.outcome = RERUN
            item.ihook.pytest_runtest_logreport(report=report)
        with contextlib.suppress(pytest.fail.Exception):  # the fresh boot met the lab: the retest says so
            shared.reboot()
        runtestprotocol(item, nextitem=nextitem, log=True)
    else:
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    if report.outcome == RERUN:
        return RERUN, "R", ("RERUN", {"yellow": True})
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test of a target whose boot cannot be had: after a lab failure (at its boot or in a test since) it is
    an error, "not run (lab)", never a failure; after an untestable build it is blocked (skipped), as bisect's
    "skip this commit" wants. The other targets go on."""
    name = target_of(item)
    if not shares_boot(item) or not (why := item.config.stash[BLOCKED].get(name)):
        return
    if why.startswith(LAB):
        pytest.fail(f"not run (lab): {name}: {why.splitlines()[0]}", pytrace=False)
    pytest.skip(f"blocked: {name} could not be booted ({why.splitlines()[0]})")


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Power a booted target off after the last test that shares its boot, so an idle machine does not
    slow the boots that follow (the collection order keeps those tests together)."""
    name = target_of(item)
    running = item.config.stash[RUNNING]
    if name in running and not (target_of(nextitem) == name and shares_boot(nextitem)):
        running.pop(name).close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Every test of a boot carries the boot's facts into junit (its reports carry them from xdist workers);
    every report of a target's test names its target, for session.json (xdist sends a report's attributes)."""
    if call.when == "setup" and shares_boot(item) and (session := item.config.stash[RUNNING].get(target_of(item))):
        item.user_properties += [(f"harness:{k}", v) for k, v in boot_facts(session.result).items() if v]
    report = yield
    report.harness_target = target_of(item)
    failure = call.excinfo.value if call.excinfo is not None else None
    if isinstance(failure, BootFailure) and failure.infrastructure and shares_boot(item):
        # the console or the power gone, a place lost: the lab ended this target's session
        name = target_of(item)
        item.config.stash[BLOCKED][name] = f"{LAB}: {failure.failure.message()}"
        if session := item.config.stash[RUNNING].pop(name, None):
            session.close()
    return report


def boot_facts(result: BootResult) -> dict[str, str | None]:
    """What junit says of a boot: target, versions, verdict and its class, stage, signature, artifacts."""
    verdict = result.decide()
    return {
        "target": result.target,
        "xen": result.claims.release if result.claims else None,
        "kernel": next((v.uname for v in result.views.values() if v.uname), None),
        "verdict": str(verdict),
        "class": verdict_class(verdict),
        "stage": result.failure.stage if result.failure else None,
        "signature": result.failure.signature if result.failure else None,
        "artifacts": str(result.artifacts),
    }
