"""What the boot tests share: a booted target's result, or a failure that says why there is none."""

from __future__ import annotations

import pytest

from harness.boot import BootResult, BootSession
from harness.findings import failures, render_table


def probed(session: BootSession, *guests: str) -> BootResult:
    """The result of a boot whose guests (dom0 by default) were all probed; else fail naming why not."""
    result = session.result
    missing = [g for g in (guests or ("dom0",)) if g not in result.views]
    if result.failure or missing:
        pytest.fail(f"{session.spec.name}: the boot did not get as far as this check (see test_boot), "
                    f"{', '.join(missing) or 'its guests'} not probed: "
                    f"{result.failure.message() if result.failure else result.error}", pytrace=False)
    return result


def assert_clean(findings, what: str, session: BootSession) -> None:
    """No failing finding; else the target, the stage its boot reached, and each finding as evidence."""
    bad = failures(findings)
    stage = session.result.milestones and list(session.result.milestones)[-1]
    assert not bad, f"{session.spec.name}, after stage '{stage}': {what}:\n{render_table(bad)}"
