"""Where the captured real data lives, and how to replay a console log through the monitor."""

from __future__ import annotations

from pathlib import Path

from harness.monitor import ConsoleMonitor

DATA = Path(__file__).parent / "data"
HEALTHY_LOG = DATA / "logs" / "qemu-virt-healthy.log"
# A qemu-virt boot with --xen-args "sched=null no-such-param=1 dom0_max_vcpus=abc" (Debian's Xen 4.17.7):
# Xen's boot up to its handover, dom0's kernel start (the rest of its kernel log was cut), then dom0's prompt,
# Xen's console ring dump (debug key 'w'), and the input back at dom0. Cut from the boot's console.log at line
# boundaries; the bytes are as captured. Triage fails it: it does not show dom0 finding Xen.
COMPLAINTS_LOG = DATA / "logs" / "qemu-virt-xen-cmdline-complaints.log"
# A healthy qemu-virt boot whose console ring was dumped twice: the second dump holds the first's
# 'w' line too. Xen's boot to its handover, dom0's first two kernel lines, then from dom0's prompt on; bytes as
# captured.
RING_TWICE_LOG = DATA / "logs" / "qemu-virt-xen-ring-dumped-twice.log"
# Real boots whose Xen was given the serial input (three Ctrl-a) after dom0's prompt, then debug keys:
# qemu-virt (arm64, Xen 4.17.7) d 0 q r e g; qemu-a15 (arm32, Xen 4.17.5) h d 0 q r e g. Gzipped, as captured.
DEBUGKEYS_ARM64_LOG = DATA / "debugkeys" / "qemu-virt-d0qreg.log.gz"
DEBUGKEYS_ARM32_LOG = DATA / "debugkeys" / "qemu-a15-hd0qreg.log.gz"
# fault event-ppi-unwired: dom0 stopped answering after its prompt; the harness's dump follows
DEBUGKEYS_EVENTS_LOG = DATA / "debugkeys" / "qemu-virt-event-ppi-unwired.log.gz"


def replay(log: bytes, chunk: int = 512, prompt: str = r"dom0# ") -> ConsoleMonitor:
    return ConsoleMonitor(prompt=prompt).replay(log, chunk)
