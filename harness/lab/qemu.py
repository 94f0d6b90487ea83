"""labgrid's QEMUDriver with its rough edges fixed once, here, rather than in every test.

- no 10 ms sleep before every console read (0.4–0.5 s per boot, and unread output stalls the guest);
- `on()` fails within a deadline, quoting QEMU's stderr, when QEMU dies at start instead of waiting forever;
- `off()` closes the console and signals QEMU (SIGTERM, then SIGKILL): no QMP `quit`, which raised
  BrokenPipeError once the guest had powered the machine off, and never returned when a vCPU blocked
  on console output nobody read;
- console output of a previous boot never leaks into the next one (fresh expect buffer per power-on);
- QEMU dies with the process that started it (parent-death signal), even when pytest is SIGKILLed;
- the console socket lives in the abstract namespace, so no socket file or temp dir is ever left behind;
- a closed console (QEMU exited) raises pexpect.EOF at once instead of reading nothing until a timeout;
- labgrid's console log reporter (started by its pytest plugin) no longer raises KeyError for a
  console that never printed anything (a silent boot);
- its console is a `ConsoleTap` (harness/lab/console.py): listeners, abort, input paced by its echo;
- `exit_report()` says how QEMU stopped: exit status, stderr, and its own QMP shutdown reason.

It also lets the harness add its boot modules (`loader_args`).

Owned openly: it replaces labgrid 26.0's QEMUDriver methods on_activate, on_deactivate, on, off, _read,
_write, _atexit and wraps get_qemu_version, and it uses that class's internals (_child, _cmd, _socket,
_sockname, _clientsocket, qmp, get_qemu_base_args, status). labgrid's main branch has already changed
them; LABGRID_WRITTEN_FOR names the release they were checked against, and a unit test fails, saying
this, when the installed labgrid moves past it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import attr
import pexpect
from labgrid.driver.qemudriver import QEMUDriver
from labgrid.factory import target_factory
from labgrid.logging import StepLogger
from labgrid.step import step
from labgrid.util.expect import PtxExpect
from labgrid.util.qmp import QMPError, QMPMonitor

from ..errors import InfrastructureError
from ..monitor import MachineExit
from . import process
from .console import ConsoleTap

LABGRID_WRITTEN_FOR = "26.0"  # the labgrid release whose QEMUDriver internals this driver was checked against
START_DEADLINE_S = 30.0  # QEMU connects its console and answers QMP in well under a second when healthy
STOP_DEADLINE_S = 5.0


class QemuFailed(InfrastructureError):
    """QEMU refused to run the target: a bad option, overlapping images, a missing binary."""

    def __init__(self, message: str, stderr: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.status = status


def _not_installed(binary: str) -> QemuFailed:
    return QemuFailed(f"{binary} is not installed: install Debian's qemu-system-arm package (./run does it).")


def shutdown_reason(qmp_out) -> str | None:
    """The reason of the last SHUTDOWN event left on QEMU's QMP output (`guest-shutdown`, `host-signal`, …)."""
    reason = None
    with contextlib.suppress(OSError, ValueError):
        for line in qmp_out.read(1 << 20).splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == "SHUTDOWN":
                    reason = (message.get("data") or {}).get("reason")
    return reason


@target_factory.reg_driver
@attr.s(eq=False)
class XenQEMUDriver(ConsoleTap, QEMUDriver):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._init_tap()
        self.loader_args: list[str] = []  # what the boot plan adds to QEMU's command line
        self.stderr_path: Path | None = None  # where QEMU's stderr goes; a temp file when unset
        self.version_line = ""  # "qemu-system-aarch64 7.2.19", once QEMU has been asked
        self.exit_status: int | None = None
        self.shutdown_reason: str | None = None  # QEMU's own SHUTDOWN event on QMP, read when it exits
        self._stderr = None
        self._console_closed = False  # QEMU closed its end: it is on its way out

    # --- command line -----------------------------------------------------------------------

    def qemu_version(self) -> str:
        """QEMU's version line, e.g. "qemu-system-aarch64 7.2.22"."""
        qemu = self.target.env.config.get_tool(self.qemu_bin)
        try:
            self.get_qemu_version(qemu)
        except FileNotFoundError:
            raise _not_installed(qemu) from None
        return self.version_line

    def get_qemu_version(self, qemu_bin):
        """labgrid's, keeping QEMU's own version line for the result record."""
        version = super().get_qemu_version(qemu_bin)
        self.version_line = f"{Path(qemu_bin).name} {'.'.join(map(str, version))}"
        return version

    def machine_args(self) -> list[str]:
        """The QEMU options that define the machine (what its device tree depends on)."""
        qemu = self.target.env.config.get_tool(self.qemu_bin)
        extra = shlex.split(self.extra_args or "")
        return [qemu, *extra, "-machine", self.machine, "-cpu", self.cpu, "-m", self.memory]

    def dump_machine_dtb(self, path: Path) -> bytes:
        """QEMU's own DT for this machine (`-machine dumpdtb=`), the base of the boot DTB."""
        cmd = [*self.machine_args(), "-machine", f"dumpdtb={path}", "-display", "none", "-nic", "none"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise _not_installed(cmd[0]) from exc
        if proc.returncode != 0 or not path.is_file():
            raise QemuFailed(
                f"QEMU rejected the target's machine options ({proc.stderr.strip()}): fix the target YAML.",
                proc.stderr, proc.returncode,
            )
        return path.read_bytes()

    def on_activate(self) -> None:
        # SerialLoggingReporter.flush() looks up a buffer that exists only after a read returned data.
        reporter = getattr(StepLogger, "_serial_logger", None)
        if reporter is not None:
            reporter.bufs.setdefault(self, b"")
        try:
            base_args = self.get_qemu_base_args()  # runs `QEMU -version`
        except FileNotFoundError as exc:
            raise _not_installed(exc.filename) from exc
        # An abstract-namespace socket: nothing on disk to leak when the process is killed.
        self._sockname = f"xen-harness-{os.getpid()}-{id(self):x}-{time.monotonic_ns():x}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind("\0" + self._sockname)
        self._socket.listen(1)
        self._cmd = [
            *base_args,
            *self.loader_args,
            *("-S", "-qmp", "stdio"),
            *("-chardev", f"socket,id=serialsocket,path={self._sockname},abstract=on"),
            *("-serial", "chardev:serialsocket"),
        ]

    def on_deactivate(self) -> None:
        self.off()
        self._close_stderr()
        if self._socket:
            self._socket.close()
            self._socket = None

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # --- power ------------------------------------------------------------------------------

    @step()
    def on(self) -> None:
        if self.status:
            return
        self.exit_status = self.shutdown_reason = None
        self._console_closed = False
        self._expect = PtxExpect(self)  # nothing read before this power-on may match after it
        self._pending.clear()
        self._close_stderr()
        # Kept open after QEMU exits, so a failure can quote it; closed at the next power-on.
        self._stderr = self.stderr_path.open("wb") if self.stderr_path else tempfile.TemporaryFile()  # noqa: SIM115
        self.logger.debug("Starting with: %s", self._cmd)
        try:
            self._child = subprocess.Popen(
                process.dying_with_us(self._cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            )
        except FileNotFoundError as exc:
            raise _not_installed(self._cmd[0]) from exc
        # labgrid's QMP reads block: a watchdog kills a QEMU that stops answering, which ends them.
        watchdog = threading.Timer(START_DEADLINE_S, self._child.kill)
        watchdog.start()
        try:
            self._accept_console()
            self.qmp = QMPMonitor(self._child.stdout, self._child.stdin)
            self.status = 1
            self.monitor_command("cont")
        except (QMPError, OSError) as exc:
            self._kill()
            raise self._start_failure() from exc
        except InfrastructureError:
            self._kill()
            raise
        finally:
            watchdog.cancel()

    def _accept_console(self) -> None:
        self._socket.settimeout(0.1)
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                self._clientsocket, _ = self._socket.accept()
                break
            except TimeoutError:
                if self._child.poll() is not None:
                    raise self._start_failure() from None
                if time.monotonic() > deadline:
                    self._kill()
                    raise InfrastructureError(
                        f"QEMU did not connect its console within {START_DEADLINE_S:.0f} s: "
                        "the host may be out of memory or CPU."
                    ) from None
        self._clientsocket.setblocking(False)

    def _start_failure(self) -> QemuFailed:
        status = self._child.poll() if self._child else None
        stderr = self.stderr_text()
        text = stderr.strip() or "no message on stderr"
        return QemuFailed(f"QEMU failed to start: {text} (exit status {status})", stderr, status)

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        if self.stderr_path:
            return self.stderr_path.read_text(errors="replace")
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def exit_report(self) -> MachineExit:
        """How QEMU stopped: exit status, stderr, and its own shutdown reason."""
        return MachineExit(self.exit_status, self.stderr_text(), self.shutdown_reason)

    def running(self) -> bool:
        return bool(self._child) and self._child.poll() is None

    @step()
    def off(self) -> None:
        # Not QMP's quit: a QEMU whose vCPU is blocked writing to a console nobody reads holds the
        # lock its monitor needs, and the reply never comes. Closing the console unblocks the write;
        # a signal needs no reply; there is no disk to flush.
        if not self.status:
            return
        if self._clientsocket:
            self._clientsocket.close()
            self._clientsocket = None
        if self._console_closed and self.running():  # leaving on its own: let it, or its exit looks like ours
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=STOP_DEADLINE_S)
        if self.running():
            self._child.terminate()
            try:
                self._child.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self._kill()
        self._reap()

    def _kill(self) -> None:
        if self._child and self._child.poll() is None:
            self._child.kill()
        self._reap()

    def _reap(self) -> None:
        if self._child:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=STOP_DEADLINE_S)
            self.exit_status = self._child.returncode
            if self._child.returncode is not None:  # QMP events it printed before it went: why it stopped
                self.shutdown_reason = shutdown_reason(self._child.stdout)
            for stream in (self._child.stdin, self._child.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            self._child = None
        if self._clientsocket:
            self._clientsocket.close()
            self._clientsocket = None
        self._pending.clear()
        self.status = 0

    def _atexit(self) -> None:
        self._kill()

    # --- console ----------------------------------------------------------------------------

    def _receive_raw(self, limit: int, timeout: float) -> bytes:
        if self._clientsocket is None:
            raise pexpect.EOF("QEMU is not running: its console is closed")
        ready, _, _ = select.select([self._clientsocket], [], [], timeout)
        if not ready:
            raise pexpect.TIMEOUT(f"Timeout of {timeout:.2f} seconds exceeded")
        try:
            data = self._clientsocket.recv(limit)
        except ConnectionError:  # QEMU exited with bytes unread (a reset, not an orderly close): closed all the same
            data = b""
        if not data:
            self._console_closed = True
            raise pexpect.EOF("QEMU closed the console: the machine stopped")
        return data

    def _send_raw(self, data: bytes) -> None:
        if self._clientsocket is None:
            raise pexpect.EOF("QEMU is not running: its console is closed")
        self._clientsocket.setblocking(True)
        try:
            self._clientsocket.sendall(data)
        except ConnectionError:  # QEMU exited under the write
            self._console_closed = True
            raise pexpect.EOF("QEMU closed the console: the machine stopped") from None
        finally:
            self._clientsocket.setblocking(False)
