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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # booted, but a check or a guest's own Xen discovery failed
    CRASHED = "crashed"  # Xen or a guest died
    HUNG = "hung"  # no progress within a stage's deadline
    INFRASTRUCTURE = "infrastructure-error"  # the lab failed: QEMU, images, host


@dataclass(frozen=True)
class Milestone:
    key: str  # "xen-banner"; guest milestones are recorded as "<guest>:<key>", e.g. "dom0:kernel"
    title: str
    pattern: re.Pattern[str]
    scope: str = "xen"  # whose lines it is matched on: "xen", "firmware", or "guest" (once per guest)


@dataclass(frozen=True)
class Signature:
    name: str
    verdict: Verdict
    pattern: re.Pattern[str]
    description: str
    specificity: int = 1  # among signatures seen together, the most specific names the failure
    guest: bool | None = None  # True: guest lines only, False: Xen lines only, None: any


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


MILESTONES: tuple[Milestone, ...] = (
    Milestone("firmware", "firmware", _re(r"UEFI firmware|EDK II|^U-Boot \d{4}\.\d+"), "firmware"),
    Milestone("xen-banner", "Xen banner", _re(r"^Xen version (\S+)")),
    Milestone("dom0-loading", "dom0 loading", _re(r"^\*\*\* LOADING DOMAIN 0 \*\*\*")),
    Milestone("domU-loading", "domU loading", _re(r"^\*\*\* LOADING DOMU cpus=")),
    Milestone("xen-handover", "Xen hands over", _re(r"^Freed \d+kB init memory")),
    Milestone("kernel", "kernel start", _re(r"Booting Linux on physical CPU|Linux version \d"), "guest"),
    Milestone("xen-found", "Xen support found", _re(r"Xen \d+\.\d+ support found"), "guest"),
    Milestone("grant-table", "grant table initialized", _re(r"Grant table initialized"), "guest"),
    Milestone("events", "events ABI", _re(r"xen:events: Using \S+ ABI"), "guest"),
    Milestone("init", "init", _re(r"Run /init as init process|harness-init: \S+ ready"), "guest"),
)

# Lines every healthy boot prints that look alarming: never a failure (seen in every boot of every target).
NOISE = _re(
    r"Unhandled SMC/HVC|vGICD: unhandled word write|No support for ARM_SMCCC_ARCH_WORKAROUND_1"
    r"|Please update your firmware|Guests without CPU erratum workarounds|Only trusted guests should be used"
)

SIGNATURES: tuple[Signature, ...] = (
    Signature("xen-panic", Verdict.CRASHED, _re(r"^Panic on CPU \d+:"), "Xen panicked", 1, False),
    Signature("xen-dom0-setup", Verdict.CRASHED, _re(r"Could not set up DOM0 guest OS"),
              "Xen could not set up dom0", 3, False),
    Signature("xen-dom0-memory", Verdict.CRASHED,
              _re(r"Failed to allocate requested dom0 memory|Not enough memory (for|to allocate) d(om)?0"),
              "Xen could not give dom0 the memory it asked for (dom0_mem)", 3, False),
    Signature("xen-missing-module", Verdict.CRASHED, _re(r"Missing kernel boot module\?"),
              "Xen found no dom0 kernel module in /chosen", 3, False),
    Signature("xen-bug", Verdict.CRASHED, _re(r"^(Xen BUG at|Assertion '.*' failed at)"),
              "Xen hit a BUG or a failed assertion", 2, False),
    Signature("xen-fatal-trap", Verdict.CRASHED, _re(r"FATAL TRAP|Unexpected Trap"),
              "Xen took an unexpected trap", 2, False),
    Signature("xen-domain-crash", Verdict.CRASHED,
              _re(r"^Domain \d+ \(vcpu#\d+\) crashed|domain_crash called|^Hardware Dom0 crashed"),
              "Xen crashed a domain", 2, False),
    Signature("dom0-reboot", Verdict.CRASHED, _re(r"^Hardware Dom0 shutdown: rebooting machine"),
              "dom0 asked Xen to reboot (a dom0 panic with panic=-1)", 1, False),
    Signature("kernel-panic", Verdict.CRASHED, _re(r"Kernel panic - not syncing"), "the guest kernel panicked",
              2, True),
    Signature("kernel-oops", Verdict.CRASHED,
              _re(r"Unable to handle kernel|Internal error: Oops|^\[[ \d.]+\] BUG: "), "the guest kernel oopsed",
              2, True),
    Signature("rcu-stall", Verdict.HUNG, _re(r"rcu: INFO: \S+ (self-)?detected stalls?"),
              "the guest kernel stalled (RCU)", 1, True),
    Signature("no-grant-table", Verdict.FAILED, _re(r"Xen grant table region is not found"),
              "the guest did not find Xen's grant table region", 3, True),
    Signature("no-event-irq", Verdict.FAILED, _re(r"Xen event channel interrupt not found"),
              "the guest did not find Xen's event channel interrupt", 3, True),
    Signature("event-irq-request", Verdict.FAILED, _re(r"xen:events: Error request IRQ|Error request IRQ \d+"),
              "the guest could not request Xen's event channel interrupt", 3, True),
    Signature("gnttab-unmapped", Verdict.FAILED, _re(r"gnttab share frames .* is not mapped"),
              "the guest could not map its grant frames", 3, True),
)

# QEMU's own complaints on stderr: the lab's problem (a target YAML, a boot plan), never the guest's.
QEMU_SIGNATURES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("qemu-rom-overlap", _re(r"Some ROM regions are overlapping"), "QEMU refused overlapping images"),
    ("qemu-bad-option", _re(r"invalid option|Invalid parameter|unsupported machine type|Property '.*' not found"
                            r"|is not a valid|requires an argument|Unsupported"), "QEMU rejected an option"),
    ("qemu-missing", _re(r"is not installed"), "QEMU is not installed"),
    ("qemu-cannot-load", _re(r"could not load|Could not open|No such file"), "QEMU could not load a file"),
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
    r"^(\*\*\*|DOM\d+: |d\d+v\d+|d\d+: |\(d\d+\) |Xen |Panic on CPU|Hardware Dom0|Domain \d+|Assertion '"
    r"|FATAL|Xen BUG|CPU\d+: |Freed \d+kB|Reboot in|Manual reset|\*+$|$)"
)
XEN_MIDLINE = re.compile(r"(?<=.)(?=\(XEN\) |\*\*\* Serial input to )")
SERIAL_INPUT = re.compile(r"^\*\*\* Serial input to (DOM(\d+)|Xen)")
XEN_PREFIX = re.compile(r"^\(XEN\)(?: |$)")  # Xen's empty lines lose the space
DOMU_PREFIX = re.compile(r"^DOM(\d+):(?: |$)")  # a dom0less domU's vPL011, printed by Xen when not focused
GUEST_DEBUG = re.compile(r"^\(d(\d+)\) ")
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


EVIDENCE_BEFORE = 6
EVIDENCE_AFTER = 8
EVIDENCE_WINDOW_S = 1.0  # how long to keep listening after a failure line for the lines that explain it


class ConsoleMonitor:
    """Feed it console bytes; ask it what was reached and what went wrong."""

    def __init__(
        self,
        prompt: str | None = None,
        milestones: tuple[Milestone, ...] = MILESTONES,
        signatures: tuple[Signature, ...] = SIGNATURES,
        clock: Callable[[], float] = time.monotonic,
        on_milestone: Callable[[str, Line], None] | None = None,
    ) -> None:
        self.focus: int | None = None  # the domain Xen gives its serial input to; None: Xen itself
        self.focus_seen = False  # Xen has said where its input goes ("*** Serial input to …")
        self.ring_dumps = 0  # Xen console ring dumps read to their end
        self._ring_presses = 0  # 'w' lines Xen printed live: the dump ends at the ring's copy of the last
        self._ring_copies = -1  # 'w' lines seen in the dump being read; -1: none is being read
        self.prompt = re.compile(prompt) if prompt else None
        self.milestones = milestones
        self.signatures = signatures
        self.clock = clock
        self.on_milestone = on_milestone
        self.t0 = clock()
        self.lines: list[Line] = []
        self.reached: dict[str, Line] = {}
        self.failure: Failure | None = None
        self.last_output = self.t0
        self._partial = b""
        self._raw_lines = 0  # newline-terminated console lines so far (one may hold several Lines)
        self._failure_index = -1
        self._failure_at = 0.0
        self._matches: list[tuple[Signature, int]] = []

    # --- input ------------------------------------------------------------------------------

    def start(self) -> None:
        """Power-on: times count from now."""
        self.t0 = self.last_output = self.clock()

    def now(self) -> float:
        return self.clock() - self.t0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.last_output = self.clock()
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:  # escape sequences may straddle chunks: strip them from whole lines
            self._raw_lines += 1
            text = ANSI.sub(b"", raw).decode("utf-8", "replace").replace("\r", "")
            # Xen prints whenever it likes, also after a prompt that ended without a newline:
            # "dom0# (XEN) *** Serial input to DOM1" is a prompt, then a line of Xen's. After a
            # focused domU's prompt Xen even leaves its prefix out: "(XEN) domU1# *** Serial input …".
            for piece in XEN_MIDLINE.split(text):
                self._line(piece if not SERIAL_INPUT.match(piece) else f"(XEN) {piece}")
        self._check_prompt()
        self._finish_evidence()

    def _line(self, text: str) -> None:
        if self._ring_copies >= 0:
            self._ring_line(text)
            return
        source, raw_body = self._attribute(text)
        body = raw_body.rstrip()
        line = Line(round(self.now(), 3), source, body, self._raw_lines)
        self.lines.append(line)
        if source == "xen" and RING_DUMP.match(body):
            self._ring_presses += 1
            self._ring_copies = 0
        index = len(self.lines) - 1
        scope = source if source in ("xen", "firmware") else "guest"
        for milestone in self.milestones:
            if milestone.scope == scope and milestone.pattern.search(body):
                key = f"{source}:{milestone.key}" if scope == "guest" else milestone.key
                self._reach(key, line)
        if self.prompt and source not in ("xen", "firmware") and self.prompt.match(raw_body):
            self._reach(f"{source}:shell", line)
        if NOISE.search(body):
            return
        for sig in self.signatures:
            if sig.guest is not None and sig.guest != (source != "xen"):
                continue
            if sig.pattern.search(body):
                self._matches.append((sig, index))
                if self.failure is None:
                    self._failure_index, self._failure_at = index, self.clock()
                    self.failure = Failure(sig.verdict, self.stage, sig.name, sig.description, line)

    def _ring_line(self, text: str) -> None:
        """A line of Xen's console ring dump; the ring's copy of the latest 'w' line ends it."""
        m = XEN_PREFIX.match(text)
        body = (text[m.end():] if m else text).rstrip()
        self.lines.append(Line(round(self.now(), 3), "xen-ring", body, self._raw_lines))
        if RING_DUMP.match(body):
            self._ring_copies += 1
            if self._ring_copies == self._ring_presses:
                self._ring_copies = -1
                self.ring_dumps += 1

    def _attribute(self, text: str) -> tuple[str, str]:
        if m := XEN_PREFIX.match(text):
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
        # Unprefixed lines are dom0's console (hvc0), or before Xen's banner the firmware's.
        return ("dom0" if "xen-banner" in self.reached else "firmware"), text

    def _reach(self, key: str, line: Line) -> None:
        if key in self.reached:
            return
        self.reached[key] = line
        if self.on_milestone:
            self.on_milestone(key, line)

    def _check_prompt(self) -> None:
        """A prompt ends without a newline: look for one in the line still being printed."""
        if self.prompt is None:
            return
        tail = ANSI.sub(b"", self._partial).decode("utf-8", "replace").replace("\r", "")
        if m := XEN_PREFIX.match(tail):
            if not self.focus:
                return
            source, tail = f"dom{self.focus}", tail[m.end():]
        else:
            source = "dom0"
        if f"{source}:shell" not in self.reached and self.prompt.match(tail):
            self._reach(f"{source}:shell", Line(round(self.now(), 3), source, tail))

    # --- verdicts ---------------------------------------------------------------------------

    @property
    def stage(self) -> str:
        """The latest milestone reached (in console order): where a failure or hang happened."""
        return next(reversed(self.reached), "power-on")

    def settled(self) -> bool:
        """True once a failure has its evidence: enough lines after it, or the evidence window passed."""
        if self.failure is None:
            return False
        after = len(self.lines) - 1 - self._failure_index
        return after >= EVIDENCE_AFTER or self.clock() - self._failure_at >= EVIDENCE_WINDOW_S

    def _finish_evidence(self) -> None:
        if self.failure is None or self.failure.line is None or self.failure.decided is not None:
            return
        start = max(0, self._failure_index - EVIDENCE_BEFORE)
        self.failure.evidence = self.lines[start : self._failure_index + EVIDENCE_AFTER + 1]
        # The most specific signature seen in the evidence names the failure (a Xen panic whose
        # reason is "Missing kernel boot module?" is reported as that).
        window = [(s, i) for s, i in self._matches if i <= self._failure_index + EVIDENCE_AFTER]
        best = max(window, key=lambda m: m[0].specificity)[0]
        f = self.failure
        f.signature, f.description, f.verdict = best.name, best.description, best.verdict
        f.detail = self._detail()

    def _detail(self) -> str:
        """For a Xen panic: its reason, the first line after 'Panic on CPU' that is not decoration."""
        assert self.failure is not None
        if self.failure.line is None or not self.failure.line.text.startswith("Panic on CPU"):
            return ""
        for line in self.lines[self._failure_index + 1 :]:
            text = line.text.strip("* ").strip()
            if text:
                return text
        return ""

    def hang(self, description: str, signature: str = "silence") -> Failure:
        """Record (and return) a hang at the current stage: silence, no progress by a deadline, a guest
        that stops answering."""
        if self.failure is None:
            self.failure = Failure(Verdict.HUNG, self.stage, signature, description, None,
                                   self.lines[-EVIDENCE_BEFORE:])
        return self.failure

    def exited(self, status: int | None, stderr: str = "") -> Failure:
        """Record (and return) QEMU's exit before the boot finished."""
        if self.failure is None:
            # QEMU's own error, or a warning of no consequence while a guest stopped the machine?
            if stderr.strip() and (not self.lines or any(p.search(stderr) for _, p, _ in QEMU_SIGNATURES)):
                self.failure = qemu_failure(stderr, self.stage, status)
            else:
                what = "without any console output" if not self.lines else "before the boot finished"
                self.failure = Failure(
                    Verdict.CRASHED, self.stage, "qemu-exit", f"the machine stopped {what}",
                    None, self.lines[-EVIDENCE_BEFORE:], f"QEMU exit status {status}",
                )
        return self.failure

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

    def text(self, source: str | None = None) -> list[str]:
        """The lines (without prefixes) one source printed, or all of them."""
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


def triage(log: bytes, prompt: str | None = r"\S+# ") -> tuple[ConsoleMonitor, Verdict]:
    """Judge a saved console log with the same catalogue as a live boot.

    Without a failure signature, a log that reaches the shell prompt passed; one that ends earlier is
    reported as hung after its last stage (the log may also just have been cut short: the stage says where).
    """
    monitor = ConsoleMonitor(prompt=prompt, clock=lambda: 0.0).replay(log)
    if monitor.failure:
        return monitor, monitor.failure.verdict
    if any(key.endswith(":shell") for key in monitor.reached):
        return monitor, Verdict.PASSED
    monitor.hang(f"the log ends after stage '{monitor.stage}' without a shell prompt")
    monitor.failure.signature = "log-ends"
    return monitor, Verdict.HUNG
