"""The console monitor: a boot read as a sequence of milestones and a catalogue of failure signatures.

Every byte from a console passes through `ConsoleMonitor.feed`, live from labgrid or replayed from a
saved log (`harness triage`): the same code judges both. It splits lines, says who printed each
(Xen, dom0, a dom0less domU), stamps it with seconds since power-on, records the first time each
milestone appears and the first failure signature, with the lines around it as evidence.

Modelled on KernelCI's logspec and LAVA's kernel-messages action: states plus named signatures,
each with a class that tells a code failure (crashed, hung, failed) from the lab's (infrastructure).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .logreader import LogReader

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # booted, but a check or a guest's own Xen discovery failed
    CRASHED = "crashed"  # Xen or a guest died
    HUNG = "hung"  # no progress within a stage's deadline
    INFRASTRUCTURE = "infrastructure-error"  # the lab failed: QEMU, images, host
    UNTESTABLE = "untestable"  # the build under test cannot be booted at all (git bisect's "skip")
    INCOMPLETE = "incomplete"  # a saved log that ends before any ending, with no failure: a hang or a cut capture


# Who a verdict blames: the build (a failure), the lab (an error), nobody, or no one can tell (a log's end).
VERDICT_CLASS = {Verdict.PASSED: "passed", Verdict.INFRASTRUCTURE: "lab", Verdict.UNTESTABLE: "untestable-build",
                 Verdict.INCOMPLETE: "unknown"}


def verdict_class(verdict: Verdict) -> str:
    return VERDICT_CLASS.get(verdict, "build")


@dataclass(frozen=True)
class Milestone:
    key: str  # "xen-banner"; guest milestones are recorded as "<guest>:<key>", e.g. "dom0:kernel"
    title: str
    pattern: re.Pattern[str]
    scope: str = "xen"  # whose lines it is matched on: "xen", "firmware", "guest" (once per guest), "any"
    # (every source's), or "harness" (none: the harness records it with `ConsoleMonitor.mark`)


@dataclass(frozen=True)
class Signature:
    name: str
    verdict: Verdict
    pattern: re.Pattern[str]
    description: str
    specificity: int = 1  # among signatures seen together, the most specific names the failure
    guest: bool | None = None  # True: guest lines only, False: Xen lines only, None: any
    after: str | None = None  # active only once this milestone was reached
    # the stage its own context implies, for a log that starts after the milestones that would say so (a
    # fragment): "dom0-loading" for Xen failing to build dom0, "guest" for a guest's kernel ("dom0:kernel")
    implies: str | None = None


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


NEVER = _re(r"(?!)")  # a milestone the harness records itself (`ConsoleMonitor.mark`)

MILESTONES: tuple[Milestone, ...] = (
    Milestone("firmware", "firmware", _re(r"UEFI firmware|EDK II|^U-Boot \d{4}\.\d+"), "firmware"),
    # A board's U-Boot: what the harness itself saw happen there (no console line of its own to match).
    Milestone("uboot-prompt", "U-Boot prompt", NEVER, "harness"),
    Milestone("uboot-loaded", "images loaded and checked", NEVER, "harness"),
    Milestone("xen-banner", "Xen banner", _re(r"^Xen version (\S+)")),
    Milestone("dom0-loading", "dom0 loading", _re(r"^\*\*\* LOADING DOMAIN 0 \*\*\*")),
    Milestone("domU-loading", "domU loading", _re(r"^\*\*\* LOADING DOMU cpus=")),
    Milestone("xen-handover", "Xen hands over", _re(r"^Freed \d+kB init memory")),
    # a guest that is not Linux: what it prints when it starts (Zephyr's banner, Mini-OS's)
    Milestone("kernel", "kernel start",
              _re(r"Booting Linux on physical CPU|Linux version \d|\*\*\* Booting Zephyr OS|^Xen Minimal OS!"),
              "guest"),
    Milestone("xen-found", "Xen support found", _re(r"Xen \d+\.\d+ support found"), "guest"),
    Milestone("grant-table", "grant table initialized", _re(r"Grant table initialized"), "guest"),
    Milestone("events", "events ABI", _re(r"xen:events: Using \S+ ABI"), "guest"),
    Milestone("init", "init", _re(r"Run /init as init process|harness-init: \S+ ready"), "guest"),
    # A domU dom0's toolstack starts: xl's first line, on the domU's console that dom0 relays.
    Milestone("xl-create", "xl create", _re(r"^Parsing config from "), "guest"),
)

# Lines every healthy boot prints that look alarming: never a failure (seen in every boot of every target).
NOISE = _re(
    r"Unhandled SMC/HVC|vGICD: unhandled word write|No support for ARM_SMCCC_ARCH_WORKAROUND_1"
    r"|Please update your firmware|Guests without CPU erratum workarounds|Only trusted guests should be used"
)

# QEMU's own complaints on stderr: the lab's problem (a target YAML, a boot plan), never the guest's.
QEMU_SIGNATURES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("qemu-rom-overlap", _re(r"Some ROM regions are overlapping"), "QEMU refused overlapping images"),
    ("qemu-bad-option", _re(r"invalid option|Invalid parameter|unsupported machine type|Property '.*' not found"
                            r"|is not a valid|requires an argument|Unsupported"), "QEMU rejected an option"),
    ("qemu-missing", _re(r"is not installed"), "QEMU is not installed"),
    ("qemu-cannot-load", _re(r"could not load|Could not open|No such file"), "QEMU could not load a file"),
)


# The same catalogue on a console log that holds QEMU's stderr (a CI's or a lab's capture of both): QEMU
# names itself first ("qemu-system-aarch64: -no-such-option: invalid option"), which a guest's line never does.
QEMU_IN_LOG: tuple[Signature, ...] = tuple(
    Signature(name, Verdict.INFRASTRUCTURE, _re(rf"^qemu(-system-\w+)?: .*(?:{pattern.pattern})"), description, 2)
    for name, pattern, description in QEMU_SIGNATURES
)


SIGNATURES: tuple[Signature, ...] = (
    Signature("xen-panic", Verdict.CRASHED, _re(r"^Panic on CPU \d+:"), "Xen panicked", 1, False),
    Signature("xen-dom0-setup", Verdict.CRASHED, _re(r"Could not set up DOM0 guest OS"),
              "Xen could not set up dom0", 3, False, implies="dom0-loading"),
    Signature("xen-dom0-memory", Verdict.CRASHED,
              _re(r"Failed to allocate requested dom0 memory|Not enough memory (for|to allocate) d(om)?0"),
              "Xen could not give dom0 the memory it asked for (dom0_mem)", 3, False, implies="dom0-loading"),
    Signature("xen-missing-module", Verdict.CRASHED, _re(r"Missing kernel boot module\?"),
              "Xen found no dom0 kernel module in /chosen", 3, False, implies="dom0-loading"),
    Signature("xen-bug", Verdict.CRASHED, _re(r"^(Xen BUG at|Assertion '.*' failed at)"),
              "Xen hit a BUG or a failed assertion", 2, False),
    Signature("xen-fatal-trap", Verdict.CRASHED, _re(r"FATAL TRAP|Unexpected Trap"),
              "Xen took an unexpected trap", 2, False),
    Signature("xen-domain-crash", Verdict.CRASHED,
              _re(r"^Domain \d+ \(vcpu#\d+\) crashed|domain_crash called|^Hardware Dom0 crashed"),
              "Xen crashed a domain", 2, False, implies="guest"),
    Signature("dom0-reboot", Verdict.CRASHED, _re(r"^Hardware Dom0 shutdown: rebooting machine"),
              "dom0 asked Xen to reboot (a dom0 panic with panic=-1)", 1, False, implies="guest"),
    # xen/common/sched/core.c domain_watchdog_timeout(), then xen/common/shutdown.c for the hardware domain:
    # the domain armed Xen's watchdog (SCHEDOP_watchdog, Linux's xen_wdt) and stopped petting it.
    Signature("xen-watchdog", Verdict.CRASHED,
              _re(r"^Watchdog timer fired for domain \d+|^Hardware Dom0 shutdown: watchdog rebooting machine"),
              "Xen's watchdog fired: the domain stopped petting it and Xen shut it down", 3, False, implies="guest"),
    Signature("kernel-panic", Verdict.CRASHED, _re(r"Kernel panic - not syncing"), "the guest kernel panicked",
              2, True, implies="guest"),
    Signature("no-root-fs", Verdict.CRASHED, _re(r"VFS: Unable to mount root fs"),
              "the guest kernel found no root file system (its initramfs or root= is wrong)", 3, True,
              implies="guest"),
    Signature("init-killed", Verdict.CRASHED, _re(r"Attempted to kill init!"),
              "the guest's init exited (or was killed), so its kernel panicked", 3, True, implies="guest"),
    Signature("kernel-oops", Verdict.CRASHED, _re(r"Unable to handle kernel|Internal error: Oops"),
              "the guest kernel oopsed", 2, True, implies="guest"),
    # the same, at a line's start (anchored apart: an anchor inside an alternation makes every line slow)
    Signature("kernel-oops", Verdict.CRASHED,
              _re(r"^(?:\[[ \d.]+\] )?(?:kernel BUG at |BUG: (?!soft lockup)|Oops(?:: | - ))"),
              "the guest kernel oopsed", 2, True, implies="guest"),
    Signature("rcu-stall", Verdict.HUNG, _re(r"rcu: INFO: \S+ (self-)?detected stalls?"),
              "the guest kernel stalled (RCU)", 1, True, implies="guest"),
    Signature("soft-lockup", Verdict.HUNG, _re(r"watchdog: BUG: soft lockup"),
              "a guest CPU stayed in its kernel without scheduling (soft lockup)", 3, True, implies="guest"),
    # kernel/hung_task.c: a task blocked (D state) past hung_task_timeout_secs, or the panic that may follow
    Signature("hung-task", Verdict.HUNG,
              _re(r"INFO: task \S+:\d+ blocked for more than \d+ seconds|hung_task: blocked"),
              "a guest task stayed blocked past the kernel's hung-task timeout", 3, True, implies="guest"),
    Signature("no-grant-table", Verdict.FAILED, _re(r"Xen grant table region is not found"),
              "the guest did not find Xen's grant table region", 3, True, implies="guest"),
    Signature("no-event-irq", Verdict.FAILED, _re(r"Xen event channel interrupt not found"),
              "the guest did not find Xen's event channel interrupt", 3, True, implies="guest"),
    Signature("event-irq-request", Verdict.FAILED, _re(r"xen:events: Error request IRQ|Error request IRQ \d+"),
              "the guest could not request Xen's event channel interrupt", 3, True, implies="guest"),
    Signature("gnttab-unmapped", Verdict.FAILED, _re(r"gnttab share frames .* is not mapped"),
              "the guest could not map its grant frames", 3, True, implies="guest"),
    # dom0's toolstack (toolstack targets): libxl refusing or failing a domU, and a domU's PV frontend whose
    # backend never connects (drivers/xen/xenbus/xenbus_probe_frontend.c).
    Signature("libxl-error", Verdict.FAILED, _re(r"libxl: error: |^xl: (?:unable|cannot|failed)"),
              "the toolstack (xl, libxl) failed", 2, True),
    Signature("xenconsoled-error", Verdict.FAILED, _re(r"^xenconsoled: Failed|^xenconsole: Could not"),
              "xenconsoled or xl console could not give a domU its console", 3, True),
    Signature("xenbus-unconnected", Verdict.FAILED,
              _re(r"XENBUS: (Waiting for devices to initialise|Timeout connecting to device)"),
              "a PV device of the domU never connected to its backend (xenbus)", 3, True, implies="guest"),
    # A board's U-Boot, before it starts Xen. The harness checked Xen's image and every file's CRC32
    # before booting, so what U-Boot refuses here is the lab's or the boot plan's doing, not the build's.
    Signature("uboot-tftp-error", Verdict.INFRASTRUCTURE,
              _re(r"TFTP error: |Retry count exceeded; starting again|TFTP server died|ARP Retry count exceeded"),
              "U-Boot could not fetch a file from the lab's TFTP server", 2),
    Signature("uboot-bad-image", Verdict.INFRASTRUCTURE,
              _re(r"Bad Linux ARM64 Image magic|Wrong Image Format|Bad Linux ARM zImage magic|(?i:zimage: bad magic)"),
              "U-Boot found no bootable image where the boot plan put Xen", 2),
    Signature("uboot-bad-fdt", Verdict.INFRASTRUCTURE,
              _re(r"FDT_ERR_\w+|Did not find a cmdline Flattened Device Tree|Could not find a valid device tree"),
              "U-Boot could not use the boot DTB", 2),
    # Firmware starting again in the middle of a boot: the board reset. Had Xen or a guest asked for
    # it, that request was seen (and named) first.
    Signature("board-reset", Verdict.INFRASTRUCTURE, _re(r"^U-Boot \d{4}\.\d{2}|^UEFI firmware \(version"),
              "the board reset: its firmware started again in the middle of the boot", 1, after="xen-banner"),
    *QEMU_IN_LOG,
)

def qemu_failure(stderr: str, stage: str = "power-on", status: int | None = None) -> Failure:
    """An infrastructure failure named after what QEMU printed."""
    for name, pattern, description in QEMU_SIGNATURES:
        if m := next((ln for ln in stderr.splitlines() if pattern.search(ln)), None):
            return Failure(Verdict.INFRASTRUCTURE, stage, name, description, None, [], m.strip())
    detail = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
    return Failure(Verdict.INFRASTRUCTURE, stage, "qemu-error", "QEMU failed", None, [], detail)


# Xen 4.17 prints a focused domU's vPL011 output through its own printk, so those lines carry "(XEN) "
# like Xen's. While a domU has the serial input, these are the lines that are still Xen's own.
XEN_OWN = re.compile(
    r"^(\*\*\*|DOM\d+: |d\d+v\d+|d\d+: |\(d\d+\) |Xen |Panic on CPU|Hardware Dom0|Domain \d+|Assertion '|Watchdog timer"
    r"|FATAL|Xen BUG|CPU\d+: |Freed \d+kB|Reboot in|Manual reset|\*+$|$)"
)
XEN_MIDLINE = re.compile(r"(?<=.)(?=\(XEN\) |\*\*\* Serial input to )")
SERIAL_INPUT = re.compile(r"^\*\*\* Serial input to (DOM(\d+)|Xen)")
XEN_PREFIX = re.compile(r"^\(XEN\)(?: |$)")  # Xen's empty lines lose the space
DOMU_PREFIX = re.compile(r"^DOM(\d+):(?: |$)")  # a dom0less domU's vPL011, printed by Xen when not focused
GUEST_DEBUG = re.compile(r"^\(d(\d+)\) ")
PRINTK = re.compile(r"^\[\s*\d+\.\d+\] ")  # a Linux kernel's timestamp: no firmware prints one
# Xen's 'w' debug key (xen/drivers/char/console.c dump_console_ring_key(), 4.17 and 4.20) prints this
# line, then its whole console ring, which ends with the ring's own copy of it, after the copies of
# any earlier presses (the ring keeps them, unless it wrapped). The ring's lines are history, not
# news: they are recorded as source "xen-ring" and reach no milestone or signature.
RING_DUMP = re.compile(r"^'w' pressed -> dumping console ring buffer \(dmesg\)")


@dataclass(frozen=True)
class Line:
    t: float  # seconds since power-on
    source: str  # "xen", "dom0", "dom1", …
    text: str  # without Xen's prefix
    number: int = 0  # 1-based line number in the console log

    def __str__(self) -> str:
        prefix = "(XEN) " if self.source == "xen" else f"[{self.source}] "
        return f"{self.t:8.2f}s  {prefix}{self.text}"


@dataclass
class Failure:
    verdict: Verdict
    stage: str  # the last milestone reached before it
    signature: str
    description: str
    line: Line | None  # None for silence or a QEMU exit
    evidence: list[Line] = field(default_factory=list)
    detail: str = ""
    decided: float | None = None  # seconds since power-on when the verdict was reached

    def message(self, context: str = "") -> str:
        where = f"{context}: " if context else ""
        head = f"{where}{self.verdict} after stage '{self.stage}': {self.description}"
        if self.detail:
            head += f" ({self.detail})"
        head += f" [signature {self.signature}]"
        if self.evidence:
            head += "\n" + "\n".join(f"    {line}" for line in self.evidence)
        return head

    def to_dict(self) -> dict:
        return {
            "verdict": str(self.verdict),
            "stage": self.stage,
            "signature": self.signature,
            "description": self.description,
            "detail": self.detail,
            "evidence": [str(line) for line in self.evidence],
            "first_sign": self.line.t if self.line else None,
            "decided": self.decided,
        }


# What Xen or a guest prints when it asks the machine to stop (xen/common/shutdown.c, Linux's
# kernel/reboot.c): after one of these, the machine's exit is the guests' doing.
STOP_REQUEST = _re(
    r"^Hardware Dom0 (halted|shutdown|crashed)|^Reboot in five seconds|^Manual reset required"
    r"|reboot: (Power down|Restarting system)|^Domain 0 (halted|shut down)"
)
# QEMU catches SIGTERM, SIGINT and SIGHUP, says so on stderr, and exits 0 (softmmu/runstate.c).
QEMU_TERMINATED = re.compile(r"terminating on signal (\d+)(?: from pid (\d+)(?: \(([^)]*)\))?)?")


def signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class MachineExit:
    """How a machine stopped, as its power driver saw it."""

    status: int | None = None  # the exit status (negative: killed by that signal), None when unknown
    stderr: str = ""  # what QEMU printed on stderr
    shutdown_reason: str | None = None  # QEMU's own report (QMP SHUTDOWN: guest-shutdown, host-signal, …)
    seen: str = ""  # how the harness noticed, when nothing else says: "its power went off", …

    @property
    def signal(self) -> str | None:
        """The signal that stopped it, by name, whoever caught it; None when no signal did."""
        if self.status is not None and self.status < 0:
            return signal_name(-self.status)
        if m := QEMU_TERMINATED.search(self.stderr):
            return signal_name(int(m.group(1)))
        if self.shutdown_reason == "host-signal":
            return "a signal"
        return None

    @property
    def guest_request(self) -> bool:
        return self.shutdown_reason in ("guest-shutdown", "guest-reset", "guest-panic")

    def describe(self) -> str:
        parts = [f"QEMU exit status {self.status}"] if self.status is not None else []
        if self.shutdown_reason:
            parts.append(f"QEMU's shutdown reason {self.shutdown_reason}")
        if m := QEMU_TERMINATED.search(self.stderr):
            parts.append(m.group(0))
        return ", ".join(parts) or self.seen or "the machine stopped"


EVIDENCE_BEFORE = 6
XEN_LINES_KEPT = 20_000
EVIDENCE_AFTER = 8
EVIDENCE_WINDOW_S = 1.0  # how long to keep listening after a failure line for the lines that explain it
MAX_LINE_BYTES = 16 * 1024  # printk lines are under 1 KiB: a longer one (noise, no newline) is cut
PROMPT_HEAD = 512  # a prompt begins the line still being printed: only its first bytes are matched
TRIAGE_KEEP_LINES = 64  # triage keeps the last lines (and a failure's evidence), not the whole log


class ConsoleMonitor:
    """Feed it console bytes; ask it what was reached and what went wrong."""

    def __init__(
        self,
        prompt: str | None = None,
        milestones: tuple[Milestone, ...] = MILESTONES,
        signatures: tuple[Signature, ...] = SIGNATURES,
        clock: Callable[[], float] = time.monotonic,
        on_milestone: Callable[[str, Line], None] | None = None,
        keep_lines: int | None = None,
        hypervisor: bool = True,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.focus: int | None = None  # the domain Xen gives its serial input to; None: Xen itself
        self.relay: str | None = None  # a domU whose console dom0 relays (`xl console`): its unprefixed lines
        self.relay_end: re.Pattern[str] | None = None  # dom0's prompt: the relay is over when it shows
        self.focus_seen = False  # Xen has said where its input goes ("*** Serial input to …")
        self.ring_dumps = 0  # Xen console ring dumps read to their end
        self._ring_presses = 0  # 'w' lines Xen printed live: the dump ends at the ring's copy of the last
        self._ring_copies = -1  # 'w' lines seen in the dump being read; -1: none is being read
        # A guest's prompts, each reached as "<guest>:<key>": the shell's (`prompt`), and for a saved log any
        # other way a guest waits for a person (`prompts`: {"login": LOGIN_PROMPT}).
        self.prompts = {key: re.compile(p) for key, p in {"shell": prompt, **(prompts or {})}.items() if p}
        self._guest_seen = False  # a line of Xen's or a guest kernel's: unprefixed lines are no firmware's
        self.milestones = milestones
        self.signatures = signatures
        self._milestones = {scope: [m for m in milestones if m.scope in (scope, "any")]
                            for scope in ("xen", "firmware", "guest")}
        self._signatures = {guest: [s for s in signatures if s.guest in (None, guest)] for guest in (False, True)}
        self.clock = clock
        self.on_milestone = on_milestone
        self.t0 = clock()
        # Every Line (a live boot reads them back: Xen's claims, focus switches), or with keep_lines only the
        # last ones and a failure's evidence (triage of a log of any size). Indexes count every Line seen.
        self.keep_lines = keep_lines
        self.hypervisor = hypervisor  # False: Linux alone on the machine, whose console lines are dom0's
        self.lines: list[Line] = []
        # With keep_lines, what Xen itself printed is also kept apart (its claims and complaints are read
        # from it after the log), up to XEN_LINES_KEPT lines per source: a boot prints a few hundred.
        self._xen_text: dict[str, list[str]] = {"xen": [], "xen-ring": []}
        self.line_count = 0
        self._dropped = 0  # Lines dropped from the front of self.lines
        self.reached: dict[str, Line] = {}
        self.sources: set[str] = set()  # who printed at least one line ("xen", "dom0", …), whatever was kept
        self.failure: Failure | None = None
        self.last_output = self.t0
        self._partial = bytearray()  # the console line still being printed
        self._continued = False  # the partial line follows a cut piece: it does not begin a console line
        self._prompt_seen: bytes | None = None  # the partial line's head last matched against the prompt
        self._raw_lines = 0  # newline-terminated console lines so far (one may hold several Lines)
        self._failure_index = -1
        self._evidence_final = False  # the failure's evidence window is complete: it no longer changes
        self._failure_at = 0.0
        self._matches: list[tuple[Signature, int]] = []

    # --- input ------------------------------------------------------------------------------

    def start(self) -> None:
        """Power-on: times count from now."""
        self.t0 = self.last_output = self.clock()

    def now(self) -> float:
        return self.clock() - self.t0

    def feed(self, data: bytes) -> None:
        """Judge the lines `data` completes. Linear: only the new bytes are searched for newlines."""
        if not data:
            return
        self.last_output = self.clock()
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start:end]
                raw = bytes(self._partial)
                self._partial.clear()
            else:
                raw = data[start:end]
            self._console_line(raw)
            start = end + 1
        self._partial += data[start:]
        if len(self._partial) > MAX_LINE_BYTES:
            cut = len(self._partial) - (len(self._partial) - 1) % MAX_LINE_BYTES - 1  # leave 1..MAX bytes
            self._pieces(bytes(self._partial[:cut]))
            del self._partial[:cut]
        self._check_prompt()
        self._finish_evidence()
        self._trim()

    def _console_line(self, raw: bytes) -> None:
        """A newline-terminated console line; one longer than MAX_LINE_BYTES is judged in pieces of that size."""
        if len(raw) > MAX_LINE_BYTES:
            cut = len(raw) - (len(raw) - 1) % MAX_LINE_BYTES - 1
            self._pieces(raw[:cut])
            raw = raw[cut:]
        self._raw_lines += 1
        self._split(raw, self._raw_lines)
        self._continued = False
        self._prompt_seen = None

    def _pieces(self, raw: bytes) -> None:
        """Whole MAX_LINE_BYTES pieces of a console line that goes on: each is judged as a line of its own."""
        for at in range(0, len(raw), MAX_LINE_BYTES):
            self._split(raw[at : at + MAX_LINE_BYTES], self._raw_lines + 1)  # the number of the line it is part of
            self._continued = True

    def _split(self, raw: bytes, number: int) -> None:
        # escape sequences may straddle chunks: they are stripped from whole lines
        text = ANSI.sub(b"", raw).decode("utf-8", "replace").replace("\r", "")
        # Xen prints whenever it likes, also after a prompt that ended without a newline:
        # "dom0# (XEN) *** Serial input to DOM1" is a prompt, then a line of Xen's. After a
        # focused domU's prompt Xen even leaves its prefix out: "(XEN) domU1# *** Serial input …".
        for piece in XEN_MIDLINE.split(text):
            self._line(piece if not SERIAL_INPUT.match(piece) else f"(XEN) {piece}", number)

    def _line(self, text: str, number: int) -> None:
        if self._ring_copies >= 0:
            self._ring_line(text, number)
            return
        source, raw_body = self._attribute(text)
        body = raw_body.rstrip()
        line = Line(round(self.now(), 3), source, body, number)
        self.lines.append(line)
        self.sources.add(source)
        self._keep_xen_text(line)
        if source == "xen" and RING_DUMP.match(body):
            self._ring_presses += 1
            self._ring_copies = 0
        index = self.line_count
        self.line_count += 1
        scope = source if source in ("xen", "firmware") else "guest"
        for milestone in self._milestones[scope]:  # each is reached once: one reached is not looked for again
            key = f"{source}:{milestone.key}" if milestone.scope == "guest" else milestone.key
            if key not in self.reached and milestone.pattern.search(body):
                self._reach(key, line)
        if not self._continued and source not in ("xen", "firmware"):
            for key, prompt in self.prompts.items():
                if f"{source}:{key}" not in self.reached and prompt.match(raw_body):
                    self._reach(f"{source}:{key}", line)
        guest = source != "xen"
        if (self.failure is not None and index > self._failure_index + EVIDENCE_AFTER) or NOISE.search(body):
            return  # past a failure's evidence, no signature names anything
        for sig in self._signatures[guest]:
            if sig.after is not None and sig.after not in self.reached:
                continue
            if sig.pattern.search(body):
                if self.failure is None or index <= self._failure_index + EVIDENCE_AFTER:  # the rest name nothing
                    self._matches.append((sig, index))
                if self.failure is None:
                    self._failure_index, self._failure_at = index, self.clock()
                    self.failure = Failure(sig.verdict, self.stage, sig.name, sig.description, line)

    def _ring_line(self, text: str, number: int) -> None:
        """A line of Xen's console ring dump; the ring's copy of the latest 'w' line ends it."""
        m = XEN_PREFIX.match(text)
        body = (text[m.end():] if m else text).rstrip()
        line = Line(round(self.now(), 3), "xen-ring", body, number)
        self.lines.append(line)
        self._keep_xen_text(line)
        self.line_count += 1
        if RING_DUMP.match(body):
            self._ring_copies += 1
            if self._ring_copies == self._ring_presses:
                self._ring_copies = -1
                self.ring_dumps += 1

    def _attribute(self, text: str) -> tuple[str, str]:
        if m := XEN_PREFIX.match(text):
            self._guest_seen = True
            body = text[m.end():]
            if d := DOMU_PREFIX.match(body):
                return f"dom{d.group(1)}", body[d.end():]
            if self.focus and "xen-handover" in self.reached and not XEN_OWN.match(body):
                return f"dom{self.focus}", body  # a focused domU
            if m := SERIAL_INPUT.match(body):
                self.focus = int(m.group(2)) if m.group(2) else None
                self.focus_seen = True
            return "xen", body
        if d := GUEST_DEBUG.match(text):
            return f"dom{d.group(1)}", text[d.end():]
        # Unprefixed lines are dom0's console (hvc0) or a domU's that dom0 relays, or before Xen's banner the
        # firmware's; a log that starts after the banner (a fragment) says so with a line of Xen's or of a kernel's
        # printk.
        self._guest_seen = self._guest_seen or bool(PRINTK.match(text))
        firmware = self.hypervisor and "xen-banner" not in self.reached and not self._guest_seen
        return ("firmware" if firmware else self._relayed(text)), text

    def _relayed(self, text: str) -> str:
        """Whose an unprefixed guest line is: the relayed domU's until dom0's prompt shows again (also after the
        domU's own on the same line: "domu1# dom0# " is xl console left at the domU's prompt), else dom0's."""
        if self.relay and self.relay_end is not None and self.relay_end.search(text):
            self.relay = None
        return self.relay or "dom0"

    def number_next(self, number: int) -> None:
        """The next console line is line `number` of its file (a log reader takes a wrapper's own lines out)."""
        self._raw_lines = number - 1

    def mark(self, key: str) -> None:
        """Record milestone `key` as reached now (one the harness saw happen, not a console line)."""
        self._reach(key, Line(round(self.now(), 3), "harness", key, self._raw_lines))

    def _reach(self, key: str, line: Line) -> None:
        if key in self.reached:
            return
        self.reached[key] = line
        if self.on_milestone:
            self.on_milestone(key, line)

    def _check_prompt(self) -> None:
        """A prompt ends without a newline: look for one in the line still being printed."""
        if not self.prompts or self._continued:
            return
        head = bytes(self._partial[:PROMPT_HEAD])
        if head == self._prompt_seen:  # the line grew past its head, or nothing new: the answer stands
            return
        self._prompt_seen = head
        tail = ANSI.sub(b"", head).decode("utf-8", "replace").replace("\r", "")
        if m := XEN_PREFIX.match(tail):
            if not self.focus:
                return
            source, tail = f"dom{self.focus}", tail[m.end():]
        else:
            source = self._relayed(tail)
        for key, prompt in self.prompts.items():
            if f"{source}:{key}" not in self.reached and prompt.match(tail):
                self._reach(f"{source}:{key}", Line(round(self.now(), 3), source, tail, self._raw_lines + 1))

    # --- verdicts ---------------------------------------------------------------------------

    @property
    def stage(self) -> str:
        """The latest milestone reached (in console order): where a failure or hang happened."""
        return next(reversed(self.reached), "power-on")

    def settled(self) -> bool:
        """True once a failure has its evidence: enough lines after it, or the evidence window passed."""
        if self.failure is None:
            return False
        after = self.line_count - 1 - self._failure_index
        return after >= EVIDENCE_AFTER or self.clock() - self._failure_at >= EVIDENCE_WINDOW_S

    def since(self, start: int) -> list[Line]:
        """The lines kept from line index `start` (a `line_count` taken earlier) on."""
        return self._kept(start)

    def progress_since(self, start: int) -> Line | None:
        """The first line since line index `start` that shows a guest at work: not Xen's, not empty, not a prompt
        left waiting that Xen's own line completed ("dom0# (XEN) *** Serial input …" leaves a line "dom0#")."""
        for line in self._kept(start):
            if line.source in ("xen", "xen-ring") or not line.text.strip():
                continue
            if any(p.match(line.text) or p.match(line.text + " ") for p in self.prompts.values()):
                continue
            return line
        return None

    def input_moved_since(self, start: int) -> bool:
        """Xen has said where its serial input went ("*** Serial input to …") since line index `start`."""
        return any(line.source == "xen" and SERIAL_INPUT.match(line.text) for line in self._kept(start))

    def _kept(self, start: int, stop: int | None = None) -> list[Line]:
        """Lines by index among all seen: those still kept."""
        return self.lines[max(0, start - self._dropped) : None if stop is None else max(0, stop - self._dropped)]

    def _trim(self) -> None:
        """With keep_lines, drop the oldest Lines, never those a failure's unfinished evidence needs."""
        if self.keep_lines is None or len(self.lines) <= 2 * self.keep_lines:
            return  # trimmed in batches: amortised constant work per line
        drop = len(self.lines) - self.keep_lines
        if self.failure is not None and self.failure.line is not None and not self._evidence_final:
            drop = min(drop, max(0, self._failure_index - EVIDENCE_BEFORE - self._dropped))
        del self.lines[:drop]
        self._dropped += drop

    def _finish_evidence(self) -> None:
        if (self.failure is None or self.failure.line is None or self.failure.decided is not None
                or self._evidence_final):
            return
        start = max(0, self._failure_index - EVIDENCE_BEFORE)
        self.failure.evidence = self._kept(start, self._failure_index + EVIDENCE_AFTER + 1)
        # The most specific signature seen in the evidence names the failure (a Xen panic whose
        # reason is "Missing kernel boot module?" is reported as that).
        window = [(s, i) for s, i in self._matches if i <= self._failure_index + EVIDENCE_AFTER]
        best = max(window, key=lambda m: m[0].specificity)[0]
        f = self.failure
        f.signature, f.description, f.verdict = best.name, best.description, best.verdict
        if f.stage == "power-on" and best.implies and f.line is not None:  # a fragment: the signature says where
            guest = f.line.source if f.line.source.startswith("dom") else "dom0"
            f.stage = f"{guest}:kernel" if best.implies == "guest" else best.implies
        f.detail = self._detail()
        self._evidence_final = self.line_count > self._failure_index + EVIDENCE_AFTER

    def _detail(self) -> str:
        """For a Xen panic: its reason, the first line after 'Panic on CPU' (in the evidence) that is not decoration."""
        assert self.failure is not None
        if self.failure.line is None or not self.failure.line.text.startswith("Panic on CPU"):
            return ""
        for line in self._kept(self._failure_index + 1, self._failure_index + EVIDENCE_AFTER + 1):
            text = line.text.strip("* ").strip()
            if text:
                return text
        return ""

    def hang(self, description: str, signature: str = "silence") -> Failure:
        """Record (and return) a hang at the current stage: silence, no progress by a deadline, a guest
        that stops answering."""
        return self.fail(Verdict.HUNG, signature, description)

    def fail(self, verdict: Verdict, signature: str, description: str, detail: str = "") -> Failure:
        """Record (and return) a failure the harness found itself (a command's answer, a deadline), with
        the last console lines as its evidence; the first failure recorded stands."""
        if self.failure is None:
            self.failure = Failure(verdict, self.stage, signature, description, None,
                                   self.lines[-EVIDENCE_BEFORE:], detail)
        return self.failure

    def exited(self, end: MachineExit) -> Failure:
        """Record (and return) the machine's stop before the boot finished, and whose doing it was.

        Only a stop the guests or Xen asked for, as the console (or QEMU's own shutdown report) shows, is
        theirs: a crash. QEMU killed by a signal (kill, the OOM killer, a Ctrl-C), QEMU's own errors, and
        an exit nobody asked for are the lab's: an infrastructure error, which never blames the build.
        """
        if self.failure is None:
            self.failure = self._stop_failure(end)
        return self.failure

    def _stop_failure(self, end: MachineExit) -> Failure:
        evidence = self.lines[-EVIDENCE_BEFORE:]
        if end.signal is not None:
            return Failure(Verdict.INFRASTRUCTURE, self.stage, "machine-killed",
                           f"the machine was killed by {end.signal}, not stopped by its guests",
                           None, evidence, end.describe())
        if end.stderr.strip() and any(p.search(end.stderr) for _, p, _ in QEMU_SIGNATURES):
            return qemu_failure(end.stderr, self.stage, end.status)
        request = next((ln for ln in reversed(self.lines) if STOP_REQUEST.search(ln.text)), None)
        if request is not None or end.guest_request:
            return Failure(Verdict.CRASHED, self.stage, "guest-stop",
                           "the guests or Xen stopped the machine before the boot finished", request,
                           evidence, end.describe())
        what = "without any console output" if not self.line_count else "without the guests or Xen asking it to stop"
        return Failure(Verdict.INFRASTRUCTURE, self.stage, "machine-exit", f"the machine stopped {what}",
                       None, evidence, end.describe())

    def conclude(self) -> Failure:
        """The failure, stamped with the time the verdict was reached."""
        assert self.failure is not None
        if self.failure.decided is None:
            self.failure.decided = round(self.now(), 3)
        return self.failure

    # --- reading ----------------------------------------------------------------------------

    def replay(self, data: bytes, chunk: int = 4096) -> ConsoleMonitor:
        for start in range(0, len(data), chunk):
            self.feed(data[start : start + chunk])
        return self

    def _keep_xen_text(self, line: Line) -> None:
        kept = self._xen_text.get(line.source) if self.keep_lines is not None else None
        if kept is not None and len(kept) < XEN_LINES_KEPT:
            kept.append(line.text)

    def text(self, source: str | None = None) -> list[str]:
        """The lines (without prefixes) one source printed, or all of them (with keep_lines: the lines kept,
        but all of Xen's own, up to XEN_LINES_KEPT)."""
        if self.keep_lines is not None and source in self._xen_text:
            return list(self._xen_text[source])
        return [line.text for line in self.lines if source is None or line.source == source]


class BootFailure(Exception):
    """A boot ended in a verdict other than passed; its message is the failure with its evidence."""

    def __init__(self, failure: Failure, context: str = "") -> None:
        self.failure = failure
        self.context = context
        super().__init__(failure.message(context))

    @property
    def infrastructure(self) -> bool:
        return self.failure.verdict is Verdict.INFRASTRUCTURE


# How a good boot may end, offline: a guest's shell prompt in a common form (busybox "# " and "~ # ", this
# harness's "dom0# ", Debian's "root@host:~# " and "user@host:~$ ", "[root@host ~]# ", Gentoo's "host ~ # ",
# Zephyr's "uart:~$ "; U-Boot's "=> " is firmware's and never counts), a login prompt, or an orderly power-off
# (Linux's kernel/reboot.c, then Xen's xen/common/shutdown.c).
SHELL_PROMPTS = r"(?:[\w.-]+@[\w.-]+:\S*|\[[^\]]*\]|(?:[^\s\[]\S* ){1,2}|\S+)?[#$] "
LOGIN_PROMPT = r"(?:\S+ )?login: "
POWER_OFF = Milestone("power-off", "orderly power-off", _re(r"reboot: Power down|^Hardware Dom0 halted"), "any")
ENDING_TITLES = {"shell": "shell prompt", "login": "login prompt", "power-off": "orderly power-off",
                 "passed": "the --passed pattern"}


# A Linux guest's kernel start (the "kernel" milestone also names other guests' banners). Printed at the same
# log level as the discovery lines below: a `quiet` kernel prints neither, so it is never judged on them.
LINUX_START = _re(r"Booting Linux on physical CPU|Linux version \d")
# The lines a Linux guest prints when it finds Xen (arch/arm/xen/enlighten.c, drivers/xen/grant-table.c,
# drivers/xen/events/events_base.c), as a person would look for them: the guest milestones that match them.
DISCOVERY = {"xen-found": "Xen X.Y support found", "grant-table": "Grant table initialized",
             "events": "xen:events: Using … ABI"}


def discovery_missing(monitor: ConsoleMonitor) -> Failure | None:
    """A log that shows a Linux guest's kernel start under Xen must show that guest finding Xen too: the first
    such guest whose discovery lines are not all in the log, as a failure, or None. A guest whose kernel start
    the log does not hold (a fragment that starts later) is not judged on lines it never contained."""
    if "xen" not in monitor.sources:  # no line of Xen's: a kernel on its own
        return None
    for key, start in monitor.reached.items():
        guest, _, milestone = key.rpartition(":")
        if milestone != "kernel" or not LINUX_START.search(start.text):
            continue
        found = [f"'{DISCOVERY[k]}' (line {monitor.reached[f'{guest}:{k}'].number})"
                 for k in DISCOVERY if f"{guest}:{k}" in monitor.reached]
        missing = [f"'{DISCOVERY[k]}'" for k in DISCOVERY if f"{guest}:{k}" not in monitor.reached]
        if missing:
            return Failure(Verdict.FAILED, key, "xen-discovery-missing",
                           f"{guest}'s Linux kernel started under Xen but the log does not show it finding Xen",
                           start, [start], f"expected {', '.join(missing)}; found {', '.join(found) or 'none of them'}")
    return None


def ending(monitor: ConsoleMonitor) -> str | None:
    """How the log ended well: the first ending reached ("dom0:login", "power-off", …), or None."""
    return next((key for key in monitor.reached if key.rpartition(":")[2] in ENDING_TITLES), None)


def triage(
    log: bytes | Iterable[bytes] | LogReader, prompt: str | None = None, keep_lines: int | None = TRIAGE_KEEP_LINES,
    prompts: Iterable[str] = (), passed: str | None = None,
) -> tuple[ConsoleMonitor, Verdict]:
    """Judge a saved console log (its bytes, or its chunks as read) with the same catalogue as a live boot.

    The log is read through a LogReader (give one to ask it afterwards what wrapper it saw). A failure
    signature decides; otherwise a log that ends well (a guest's shell prompt of a common form or `prompt`
    or any of `prompts`, a login prompt, an orderly power-off, or a line matching `passed`) passed if each
    Linux guest whose kernel start it shows under Xen also shows its Xen discovery lines, else failed; a log
    that ends before any of that is incomplete after its last stage (offline, a hang and a cut capture look
    the same); a log with no output at all gets a live boot's verdict for silence at power-on.
    Memory stays bounded: the monitor keeps `keep_lines` lines and the failure's evidence, not the log.
    """
    shell = "|".join(f"(?:{p})" for p in (SHELL_PROMPTS, prompt, *prompts) if p)
    milestones = (*MILESTONES, POWER_OFF, *([Milestone("passed", "--passed pattern", _re(passed), "any")]
                                            if passed else []))
    monitor = ConsoleMonitor(prompt=shell, prompts={"login": LOGIN_PROMPT}, milestones=milestones,
                             clock=lambda: 0.0, keep_lines=keep_lines)
    if isinstance(log, bytes | bytearray | memoryview):
        log = [bytes(log)]
    reader = log if isinstance(log, LogReader) else LogReader(log)
    for number, data in reader.feeds():
        if number is not None:
            monitor.number_next(number)
        monitor.feed(data)
    if not reader.printed:  # what a live boot says of a machine that printed nothing
        monitor.hang("no console output").evidence = []
        return monitor, Verdict.HUNG
    if monitor.failure:
        return monitor, monitor.failure.verdict
    if ending(monitor) is not None:
        if missed := discovery_missing(monitor):
            monitor.failure = missed
            return monitor, Verdict.FAILED
        return monitor, Verdict.PASSED
    monitor.fail(Verdict.INCOMPLETE, "log-ends",
                 f"the log ends after stage '{monitor.stage}' with no prompt, power-off or failure: a hang or a cut "
                 "capture (offline they look the same)")
    return monitor, Verdict.INCOMPLETE


