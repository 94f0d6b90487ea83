"""Where a quiet machine is: Xen's debug keys over its console, every vCPU's PC through QEMU, symbolized.

When the console goes quiet before the current stage's milestone, the strategy asks the machine
without ending the boot (`Prober`): QEMU's vCPUs (`info registers -a`, sampled a few times: works
when Xen is wedged or its console is dead), then Xen's debug keys (boards too). `decide` reads those
facts; only a conclusive pattern ends the boot early, with a named signature. Anything else waits
for the deadline as before, and the hung verdict carries the diagnosis.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace

import pexpect

from .debugkeys import PROBE_KEYS, DebugDump, Registers, dump_key, parse
from .xenlog import EVENT_PPI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VcpuSample:
    """One vCPU of the machine (a pCPU to Xen) as QEMU saw it."""

    cpu: int  # QEMU's vCPU index: Xen's pCPU number
    pc: int
    el: int | None  # exception level: 2 Xen, 1 a guest's kernel, 0 user space (None: unknown)
    mode: str  # QEMU's word for it: "EL2h", "EL1h", "hyp32", "svc32", …
    t: float = 0.0  # seconds since power-on
    symbol: str | None = None  # "domain.c#idle_loop+0x124/0x140 [xen]", "default_idle_call+0x3c/0x1d0 [linux]"

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "pc": f"{self.pc:#x}", "el": self.el, "mode": self.mode, "t": self.t,
                "symbol": self.symbol}

    def __str__(self) -> str:
        el = f"EL{self.el}" if self.el is not None else self.mode
        return f"CPU{self.cpu} {el} pc {self.pc:#x} {self.symbol or '(no symbol)'}"


@dataclass
class Diagnosis:
    """What the harness found out about a quiet (or failed) machine; result.json's `diagnosis`."""

    method: str  # "debug-keys", "qmp", "debug-keys+qmp", "none": how the machine was asked
    stage: str  # the last milestone reached
    quiet_since: float  # seconds since power-on of the last console byte (0.0: nothing printed)
    samples: list[list[VcpuSample]] = field(default_factory=list)  # QEMU's vCPUs, sample after sample
    dump: DebugDump | None = None  # what Xen's debug keys printed (None: not asked or no answer)
    xen_answered: bool | None = None  # None: not asked
    dumps: list[str] = field(default_factory=list)  # the dumps' files, relative to the artifacts
    conclusion: str = ""  # in words
    signature: str | None = None  # conclusive: the failure's signature; None: inconclusive
    seconds_from_quiet: float | None = None  # from quiet_since to the verdict
    earlier: list[list[VcpuSample]] = field(default_factory=list)  # the last probe's samples, same quiet spell
    moved_on: str = ""  # a guest's line printed while the machine was asked: it was on its way, not stuck

    @property
    def conclusive(self) -> bool:
        return self.signature is not None

    @property
    def complete(self) -> bool:
        """Xen answered every debug key of PROBE_KEYS."""
        return self.dump is not None and set(PROBE_KEYS) <= set(self.dump.keys)

    def latest(self) -> list[VcpuSample]:
        return self.samples[-1] if self.samples else []

    def xen_registers(self) -> list[Registers]:
        return self.dump.registers if self.dump else []

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "stage": self.stage,
            "conclusion": self.conclusion,
            "signature": self.signature,
            "vcpus": [s.to_dict() for s in self.latest()],
            "samples": len(self.samples),
            "xen_answered": self.xen_answered,
            "xen_registers": [{"who": r.who, "cpu": r.cpu, "pc": f"{r.pc:#x}", "el": r.el, "symbol": r.symbol}
                              for r in self.xen_registers()],
            "dumps": self.dumps,
            "quiet_since": self.quiet_since,
            "seconds_from_quiet": self.seconds_from_quiet,
        }

    def report(self) -> list[str]:
        """The lines the text report prints under the verdict."""
        lines = [f"diagnosis ({self.method}): {self.conclusion or 'inconclusive'}"]
        lines += [f"    {s}" for s in self.latest()]
        lines += [f"    Xen: {r.who} pc {r.pc:#x} {r.symbol or ''}".rstrip() for r in self.xen_registers()]
        if self.seconds_from_quiet is not None:
            lines.append(f"    {self.seconds_from_quiet:.1f} s from the last console byte to the verdict")
        lines += [f"    debug-key dump: {path}" for path in self.dumps]
        return lines


# QEMU's `info registers -a`: "CPU#0" then, on arm64, " PC=… " and "PSTATE=600002c9 -ZC- EL2h";
# on arm32, "R15=…" and "PSR=600700da -ZC- A hyp32".
QEMU_CPU = re.compile(r"^CPU#(\d+)", re.M)
QEMU_PC64 = re.compile(r"\bPC=([0-9a-f]+)")
QEMU_PSTATE = re.compile(r"\bPSTATE=[0-9a-f]+ \S+ (EL(\d)[ht])")
QEMU_PC32 = re.compile(r"\bR15=([0-9a-f]+)")
QEMU_PSR = re.compile(r"\bPSR=[0-9a-f]+ \S+ (?:\S+ )?(usr32|fiq32|irq32|svc32|mon32|abt32|hyp32|und32|sys32)")
ARM32_EL = {"usr32": 0, "hyp32": 2, "mon32": 3}  # every other mode is a kernel's (EL1)


def sample_of(registers: Registers, t: float) -> VcpuSample:
    """A pCPU as Xen's 'd' dump showed it, as if QEMU had sampled it (a board has no QEMU to ask)."""
    symbol = f"{registers.symbol} [xen]" if registers.domain is None and registers.symbol else registers.symbol
    return VcpuSample(registers.cpu, registers.pc, registers.el, registers.mode, t, symbol)


def parse_qemu_registers(text: str, t: float = 0.0) -> list[VcpuSample]:
    """Every vCPU's PC and exception level in QEMU's `info registers -a` output."""
    samples = []
    starts = list(QEMU_CPU.finditer(text))
    for i, m in enumerate(starts):
        block = text[m.end() : starts[i + 1].start() if i + 1 < len(starts) else None]
        if (pc := QEMU_PC64.search(block)) and (ps := QEMU_PSTATE.search(block)):
            samples.append(VcpuSample(int(m.group(1)), int(pc.group(1), 16), int(ps.group(2)), ps.group(1), t))
        elif (pc := QEMU_PC32.search(block)) and (ps := QEMU_PSR.search(block)):
            mode = ps.group(1)
            samples.append(VcpuSample(int(m.group(1)), int(pc.group(1), 16), ARM32_EL.get(mode, 1), mode, t))
    return samples


# --- asking the machine ----------------------------------------------------------------------

QEMU_SAMPLES = 3  # `info registers -a` samples: enough to tell a spin from progress
QEMU_SAMPLE_GAP_S = 0.2
QEMU_ANSWER_S = 5.0  # QEMU's monitor answers in milliseconds once its console is read
SWITCH_ANSWER_S = 2.5  # Xen prints "*** Serial input to …" from its interrupt handler: at once when alive,
# within a second when its pCPU's thread is starved on a loaded host
KEY_QUIET_S = 0.4  # a dump is over when Xen has printed nothing more for this long
KEY_DEADLINE_S = 3.0  # longest wait for one key's dump
SWITCH_INPUT = b"\x01\x01\x01"  # Ctrl-a three times: Xen moves its serial input to the next domain
RING_KEY = b"w"  # Xen's debug key: print the console ring (xen/drivers/char/console.c)

# Where a healthy CPU waits: idle, a delay loop, a lock whose holder's thread the host has descheduled.
# Never "stuck" there, whatever the samples say (a real deadlock there waits for the deadline, described).
IDLE = re.compile(r"idle_loop|cpu_do_idle|default_idle_call|arch_cpu_idle|do_idle|cpu_idle_poll|wfi")
WAITING = re.compile(f"{IDLE.pattern}|delay|arch_counter_get_cnt|arch_timer_read|spin_lock|queued_spin|rwlock"
                     r"|read_lock|write_lock")


class Symbolizer:
    """Names a PC: Xen's own symbol table for EL2, the booted kernel's for EL1 and EL0.

    `tables` maps "xen" / "linux" to a harness.symbols.SymbolTable, or to a function that reads one
    (called on first use: a boot that never goes quiet never reads its images' tables)."""

    def __init__(self, tables: dict | None = None) -> None:
        self.tables = dict(tables or {})

    def table(self, kind: str):
        table = self.tables.get(kind)
        if callable(table):
            try:
                table = table()
            except Exception as exc:  # noqa: BLE001 (no symbols is a weaker diagnosis, not a failure)
                log.warning("PCs go unnamed: no %s symbols (%s)", kind, exc)
                table = None
            self.tables[kind] = table
        return table

    def name(self, pc: int, el: int | None) -> str | None:
        kind = "xen" if el == 2 else "linux" if el in (0, 1) else None
        table = self.table(kind) if kind else None
        found = table.lookup(pc) if table is not None else None
        return f"{found} [{kind}]" if found else None


class Prober:
    """Asks a quiet machine where it is, without ending the boot: QEMU's vCPUs, then Xen's debug keys.

    `console` is a ConsoleTap whose reads feed `monitor`; `qemu(command)` runs a QEMU human-monitor
    command (None on a board); `guests` is how many domains share Xen's serial input with it.
    """

    def __init__(self, console, monitor, qemu=None, hypervisor: bool = True, symbolizer: Symbolizer | None = None,
                 artifacts=None, guests: int = 1) -> None:
        self.console = console
        self.monitor = monitor
        self.qemu = qemu
        self.hypervisor = hypervisor
        self.symbolizer = symbolizer or Symbolizer()
        self.artifacts = artifacts  # where dumps are saved (None: kept in memory only)
        self.guests = guests
        self.count = 0
        self._last: Diagnosis | None = None  # the last probe (a spin is believed when two probes see it)
        self._asking: threading.Thread | None = None  # the question to QEMU's monitor in flight

    def probe(self, keys: str = "", samples: int = QEMU_SAMPLES, enough=None) -> Diagnosis:
        """One look at the machine: `samples` of QEMU's vCPUs, then `keys` pressed (default: all of PROBE_KEYS).

        With `enough(diagnosis)`, asking stops as soon as it finds what was learnt conclusive (the whole dump
        is then taken after the verdict: a verdict within seconds of quiet)."""
        m = self.monitor
        quiet_since = round(m.last_output - m.t0, 3)  # 0.0 when nothing was printed: last_output starts at t0
        diag = Diagnosis(method="none", stage=m.stage, quiet_since=quiet_since)
        if self._last is not None and self._last.quiet_since == quiet_since and self._last.stage == m.stage:
            diag.earlier = self._last.samples
        self._last = diag
        abort, self.console.abort = self.console.abort, None  # a failed boot's console still answers here
        last_output, count = m.last_output, m.line_count
        try:
            self._probe(diag, keys, samples, enough)
        except (OSError, pexpect.EOF):  # the machine went away meanwhile: the caller's next read says how
            pass
        finally:
            self.console.abort = abort
            progress = m.progress_since(count)
            diag.moved_on = progress.text if progress else ""
            if not diag.moved_on:
                m.last_output = last_output  # what the probe provoked (Xen's dumps) is not the machine's progress
        return diag

    def _probe(self, diag: Diagnosis, keys: str, samples: int, enough) -> None:
        m = self.monitor
        if self.qemu is not None:
            diag.samples = self._sample(samples)
            diag.method = "qmp"
            if enough is not None and enough(diag):
                return
        # Keys go to whoever reads the console: while firmware does (UEFI stops its countdown for any key),
        # Xen is not asked.
        if self.hypervisor and ("firmware" not in m.reached or "xen-banner" in m.reached):
            diag.method = "debug-keys+qmp" if diag.samples else "debug-keys"
            self._ask_xen(diag, keys or PROBE_KEYS, enough)

    def _sample(self, count: int) -> list[list[VcpuSample]]:
        samples = []
        for i in range(count):
            if i:
                self._read_for(QEMU_SAMPLE_GAP_S)  # keep the console drained meanwhile
            text = self._ask_qemu("info registers -a")
            if text is None:
                break
            t = round(self.monitor.now(), 3)
            samples.append([VcpuSample(s.cpu, s.pc, s.el, s.mode, t, self.symbolizer.name(s.pc, s.el))
                            for s in parse_qemu_registers(text, t)])
        return samples

    def _ask_qemu(self, command: str) -> str | None:
        """QEMU's answer, read while the console is drained: a vCPU blocked writing to a full console holds the
        lock QEMU's monitor needs, so an answer awaited without reading would never come. None: no answer."""
        if self._asking is not None and self._asking.is_alive():
            return None  # an earlier question is still out: a second one would read its answer
        answer: list[str | None] = [None]

        def ask() -> None:
            with contextlib.suppress(Exception):  # QEMU went away: the caller learns it from the console
                answer[0] = self.qemu(command)

        self._asking = worker = threading.Thread(target=ask, name="qemu-monitor", daemon=True)
        worker.start()
        self._read_for(QEMU_ANSWER_S, until=lambda: not worker.is_alive())
        return answer[0]

    def _ask_xen(self, diag: Diagnosis, keys: str, enough) -> None:
        """Give Xen the serial input, press `keys` (until `enough(diag)`), reading each dump into `diag`, and give
        the input back to whoever had it."""
        m = self.monitor
        back, before = m.focus, m.line_count
        diag.xen_answered = self._switch_to(None)
        if not diag.xen_answered:
            return
        if not m.ring_dumps:  # the dumps would wrap Xen's console ring, which the checks read later ('w')
            # from a tasklet: a pCPU that never lets tasklets run never answers it
            self._press(RING_KEY.decode(), until=lambda: m.ring_dumps > 0)
            before = m.line_count
        if self.qemu is None and "d" in keys:  # a board: Xen's 'd' dumps are the samples (its PCs, a few times)
            for _ in range(QEMU_SAMPLES):
                start = m.line_count
                self._press("d")
                diag.samples.append([sample_of(r, round(m.now(), 3)) for r in self._dump_since(start).registers
                                     if r.cpu is not None and r.who.startswith("CPU")])
            keys = keys.replace("d", "")
            diag.dump = self._dump_since(before)
            if enough is not None and enough(diag):
                keys = ""
        for key in keys:
            self._press(key)
            diag.dump = self._dump_since(before)
            if enough is not None and enough(diag):
                break
        diag.dump = self._dump_since(before)
        self._switch_to(back)
        diag.dumps = self._save(diag.dump.lines)

    def _press(self, key: str, until=None) -> None:
        """A debug key, and its dump read until `until()` or Xen has printed nothing more for a while.

        Xen runs most keys from a tasklet, and a key pressed before that tasklet ran replaces the one waiting
        (keyhandler.c keeps one): wait until this key's dump has begun (on a loaded host, seconds) before the
        next key can be pressed."""
        start = self.monitor.line_count
        self._send(key.encode())
        self._read_for(KEY_DEADLINE_S, until=lambda: any(
            ln.source == "xen" and dump_key(ln.text) == key for ln in self.monitor.since(start)))
        self._read_for(KEY_DEADLINE_S, quiet=KEY_QUIET_S, until=until)

    def _dump_since(self, start: int) -> DebugDump:
        """What Xen's dumps said since console line `start`, guests' PCs named."""
        return self._named(parse(ln.text for ln in self.monitor.since(start) if ln.source == "xen"))

    def _named(self, dump: DebugDump) -> DebugDump:
        """The dump with its guests' PCs named from the booted kernel's symbols (Xen names only its own)."""
        dump.registers = [r if r.symbol or r.domain is None else replace(r, symbol=self.symbolizer.name(r.pc, r.el))
                          for r in dump.registers]
        return dump

    def _switch_to(self, domid: int | None) -> bool:
        for _ in range(self.guests + 2):
            if self.monitor.focus == domid and self.monitor.focus_seen:
                return True
            seen = self.monitor.line_count
            self._send(SWITCH_INPUT)
            if not self._read_for(SWITCH_ANSWER_S, until=lambda s=seen: self.monitor.input_moved_since(s)):
                return False
        return self.monitor.focus == domid

    def _send(self, data: bytes) -> None:
        self.console._send_raw(data)  # not paced by its echo: Xen echoes no key, and a dead Xen none at all

    def _read_for(self, seconds: float, quiet: float | None = None, until=None) -> bool:
        """Read the console for up to `seconds`: until `until()` (then True), or `quiet` seconds without output."""
        end = time.monotonic() + seconds
        last = time.monotonic()
        while (now := time.monotonic()) < end:
            if until is not None and until():
                return True
            if quiet is not None and now - last > quiet:
                return False
            try:
                if self.console.read(size=1, timeout=0.1, max_size=65536):
                    last = time.monotonic()
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:  # the machine stopped: the caller's next read says so
                return False
        return until is not None and until()

    def _save(self, lines: list[str]) -> list[str]:
        """The dump's lines in <artifacts>/xen-debugkeys[-N].txt; returns the file name(s)."""
        if self.artifacts is None or not lines:
            return []
        self.count += 1
        name = "xen-debugkeys.txt" if self.count == 1 else f"xen-debugkeys-{self.count}.txt"
        (self.artifacts / name).write_text("\n".join(f"(XEN) {line}" for line in lines) + "\n")
        return [name]


# --- what it means ---------------------------------------------------------------------------

# xen/include/public/xen.h: the VIRQs a dom0 binds at boot
VIRQS = {0: "VIRQ_TIMER", 1: "VIRQ_DEBUG", 2: "VIRQ_CONSOLE", 3: "VIRQ_DOM_EXC"}
SPIN_BYTES = 64  # a vCPU whose every sample lies within this many bytes of code is spinning
SPIN_SAMPLES = 3


def _spinning(samples: list[list[VcpuSample]]) -> list[VcpuSample]:
    """vCPUs whose every sample is in one named, non-idle function within SPIN_BYTES: one per vCPU."""
    if len(samples) < SPIN_SAMPLES:
        return []
    found = []
    for cpu in {s.cpu for s in samples[0]}:
        mine = [s for sample in samples for s in sample if s.cpu == cpu]
        if len(mine) < SPIN_SAMPLES or len({s.el for s in mine}) != 1:
            continue
        func = {_function(s) for s in mine}
        span = max(s.pc for s in mine) - min(s.pc for s in mine)
        if len(func) == 1 and "" not in func and span <= SPIN_BYTES and not WAITING.search(mine[-1].symbol or ""):
            found.append(mine[-1])
    return found


def _function(sample: VcpuSample) -> str:
    return (sample.symbol or "").split("+")[0]


def _where(samples: list[VcpuSample], spinning: list[VcpuSample] = ()) -> str:
    stuck = {s.cpu for s in spinning}
    return "; ".join(f"{s}{' (spinning)' if s.cpu in stuck else ''}" for s in samples) or "no vCPU sample"


def decide(diag: Diagnosis, monitor) -> Diagnosis:
    """Fill in `diag.conclusion`, and `diag.signature` when the facts are conclusive.

    Conclusive (the boot can end now): the CPU never entered EL2; Xen running with a silent console;
    Xen not answering its console; dom0 running but printing nothing; dom0's vCPUs all blocked with an
    event pending that never arrives; a CPU spinning in one function. Anything else is only described.
    """
    samples = [s for sample in diag.samples for s in sample]
    latest = diag.latest()
    reached = monitor.reached
    sources = monitor.sources
    xen_printed = "xen-banner" in reached
    hypervisor = monitor.hypervisor
    dump = diag.dump

    def conclude(signature: str, text: str) -> Diagnosis:
        diag.signature, diag.conclusion = signature, text
        return diag

    if diag.moved_on:
        diag.signature, diag.conclusion = None, f"the machine went on while it was asked: {diag.moved_on!r}"
        return diag
    if hypervisor and samples and not xen_printed and all(s.el != 2 for s in samples):
        return conclude("no-el2", f"the CPUs never entered EL2, so Xen cannot run: the machine gives no "
                                  f"virtualization (QEMU's virtualization=on, or firmware that keeps EL2): "
                                  f"{_where(latest)}")
    spinning = _spinning(diag.samples)
    if hypervisor and samples and not xen_printed and "dom0" not in sources:
        kernel = [s for s in latest if s.el in (0, 1)]
        idle = any(IDLE.search(s.symbol or "") for s in latest)
        if kernel or idle or diag.xen_answered is False:
            how = "its guests run" if kernel else "its CPUs idle" if idle else "at EL2, deaf to its console too"
            return conclude("xen-console-silent",
                            f"Xen is running ({how}) but its console printed nothing: Xen's console is not this "
                            f"serial line (dtuart=, console=), or Xen hung before it said a word: "
                            f"{_where(latest, spinning)}")
    if hypervisor and diag.xen_answered is False and xen_printed:
        where = _where(latest, spinning) if samples else "no QEMU to say where its CPUs are"
        return conclude("xen-hung", f"Xen does not answer its console (three Ctrl-a gave no '*** Serial input' "
                                    f"line): Xen is hung: {where}")
    if hypervisor and "xen-handover" in reached and "dom0-loading" in reached and "dom0" not in sources:
        # dom0 past its console's setup, yet silent: a vCPU in user space or idle, or a second vCPU of dom0's up
        # (Linux brings its secondary CPUs up after console_init). Before that a kernel is silent by right: a
        # 32-bit zImage unpacks itself, and a kernel proper reads its device tree before its console is up
        # (Linux 6.12 LPAE spends seconds in fdt_* under TCG), on its boot vCPU alone.
        running = [s for s in latest if s.el == 0 or (s.el == 1 and IDLE.search(s.symbol or ""))]
        dom0_regs = [r for r in (dump.registers if dump else []) if r.domain == 0 and (r.el == 0 or r.symbol)]
        guest_regs = [r for r in dom0_regs if r.el == 0 or IDLE.search(r.symbol or "")]
        if len({r.vcpu for r in dom0_regs if r.vcpu is not None}) > 1:
            guest_regs = dom0_regs
        if running or guest_regs:
            where = _where(running) if running else "; ".join(f"{r.who} pc {r.pc:#x} {r.symbol}" for r in guest_regs)
            return conclude("dom0-console-silent", "dom0 is running but has printed nothing since Xen handed over: "
                                                   f"its console is not Xen's (console=hvc0): {where}")
    if dump is not None and "dom0" in sources:
        vcpus = [v for v in dump.vcpus if v.domain == 0]
        pending = [c for c in dump.channels if c.domain == 0 and c.pending and not c.masked]
        if vcpus and all(v.blocked for v in vcpus) and pending and any(v.upcall_pending for v in vcpus):
            ports = ", ".join(f"port {c.port}" + (f" ({VIRQS.get(c.virq, f'VIRQ {c.virq}')})" if c.virq is not None
                                                  else "") for c in pending)
            ppi = next((m.group(1) for text in monitor.text("xen") if (m := EVENT_PPI.match(text))), None)
            raised = f"Xen raises PPI {ppi} for them" if ppi else "Xen raises its event PPI"
            return conclude("events-undelivered",
                            f"the event channel interrupt does not reach dom0: its vCPUs are all blocked waiting for "
                            f"an event while {ports} is pending and their upcall is raised ({raised}; dom0 is "
                            f"listening elsewhere)")
    # A spin seen twice: by two probes of one quiet spell, or by QEMU and then by Xen's own 'd' dump (which a
    # CPU spinning with its interrupts off never answers). Under TCG on a loaded host a vCPU waits on a lock
    # for a second whenever its holder's thread is descheduled, and that is no hang.
    # Only Xen's own code is concluded spinning: a guest's kernel can spend seconds of honest work in one
    # function (a 32-bit dom0's RSA in mpihelp_submul_1 under TCG), which no sampling tells from a spin; a
    # guest that truly spins meets its silence deadline, described.
    before = {(s.cpu, _function(s)) for s in _spinning(diag.earlier)}
    before |= {(r.cpu, (r.symbol or "").split("+")[0]) for r in (dump.registers if dump else [])
               if r.cpu is not None and r.symbol and r.who.startswith("CPU")}
    confirmed = [s for s in spinning if s.el == 2 and (s.cpu, _function(s)) in before]
    if confirmed:
        return conclude("cpu-spinning", "a CPU spins in one place: " + _where(confirmed))
    regs = dump.host() if dump else []
    parts = []
    if diag.xen_answered:
        parts.append("Xen answers its console")
    if latest:
        parts.append(_where(latest))
    parts += [f"Xen {r.who} pc {r.pc:#x} {r.symbol or ''}".rstrip() for r in regs]
    diag.conclusion = "; ".join(parts) or "nothing answered"
    return diag


# Set by a signal handler (`harness boot` on SIGQUIT): the next wait probes the machine and says where it is.
WHERE_REQUESTED = threading.Event()


def diagnose_log(monitor) -> Diagnosis | None:
    """What the debug-key dumps among a saved log's Xen lines say (`harness triage`); None when the log holds
    no dump of the keys the harness presses.

    A saved log has no times: `quiet_since` is the time of the line before the first dump only when the
    monitor kept it (triage keeps the last lines), else 0.0."""
    from .debugkeys import KEYS

    dump = parse(monitor.text("xen"))
    if not dump.registers and not set(dump.keys) & set(KEYS):
        return None
    diag = Diagnosis(method="debug-keys (log)", stage=monitor.stage, quiet_since=0.0, dump=dump,
                     xen_answered=True)  # Xen printed the dumps: it answered its keys
    if len(monitor.lines) == monitor.line_count:
        first = next((i for i, ln in enumerate(monitor.lines)
                      if ln.source == "xen" and dump_key(ln.text) is not None), 0)
        diag.quiet_since = monitor.lines[first - 1].t if first else 0.0  # the last line before the first dump
    return decide(diag, monitor)
