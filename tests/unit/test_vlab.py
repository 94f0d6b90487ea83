"""The virtual lab's parts that need no boot: real in.tftpd, real sockets, labgrid's own resources and
simplerest backend, QEMU only to dump a DT or to fail at start. U-Boot boots are in tests/test_vboards.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import labgrid
import libfdt
import pytest
import requests
from labgrid.driver.power import simplerest
from labgrid.driver.provider import TFTPProviderDriver
from labgrid.resource import NetworkPowerPort, NetworkSerialPort, NetworkService, TFTPProvider

from harness.cache import Cache
from harness.errors import InfrastructureError, UsageError
from harness.images import LOCK, Images
from harness.lab.vlab import (
    BOARDS,
    SSH_PORT_RANGE,
    STATE_PREFIX,
    Board,
    TftpError,
    VirtualLab,
    dump_dtb,
    random_loopback_address,
    tftp_get,
)

ROOT = Path(__file__).resolve().parents[2]
ARM64, A15 = BOARDS["vboard-arm64"], BOARDS["vboard-a15"]


@pytest.fixture(scope="module")
def lab():
    with VirtualLab([ARM64, A15]) as lab:
        yield lab


def children() -> list[tuple[int, str]]:
    """(pid, command name) of this process's living children."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        comm, fields = rest.rsplit(") ", 1)
        state, ppid = fields.split()[:2]
        if int(ppid) == os.getpid() and state not in ("Z", "X"):
            found.append((int(pid), comm))
    return found


def silent(sock: socket.socket, seconds: float) -> bool:
    """True when the socket neither says anything nor closes for `seconds`."""
    sock.settimeout(seconds)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


def state_dirs() -> set[Path]:
    return set(Path("/tmp").glob(f"{STATE_PREFIX}{os.getpid()}-*"))


# --- TFTP ---------------------------------------------------------------------------------------


def test_a_file_staged_by_labgrids_tftp_provider_is_served_through_its_absolute_symlink(lab, tmp_path):
    """labgrid's TFTPProviderDriver.stage() links the file into `internal` by absolute path; in.tftpd
    must follow it out of its root, and U-Boot asks for what stage() returns."""
    kernel = tmp_path / "files" / "Image"
    kernel.parent.mkdir()
    kernel.write_bytes(os.urandom(3 * 512 + 17))  # several blocks, the last one short
    kernel.chmod(0o600)  # as the image cache keeps its files
    target = labgrid.Target("vboard-arm64")
    TFTPProvider(target, name=None, **lab.resources("vboard-arm64")["TFTPProvider"])
    driver = TFTPProviderDriver(target, name=None)
    target.activate(driver)
    asked = driver.stage(str(kernel))
    staged = lab.tftp_dir("vboard-arm64") / "Image"
    assert staged.is_symlink() and os.readlink(staged) == str(kernel), "stage() did not link the file by absolute path"
    assert asked == str(staged), f"expected U-Boot to ask for {staged}, stage() returned {asked}"
    assert tftp_get(lab.tftp_address, asked) == kernel.read_bytes()


def test_in_tftpd_serves_nothing_outside_its_root(lab):
    state = lab.tftp_root.parent
    sibling = Path(f"{lab.tftp_root}x")  # shares the root's name as a prefix: "/tftp" must not admit "/tftpx"
    sibling.mkdir()
    (sibling / "secret").write_text("not for the board")
    try:
        for path, why in [("/etc/hostname", "Forbidden directory"), (f"{sibling}/secret", "Forbidden directory"),
                          (f"{lab.tftp_root}/../tftpx/secret", "Reverse path not allowed")]:
            with pytest.raises(TftpError) as info:
                tftp_get(lab.tftp_address, path)
            assert f"refused {path}: {why}" in str(info.value), str(info.value)
    finally:
        shutil.rmtree(sibling)
    assert state.name.startswith(STATE_PREFIX)


def test_tftp_listens_on_a_loopback_address_of_its_own_on_port_69(lab):
    address = lab.tftp_address
    assert address.startswith("127.") and not address.startswith("127.0.0."), address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError, match="in use"):
        sock.bind((address, 69))


def test_a_silent_tftp_address_is_one_sentence():
    address = random_loopback_address()
    with pytest.raises(TftpError, match=rf"^no TFTP answer from {address}:69 for /x within 0 s\.$"):
        tftp_get(address, "/x", timeout=0.3)


# --- serial -------------------------------------------------------------------------------------


def test_an_unpowered_boards_serial_accepts_drops_input_and_says_nothing(lab):
    with socket.create_connection(("127.0.0.1", lab.serial_port("vboard-a15")), timeout=5) as sock:
        sock.sendall(b"help\n")
        assert silent(sock, 0.3), "an unpowered board's serial printed something"
        assert not lab.powered("vboard-a15")


def test_a_second_serial_client_replaces_the_first(lab):
    port = lab.serial_port("vboard-arm64")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
        assert silent(first, 0.1)
        first.settimeout(5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
            assert first.recv(1) == b"", "the first client was not closed when a second connected"
            assert silent(second, 0.2), "the newest client was closed too"


def test_each_resource_is_what_labgrid_builds_its_own_from(lab):
    target = labgrid.Target("vboard-a15")
    resources = lab.resources("vboard-a15")
    serial = NetworkSerialPort(target, name=None, **resources["NetworkSerialPort"])
    power = NetworkPowerPort(target, name=None, **resources["NetworkPowerPort"])
    TFTPProvider(target, name=None, **resources["TFTPProvider"])
    ssh = NetworkService(target, name=None, **resources["NetworkService"])
    assert (serial.host, serial.port, serial.protocol) == ("127.0.0.1", lab.serial_port("vboard-a15"), "raw")
    assert (power.model, power.index) == ("simplerest", "1")
    assert (ssh.address, ssh.port, ssh.username) == ("127.0.0.1", lab.ssh_port("vboard-a15"), "root")
    assert json.loads(json.dumps(lab.describe()))["boards"]["vboard-a15"]["resources"] == resources


def test_each_board_has_an_ssh_port_of_its_own_forwarded_to_its_port_22_at_power_on(lab):
    ports = {name: lab.ssh_port(name) for name in ("vboard-arm64", "vboard-a15")}
    assert len(set(ports.values())) == 2, ports
    for name, port in ports.items():
        assert SSH_PORT_RANGE[0] <= port <= SSH_PORT_RANGE[1], f"{name}: port {port} is among the ephemeral ones"
        forward = f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:22"
        assert forward in lab.machine_args(name), lab.machine_args(name)
        assert not any("hostfwd" in a for a in BOARDS[name].machine_args()), "the DT dump would bind the board's port"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free while the board is off: QEMU binds it at power-on


def test_ssh_ports_may_be_given_and_only_for_the_labs_boards(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with VirtualLab([A15], ssh_ports={"vboard-a15": port}) as lab:
        assert lab.resources("vboard-a15")["NetworkService"]["port"] == port
    with pytest.raises(UsageError, match=r"^SSH ports asked for boards the lab lacks: vboard-arm64\.$"):
        VirtualLab([A15], ssh_ports={"vboard-arm64": port})


# --- power --------------------------------------------------------------------------------------


def test_the_pdu_speaks_simplerest(lab):
    """labgrid's own simplerest backend against the lab's PDU: state of both outlets, and refusals."""
    assert simplerest.power_get(lab.pdu_url, None, 0) is False
    assert simplerest.power_get(lab.pdu_url, None, 1) is False
    with pytest.raises(requests.HTTPError) as info:
        simplerest.power_get(lab.pdu_url, None, 2)
    assert "404 Client Error: no outlet /outlet/2: this PDU has outlets 0 to 1" in str(info.value), str(info.value)
    answer = requests.get(lab.pdu_url.format(index=0, value=7), timeout=5)
    assert (answer.status_code, answer.reason) == (400, "value '7' is neither 1 nor 0")


def test_a_qemu_that_cannot_start_is_one_sentence_through_the_pdu(tmp_path):
    """Through labgrid's backend, as NetworkPowerDriver calls it: QEMU's own complaint, in the HTTP reason."""
    broken = replace(ARM64, name="vboard-broken", machine="virt,gic-version=7")
    with VirtualLab([broken]) as lab:
        with pytest.raises(requests.HTTPError) as info:
            simplerest.power_set(lab.pdu_url, None, 0, True)
        message = str(info.value)
        assert "500 Server Error: vboard-broken's QEMU failed to start: qemu-system-aarch64:" in message, message
        assert "gic-version" in message, message
        assert simplerest.power_get(lab.pdu_url, None, 0) is False


# --- the board's device tree --------------------------------------------------------------------


def test_the_boards_dtb_is_dumped_with_its_firmware(tmp_path):
    """With -bios, QEMU's arm64 virt has no pl061 GPIO: a DT dumped without the firmware lists one."""
    dtb = libfdt.Fdt(dump_dtb(ARM64, tmp_path / "board.dtb"))
    without = [a for a in ARM64.machine_args() if a not in ("-bios", str(ARM64.firmware))]
    subprocess.run([*without, "-machine", f"dumpdtb={tmp_path / 'bare.dtb'}"], check=True, capture_output=True)
    bare = libfdt.Fdt((tmp_path / "bare.dtb").read_bytes())
    assert bare.path_offset("/pl061@9030000", libfdt.QUIET_NOTFOUND) >= 0, "the control has no pl061 either"
    assert dtb.path_offset("/pl061@9030000", libfdt.QUIET_NOTFOUND) == -libfdt.FDT_ERR_NOTFOUND
    cpus = [dtb.get_name(o) for o in _subnodes(dtb, dtb.path_offset("/cpus"))]
    assert [c for c in cpus if c.startswith("cpu@")] == ["cpu@0", "cpu@1"], cpus


def _subnodes(fdt: libfdt.Fdt, parent: int) -> list[int]:
    offsets, offset = [], fdt.first_subnode(parent, libfdt.QUIET_NOTFOUND)
    while offset >= 0:
        offsets.append(offset)
        offset = fdt.next_subnode(offset, libfdt.QUIET_NOTFOUND)
    return offsets


# --- one sentence for each way the lab cannot start ----------------------------------------------


def refused(**kwargs) -> str:
    before, dirs = children(), state_dirs()
    boards = kwargs.pop("boards", [ARM64])
    with pytest.raises((InfrastructureError, UsageError)) as info:
        VirtualLab(boards, **kwargs).start()
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), f"expected one sentence, found {message!r}"
    assert children() == before, f"a refused lab left children behind: {children()}"
    assert state_dirs() == dirs, "a refused lab left its files"
    return message


def test_missing_firmware_says_which_package(tmp_path):
    board = replace(ARM64, firmware=tmp_path / "u-boot.bin")
    assert refused(boards=[board]) == (
        f"vboard-arm64's firmware {tmp_path}/u-boot.bin is missing: install Debian's u-boot-qemu package "
        "(./run does it)."
    )


def test_missing_qemu_says_which_package():
    board = replace(ARM64, qemu="qemu-system-nosuch")
    assert refused(boards=[board]) == (
        "qemu-system-nosuch is not installed: install Debian's qemu-system-arm package (./run does it)."
    )


def test_missing_tftpd_binary(tmp_path):
    message = refused(tftpd=tmp_path / "in.tftpd")
    assert message == f"in.tftpd {tmp_path}/in.tftpd is missing: run `./run images fetch`.", message


def test_a_lock_without_the_host_profile_says_how_to_pin_it(tmp_path):
    lock = json.loads(LOCK.read_text())
    del lock["profiles"]["host-amd64"]
    (tmp_path / "lock.json").write_text(json.dumps(lock))
    message = refused(images=Images(Cache(tmp_path / "cache"), tmp_path / "lock.json"))
    assert message == "lock.json does not pin host-amd64's tftpd: run `./run images lock --profile host-amd64`."


def test_a_serial_port_in_use_is_one_sentence():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        message = refused(serial_ports={"vboard-arm64": port})
    assert message.startswith(f"127.0.0.1:{port}, the serial port asked for vboard-arm64, is in use by another "
                              "program (Address already in use): choose another port"), message


def test_a_pdu_port_in_use_is_one_sentence():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        message = refused(pdu_port=port)
    assert message.startswith(f"127.0.0.1:{port}, the PDU port asked for, is in use by another program"), message


def test_a_tftp_address_in_use_is_one_sentence():
    address = random_loopback_address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((address, 69))
        message = refused(tftp_address=address)
    assert message == (f"{address}:69 is in use by another program: give the lab another 127.x.y.z address, "
                       "or none to get a free one."), message


def test_an_unknown_board_names_the_known_ones():
    assert refused(boards=["vboard-riscv"]) == (
        "unknown virtual board 'vboard-riscv': choose one of vboard-arm64, vboard-a15 or describe it."
    )


def test_a_board_description_missing_a_field_says_which_fields():
    spec = {"name": "b", "arch": "arm64", "qemu": "qemu-system-aarch64"}
    with pytest.raises(UsageError, match=r"^a virtual board needs exactly arch, cpu, firmware, machine, memory, "
                                         r"name, qemu, smp; found arch, name, qemu\.$"):
        Board.from_spec(spec)


def test_the_lab_process_says_one_sentence_for_a_bad_board():
    proc = subprocess.run([sys.executable, "-m", "harness.lab.vlab", "--board", "vboard-riscv"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, ""), (proc.returncode, proc.stdout)
    assert proc.stderr == ("harness: unknown virtual board 'vboard-riscv': choose one of vboard-arm64, vboard-a15 "
                           "or describe it.\n"), proc.stderr


def test_a_lab_leaves_no_child_and_no_file_when_closed():
    before = children()
    with VirtualLab([A15]) as lab:
        state = lab.tftp_root.parent
        assert len(children()) > len(before), "the lab started no in.tftpd"
    assert children() == before, f"left behind: {children()}"
    assert not state.exists(), f"{state} is still there"


def test_a_lab_configuration_with_an_unknown_key_is_one_sentence(tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text("boards: [vboard-a15]\nserial_port: 5000\n")
    proc = subprocess.run([sys.executable, "-m", "harness.lab.vlab", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, ""), (proc.returncode, proc.stdout)
    assert proc.stderr == (f"harness: {config} must be a mapping with `boards` and optionally pdu_port, serial_ports, "
                           "ssh_ports, tftp_address.\n"), proc.stderr
