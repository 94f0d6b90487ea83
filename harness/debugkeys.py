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
# The order they are pressed in: what the conclusive patterns read comes first ('q' and 'e': dom0 blocked
# with an event pending), so that a probe can stop early; the rest for the record.
PROBE_KEYS = "dqe0rg"


@dataclass(frozen=True)
class Registers:
    """One "*** Dumping … state ***" block."""

    who: str  # "CPU1 host", "CPU0 guest d0v0", "Dom0 vcpu#1"
    cpu: int | None  # the pCPU it runs on (its "CPU:" line); None for '0': there that line names the pCPU
    # that printed the dump, not the one the vCPU was on
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


# --- reading the dumps (Xen 4.17's formats) ---------------------------------------------------------

# The first line of each key's dump. 'r' (xen/common/sched/cpupool.c dump_runq) prints no "pressed"
# line: its first line stands for it.
PRESSED = re.compile(r"^'(.)' pressed -> ")  # xen/common/keyhandler.c, event_channel.c
GRANTS = re.compile(r"^gnttab_usage_print_all \[ key '(.)' pressed")  # xen/common/grant_table.c
GRANTS_END = "gnttab_usage_print_all ] done"
RUNQ = re.compile(r"^sched_smt_power_savings: ")
# A register block (xen/common/keyhandler.c dump_execstate, xen/arch/arm/traps.c vcpu_show_execution_state).
BLOCK = re.compile(r"^\*\*\* Dumping (?:CPU(\d+) host state|CPU(\d+) guest state \(d(\d+)v(\d+)\)"
                   r"|Dom(\d+) vcpu#(\d+) state): \*\*\*$")
# Its lines (xen/arch/arm/traps.c _show_registers, show_stack, show_guest_stack, show_trace).
BANNER = re.compile(r"^----\[ Xen-")
REGISTER_LINE = re.compile(r"^\s*[A-Z][A-Z0-9_]*\s?:|^$|^No stack trace")
CPU_LINE = re.compile(r"^CPU:\s+(\d+)$")
PC_LINE = re.compile(r"^PC:\s+([0-9a-fA-F]+)(?:\s+(.+))?$")
CPSR_LINE = re.compile(r"^CPSR:\s+[0-9a-fA-F]+ MODE:(.+)$")
STACK = re.compile(r"^(?:Xen|Guest) stack trace from sp=")
STACK_LINE = re.compile(r"^\s+[0-9a-fA-F]+(?: [0-9a-fA-F]+)*$"
                        r"|^\s+(?:Stack empty|Stack is misaligned|Failed to convert)")
CALL_TRACE = "Xen call trace:"
TRACE_LINE = re.compile(r"^\s+\[<[0-9a-fA-F]+>\] ")
# 'h'
HANDLER = re.compile(r"^ key '.' \(ascii '[0-9a-f]{2}'\) => ")
# 'q' (xen/common/keyhandler.c dump_domains)
DOMAIN_INFO = re.compile(r"^General information for domain \d+:$")
DOMAIN_VCPUS = re.compile(r"^VCPU information and callbacks for domain (\d+):$")
VCPU_LINE = re.compile(r"^\s+VCPU(\d+): CPU(\d+) \[has=[TF]\] poll=-?\d+ "
                       r"upcall_pend=([0-9a-f]+) upcall_mask=([0-9a-f]+)")
PAUSE_LINE = re.compile(r"^\s+pause_count=-?\d+ pause_flags=([0-9a-f]+)$")
NOTIFYING = "Notifying guest "  # the last lines of 'q'
# 'e' (xen/common/event_channel.c domain_dump_evtchn_info)
EVTCHN_DOMAIN = re.compile(r"^Event channel information for domain (\d+):$")
EVTCHN_HEAD = re.compile(r"^Polling vCPUs: |^\s+port \[p/m/s\]$")
PORT_LINE = re.compile(r"^\s*(\d+) \[(\d)/(\d)/[^\]]*\]: s=(\d+) n=(-?\d+) x=\d+ ?(.*)$")
# Xen's messages about a guest ("d0v1 Unhandled SMC/HVC", "d0: …"), printed by another CPU in the middle
# of a dump: no part of it, and no end of it either.
INTERLOPER = re.compile(r"^d\d+(?:v\d+)?[: ]")
DUMP_LINES_KEPT = 20_000  # a dump of every key is ~300 lines on 2 pCPUs and dom0: parse stops at this many

# Exception level by Xen's mode string (xen/arch/arm/traps.c mode_string); every other "32-bit Guest …"
# mode is a kernel's (EL1).
MODE_EL = {"Hypervisor": 2, "32-bit Monitor": 3, "32-bit Guest USR": 0}
MODE_EL64 = re.compile(r"^64-bit EL(\d)")


def exception_level(mode: str) -> int | None:
    """2 Xen, 1 a guest's kernel, 0 its user space (3 the monitor) from Xen's MODE: string; None when unknown."""
    if m := MODE_EL64.match(mode):
        return int(m.group(1))
    return MODE_EL.get(mode, 1 if mode.startswith("32-bit Guest ") else None)


def dump_key(text: str) -> str | None:
    """The key whose dump `text` begins ("r" for the run queues' first line, "" for a register block);
    None when it begins none."""
    if m := PRESSED.match(text) or GRANTS.match(text):
        return m.group(1)
    if RUNQ.match(text):
        return "r"
    return "" if BLOCK.match(text) else None


@dataclass
class _Block:
    """A register block being read."""

    who: str
    cpu: int | None
    domain: int | None
    vcpu: int | None
    runs_here: bool = True  # its "CPU:" line names the pCPU it runs on (not so for '0': the one printing)
    phase: str = "registers"  # then "stack", then "trace" (Xen's own state)
    banner: bool = False
    pc: int | None = None
    symbol: str | None = None
    mode: str | None = None
    trace: list[str] = field(default_factory=list)

    @classmethod
    def opened(cls, m: re.Match[str]) -> _Block:
        host, guest, domain, vcpu, dom, dom_vcpu = m.groups()
        if host is not None:
            return cls(f"CPU{host} host", int(host), None, None)
        if guest is not None:
            return cls(f"CPU{guest} guest d{domain}v{vcpu}", int(guest), int(domain), int(vcpu))
        return cls(f"Dom{dom} vcpu#{dom_vcpu}", None, int(dom), int(dom_vcpu), runs_here=False)

    def take(self, text: str) -> bool | None:
        """Read one line: True, it is the block's; None, its last; False, not the block's."""
        if self.phase == "registers":
            if STACK.match(text):
                self.phase = "stack"
            elif BANNER.match(text):
                if self.banner:  # a second banner: another dump (a panic's) begins
                    return False
                self.banner = True
            elif not REGISTER_LINE.match(text):
                return False
            elif (m := CPU_LINE.match(text)) and self.runs_here:
                self.cpu = int(m.group(1))
            elif (m := PC_LINE.match(text)) and self.pc is None:
                self.pc, self.symbol = int(m.group(1), 16), m.group(2)
            elif (m := CPSR_LINE.match(text)) and self.mode is None:
                self.mode = m.group(1)
            return True
        if self.phase == "stack" and text == CALL_TRACE:
            self.phase = "trace"
            return True
        if not text:  # the blank line after a stack or a call trace
            return None
        if self.phase == "trace":
            if TRACE_LINE.match(text):
                self.trace.append(text.strip())
                return True
            return False
        return bool(STACK_LINE.match(text))

    def registers(self) -> Registers | None:
        """The block's Registers; None when it lacks its PC or its mode (cut short, or garbled)."""
        if self.pc is None or self.mode is None:
            return None
        return Registers(self.who, self.cpu, self.domain, self.vcpu, self.pc, self.symbol, self.mode,
                         exception_level(self.mode), tuple(self.trace))


class _Reader:
    """Reads Xen's lines one at a time into a DebugDump: which dump each belongs to, and what it says."""

    def __init__(self) -> None:
        self.dump = DebugDump()
        self.key: str | None = None  # the dump being read: its key, "" for a register block; None: no dump
        self.block: _Block | None = None
        self.domain: int | None = None  # 'q', 'e': the domain the lines are about
        self.vcpu: re.Match[str] | None = None  # 'q': a VCPU line waiting for its pause_flags line
        self.notified = False  # 'q': its last lines ("Notifying guest …") have begun

    def feed(self, text: str) -> None:
        text = text.rstrip()
        key = dump_key(text)
        if key is not None and not (key == "r" and self.key == "r"):  # a dump begins
            self.end()
            if key:
                self.dump.keys += key
            else:
                self.block = _Block.opened(BLOCK.match(text))
            self.key = key
            self.dump.lines.append(text)
            return
        if self.key is None or INTERLOPER.match(text):
            return
        taken = False if text.startswith("***") else self._take(text)  # "*** Serial input to …": no dump's
        if taken is False:
            self.end()
            return
        self.dump.lines.append(text)
        if taken is None:
            self.end()

    def _take(self, text: str) -> bool | None:
        """Whether the dump being read goes on with `text` (None: `text` is its last line), reading what it says."""
        if self.block is not None:
            return self.block.take(text)
        if self.key in ("d", "0"):  # register blocks follow, each with its own first line
            return not text
        if self.key == "h":
            return bool(HANDLER.match(text))
        if self.key == "q":
            return self._domain_line(text)
        if self.key == "e":
            return self._event_line(text)
        if self.key == "g" and text == GRANTS_END:
            return None
        return True  # 'r', 'g' and the other keys: free-form until the next dump or "***"

    def _domain_line(self, text: str) -> bool:
        if text.startswith(NOTIFYING):
            self.notified = True
            return True
        if self.notified:
            return False
        vcpu, self.vcpu = self.vcpu, None
        if DOMAIN_INFO.match(text):
            self.domain = None
        elif m := DOMAIN_VCPUS.match(text):
            self.domain = int(m.group(1))
        elif m := VCPU_LINE.match(text):
            self.vcpu = m if self.domain is not None else None
        elif (m := PAUSE_LINE.match(text)) and vcpu is not None:
            number, cpu, pending, masked = vcpu.groups()
            self.dump.vcpus.append(VcpuState(self.domain, int(number), int(cpu), int(pending, 16) != 0,
                                             int(masked, 16) != 0, int(m.group(1), 16)))
        return True

    def _event_line(self, text: str) -> bool:
        if m := EVTCHN_DOMAIN.match(text):
            self.domain = int(m.group(1))
        elif m := PORT_LINE.match(text):
            if self.domain is not None:
                port, pending, masked, state, vcpu, detail = m.groups()
                self.dump.channels.append(EventChannel(self.domain, int(port), pending != "0", masked != "0",
                                                       int(state), int(vcpu), detail.strip()))
        elif not EVTCHN_HEAD.match(text):
            return False
        return True

    def end(self) -> None:
        """The dump being read is over (or cut short)."""
        if self.block is not None and (regs := self.block.registers()) is not None:
            self.dump.registers.append(regs)
        self.key, self.block, self.domain, self.vcpu, self.notified = None, None, None, None, False


def parse(lines: Iterable[str]) -> DebugDump:
    """The dumps among Xen's console lines (without "(XEN) "); lines of no dump are ignored.

    A dump cut short or garbled gives what it said before (a register block without its PC or its mode
    gives nothing); reading stops after DUMP_LINES_KEPT lines of dumps."""
    reader = _Reader()
    for text in lines:
        if len(reader.dump.lines) >= DUMP_LINES_KEPT:
            break
        reader.feed(text)
    reader.end()
    return reader.dump
