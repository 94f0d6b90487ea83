"""XenStrategy: the visible state machine off → [uboot →] xen → shell, with a deadline on every wait.

labgrid owns power, console and state; the console monitor says what the console shows. While the
strategy waits for a milestone it reads the console itself (so the monitor sees every line as it
arrives) and gives up as soon as the monitor names a failure, when the console has been silent for
the current stage's deadline, or when the machine stops.

It binds protocols, not QEMU: any power driver (QEMU's, a PDU's, a person's), a console that is a
`ConsoleTap` (QEMU's socket, or `XenSerialDriver` on a board's UART), and optionally U-Boot (boards:
the boot plan's script loads and checks every file, then starts Xen) and a machine that can say how
it stopped (QEMU's exit report).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable

import attr
import pexpect
from labgrid.driver.shelldriver import ShellDriver
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy import Strategy, StrategyError

from ..diagnose import RING_KEY, SWITCH_INPUT, WHERE_REQUESTED, Diagnosis, Prober, Symbolizer, decide
from ..monitor import EVIDENCE_BEFORE, BootFailure, ConsoleMonitor, Failure, MachineExit, Verdict
from ..plan.uboot import UBootCommand
from ..targets import Deadlines, GuestSpec
from .console import ConsoleTap, QuietWatch

POLL_S = 0.2
POWER_CHECK_S = 3.0  # console silence after which a board's power state is asked (a PDU is slow)
PROBES_PER_SPELL = 3  # probes of one quiet spell (QuietSpells)


class Status(enum.Enum):
    unknown = 0
    off = 1
    uboot = 2  # U-Boot's prompt answers and every file of the boot plan is loaded and checked
    xen = 3  # Xen has handed over to its guests
    shell = 4  # the console guest's shell answers


CONSOLE_ESCAPE = b"\x1d"  # Ctrl-]: xl console's (xenconsole's) escape back to dom0's shell
DETACH_TRIES, DETACH_WAIT_S = 3, 10.0  # escapes sent, and how long dom0's prompt may take after each

# What a quiet dom0 command can end the boot with: a busy command may look like a spin, never like these.
COMMAND_CONCLUSIVE = frozenset({"xen-hung", "events-undelivered"})
# The debug keys such a probe presses: what those two read ('q' and 'e'), no more. Each key stops Xen's CPUs
# for a dump ('0' even pauses dom0's vCPUs) while dom0 is busy with a command the harness waits for.
COMMAND_KEYS = "qe"



@target_factory.reg_driver
@attr.s(eq=False)
class XenStrategy(Strategy):
    """off -> [uboot ->] xen -> shell. The console guest's shell first; `focus` moves Xen's serial input.

    Each guest has a ShellDriver named after it (`dom0`, `domU1`, …) in the target YAML; the first
    of `guests` is the one Xen gives the console to at the end of its boot.
    """

    bindings = {
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",  # a ConsoleTap
        "uboot": {"UBootDriver", None},  # a board's firmware: the boot plan's script runs at its prompt
        "machine": {"XenQEMUDriver", None},  # says how the machine stopped
    }

    status = attr.ib(default=Status.unknown)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.deadlines = Deadlines()
        self.guests: list[GuestSpec] = [GuestSpec("dom0", 0, "")]  # the harness sets the target's
        self.monitor: ConsoleMonitor | None = None
        self.on_milestone = None  # progress callback handed to each boot's monitor
        self.focused: GuestSpec | None = None
        # U-Boot's part of the boot plan (the harness sets it): the commands that load and check every
        # file, and the command that starts Xen.
        self.uboot_script: tuple[list[UBootCommand], str] | None = None
        self.hypervisor = True  # False: the machine boots Linux alone (the console guest is all there is)
        # Hang diagnosis (harness/diagnose.py): how PCs are named, where dumps go, what was found last,
        # and who hears of it (`harness boot` prints it).
        self.symbolizer = Symbolizer()
        self.artifacts = None
        self.prober: Prober | None = None
        self.diagnosis: Diagnosis | None = None
        self.on_diagnosis = None
        if not isinstance(self.console, ConsoleTap):
            raise StrategyError(f"XenStrategy needs a console that is a ConsoleTap (XenQEMUDriver or "
                                f"XenSerialDriver), not {type(self.console).__name__}: fix the target YAML.")

    def shell(self, name: str):
        return self.target.get_driver("ShellDriver", name=name, activate=False)

    def _shells(self) -> list:
        return [d for d in self.target.drivers if isinstance(d, ShellDriver)]

    @step(args=["status"])
    def transition(self, status, *, step):  # noqa: ARG002 (labgrid's step decorator passes it)
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status}")
        if status == self.status:
            return
        if status == Status.off:
            for driver in [*self._shells(), *([self.uboot] if self.uboot else [])]:
                self.target.deactivate(driver)
            self.target.activate(self.power)
            self.power.off()
            self.focused = None
        elif status == Status.uboot:
            if self.uboot is None or self.uboot_script is None:
                raise StrategyError("this target has no U-Boot, or the harness gave it no boot plan.")
            self.transition(Status.off)
            self.status = Status.unknown
            self._power_on()
            self._uboot_load()
        elif status == Status.xen:
            if self.uboot is not None:
                self.transition(Status.uboot)
                self.console.sendline(self.uboot_script[1])
            else:
                self.transition(Status.off)
                self.status = Status.unknown  # powered on, not yet anywhere: off() must still stop it
                self._power_on()
            self.wait_for("xen-handover")
        elif status == Status.shell and not self.hypervisor:
            self.transition(Status.off)
            self.status = Status.unknown
            self._power_on()
            self._take_shell(self.guests[0])
        elif status == Status.shell:
            if self.status != Status.xen:
                self.transition(Status.xen)
            # Xen ends its boot giving its input to DOM0 (even when there is none): start from there.
            self.wait_until(lambda: self.monitor.focus_seen, "Xen's '*** Serial input to DOM0' line")
            self.focus(self.guests[0])
        self.status = status

    def focus(self, guest: GuestSpec):
        """Give `guest` Xen's serial input and its shell; returns its active ShellDriver."""
        self._give_input(guest.domid, f"{guest.name} (DOM{guest.domid})")
        if self.focused != guest:
            self._take_shell(guest)
        return self.shell(guest.name)

    def attach(self, guest: GuestSpec, command: str):
        """The shell of a domU whose console dom0 relays: dom0 runs `command` (`xl create -c …`, `xl console …`),
        which hands dom0's console to the domU until detach(); returns the domU's active ShellDriver."""
        self.focus(self.guests[0])
        seen = self.monitor.line_count
        self.console.write(command.encode() + b"\n")
        # dom0's echo of the command is dom0's; what follows is the domU's
        self.wait_until(lambda: any(command in line.text for line in self.monitor.since(seen)),
                        f"dom0's echo of `{command}`")
        self.monitor.relay = guest.source
        self.monitor.relay_end = re.compile(self.shell(self.guests[0].name).prompt)
        self.focused = None
        # Until the domU's kernel speaks, dom0 is busy in the command (xl maps the domU's memory to load its kernel),
        # and nothing is asked of Xen: its debug keys pressed meanwhile stalled Xen for good (seen on arm64 and
        # arm32, CPUs in dump_registers, guest_physmap_remove_page, queue_read_lock_slowpath). The silence
        # deadline covers this wait.
        self.wait_until(lambda: f"{guest.source}:kernel" in self.monitor.reached or self.monitor.relay is None,
                        f"{guest.source}:kernel")
        if self.monitor.relay is None:  # dom0's prompt came back: the command ended without starting the domU
            self.monitor.fail(Verdict.FAILED, "domu-not-started",
                              f"`{command}` returned to dom0's shell before {guest.name}'s kernel started")
            raise BootFailure(self.monitor.conclude())
        self._take_shell(guest)
        return self.shell(guest.name)

    def detach(self) -> None:
        """Back from a relayed domU's console to dom0's shell (xenconsole's escape, Ctrl-]). xenconsole leaves only
        when one read gives it the escape alone: it is sent by itself, and nothing follows until dom0's prompt
        shows (the monitor ends the relay there); once more if it does not."""
        for _ in range(DETACH_TRIES):
            if self.monitor.relay is None:
                break
            self.console.write(CONSOLE_ESCAPE)
            end = self.monitor.clock() + DETACH_WAIT_S
            while self.monitor.relay is not None and self.monitor.clock() < end:
                try:
                    self.console.read(size=1, timeout=POLL_S, max_size=65536)
                except pexpect.TIMEOUT:
                    pass
                except pexpect.EOF:
                    raise BootFailure(self.machine_stopped()) from None
        if self.monitor.relay is not None:
            self.monitor.hang(f"xl console did not give dom0's shell back ({DETACH_TRIES} Ctrl-])", "detach-unanswered")
            raise BootFailure(self.monitor.conclude())
        self.focused = None
        self.focus(self.guests[0])

    def _give_input(self, domid: int | None, name: str) -> None:
        """Move Xen's serial input to domain `domid` (None: Xen itself).

        Xen passes its input on with Ctrl-a three times, round Xen -> DOM0 -> DOM1 … -> Xen, and says
        where it went ("*** Serial input to DOM1"); the monitor follows those lines.
        """
        for _ in range(len(self.guests) + 2):
            if self.monitor.focus == domid:
                return
            seen = self.monitor.line_count
            self.console.write(SWITCH_INPUT)
            self.wait_until(functools.partial(self.monitor.input_moved_since, seen),
                            "Xen's '*** Serial input to …' line")
        self.monitor.hang(f"Xen never gave its serial input to {name}", "input-switch")
        raise BootFailure(self.monitor.conclude())

    def dump_xen_ring(self) -> None:
        """Have Xen print its console ring (debug key 'w'), then give the input back to the focused guest.

        On Arm, Xen parses its command line before its serial console is up: what it said about it
        ("Command line: …", unknown or invalid parameters) is in the ring only. The monitor records
        the dump's lines as source "xen-ring". Once a boot: a later dump ends only at the ring's copy
        of its own 'w' line, which the monitor can count only while the ring keeps every earlier one."""
        if self.monitor.ring_dumps:
            return
        back = self.focused
        self._give_input(None, "Xen")
        dumps = self.monitor.ring_dumps
        self.console.write(RING_KEY)
        self.wait_until(lambda: self.monitor.ring_dumps > dumps, "Xen's console ring dump ('w')")
        if back is not None:
            self._give_input(back.domid, f"{back.name} (DOM{back.domid})")

    def _take_shell(self, guest: GuestSpec) -> None:
        self.wait_for(f"{guest.source}:init")
        if f"{guest.source}:shell" not in self.monitor.reached:
            # An unfocused domU's prompt sits unprinted in Xen's line buffer: a newline brings it out.
            self.console.write(b"\n")
            self.wait_for(f"{guest.source}:shell")
        # The monitor consumed that prompt: ask for a fresh one for the ShellDriver, which would
        # otherwise wait its await_login_timeout of silence before asking itself.
        self.console.write(b"\n")
        # dom0 quiet while its shell is taken: asked where it is, as while it runs a command
        self.console.quiet = self.command_watch() if guest.domid == 0 else None
        try:
            self.target.activate(self.shell(guest.name))  # deactivates the other guests' shells
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:  # the guest died or froze after its prompt
            if self.monitor.failure is not None:  # a probe found why
                raise BootFailure(self.monitor.conclude()) from None
            if isinstance(exc, pexpect.EOF) or (self.machine is not None and not self.machine.running()):
                raise BootFailure(self.machine_stopped()) from None
            self.monitor.hang(f"{guest.name}'s shell did not answer after its prompt", "shell-unanswered")
            raise BootFailure(self.monitor.conclude()) from None
        finally:
            self.console.quiet = None
        self.focused = guest

    def _power_on(self) -> None:
        self.target.activate(self.console)  # before power: a board's first words are its firmware's
        prompts = "|".join(f"(?:{shell.prompt})" for shell in self._shells())
        if self.monitor is not None:  # one monitor per boot
            self.console.listeners.remove(self.monitor.feed)
        self.monitor = monitor = ConsoleMonitor(prompt=prompts or None, on_milestone=self.on_milestone,
                                                hypervisor=self.hypervisor)
        self.console.listeners.append(monitor.feed)
        # Once the monitor has named a failure, whoever is reading the console (a ShellDriver
        # waiting out its command timeout) gets EOF at once instead.
        self.console.abort = lambda: monitor.failure is not None and monitor.settled()
        self.target.activate(self.power)
        self.power.on()
        self.monitor.start()
        self.diagnosis = None
        qemu = self._qemu_command if self.machine is not None else None
        self.prober = Prober(self.console, monitor, qemu, self.hypervisor, self.symbolizer, self.artifacts,
                             len(self.guests))

    def command_watch(self) -> QuietWatch | None:
        """While a dom0 command runs: a quiet console is probed on the QuietSpells schedule, and only what no busy
        command can look like ends the boot (Xen not answering; dom0 blocked on an event that never arrives).
        None when there is nothing to ask (no probe deadline, or no Xen)."""
        if not self.deadlines.probe or not self.hypervisor:
            return None
        monitor, spells = self.monitor, QuietSpells(self.monitor, self.deadlines.probe)

        def act() -> None:
            before = monitor.lines[-EVIDENCE_BEFORE:]
            diag = self._command_probe()
            spells.probed()
            if diag.conclusive and not monitor.failure:
                monitor.hang(diag.conclusion, diag.signature).evidence = before
                _concluded(monitor, diag)

        return QuietWatch(spells.due, act)

    def _command_probe(self) -> Diagnosis:
        """A probe while a dom0 command runs: only COMMAND_CONCLUSIVE findings conclude; the rest are described."""
        return self.probe(COMMAND_CONCLUSIVE, COMMAND_KEYS)

    def _qemu_command(self, command: str) -> str:
        """A QEMU human-monitor command, on QMP directly: the prober asks from a thread, and labgrid's step
        stack (monitor_command is a step) belongs to the thread reading the console."""
        if not self.machine.status:
            raise StrategyError("QEMU is not running")
        return self.machine.qmp.execute("human-monitor-command", {"command-line": command})

    def probe(self, may_end: frozenset[str] | None = None, keys: str = "") -> Diagnosis:
        """Ask the machine where it is (QEMU's vCPUs, Xen's debug `keys`, default all) and say what that means;
        the boot goes on. Only a finding whose signature is in `may_end` (None: any) is a verdict: the rest are
        described (nothing is when someone asked before the console was quiet for long, `may_end` empty: a
        machine a few milliseconds into a stage only looks stuck)."""

        def ends(diag: Diagnosis) -> bool:
            return diag.conclusive and (may_end is None or diag.signature in may_end)

        diag = decide(self.prober.probe(keys, enough=lambda d: ends(decide(d, self.monitor))), self.monitor)
        if not ends(diag):
            diag.signature = None
        self.diagnosis = diag
        if self.on_diagnosis and not diag.conclusive:  # a conclusive one is the verdict, reported as such
            self.on_diagnosis(diag)
        return diag

    def _uboot_load(self) -> None:
        """At U-Boot's prompt, run the boot plan's script: every file fetched and checked by its CRC32.

        Whatever goes wrong here is the lab's (a board that never reaches U-Boot, a TFTP server that
        does not answer or serves other bytes), never the build's: the image was checked before."""
        commands, _ = self.uboot_script
        try:
            self.target.activate(self.uboot)  # stops autoboot, waits for the prompt
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            if self.monitor.failure is None:
                self.monitor.fail(Verdict.INFRASTRUCTURE, "uboot-no-prompt",
                                  "the board never gave U-Boot's prompt", str(exc).splitlines()[0])
            raise BootFailure(self.monitor.conclude()) from None
        self.monitor.mark("uboot-prompt")
        deadline = self.deadlines.silence_at("firmware")
        for command in commands:
            try:
                out, _, status = self.uboot.run(command.text, timeout=int(deadline))
            except (pexpect.TIMEOUT, pexpect.EOF, ValueError) as exc:
                if self.monitor.failure is None and self.machine is None and not self._powered():
                    self.monitor.exited(MachineExit(seen="its power went off"))
                elif self.monitor.failure is None:
                    self.monitor.fail(Verdict.INFRASTRUCTURE, "uboot-command",
                                      f"U-Boot did not finish `{command.text}`", type(exc).__name__)
                raise BootFailure(self.monitor.conclude()) from None
            if self.monitor.failure is not None:  # a signature of U-Boot's own (TFTP error, …)
                raise BootFailure(self.monitor.conclude())
            if status != 0:
                self.monitor.fail(Verdict.INFRASTRUCTURE, "uboot-command", f"U-Boot's `{command.text}` failed",
                                  " | ".join(out[-3:]) or f"status {status}")
                raise BootFailure(self.monitor.conclude())
            if command.check is not None and (found := crc_printed(out)) != command.check.crc32:
                self.monitor.fail(
                    Verdict.INFRASTRUCTURE, "uboot-crc-mismatch",
                    f"the board received other bytes for {command.check.name} than the lab sent",
                    f"expected CRC32 {command.check.crc32:08x}, found {found if found is None else f'{found:08x}'}")
                raise BootFailure(self.monitor.conclude())
        self.monitor.mark("uboot-loaded")
        self.status = Status.uboot

    def machine_stopped(self) -> Failure:
        """The machine stopped under us: reap it (its driver learns how it ended) and record whose doing it was."""
        self.power.off()
        self.monitor.exited(self.machine.exit_report() if self.machine is not None
                            else MachineExit(seen="its console closed"))
        return self.monitor.conclude()

    def wait_for(self, key: str) -> None:
        """Read the console until the monitor reaches milestone `key`; a quiet console is probed meanwhile."""
        self.wait_until(lambda: key in self.monitor.reached, key, probe=self.probe)

    def wait_until(self, condition, what: str, probe=None):
        """Read the console until `condition()` is true (and return it); raise BootFailure as soon as it cannot."""
        booting = self.status != Status.shell
        powered = self._powered if self.machine is None else None  # a machine that exits closes its console
        return wait_until(self.console, self.monitor, self.deadlines, condition, what, booting, self.machine_stopped,
                          powered, probe)

    def _powered(self) -> bool:
        """What the power driver says of the board now (a PDU's outlet state); True when it cannot say."""
        try:
            return bool(self.power.get())
        except Exception:  # noqa: BLE001 (a power driver that cannot read its state: ManualPowerDriver, …)
            return True


def wait_until(console, monitor: ConsoleMonitor, deadlines: Deadlines, condition, what: str, booting: bool = True,
               stopped: Callable[[], Failure] | None = None, powered: Callable[[], bool] | None = None,
               probe: Callable[[frozenset[str] | None], Diagnosis] | None = None):
    """Read `console` (feeding `monitor`) until `condition()` is true, and return its value.

    Raises BootFailure as soon as the monitor names a failure (with its evidence gathered, even
    when the condition came true meanwhile), when the console is silent past the current stage's
    deadline, when the console closes (`stopped()` says how the machine stopped), when the board lost
    its power (`powered()`, asked every POWER_CHECK_S of silence: a board's console never closes), or
    past the boot deadline: counted from power-on while `booting`, else from this call.

    With `probe(may_end)`, a quiet console is asked where it is on the QuietSpells schedule, and whenever
    someone asks (WHERE_REQUESTED): a conclusive diagnosis of a console quiet for the probe deadline ends the
    boot at once (someone's question before that may end nothing); any other is carried by the hang verdict
    should the deadline come.
    """
    started = monitor.clock()
    deadline_base = 0.0 if booting else monitor.now()
    checked = started
    spells = QuietSpells(monitor, deadlines.probe, since=started)
    diagnosis = None

    def check_power() -> None:
        """A board without power answers nothing: that is the lab's, never a hang."""
        if powered and not powered():
            monitor.exited(MachineExit(seen="its power went off"))
            raise BootFailure(monitor.conclude())

    while True:
        if monitor.failure:
            if monitor.settled():
                raise BootFailure(monitor.conclude())
        elif result := condition():
            return result
        try:
            console.read(size=1, timeout=POLL_S, max_size=65536)
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            failure = stopped() if stopped else monitor.exited(MachineExit(seen="its console closed"))
            raise BootFailure(failure) from None
        silence = monitor.clock() - max(monitor.last_output, started)
        if probe is not None and not monitor.failure and (WHERE_REQUESTED.is_set() or spells.due() <= 0):
            WHERE_REQUESTED.clear()
            quiet_long_enough = spells.due() <= 0  # else only someone's question: its answer is no verdict
            check_power()
            before = monitor.lines[-EVIDENCE_BEFORE:]  # the evidence: what the machine printed, not what was asked
            diagnosis = probe(None if quiet_long_enough else frozenset())
            spells.probed()
            if diagnosis.conclusive:
                check_power()  # unanswered because it went off meanwhile
            if diagnosis.conclusive and not monitor.failure:
                monitor.hang(diagnosis.conclusion, diagnosis.signature).evidence = before
                raise BootFailure(_concluded(monitor, diagnosis))
            continue
        if powered and not monitor.failure and min(silence, monitor.clock() - checked) > POWER_CHECK_S:
            checked = monitor.clock()
            check_power()
        if not monitor.failure and silence > deadlines.silence_at(monitor.stage):
            monitor.hang(f"no console output for {silence:.0f} s")
            raise BootFailure(_concluded(monitor, diagnosis))
        if monitor.now() - deadline_base > deadlines.boot:
            monitor.hang(f"no {what} within the deadline of {deadlines.boot:.0f} s")
            raise BootFailure(_concluded(monitor, diagnosis))


class QuietSpells:
    """When to ask a quiet console where the machine is: `probe` seconds into a quiet spell (the console's
    silence since its last output, or since `since` if later), then again `probe` seconds after each probe,
    up to PROBES_PER_SPELL probes a spell: a slow machine may only have been on its way."""

    def __init__(self, monitor: ConsoleMonitor, probe: float, since: float | None = None) -> None:
        self.monitor, self.probe, self.since = monitor, probe, since
        self.output: float | None = None  # the spell: the console's last output before it
        self.probes, self.after = 0, 0.0  # probes of this spell, and no next one before `after`

    def due(self) -> float:
        """Seconds until the next probe (<= 0: now; inf: none in this spell, or probing is off)."""
        m = self.monitor
        if self.output != m.last_output:
            self.output, self.probes, self.after = m.last_output, 0, 0.0
        if not self.probe or self.probes >= PROBES_PER_SPELL:
            return float("inf")
        quiet_from = m.last_output if self.since is None else max(m.last_output, self.since)
        return max(self.probe - (m.clock() - quiet_from), self.after - m.clock())

    def probed(self) -> None:
        """A probe of this spell just ended."""
        self.probes += 1
        self.after = self.monitor.clock() + self.probe


def _concluded(monitor: ConsoleMonitor, diagnosis: Diagnosis | None) -> Failure:
    """The hang verdict, carrying what the last probe found (its conclusion, and seconds from quiet to verdict)."""
    failure = monitor.conclude()
    if diagnosis is not None:
        diagnosis.seconds_from_quiet = round(failure.decided - diagnosis.quiet_since, 2)
        if diagnosis.conclusion and not failure.detail and diagnosis.conclusion != failure.description:
            failure.detail = diagnosis.conclusion
    return failure


CRC = re.compile(r"==> ([0-9a-fA-F]{8})\s*$")


def crc_printed(out: list[str]) -> int | None:
    """The CRC32 U-Boot's `crc32` printed ("crc32 for 40400000 ... 404f0007 ==> 10f35054")."""
    return next((int(m.group(1), 16) for line in out if (m := CRC.search(line))), None)
