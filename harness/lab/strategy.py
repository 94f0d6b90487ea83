"""XenStrategy: the visible state machine off → xen → shell, with a deadline on every wait.

labgrid owns power, console and state; the console monitor says what the console shows. While the
strategy waits for a milestone it reads the console itself (so the monitor sees every line as it
arrives) and gives up as soon as the monitor names a failure, when the console has been silent for
the current stage's deadline, or when QEMU exits.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import attr
import pexpect
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy import Strategy, StrategyError

from ..errors import UsageError
from ..monitor import BootFailure, ConsoleMonitor

POLL_S = 0.2


class Status(enum.Enum):
    unknown = 0
    off = 1
    xen = 2  # Xen has handed over to its guests
    shell = 3  # the console guest's shell answers


@dataclass(frozen=True)
class Deadlines:
    """Seconds. Defaults hold on a loaded 2-core host without KVM; a target YAML may override them."""

    boot: float = 600.0  # power-on to the shell prompt, whatever happens
    silence: float = 60.0  # no console output at all, at any stage not listed below
    stages: dict[str, float] = field(default_factory=lambda: {"power-on": 30.0, "firmware": 180.0})

    def silence_at(self, stage: str) -> float:
        # Guest stages are recorded as "dom0:kernel": a deadline may name either form.
        return self.stages.get(stage, self.stages.get(stage.split(":")[-1], self.silence))

    @classmethod
    def from_config(cls, data: dict | None) -> Deadlines:
        data = dict(data or {})
        stages = {**cls().stages, **{k: float(v) for k, v in data.pop("stages", {}).items()}}
        if unknown := set(data) - {"boot", "silence"}:
            raise UsageError(
                f"unknown deadline(s) {', '.join(sorted(unknown))}: use boot, silence, or stages: {{STAGE: SECONDS}}."
            )
        return cls(stages=stages, **{k: float(v) for k, v in data.items()})


@target_factory.reg_driver
@attr.s(eq=False)
class XenStrategy(Strategy):
    bindings = {"power": "PowerProtocol", "console": "ConsoleProtocol", "shell": "ShellDriver"}

    status = attr.ib(default=Status.unknown)
    guest = attr.ib(default="dom0", validator=attr.validators.instance_of(str))  # whose shell is on the console

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.deadlines = Deadlines()
        self.monitor: ConsoleMonitor | None = None
        self.on_milestone = None  # progress callback handed to each boot's monitor

    @property
    def shell_key(self) -> str:
        return f"{self.guest}:shell"

    @step(args=["status"])
    def transition(self, status, *, step):  # noqa: ARG002 (labgrid's step decorator passes it)
        if not isinstance(status, Status):
            status = Status[status]
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status}")
        if status == self.status:
            return
        if status == Status.off:
            self.target.deactivate(self.shell)
            self.target.activate(self.power)
            self.power.off()
        elif status == Status.xen:
            self.transition(Status.off)
            self._power_on()
            self.wait_for("xen-handover")
        elif status == Status.shell:
            if self.status != Status.xen:
                self.transition(Status.xen)
            self.wait_for(self.shell_key)
            # The monitor consumed the prompt; a newline makes the shell print a fresh one for the
            # ShellDriver, which would otherwise wait its await_login_timeout of silence first.
            self.console.write(b"\n")
            self.target.activate(self.shell)
        self.status = status

    def _power_on(self) -> None:
        self.target.activate(self.console)
        self.monitor = ConsoleMonitor(
            console_guest=self.guest, prompt=self.shell.prompt, on_milestone=self.on_milestone
        )
        # One monitor per boot: drop the previous boot's.
        self.power.listeners[:] = [f for f in self.power.listeners if not _is_monitor_feed(f)]
        self.power.listeners.append(self.monitor.feed)
        self.power.on()
        self.monitor.start()

    def wait_for(self, key: str) -> None:
        """Read the console until the monitor reaches `key`; raise BootFailure as soon as it cannot."""
        monitor = self.monitor
        started = time.monotonic()
        while key not in monitor.reached:
            if monitor.failure and monitor.settled():
                raise BootFailure(monitor.conclude())
            try:
                self.console.read(size=1, timeout=POLL_S, max_size=65536)
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                self.power.off()  # reap QEMU and learn its exit status
                monitor.exited(self.power.exit_status, self.power.stderr_text())
                raise BootFailure(monitor.conclude()) from None
            silence = monitor.clock() - monitor.last_output
            if not monitor.failure and silence > self.deadlines.silence_at(monitor.stage):
                monitor.hang(f"no console output for {silence:.0f} s")
                raise BootFailure(monitor.conclude())
            if time.monotonic() - started > self.deadlines.boot:
                monitor.hang(f"no {key} within the boot deadline of {self.deadlines.boot:.0f} s")
                raise BootFailure(monitor.conclude())


def _is_monitor_feed(listener) -> bool:
    return getattr(listener, "__self__", None).__class__ is ConsoleMonitor
