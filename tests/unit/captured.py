"""Where the captured real data lives, and how to replay a console log through the monitor."""

from __future__ import annotations

from pathlib import Path

from harness.monitor import ConsoleMonitor

DATA = Path(__file__).parent / "data"
HEALTHY_LOG = DATA / "logs" / "qemu-virt-healthy.log"


def replay(log: bytes, chunk: int = 512, prompt: str = r"dom0# ") -> ConsoleMonitor:
    return ConsoleMonitor(prompt=prompt).replay(log, chunk)
