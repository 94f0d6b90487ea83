"""Virtual boards: QEMU machines started by Debian's U-Boot and wired the way a lab wires a real board.

A board in a labgrid lab has a UART behind ser2net (a TCP port that stays open whether the board is
powered or not), an outlet on a network PDU, and a TFTP server its U-Boot fetches files from. A
`VirtualLab` gives each of its boards the same three, on this machine only (127.0.0.1 and 127.x.y.z):

- serial: one TCP port per board (labgrid's `NetworkSerialPort`, protocol raw). One thread bridges it
  to the serial socket of the board's QEMU. While the board is off, input is dropped and nothing is
  output; output while no client is connected is dropped (ser2net does the same). A second client
  replaces the first, newest wins: the lab's exclusivity is labgrid's place lock, and the lab-side
  hazard is a stale connection (a client whose network vanished) that would keep a board's console
  locked forever if a second connection were refused.
- power: an HTTP PDU speaking labgrid's `simplerest` protocol, one outlet index per board. On starts
  the board's QEMU, off stops it (SIGTERM, SIGKILL after a deadline), a QEMU that died is off. A
  guest reset powers the board off (`-no-reboot`), so a reset is never silent.
- SSH to dom0: a port of its own on 127.0.0.1 per board (labgrid's `NetworkService`, user root), which
  QEMU's user network forwards to port 22 of the board's address, 10.0.2.15 (`hostfwd`): the address
  U-Boot takes, and dom0 takes with `harness.net=` (images/initramfs/init). The port is chosen free at
  the lab's start, away from the kernel's ephemeral ports, and bound by QEMU at each power-on.
- TFTP: Debian's real in.tftpd (pinned in images/lock.json as profile host-<arch>, never installed as
  a package), on a free 127.x.y.z:69 (U-Boot's tftp always uses port 69), which QEMU's user network
  reaches as `serverip` directly. QEMU's own TFTP is off (no `tftp=`).

labgrid's TFTPProviderDriver stages a file as an ABSOLUTE symlink in the provider's `internal`
directory. in.tftpd --secure chroots into its root, where such links dangle; so it runs without
--secure, with the root (trailing slash: a prefix check, so /root2 is not /root) as its one allowed
directory, and U-Boot asks for absolute paths: `external` is the absolute board directory. Requests
with `/../` are refused by in.tftpd itself. It runs as the lab's own user with --permissive: the
image cache keeps its files 0600, which in.tftpd's world-readable rule would refuse.

Every child dies with the lab, even when the lab is SIGKILLed: QEMU by its parent-death signal;
in.tftpd forks one process per transfer, so it runs as PID 1 of its own PID namespace
(`unshare --pid --fork --kill-child`, when the host allows one) and all of them die with it.

Use it in-process (`with VirtualLab(["vboard-arm64"]) as lab:`) or as a process of its own for a
labgrid exporter: `python -m harness.lab.vlab --board vboard-arm64` prints a JSON description once
ready and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import pwd
import queue
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from labgrid.util.qmp import QMPError, QMPMonitor

from ..errors import HarnessError, InfrastructureError, UsageError
from ..images import Images, load_manifest
from .process import dying_with_us
from .qemu import START_DEADLINE_S, STOP_DEADLINE_S, _not_installed

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
TFTP_PORT = 69  # U-Boot's tftp asks this port, whatever the server
SERIAL_SPEED = 115200  # what NetworkSerialPort records; a raw socket has no speed
BUFFER_LIMIT = 1 << 16  # bytes queued per direction before the bridge stops reading the other side
TFTPD_READY_DEADLINE_S = 5.0
TFTP_ATTEMPTS = 8  # free 127.x.y.z addresses tried when another lab takes ours between probe and bind
LAUNCH_DEADLINE_S = START_DEADLINE_S + 4 * STOP_DEADLINE_S  # one power request, queued behind one other
STATE_PREFIX = "xen-harness-vlab-"
UBOOT_PACKAGE_HINT = "install Debian's u-boot-qemu package (./run does it)"
EX_OSERR = 71  # in.tftpd's exit status when it cannot bind (sysexits.h)

BOARD_ADDRESS = "10.0.2.15"  # the board on QEMU's user network (U-Boot's ipaddr, dom0's harness.net=)
SSH_PORT = 22  # dom0's SSH server
SSH_USER = "root"
SSH_PORT_RANGE = (20000, 32767)  # below Linux's ephemeral ports (32768-60999): no outgoing connection takes it
SSH_PORT_ATTEMPTS = 64


def network_args(ssh_port: int | None = None) -> list[str]:
    """A network card U-Boot and dom0 drive, on QEMU's user network, with 127.0.0.1:`ssh_port` forwarded to
    the board's SSH port. romfile= : Debian ships efi-virtio.rom only with recommends, and U-Boot never runs
    the option ROM. No tftp= : QEMU's own TFTP server must not answer; the lab's in.tftpd does."""
    forward = f",hostfwd=tcp:{LOCALHOST}:{ssh_port}-{BOARD_ADDRESS}:{SSH_PORT}" if ssh_port else ""
    return ["-device", "virtio-net-pci,netdev=n0,romfile=", "-netdev", f"user,id=n0{forward}"]


# --- boards -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """A virtual board's hardware, as data: everything that shapes the machine and its device tree."""

    name: str
    arch: str  # arm64 | arm32
    qemu: str  # the QEMU binary, a name on PATH or a path
    machine: str  # -machine, with every machine option
    cpu: str
    memory: str
    smp: int
    firmware: Path  # U-Boot, QEMU's -bios

    def machine_args(self, ssh_port: int | None = None) -> list[str]:
        """The QEMU command line of the machine itself: a power-on (with its SSH port forward) and the DT dump
        (without: the forward is no hardware, and the running board holds its port) both start from it."""
        return [
            self.qemu, "-machine", self.machine, "-cpu", self.cpu, "-m", self.memory, "-smp", str(self.smp),
            "-bios", str(self.firmware), "-nodefaults", "-display", "none", "-no-reboot", *network_args(ssh_port),
        ]  # fmt: skip

    def check(self) -> None:
        """One sentence when the host lacks this board's QEMU or firmware."""
        if not self.firmware.is_file():
            raise InfrastructureError(f"{self.name}'s firmware {self.firmware} is missing: {UBOOT_PACKAGE_HINT}.")
        if shutil.which(self.qemu) is None:
            raise _not_installed(self.qemu)

    @classmethod
    def from_spec(cls, spec: str | dict | Board) -> Board:
        """A board from the catalogue by name, or from a mapping with every field of Board."""
        if isinstance(spec, Board):
            return spec
        if isinstance(spec, str):
            if spec not in BOARDS:
                raise UsageError(f"unknown virtual board {spec!r}: choose one of {', '.join(BOARDS)} or describe it.")
            return BOARDS[spec]
        fields = {"name", "arch", "qemu", "machine", "cpu", "memory", "smp", "firmware"}
        if not isinstance(spec, dict) or set(spec) != fields:
            found = ", ".join(sorted(spec)) if isinstance(spec, dict) else type(spec).__name__
            raise UsageError(f"a virtual board needs exactly {', '.join(sorted(fields))}; found {found}.")
        if spec["arch"] not in ("arm64", "arm32"):
            raise UsageError(f"virtual board {spec['name']}: arch {spec['arch']!r} is neither arm64 nor arm32.")
        return cls(**{**spec, "smp": int(spec["smp"]), "firmware": Path(spec["firmware"])})


BOARDS = {
    "vboard-arm64": Board(
        "vboard-arm64", "arm64", "qemu-system-aarch64", "virt,gic-version=3,virtualization=on", "cortex-a57",
        "2048M", 2, Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin"),
    ),
    "vboard-a15": Board(
        "vboard-a15", "arm32", "qemu-system-arm", "virt,gic-version=2,highmem=off,virtualization=on", "cortex-a15",
        "1024M", 2, Path("/usr/lib/u-boot/qemu_arm/u-boot.bin"),
    ),
}  # fmt: skip


def dump_dtb(board: Board, path: Path) -> bytes:
    """The board's own device tree, exactly as the machine boots it: "the board's DTB file" of a lab.

    Same options as a power-on, -bios and the network card included: with firmware, QEMU's virt leaves
    out devices (the pl061 GPIO), and a DT dumped without -bios lists hardware the board does not have."""
    board.check()
    cmd = [*board.machine_args(), "-machine", f"dumpdtb={path}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"QEMU took over {START_DEADLINE_S:.0f} s to dump {board.name}'s DT.") from exc
    if proc.returncode != 0 or not path.is_file():
        reason = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise InfrastructureError(
            f"QEMU could not dump {board.name}'s device tree ({reason}): fix the board's options."
        )
    return path.read_bytes()


# --- TFTP ---------------------------------------------------------------------------------------


class TftpError(InfrastructureError):
    """A TFTP server answered with an error, or not at all."""


def tftp_get(address: str, path: str, timeout: float = 5.0, port: int = TFTP_PORT) -> bytes:
    """Read `path` from a TFTP server as U-Boot's tftpb does (RFC 1350, octet mode, 512-byte blocks)."""
    data = bytearray()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"\0\1" + path.encode() + b"\0octet\0", (address, port))
        expected = 1
        while True:
            try:
                packet, peer = sock.recvfrom(4 + 512)
            except TimeoutError:
                raise TftpError(f"no TFTP answer from {address}:{port} for {path} within {timeout:.0f} s.") from None
            opcode, number = struct.unpack("!HH", packet[:4])
            if opcode == 5:
                message = packet[4:].split(b"\0")[0].decode(errors="replace")
                raise TftpError(f"TFTP {address}:{port} refused {path}: {message} (error {number}).")
            if opcode != 3:
                raise TftpError(f"TFTP {address}:{port} answered {path} with opcode {opcode}, not DATA.")
            if number == expected:
                data += packet[4:]
            sock.sendto(struct.pack("!HH", 4, number), peer)  # a repeated block is acknowledged again
            if number == expected:
                if len(packet) < 4 + 512:
                    return bytes(data)
                expected = (expected + 1) & 0xFFFF


def tftpd_binary(images: Images | None = None) -> Path:
    """Debian's in.tftpd for this host, from the lock's host-<arch> profile, fetched and verified."""
    proc = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=30)
    profile = f"host-{proc.stdout.strip()}"
    if profile not in load_manifest()["profiles"]:
        raise InfrastructureError(
            f"images/manifest.yaml has no {profile} profile with tftpd-hpa for this host: add one like host-amd64 "
            f"and run `./run images lock --profile {profile}`."
        )
    images = images or Images()
    try:
        return images.artifacts(profile)["tftpd"].path
    except UsageError as exc:  # the manifest has it, the lock does not yet
        raise InfrastructureError(
            f"{images.lock_path.name} does not pin {profile}'s tftpd: run `./run images lock --profile {profile}`."
        ) from exc


@functools.cache
def pid_namespace_prefix() -> tuple[str, ...]:
    """`unshare` options that run a command as PID 1 of a new PID namespace, killed with its parent;
    () where the host forbids it (no CAP_SYS_ADMIN): then a transfer in flight can outlive a killed lab."""
    prefix = ("unshare", "--pid", "--fork", "--kill-child")
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
            return prefix
    log.warning("no PID namespace for in.tftpd here: a transfer in flight may outlive a killed lab by a minute")
    return ()


def random_loopback_address() -> str:
    """An address in 127.0.0.0/8 away from 127.0.0.x, where hosts run their own services."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def port_free(address: str, port: int, kind: int) -> bool:
    """Whether `address:port` can be bound now; one sentence when this user may not bind it at all."""
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((address, port))
        except PermissionError:
            raise InfrastructureError(
                f"binding {address}:{port} needs root (U-Boot's TFTP uses port {port}): run the lab as root, or "
                f"lower net.ipv4.ip_unprivileged_port_start to {port}."
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise InfrastructureError(
                f"cannot bind {address}:{port} ({exc.strerror}): check the loopback device."
            ) from None
    return True


class TftpServer:
    """in.tftpd on a 127.x.y.z:69 of its own, serving `root` (and what its symlinks point at)."""

    def __init__(self, binary: Path, root: Path, state: Path, address: str | None = None) -> None:
        self.root = root
        self.address = address or ""
        self._fixed = address is not None
        self._state = state
        self._binary = binary
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if not self._binary.is_file():
            raise InfrastructureError(f"in.tftpd {self._binary} is missing: run `./run images fetch`.")
        private = self._state / "in.tftpd"  # the cache keeps files 0600: run a private executable copy
        shutil.copyfile(self._binary, private)
        private.chmod(0o755)
        for _ in range(1 if self._fixed else TFTP_ATTEMPTS):
            if not self._fixed:
                self.address = random_loopback_address()
                while not port_free(self.address, TFTP_PORT, socket.SOCK_DGRAM):
                    self.address = random_loopback_address()
            elif not port_free(self.address, TFTP_PORT, socket.SOCK_DGRAM):
                raise InfrastructureError(
                    f"{self.address}:{TFTP_PORT} is in use by another program: give the lab another 127.x.y.z "
                    "address, or none to get a free one."
                )
            if self._run(private):
                return
        raise InfrastructureError(
            f"in.tftpd could not bind a free 127.x.y.z:{TFTP_PORT} in {TFTP_ATTEMPTS} tries: other labs keep taking "
            "them; retry."
        )

    def _run(self, binary: Path) -> bool:
        """Start in.tftpd and prove it serves an absolute symlink; False when it lost its address to another."""
        user = pwd.getpwuid(os.geteuid()).pw_name
        cmd = [
            *pid_namespace_prefix(), str(binary), "--foreground", "--listen",
            "--address", f"{self.address}:{TFTP_PORT}", "--user", user, "--permissive", f"{self.root}/",
        ]  # fmt: skip
        stderr_path = self._state / "in.tftpd.stderr"
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                dying_with_us(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        token = os.urandom(16).hex().encode()
        target, link = self._state / "tftp-probe", self.root / f".probe-{token[:8].decode()}"
        target.write_bytes(token)
        link.symlink_to(target)
        try:
            deadline = time.monotonic() + TFTPD_READY_DEADLINE_S
            while time.monotonic() < deadline:
                if (status := self.process.poll()) is not None:
                    if status == EX_OSERR and not self._fixed:
                        return False
                    raise self._failure(status, stderr_path.read_text(errors="replace"))
                with contextlib.suppress(TftpError):
                    if tftp_get(self.address, str(link), timeout=0.2) == token:
                        return True
            self.stop()
            raise InfrastructureError(
                f"in.tftpd on {self.address}:{TFTP_PORT} did not serve a file within {TFTPD_READY_DEADLINE_S:.0f} s: "
                f"see {stderr_path}."
            )
        finally:
            link.unlink()
            target.unlink()

    def _failure(self, status: int, stderr: str) -> InfrastructureError:
        self.process = None
        if "libwrap" in stderr:
            return InfrastructureError("in.tftpd cannot load libwrap.so.0: install Debian's libwrap0 package "
                                       "(./run does it).")
        if status == EX_OSERR:
            return InfrastructureError(f"in.tftpd could not bind {self.address}:{TFTP_PORT}: another TFTP server "
                                       "holds it; give the lab another address.")
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        return InfrastructureError(f"in.tftpd exited at start with status {status} ({reason}).")

    def stop(self) -> None:
        # unshare ignores SIGTERM while its child runs; SIGKILL takes the whole namespace down with it.
        if self.process is not None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_DEADLINE_S)
            self.process = None


def free_ssh_port(taken: set[int]) -> int:
    """A port of 127.0.0.1 that is free now, in SSH_PORT_RANGE and not in `taken` (the lab's other boards')."""
    for _ in range(SSH_PORT_ATTEMPTS):
        port = random.randint(*SSH_PORT_RANGE)
        if port not in taken and port_free(LOCALHOST, port, socket.SOCK_STREAM):
            return port
    raise InfrastructureError(f"no free TCP port on {LOCALHOST} in {SSH_PORT_RANGE[0]}-{SSH_PORT_RANGE[1]} after "
                              f"{SSH_PORT_ATTEMPTS} tries, for a board's SSH: free some, or give the lab ssh_ports.")


# --- serial -------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Port:
    """One board's serial: the lab's TCP listener, its client, and the board's QEMU while it is on."""

    name: str
    listener: socket.socket
    client: socket.socket | None = None
    machine: socket.socket | None = None
    to_client: bytearray = field(default_factory=bytearray)
    to_machine: bytearray = field(default_factory=bytearray)


class ConsoleHub:
    """One thread moves every board's serial bytes between its QEMU and the lab's client, like ser2net.

    Each direction queues at most BUFFER_LIMIT bytes and then stops reading its source: a client that
    reads slowly slows the board's serial down (as flow control would) rather than losing bytes."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._ports: dict[str, _Port] = {}
        self._interest: dict[socket.socket, int] = {}
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="vlab-serial", daemon=True)

    def add_port(self, name: str, port: int = 0) -> int:
        """A TCP listener on 127.0.0.1 for `name` (port 0: a free one); before start()."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOCALHOST, port))
        except OSError as exc:
            listener.close()
            raise InfrastructureError(
                f"{LOCALHOST}:{port}, the serial port asked for {name}, is in use by another program "
                f"({exc.strerror}): choose another port, or none to get a free one."
            ) from None
        listener.listen(4)
        listener.setblocking(False)
        self._ports[name] = _Port(name, listener)
        return listener.getsockname()[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._wake_w.send(b"\0")
            self._thread.join(timeout=STOP_DEADLINE_S)
        for port in self._ports.values():
            for sock in (port.client, port.machine, port.listener):
                if sock is not None:
                    sock.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def attach(self, name: str, sock: socket.socket) -> None:
        """Bridge `name`'s port to a QEMU's serial socket (the board is on)."""

        def attach() -> None:
            port = self._ports[name]
            self._close_machine(port)
            sock.setblocking(False)
            port.machine = sock

        self._call(attach)

    def detach(self, name: str) -> None:
        """Drop `name`'s QEMU side at once: from now on input is dropped and nothing is output."""
        self._call(lambda: self._close_machine(self._ports[name]))

    def _call(self, fn: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            raise InfrastructureError("the lab's serial thread has stopped: the lab is closed or broken.")
        done = threading.Event()
        self._calls.put((fn, done))
        self._wake_w.send(b"\0")
        if not done.wait(STOP_DEADLINE_S):
            raise InfrastructureError(f"the lab's serial thread did not answer within {STOP_DEADLINE_S:.0f} s.")

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        while not self._stopping:
            while not self._calls.empty():
                fn, done = self._calls.get()
                try:
                    fn()
                finally:
                    done.set()
            self._update_interest()
            for key, mask in self._selector.select(timeout=1.0):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    continue
                port, role = key.data
                if role == "listener":
                    self._accept(port)
                elif role == "client":
                    self._client_ready(port, mask)
                else:
                    self._machine_ready(port, mask)

    def _update_interest(self) -> None:
        wanted: dict[socket.socket, tuple[int, tuple[_Port, str]]] = {}
        for port in self._ports.values():
            wanted[port.listener] = (selectors.EVENT_READ, (port, "listener"))
            if port.client is not None:
                events = selectors.EVENT_READ if len(port.to_machine) < BUFFER_LIMIT else 0
                events |= selectors.EVENT_WRITE if port.to_client else 0
                wanted[port.client] = (events, (port, "client"))
            if port.machine is not None:
                reading = port.client is None or len(port.to_client) < BUFFER_LIMIT
                events = selectors.EVENT_READ if reading else 0
                events |= selectors.EVENT_WRITE if port.to_machine else 0
                wanted[port.machine] = (events, (port, "machine"))
        for sock in [s for s in self._interest if s not in wanted or not wanted[s][0]]:
            self._selector.unregister(sock)
            del self._interest[sock]
        for sock, (events, data) in wanted.items():
            if not events:
                continue
            if sock not in self._interest:
                self._selector.register(sock, events, data)
            elif self._interest[sock] != events:
                self._selector.modify(sock, events, data)
            self._interest[sock] = events

    def _forget(self, sock: socket.socket) -> None:
        if sock in self._interest:
            self._selector.unregister(sock)
            del self._interest[sock]
        sock.close()

    def _accept(self, port: _Port) -> None:
        try:
            sock, _ = port.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if port.client is not None:
            log.info("%s: a new serial client replaces the connected one", port.name)
            self._close_client(port)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port.client = sock

    def _close_client(self, port: _Port) -> None:
        if port.client is not None:
            self._forget(port.client)
            port.client = None
        port.to_client.clear()  # output for a client that left is dropped, like a UART nobody listens to

    def _close_machine(self, port: _Port) -> None:
        if port.machine is not None:
            self._forget(port.machine)
            port.machine = None
        port.to_machine.clear()

    def _client_ready(self, port: _Port, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                data = port.client.recv(BUFFER_LIMIT)
                if not data:
                    self._close_client(port)
                    return
                if port.machine is not None:  # a board that is off drops its input
                    port.to_machine += data
            if mask & selectors.EVENT_WRITE and port.to_client:
                del port.to_client[: port.client.send(port.to_client)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close_client(port)

    def _machine_ready(self, port: _Port, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                data = port.machine.recv(BUFFER_LIMIT)
                if not data:  # QEMU exited
                    self._close_machine(port)
                    return
                if port.client is not None:
                    port.to_client += data
            if mask & selectors.EVENT_WRITE and port.to_machine:
                del port.to_machine[: port.machine.send(port.to_machine)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close_machine(port)


# --- power --------------------------------------------------------------------------------------


class Launcher:
    """The one thread that starts (and stops) every child, and outlives them all.

    PR_SET_PDEATHSIG fires when the THREAD that forked a child ends, not its process: a QEMU started
    from an HTTP request's thread would be killed as soon as that request was answered."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="vlab-launcher", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any], deadline: float = LAUNCH_DEADLINE_S) -> Any:
        future: Future = Future()
        self._queue.put((fn, future))
        try:
            return future.result(timeout=deadline)
        except TimeoutError:
            raise InfrastructureError(f"the lab's launcher did not finish within {deadline:.0f} s.") from None

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=LAUNCH_DEADLINE_S)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001  (handed to the caller)
                    future.set_exception(exc)


@dataclass(eq=False)
class _Machine:
    board: Board
    index: int  # its PDU outlet
    serial_port: int
    tftp_dir: Path
    stderr_path: Path
    ssh_port: int  # on 127.0.0.1, forwarded to the board's SSH port
    process: subprocess.Popen | None = None

    def running(self) -> bool:
        process = self.process  # the launcher may reset it meanwhile (a PDU request asks from its own thread)
        return process is not None and process.poll() is None


def _abstract_listener(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + name)
    sock.listen(1)
    return sock


def _accept_from(listener: socket.socket, process: subprocess.Popen, deadline: float, what: str) -> socket.socket:
    listener.settimeout(0.05)
    while True:
        try:
            sock, _ = listener.accept()
            return sock
        except TimeoutError:
            if process.poll() is not None:
                raise ChildProcessError from None
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"QEMU did not connect its {what} within {START_DEADLINE_S:.0f} s: the host may be out of memory."
                ) from None


class _PduHandler(BaseHTTPRequestHandler):
    """labgrid's simplerest: GET /outlet/<index>/<1|0> switches, GET /outlet/<index> answers "1" or "0"."""

    server: _PduServer

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        match = re.fullmatch(r"/outlet/(\d+)(?:/([^/]*))?/?", self.path)
        lab = self.server.lab
        if not match or int(match.group(1)) >= len(lab.boards):
            self._answer(404, f"no outlet {self.path}: this PDU has outlets 0 to {len(lab.boards) - 1}")
            return
        name = lab.boards[int(match.group(1))].name
        value = match.group(2) or ""
        try:
            if value == "1":
                lab.power_on(name)
            elif value == "0":
                lab.power_off(name)
            elif value:
                self._answer(400, f"value {value!r} is neither 1 nor 0")
                return
        except HarnessError as exc:
            self._answer(500, str(exc))
            return
        self._answer(200, "OK", "1" if lab.powered(name) else "0")

    def _answer(self, status: int, reason: str, body: str | None = None) -> None:
        # labgrid's requests raise_for_status() quotes the reason phrase: the sentence reaches its user.
        reason = " ".join(reason.split()).encode("latin-1", "replace").decode("latin-1")
        payload = (body if body is not None else reason).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        log.debug("pdu: " + format, *args)


class _PduServer(ThreadingHTTPServer):
    daemon_threads = True
    lab: VirtualLab


# --- the lab ------------------------------------------------------------------------------------


class VirtualLab:
    """Serial ports, a PDU and a TFTP server for virtual boards, on this machine; see the module's doc."""

    def __init__(
        self,
        boards: Sequence[str | dict | Board],
        *,
        serial_ports: dict[str, int] | None = None,
        ssh_ports: dict[str, int] | None = None,
        pdu_port: int = 0,
        tftp_address: str | None = None,
        tftpd: Path | None = None,
        images: Images | None = None,
    ) -> None:
        self.boards = [Board.from_spec(b) for b in boards]
        names = [b.name for b in self.boards]
        if not names or len(set(names)) != len(names):
            raise UsageError(f"a virtual lab needs one or more boards with distinct names; found {names}.")
        self._serial_ports = serial_ports or {}
        if unknown := set(self._serial_ports) - set(names):
            raise UsageError(f"serial ports asked for boards the lab lacks: {', '.join(sorted(unknown))}.")
        self._ssh_ports = ssh_ports or {}
        if unknown := set(self._ssh_ports) - set(names):
            raise UsageError(f"SSH ports asked for boards the lab lacks: {', '.join(sorted(unknown))}.")
        self._pdu_port = pdu_port
        self._tftp_address = tftp_address
        self._tftpd = tftpd
        self._images = images
        self._machines: dict[str, _Machine] = {}
        self._state: Path | None = None
        self._launcher: Launcher | None = None
        self._hub: ConsoleHub | None = None
        self._tftp: TftpServer | None = None
        self._pdu: _PduServer | None = None
        self._pdu_thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> VirtualLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for board in self.boards:
            board.check()
        tftpd = self._tftpd or tftpd_binary(self._images)
        sweep_stale_state()
        try:
            self._state = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-"))
            tftp_root = self._state / "tftp"
            tftp_root.mkdir()
            self._launcher = Launcher()
            self._hub = ConsoleHub()
            for index, board in enumerate(self.boards):
                port = self._hub.add_port(board.name, self._serial_ports.get(board.name, 0))
                tftp_dir = tftp_root / board.name
                tftp_dir.mkdir()
                ssh_port = self._ssh_ports.get(board.name) or free_ssh_port(self._taken_ssh_ports())
                self._machines[board.name] = _Machine(board, index, port, tftp_dir,
                                                      self._state / f"{board.name}.qemu.stderr", ssh_port)
            self._hub.start()
            self._tftp = TftpServer(tftpd, tftp_root, self._state, self._tftp_address)
            self._launcher.call(self._tftp.start)
            self._start_pdu()
        except BaseException:
            self.close()
            raise

    def _taken_ssh_ports(self) -> set[int]:
        return {*self._ssh_ports.values(), *(m.ssh_port for m in self._machines.values())}

    def _start_pdu(self) -> None:
        try:
            self._pdu = _PduServer((LOCALHOST, self._pdu_port), _PduHandler)
        except OSError as exc:
            raise InfrastructureError(
                f"{LOCALHOST}:{self._pdu_port}, the PDU port asked for, is in use by another program "
                f"({exc.strerror}): choose another port, or none to get a free one."
            ) from None
        self._pdu.lab = self
        self._pdu_thread = threading.Thread(target=self._pdu.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="vlab-pdu", daemon=True)
        self._pdu_thread.start()

    def close(self) -> None:
        """Stop every board, the PDU, the serial ports and in.tftpd; remove the lab's files."""
        if self._pdu is not None:
            self._pdu.shutdown()
            self._pdu.server_close()
            self._pdu = None
        if self._launcher is not None:
            for machine in self._machines.values():
                with contextlib.suppress(HarnessError):
                    self._launcher.call(functools.partial(self._stop, machine))
            if self._tftp is not None:
                self._launcher.call(self._tftp.stop)
            self._launcher.stop()
            self._launcher = None
        if self._hub is not None:
            self._hub.stop()
            self._hub = None
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None

    # --- what the lab offers ------------------------------------------------------------------

    @property
    def pdu_url(self) -> str:
        """The simplerest URL template: labgrid fills in {index} and {value}."""
        return f"http://{LOCALHOST}:{self._pdu.server_address[1]}/outlet/{{index}}/{{value}}"

    @property
    def tftp_address(self) -> str:
        """The TFTP server's address: U-Boot's `serverip`."""
        return self._tftp.address

    @property
    def tftp_root(self) -> Path:
        return self._tftp.root

    def serial_port(self, name: str) -> int:
        return self._machine(name).serial_port

    def ssh_port(self, name: str) -> int:
        """The 127.0.0.1 port QEMU forwards to the board's SSH port (dom0's, once it listens)."""
        return self._machine(name).ssh_port

    def machine_args(self, name: str) -> list[str]:
        """The board's QEMU command line as a power-on starts it (before its serial and QMP options)."""
        machine = self._machine(name)
        return machine.board.machine_args(machine.ssh_port)

    def tftp_dir(self, name: str) -> Path:
        """The board's TFTP directory: a TFTPProvider's internal directory, and U-Boot's path prefix."""
        return self._machine(name).tftp_dir

    def resources(self, name: str) -> dict[str, dict[str, Any]]:
        """The board's labgrid resources, as a target's `resources:` or an exporter group takes them."""
        machine = self._machine(name)
        directory = f"{machine.tftp_dir}/"
        return {
            "NetworkSerialPort": {"host": LOCALHOST, "port": machine.serial_port, "protocol": "raw",
                                  "speed": SERIAL_SPEED},
            "NetworkPowerPort": {"model": "simplerest", "host": self.pdu_url, "index": machine.index},
            "TFTPProvider": {"internal": directory, "external": directory},
            "NetworkService": {"address": LOCALHOST, "port": machine.ssh_port, "username": SSH_USER},
        }

    def describe(self) -> dict[str, Any]:
        """Everything a client or an exporter needs, JSON-ready."""
        return {
            "pid": os.getpid(),
            "pdu": self.pdu_url,
            "tftp": {"address": self.tftp_address, "port": TFTP_PORT, "root": f"{self.tftp_root}/"},
            "boards": {
                b.name: {"arch": b.arch, "serverip": self.tftp_address, "resources": self.resources(b.name)}
                for b in self.boards
            },
        }

    def dump_dtb(self, name: str, path: Path) -> bytes:
        return dump_dtb(self._machine(name).board, path)

    # --- power --------------------------------------------------------------------------------

    def power_on(self, name: str) -> None:
        self._launcher_or_fail().call(functools.partial(self._start, self._machine(name)))

    def power_off(self, name: str) -> None:
        self._launcher_or_fail().call(functools.partial(self._stop, self._machine(name)))

    def powered(self, name: str) -> bool:
        return self._machine(name).running()

    def qemu_pid(self, name: str) -> int | None:
        process = self._machine(name).process
        return process.pid if process is not None and process.poll() is None else None

    def _machine(self, name: str) -> _Machine:
        if name not in self._machines:
            raise UsageError(f"this lab has no board {name!r}: it has {', '.join(b.name for b in self.boards)}.")
        return self._machines[name]

    def _launcher_or_fail(self) -> Launcher:
        if self._launcher is None:
            raise InfrastructureError("the virtual lab is not running: start it first.")
        return self._launcher

    def _start(self, machine: _Machine) -> None:
        """Power on: QEMU starts halted (-S), its serial and QMP connect to us, then it runs (`cont`), so
        the bridge holds the serial before the first instruction and no byte of the banner is lost."""
        if machine.running():
            return
        self._stop(machine)  # reap a QEMU that died on its own
        name = f"{STATE_PREFIX}{os.getpid()}-{machine.board.name}-{time.monotonic_ns():x}"
        serial, qmp = _abstract_listener(f"{name}-serial"), _abstract_listener(f"{name}-qmp")
        cmd = [
            *machine.board.machine_args(machine.ssh_port), "-S",
            "-chardev", f"socket,id=serial0,path={name}-serial,abstract=on", "-serial", "chardev:serial0",
            "-chardev", f"socket,id=qmp0,path={name}-qmp,abstract=on", "-mon", "chardev=qmp0,mode=control",
        ]  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE_S
        try:
            with machine.stderr_path.open("wb") as stderr:
                try:
                    machine.process = subprocess.Popen(
                        dying_with_us(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    )  # fmt: skip
                except FileNotFoundError as exc:
                    raise _not_installed(cmd[0]) from exc
            self._hub.attach(machine.board.name, _accept_from(serial, machine.process, deadline, "serial"))
            with _accept_from(qmp, machine.process, deadline, "QMP monitor") as monitor:
                monitor.settimeout(max(deadline - time.monotonic(), 0.1))
                QMPMonitor(monitor.makefile("rb"), monitor.makefile("wb")).execute("cont")
        except (ChildProcessError, QMPError, OSError) as exc:
            self._stop(machine)
            reason = " ".join(machine.stderr_path.read_text(errors="replace").split()) or str(exc) or "no message"
            raise InfrastructureError(f"{machine.board.name}'s QEMU failed to start: {reason.rstrip('.')}.") from None
        except BaseException:
            self._stop(machine)
            raise
        finally:
            serial.close()
            qmp.close()

    def _stop(self, machine: _Machine) -> None:
        """Power off: the serial goes quiet at once, then QEMU gets SIGTERM and, past a deadline, SIGKILL."""
        if self._hub is not None:
            with contextlib.suppress(InfrastructureError):  # a broken bridge must not keep QEMU running
                self._hub.detach(machine.board.name)
        if machine.process is None:
            return
        if machine.process.poll() is None:
            machine.process.terminate()
            try:
                machine.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                machine.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            machine.process.wait(timeout=STOP_DEADLINE_S)
        machine.process = None


def sweep_stale_state() -> None:
    """Remove the files of labs that were killed (SIGKILL leaves their state directory behind)."""
    for path in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        match = re.match(rf"{STATE_PREFIX}(\d+)-", path.name)
        if match and path.is_dir() and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(path, ignore_errors=True)


# --- a lab of its own: python -m harness.lab.vlab -----------------------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """A lab's YAML: `boards` (names or board mappings), optional `serial_ports`, `ssh_ports`, `pdu_port`,
    `tftp_address`."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the lab configuration {path} ({exc}): give a YAML file.") from None
    allowed = {"boards", "serial_ports", "ssh_ports", "pdu_port", "tftp_address"}
    if not isinstance(config, dict) or "boards" not in config or set(config) - allowed:
        optional = ", ".join(sorted(allowed - {"boards"}))
        raise UsageError(f"{path} must be a mapping with `boards` and optionally {optional}.")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.lab.vlab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a lab YAML: boards, serial_ports, pdu_port, tftp_address")
    parser.add_argument("--board", action="append", default=[], help=f"a board by name ({', '.join(BOARDS)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vlab: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config) if args.config else {}
    except HarnessError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    boards = [*config.pop("boards", []), *args.board]
    return serve(lambda: VirtualLab(boards, **config), lambda lab: print(json.dumps(lab.describe()), flush=True))


def serve(open_service: Callable[[], Any], announce: Callable[[Any], None]) -> int:
    """Run a service (a context manager) until SIGTERM or SIGINT, announcing it once it is up; exit status
    0, or 2 (usage) / 128 (the lab) with the one sentence that stopped it."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with open_service() as service:
            announce(service)
            while not stop.wait(0.5):
                pass
    except HarnessError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 128
    return 0


if __name__ == "__main__":
    sys.exit(main())
