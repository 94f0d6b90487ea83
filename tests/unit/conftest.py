"""Captured real data from the project's own qemu-virt boots, shared by the unit tests."""

from __future__ import annotations

import pytest
from captured import DATA, HEALTHY_LOG, replay

from harness import xenlog
from harness.monitor import ConsoleMonitor


@pytest.fixture(scope="session")
def healthy_monitor() -> ConsoleMonitor:
    return replay(HEALTHY_LOG.read_bytes())


@pytest.fixture(scope="session")
def healthy_claims(healthy_monitor) -> xenlog.XenClaims:
    return xenlog.parse(healthy_monitor.text("xen"))


@pytest.fixture(scope="session")
def dom0_dtb() -> bytes:
    return (DATA / "qemu-virt-gicv3-dom0.dtb").read_bytes()


@pytest.fixture(scope="session")
def dom0_dmesg() -> list[str]:
    return (DATA / "logs" / "qemu-virt-dom0-dmesg.txt").read_text().splitlines()
