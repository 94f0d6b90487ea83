"""Virtual boards booted the way a lab boots a board: real QEMU, Debian's U-Boot, the lab's in.tftpd, driven
through labgrid's own NetworkPowerDriver, SerialDriver and TFTPProviderDriver on the lab's resources.

U-Boot reaches its prompt in under a second; each test takes a few seconds. Serialise with other boots:
`flock /tmp/harness-boots.lock pytest tests/test_vboards.py`.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import labgrid
import libfdt
import pytest
import requests
import yaml

from harness.lab.vlab import VirtualLab, sweep_stale_state

ROOT = Path(__file__).resolve().parents[1]
LOAD_ADDRESS = 0x40400000  # 4 MiB into RAM on both boards: above the DT QEMU puts at the start of RAM
RAM_BASE = 0x40000000  # where QEMU's virt hands its DT to the firmware (-bios)
BANNER = b"\r\n\r\nU-Boot 20"  # U-Boot's very first bytes: none may be lost at power-on
RANDOM_PROPERTIES = ("rng-seed", "kaslr-seed")  # in /chosen, new at every QEMU start
PROMPT = r"\n=> "  # at a line start: crc32 prints "==> "


@pytest.fixture(scope="module")
def lab():
    with VirtualLab(["vboard-arm64", "vboard-a15"]) as lab:
        yield lab


@pytest.fixture
def board_env(lab, tmp_path):
    """A labgrid Environment for one board, made from nothing but the lab's resource description."""
    envs = []

    def make(name: str) -> labgrid.Target:
        config = {"targets": {"main": {
            "resources": lab.resources(name),
            "drivers": {"NetworkPowerDriver": {"delay": 0.0}, "SerialDriver": {}, "TFTPProviderDriver": {}},
        }}}  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        envs.append(labgrid.Environment(config_file=str(path)))
        return envs[-1].get_target("main")

    yield make
    for env in envs:
        env.cleanup()
    for name in lab.describe()["boards"]:
        lab.power_off(name)


def interrupt_autoboot(console) -> bytes:
    """Everything the board printed before its autoboot countdown; then stop it and wait for the prompt."""
    _, before, _, _ = console.expect("Hit any key to stop autoboot", timeout=20)
    console.write(b" ")
    console.expect(PROMPT, timeout=10)
    return before


def run(console, command: str, timeout: float = 60) -> str:
    """A U-Boot command's output (its echo and the next prompt left out)."""
    console.sendline(command)
    console.expect(re.escape(command), timeout=10)
    _, before, _, _ = console.expect(PROMPT, timeout=timeout)
    return before.decode(errors="replace").strip()


def crc_of(output: str) -> int:
    match = re.search(r"==> ([0-9a-f]{8})", output)
    assert match, f"expected U-Boot's crc32 line, found {output!r}"
    return int(match.group(1), 16)


def raw_command(sock: socket.socket, command: str, timeout: float = 30) -> str:
    """A U-Boot command's output read straight from the lab's serial port. labgrid's SerialDriver reads a
    socket:// port one byte per call (pyserial's in_waiting says 0 or 1): about 4 KB/s, too slow for a dump."""
    sock.sendall(command.encode() + b"\n")
    data, deadline = b"", time.monotonic() + timeout
    while not re.search(PROMPT.encode(), data):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data += sock.recv(65536)
    return data.decode(errors="replace").split("\n", 1)[1].rsplit("\n", 1)[0]


def read_memory(sock: socket.socket, address: int, size: int) -> bytes:
    """Board memory through U-Boot's `md.b`."""
    data = bytearray()
    for line in raw_command(sock, f"md.b {address:#x} {size:#x}").splitlines():
        if match := re.match(r"[0-9a-f]{8}: ((?:[0-9a-f]{2} )+)", line.strip()):
            data += bytes.fromhex(match.group(1))
    assert len(data) == size, f"expected {size} bytes from md.b, read {len(data)}"
    return bytes(data)


def read_dtb(sock: socket.socket, address: int) -> bytes:
    """The DT at `address` up to the end of its strings, QEMU's last block (QEMU pads its DT to 1 MiB)."""
    header = read_memory(sock, address, 40)
    off_dt_strings, size_dt_strings = struct.unpack_from(">I", header, 12)[0], struct.unpack_from(">I", header, 32)[0]
    used = off_dt_strings + size_dt_strings
    blob = bytearray(read_memory(sock, address, used))
    struct.pack_into(">I", blob, 4, used)  # totalsize: what was read
    return bytes(blob)


def tree(blob: bytes) -> dict[str, dict[str, bytes]]:
    """A DT as {node path: {property: value}} (layout and padding left out: QEMU leaves padding uninitialised)."""
    fdt = libfdt.Fdt(blob)
    nodes: dict[str, dict[str, bytes]] = {}

    def walk(offset: int, path: str) -> None:
        props, prop = {}, fdt.first_property_offset(offset, libfdt.QUIET_NOTFOUND)
        while prop >= 0:
            value = fdt.get_property_by_offset(prop)
            props[value.name] = bytes(value)
            prop = fdt.next_property_offset(prop, libfdt.QUIET_NOTFOUND)
        nodes[path or "/"] = props
        child = fdt.first_subnode(offset, libfdt.QUIET_NOTFOUND)
        while child >= 0:
            walk(child, f"{path}/{fdt.get_name(child)}")
            child = fdt.next_subnode(child, libfdt.QUIET_NOTFOUND)

    walk(0, "")
    return nodes


def silent(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("name", ["vboard-arm64", "vboard-a15"])
def test_a_board_powers_on_into_u_boot_and_fetches_a_staged_file_by_tftp(lab, board_env, name, tmp_path):
    target = board_env(name)
    power = target.get_driver("NetworkPowerDriver")
    console = target.get_driver("SerialDriver")
    tftp = target.get_driver("TFTPProviderDriver")

    power.on()
    banner = interrupt_autoboot(console)
    assert banner.startswith(BANNER), f"the console did not start with U-Boot's banner: {banner[:80]!r}"
    assert power.get() is True

    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    payload.chmod(0o600)  # as the image cache keeps its files
    path = tftp.stage(str(payload))
    assert (lab.tftp_dir(name) / payload.name).is_symlink()
    run(console, "setenv ipaddr 10.0.2.15; setenv netmask 255.255.255.0; setenv gatewayip 10.0.2.2; "
                 f"setenv serverip {lab.tftp_address}")
    fetched = run(console, f"tftpb {LOAD_ADDRESS:#x} {path}")
    assert "Bytes transferred = 300000" in fetched, fetched
    assert crc_of(run(console, f"crc32 {LOAD_ADDRESS:#x} ${{filesize}}")) == zlib.crc32(payload.read_bytes())

    # The board's DTB the lab provides is the DT this very machine handed its firmware (read back from RAM),
    # every node and property alike but the random seeds QEMU writes into /chosen at each start. (A DT
    # dumped without -bios has a pl061 more on arm64.)
    provided = tree(lab.dump_dtb(name, tmp_path / "board.dtb"))
    target.deactivate(console)
    with socket.create_connection(("127.0.0.1", lab.serial_port(name)), timeout=5) as sock:
        booted = tree(read_dtb(sock, RAM_BASE))
    target.activate(console)
    for seed in RANDOM_PROPERTIES:
        assert len(provided["/chosen"].pop(seed)) == len(booted["/chosen"].pop(seed))
    assert booted == provided, f"nodes differ: {sorted(set(booted) ^ set(provided))}"
    cmdline = Path(f"/proc/{lab.qemu_pid(name)}/cmdline").read_text().split("\0")
    assert cmdline[: len(lab.machine_args(name))] == lab.machine_args(name)

    power.off()
    assert power.get() is False
    target.deactivate(console)
    with socket.create_connection(("127.0.0.1", lab.serial_port(name)), timeout=5) as sock:
        sock.sendall(b"\n")
        assert silent(sock, 0.5), "the serial of a board that is off printed something"
    target.activate(console)

    power.cycle()
    banner = interrupt_autoboot(console)
    assert banner.startswith(BANNER), f"no fresh banner after the power cycle: {banner[:80]!r}"

    console.sendline("reset")  # -no-reboot: a board that resets is a board that is off, never silently
    deadline = time.monotonic() + 10
    while power.get() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert power.get() is False, "U-Boot's reset did not power the board off"


def test_a_powered_boards_ssh_port_is_its_qemus_forward(lab, board_env):
    """Off, nothing listens on the board's SSH port; on, QEMU's user network takes the connection (and holds it:
    U-Boot answers no TCP): the forward exists exactly while the board runs."""
    target = board_env("vboard-a15")
    power = target.get_driver("NetworkPowerDriver")
    port = lab.ssh_port("vboard-a15")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    power.on()
    interrupt_autoboot(target.get_driver("SerialDriver"))
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    power.off()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_board_whose_qemu_died_is_off_and_powers_on_again(lab, board_env):
    target = board_env("vboard-arm64")
    power = target.get_driver("NetworkPowerDriver")
    console = target.get_driver("SerialDriver")
    power.on()
    interrupt_autoboot(console)
    os.kill(lab.qemu_pid("vboard-arm64"), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while power.get() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert power.get() is False, "the PDU says a board whose QEMU was killed is on"
    power.on()
    assert interrupt_autoboot(console).startswith(BANNER)


# --- a lab of its own, killed -------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> dict[int, str]:
    """Every living descendant of `pid`, with its command name."""
    parents: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        comm, fields = rest.rsplit(") ", 1)
        if fields.split()[0] not in ("Z", "X"):
            parents[int(head)] = (int(fields.split()[1]), comm)
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, comm) in parents.items():
            if ppid == parent and child not in found:
                found[child] = comm
                frontier.append(child)
    return found


def test_a_killed_lab_process_leaves_no_qemu_and_no_tftpd(tmp_path):
    """SIGKILL: no clean-up runs in the lab. Both boards on, and a TFTP transfer in flight (in.tftpd forks a
    process for it, which would retransmit for a minute if its PID namespace did not die with the lab)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({"boards": ["vboard-arm64", "vboard-a15"]}))
    lab = subprocess.Popen([sys.executable, "-m", "harness.lab.vlab", "--config", str(config)],
                           stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    children: dict[int, str] = {}
    try:
        ready, _, _ = select.select([lab.stdout], [], [], 60)
        assert ready, "the lab printed no description within 60 s"
        description = json.loads(lab.stdout.readline())
        for index in range(2):
            assert requests.get(description["pdu"].format(index=index, value=1), timeout=60).text == "1"
        big = Path(description["boards"]["vboard-a15"]["resources"]["TFTPProvider"]["internal"]) / "big"
        big.write_bytes(os.urandom(64 * 1024))
        transfer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        transfer.settimeout(5)
        transfer.sendto(b"\0\1" + str(big).encode() + b"\0octet\0", (description["tftp"]["address"], 69))
        assert transfer.recvfrom(516)[0][:4] == b"\0\3\0\1", "no first block: the transfer is not in flight"

        children = descendants(lab.pid)
        names = sorted(children.values())
        assert names.count("in.tftpd") == 2, f"expected in.tftpd and its transfer process, found {names}"
        assert sum(n.startswith("qemu-system") for n in names) == 2, f"expected both boards' QEMU, found {names}"
        lab.kill()
        lab.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {pid: comm for pid, comm in children.items() if alive(pid)}
        assert not left, f"the SIGKILLed lab left these behind: {left}"
        transfer.close()

        state = Path(description["tftp"]["root"]).parent
        assert state.is_dir(), "a SIGKILLed lab cannot remove its files: the next lab sweeps them"
        sweep_stale_state()
        assert not state.exists(), f"{state} of a dead lab survived the sweep"
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
