"""A board's serial console as the harness reads it: labgrid's SerialDriver (a local UART, or a
`NetworkSerialPort` from ser2net or a virtual board) made a `ConsoleTap`, like QEMU's console."""

from __future__ import annotations

import attr
from labgrid.driver.serialdriver import SerialDriver
from labgrid.factory import target_factory

from .console import ConsoleTap


@target_factory.reg_driver
@attr.s(eq=False)
class XenSerialDriver(ConsoleTap, SerialDriver):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._init_tap()

    def _receive_raw(self, limit: int, timeout: float) -> bytes:
        # labgrid's read asks pyserial for in_waiting bytes, which a socket:// port says is 0 or 1: one
        # byte per call, ~3 KB/s. The first byte within the timeout, then whatever else has arrived.
        first = SerialDriver._read(self, 1, timeout, 1)  # raises pexpect.TIMEOUT when nothing came
        self.serial.timeout = 0
        return first + self.serial.read(limit - 1)

    def _send_raw(self, data: bytes) -> None:
        SerialDriver._write(self, data)
