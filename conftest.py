"""pytest wiring: `--target NAME[,NAME…]|all`, one artifacts directory per session, boot fixtures.

Tests never branch on a target's name: a test that needs a capability is marked
`@pytest.mark.requires("extended-regions")` and is deselected (not skipped) for targets without it.
Each target's tests share one boot and stay on one xdist worker (`--dist loadgroup`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import targets
from harness.boot import BootSession
from harness.cli import SESSION_ARTIFACTS_ENV, artifacts_dir_name, default_artifacts_root
from harness.errors import HarnessError
from harness.lab.qemu import die_with_parent
from harness.monitor import BootFailure


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "Xen on Arm boot harness")
    group.addoption("--target", default=os.environ.get("HARNESS_TARGET", "qemu-virt"),
                    help="target(s) from targets/, comma-separated, or 'all' (default: qemu-virt)")
    group.addoption("--xen", type=Path, help="boot this Xen image instead of the pinned Debian one")
    group.addoption("--kernel", type=Path, help="boot this dom0 kernel instead of the pinned Debian one")
    group.addoption("--initrd", type=Path, help="boot this dom0 initramfs instead of the built one")
    group.addoption("--artifacts", type=Path,
                    help="root of the session's artifacts (default: $HARNESS_ARTIFACTS, else ./artifacts)")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # An xdist worker dies with its controller, and its QEMU with it (parent-death signals chain).
        die_with_parent()
    config.addinivalue_line("markers", "requires(capability): run only on targets that have this capability")
    try:
        config.harness_targets = targets.expand(config.getoption("target"))
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if SESSION_ARTIFACTS_ENV not in os.environ:  # the controller (or a run without xdist): its workers inherit it
        root = (config.getoption("artifacts") or default_artifacts_root()).resolve()
        os.environ[SESSION_ARTIFACTS_ENV] = str(artifacts_dir_name(root, "pytest"))  # made by the first boot
    config.harness_artifacts = Path(os.environ[SESSION_ARTIFACTS_ENV])


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"harness targets: {', '.join(config.harness_targets)}",
        f"harness artifacts: {config.harness_artifacts}",
    ]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if config.harness_artifacts.exists():
        terminalreporter.write_line(f"harness artifacts (console logs, DTBs, result.json): {config.harness_artifacts}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target_name" in metafunc.fixturenames:
        names = metafunc.config.harness_targets
        metafunc.parametrize("target_name", names, ids=names, scope="session")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    try:
        specs = {name: targets.load_spec(name) for name in config.harness_targets}
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    for item in items:
        name = getattr(item, "callspec", None) and item.callspec.params.get("target_name")
        if name is None:
            keep.append(item)
            continue
        item.add_marker(pytest.mark.xdist_group(name))
        spec = specs[name]
        needs = [m.args[0] for m in item.iter_markers("requires")]
        (keep if all(spec.can(n) for n in needs) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def session_artifacts(pytestconfig: pytest.Config, record_testsuite_property) -> Path:
    path = pytestconfig.harness_artifacts
    path.mkdir(parents=True, exist_ok=True)
    record_testsuite_property("harness_artifacts", str(path))
    return path


@pytest.fixture(scope="session")
def overrides(pytestconfig: pytest.Config) -> dict[str, Path | None]:
    return {name: pytestconfig.getoption(name) for name in ("xen", "kernel", "initrd")}


@pytest.fixture(scope="session")
def booted(target_name: str, session_artifacts: Path, overrides) -> BootSession:
    """The target booted, every guest probed and checked, once for all the tests that ask.

    A boot that crashes or hangs is recorded, not raised: test_boot reports it as a failure with its
    evidence, and the other tests fail pointing at it. A lab failure (QEMU missing, download failed)
    is raised, so pytest reports it as an error, not as a failure of the code under test.
    """
    session = BootSession(targets.load_spec(target_name), session_artifacts / target_name, overrides)
    _running[target_name] = session
    try:
        session.boot()
        session.check()
    except BootFailure as exc:
        if exc.infrastructure:
            session.close()
            pytest.fail(f"infrastructure error: {exc}", pytrace=False)
    except HarnessError as exc:
        session.close()
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
    yield session
    _running.pop(target_name, None)
    session.close()


_running: dict[str, BootSession] = {}  # booted targets whose QEMU still runs, by name


def _target_of(item: pytest.Item | None) -> str | None:
    return item.callspec.params.get("target_name") if item is not None and hasattr(item, "callspec") else None


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Power a booted target off after the last test that uses it, so an idle QEMU does not slow the
    boots that follow. pytest runs the tests sharing a session-scoped parameter together, and xdist
    keeps a target's tests on one worker (one group each)."""
    name = _target_of(item)
    if name in _running and not (_target_of(nextitem) == name and "booted" in nextitem.fixturenames):
        _running.pop(name).close()
