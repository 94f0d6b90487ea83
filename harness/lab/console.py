"""What the harness needs of any console, QEMU's socket or a board's serial port: `ConsoleTap`.

- every byte read goes to each listener (the console log, the console monitor), whoever reads;
- once the boot has failed (`abort()` is true) a reader gets EOF at once instead of waiting out its
  timeout (a ShellDriver in the middle of a command);
- input is paced by its echo: Xen buffers only 128 bytes of serial input for dom0 (SERIAL_RX_SIZE in
  xen/drivers/char/console.c) and 32 for a dom0less domU's vPL011 (SBSA_UART_FIFO_SIZE), and drops
  the rest while the guest is slow to read, which truncated commands under load. Each chunk waits
  for the guest's echo (or a short deadline) before the next is sent; what arrives meanwhile is kept
  for the next read.

- while a guest runs a command, a console quiet for a while can be asked where the machine is
  (`quiet`, a QuietWatch): what that probe reads is handed back to the waiting reader afterwards.

A driver mixes it in and implements `_receive_raw(limit, timeout)` and `_send_raw(data)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pexpect

# Bytes per write: half a domU's 32-byte vPL011 FIFO, so that the few bytes of Xen's "(XEN) " prefix
# counted in an echo can never let two chunks overflow it.
ECHO_CHUNK = 16
ECHO_WAIT_S = 3.0  # longest wait for a chunk's echo; a guest busy running a command does not echo
READ_LIMIT = 65536


@dataclass(frozen=True)
class QuietWatch:
    """What to do when the console goes quiet under a reader: `due()` says in how many seconds (<= 0: now),
    `act()` does it (and moves `due` on, so that one quiet spell is acted on once)."""

    due: Callable[[], float]
    act: Callable[[], None]


class ConsoleTap:
    def _init_tap(self) -> None:
        self.listeners: list[Callable[[bytes], None]] = []  # every console byte read goes to each
        self.abort: Callable[[], bool] | None = None  # true once the boot has failed: reads get EOF
        self.quiet: QuietWatch | None = None  # set while a guest's command runs
        self._pending = bytearray()  # output read while waiting for an echo, returned by the next _read
        self._kept: bytearray | None = None  # output read by a QuietWatch's act, for the reader it interrupted

    def _receive_raw(self, limit: int, timeout: float) -> bytes:
        """Up to `limit` bytes within `timeout`: raise pexpect.TIMEOUT when none come, EOF when closed."""
        raise NotImplementedError

    def _send_raw(self, data: bytes) -> None:
        raise NotImplementedError

    def _read(self, size: int = 1, timeout: float = 10, max_size: int | None = None) -> bytes:
        if self.abort and self.abort():
            raise pexpect.EOF("the boot has failed: see the console monitor's verdict")
        limit = min(max_size, READ_LIMIT) if max_size else READ_LIMIT
        if self._pending:
            data = bytes(self._pending[:limit])
            del self._pending[:limit]
            return data
        if self.quiet is None:
            return self._tapped(self._receive_raw(limit, timeout))
        return self._read_watched(limit, timeout)

    def _read_watched(self, limit: int, timeout: float) -> bytes:
        """A read that, when the console stays quiet long enough, lets the QuietWatch act first."""
        watch, end = self.quiet, time.monotonic() + timeout
        while True:
            try:
                return self._tapped(self._receive_raw(limit, max(0.0, min(end - time.monotonic(), watch.due()))))
            except pexpect.TIMEOUT:
                if time.monotonic() >= end:
                    raise
            self._act(watch)
            if self._pending:
                return self._read(timeout=0, max_size=limit)

    def _act(self, watch: QuietWatch) -> None:
        """Let the QuietWatch act; what it reads goes to the next reader. EOF when it found the boot failed."""
        # The act reads this console itself: what it reads is kept for the reader, after what the reader had
        # already received (an echo awaited, or the start of the answer), which the act must not consume.
        self.quiet, self._kept = None, bytearray()
        received, self._pending = self._pending, bytearray()
        try:
            watch.act()
        finally:
            self.quiet, self._pending, self._kept = watch, received + self._kept, None
        if self.abort and self.abort():
            raise pexpect.EOF("the boot has failed: see the console monitor's verdict")

    def _tapped(self, data: bytes) -> bytes:
        for listener in self.listeners:
            listener(data)
        if self._kept is not None:
            self._kept += data
        return data

    def _write(self, data: bytes) -> int:
        for start in range(0, len(data), ECHO_CHUNK):
            chunk = data[start : start + ECHO_CHUNK]
            self._send_raw(chunk)
            self._await_echo(len(chunk))
        return len(data)

    def _await_echo(self, count: int) -> None:
        """Wait until the console printed `count` more bytes (the echo), keeping them for _read; a guest that
        echoes nothing for long enough is asked where it is (QuietWatch), as a reader would."""
        deadline = time.monotonic() + ECHO_WAIT_S
        received = 0
        while received < count and (remaining := deadline - time.monotonic()) > 0:
            watch = self.quiet
            try:
                data = self._tapped(self._receive_raw(READ_LIMIT, remaining if watch is None
                                                      else max(0.0, min(remaining, watch.due()))))
            except pexpect.TIMEOUT:
                if watch is not None and watch.due() <= 0:
                    self._act(watch)
                continue
            except pexpect.EOF:
                return  # the next _read reports a closed console
            self._pending += data
            received += len(data)
