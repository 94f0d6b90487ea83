"""Xen's debug keys on Arm, and what their dumps say: which pCPU or vCPU is where, which domain's vCPUs
are blocked, which event channels are pending.

The keys (KEYS) were checked against Xen 4.17's own 'h' output on arm64 and arm32 (a boot test asks
'h' again and fails when one is gone). Three Ctrl-a give Xen the serial input; each key's dump is Xen's
own lines ("(XEN) " stripped), parsed by `parse` whether read live or found in a saved log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# key -> what Xen dumps for it (xen/common/keyhandler.c, xen/arch/arm/*). 'd' first: it runs in Xen's
# interrupt handler, so it answers even when Xen's tasklets never run (a pCPU spinning with its
# interrupts on); the others run from a tasklet.
KEYS: dict[str, str] = {
    "d": "registers of every pCPU (and of the vCPU each runs)",
    "0": "dom0's vCPUs' registers",
    "q": "domains and their vCPUs (blocked, upcall pending)",
    "r": "the scheduler's run queues",
    "e": "event channels (pending, masked)",
    "g": "grant table usage",
}
PROBE_KEYS = "d0qreg"


@dataclass(frozen=True)
class Registers:
    """One "*** Dumping … state ***" block."""

    who: str  # "CPU1 host", "CPU0 guest d0v0", "Dom0 vcpu#1"
    cpu: int | None  # the pCPU it ran on (its "CPU:" line)
    domain: int | None  # None: Xen's own (host) state
    vcpu: int | None
    pc: int
    symbol: str | None  # Xen's own symbol for its PCs ("domain.c#idle_loop+0x128/0x140"); None for guests
    mode: str  # as Xen printed it: "64-bit EL2h (Hypervisor, handler)", "32-bit Guest SVC", "Hypervisor"
    el: int | None  # 2: Xen, 1: a guest's kernel, 0: a guest's user space; None when unknown
    trace: tuple[str, ...] = ()  # Xen's call trace, as printed


@dataclass(frozen=True)
class VcpuState:
    """A vCPU as 'q' shows it: "VCPU0: CPU0 [has=F] poll=0 upcall_pend=00 upcall_mask=01" and its pause_flags."""

    domain: int
    vcpu: int
    cpu: int
    upcall_pending: bool
    upcall_masked: bool
    pause_flags: int

    @property
    def blocked(self) -> bool:
        return bool(self.pause_flags & 1)  # _VPF_blocked: waiting for an event


@dataclass(frozen=True)
class EventChannel:
    """A port as 'e' shows it: "   2 [0/0/  -   ]: s=5 n=0 x=0 v=2"."""

    domain: int
    port: int
    pending: bool
    masked: bool
    state: int  # s=: 1 unbound, 2 interdomain, 3 pirq, 5 virq, 6 ipi …
    vcpu: int  # n=: the vCPU it notifies
    detail: str  # the rest: "v=2" (a VIRQ), "d=0 p=3" (its remote end), …

    @property
    def virq(self) -> int | None:
        m = re.search(r"\bv=(\d+)", self.detail)
        return int(m.group(1)) if m and self.state == 5 else None


@dataclass
class DebugDump:
    """What one or more debug keys printed."""

    keys: str = ""  # the keys whose dumps were seen, in order
    registers: list[Registers] = field(default_factory=list)
    vcpus: list[VcpuState] = field(default_factory=list)
    channels: list[EventChannel] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # every line of the dumps, as printed

    def host(self) -> list[Registers]:
        """Xen's own pCPUs, from 'd'."""
        return [r for r in self.registers if r.domain is None]


def parse(lines: Iterable[str]) -> DebugDump:
    """The dumps among Xen's console lines (without "(XEN) "); lines of no dump are ignored."""
    return DebugDump(lines=list(lines))  # TEMPORARY until the parser lands
