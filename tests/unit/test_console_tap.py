"""A console read while a guest's command runs (harness/lab/console.py): what a QuietWatch's probe reads in the
middle of a read or of an echo wait reaches the waiting reader whole and in order."""

from __future__ import annotations

import time

import pexpect

from harness.lab.console import ConsoleTap, QuietWatch


class ScriptedConsole(ConsoleTap):
    """A console whose machine answers from a script: each `_receive_raw` returns the next chunk (None: a quiet
    spell, a timeout); what is sent is recorded."""

    def __init__(self, chunks: list[bytes | None]) -> None:
        self._init_tap()
        self.chunks, self.sent = list(chunks), []

    def _receive_raw(self, limit: int, timeout: float) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else None
        if chunk is None:  # as a real console: quiet for the whole timeout
            time.sleep(timeout)
            raise pexpect.TIMEOUT("quiet")
        return chunk

    def _send_raw(self, data: bytes) -> None:
        self.sent.append(data)

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                out += self._read(max_size=4096, timeout=0.2)
            except pexpect.TIMEOUT:
                return bytes(out)


def probing(console: ScriptedConsole, seen: list[bytes]) -> QuietWatch:
    """A watch due at once, once: its act reads the console as a probe does (what it reads, into `seen`)."""
    acted = []

    def act() -> None:
        acted.append(True)
        while True:
            try:
                seen.append(console._read(max_size=4096, timeout=0))
            except pexpect.TIMEOUT:
                return

    return QuietWatch(lambda: float("inf") if acted else 0.0, act)


def test_a_probe_during_an_echo_wait_leaves_the_echo_and_the_answer_to_the_reader():
    # the guest echoes the first 16 bytes, goes quiet (the probe acts), then echoes the rest and answers
    command = b"cat /proc/interrupts\n"
    console = ScriptedConsole([command[:16], None, b"[probe] (XEN) dump\n", None, command[16:], b"MARKER 0\n"])
    seen: list[bytes] = []
    console.quiet = probing(console, seen)
    console._write(command)
    assert b"".join(seen) == b"[probe] (XEN) dump\n", "the probe read only what came while it asked"
    assert console.read_all() == command[:16] + b"[probe] (XEN) dump\n" + command[16:] + b"MARKER 0\n"


def test_a_probe_during_a_read_hands_what_it_read_back():
    console = ScriptedConsole([None, b"(XEN) dump\n", b"MARKER 0\n", None])
    seen: list[bytes] = []
    console.quiet = probing(console, seen)
    assert console.read_all() == b"(XEN) dump\nMARKER 0\n"
    assert b"".join(seen) == b"(XEN) dump\nMARKER 0\n"
