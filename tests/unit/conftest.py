"""Captured real data from the project's own qemu-virt boots, shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import xenlog
from harness.monitor import ConsoleMonitor

DATA = Path(__file__).parent / "data"
HEALTHY_LOG = DATA / "logs" / "qemu-virt-healthy.log"


def replay(log: bytes, chunk: int = 512, prompt: str = r"dom0# ") -> ConsoleMonitor:
    monitor = ConsoleMonitor(prompt=prompt)
    for start in range(0, len(log), chunk):
        monitor.feed(log[start : start + chunk])
    return monitor


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
