"""dom0 over SSH, a second channel beside its serial console, on the targets whose dom0 has a network (the virtual
boards: dropbear in dom0's initramfs, reached through the lab's port forward on 127.0.0.1).

Each test reads the target's one boot (the `booted` fixture): what SSH reads must be what the serial console read
when the boot was probed; dom0's host key is checked against a known_hosts, and a wrong one is refused; the
harness's private key never reaches a log.
"""

from __future__ import annotations

import base64
import hashlib
import io

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from probing import probed

from harness.boot import BootSession
from harness.guest import parse_interrupts
from harness.sshguest import GuestSSH, SSHError, fingerprint, known_hosts_line

pytestmark = [pytest.mark.boot, pytest.mark.requires("ssh")]


def test_dom0_answers_over_ssh_with_status_stdout_and_stderr(booted: BootSession, record_property) -> None:
    view = probed(booted).views["dom0"]
    ssh = booted.ssh()
    record_property("ssh", f"{ssh.endpoint.host}:{ssh.endpoint.port}")
    done = ssh.run("uname -r; echo to-stderr >&2; exit 7", check=False)
    assert (done.status, done.text.strip(), done.stderr) == (7, view.uname, b"to-stderr\n")
    assert ssh.run("id -u").text.strip() == "0", "not root in dom0"


def test_dom0s_ssh_server_takes_public_keys_only(booted: BootSession) -> None:
    endpoint = booted.ssh().endpoint
    transport = paramiko.Transport((endpoint.host, endpoint.port))
    try:
        transport.start_client(timeout=60)
        with pytest.raises(paramiko.BadAuthenticationType) as info:
            transport.auth_none(endpoint.username)
        assert info.value.allowed_types == ["publickey"], f"dropbear -s: expected publickey only, found {info.value}"
    finally:
        transport.close()


def test_what_ssh_reads_is_what_the_console_read(booted: BootSession) -> None:
    view = probed(booted).views["dom0"]
    ssh = booted.ssh()
    assert ssh.read_file("/proc/device-tree/hypervisor/reg") == view.procfs_hypervisor["reg"]
    assert ssh.run("cat /sys/hypervisor/type").text.strip() == view.hypervisor_type == "xen"
    events = parse_interrupts(ssh.run("cat /proc/interrupts").text).get("events")
    assert events is not None, "no events row in /proc/interrupts over SSH"
    first = parse_interrupts(view.interrupts)["events"]
    assert (events[0], events[2]) == (first[0], first[2]), f"events row: console {first}, SSH {events}"
    assert sum(events[1]) > view.event_irq.total, "the events count did not grow since the console's sample"
    # the same file, framed base64 over the console when the boot was probed and raw over SSH now
    fdt = ssh.read_file("/sys/firmware/fdt")
    assert hashlib.sha256(fdt).hexdigest() == hashlib.sha256(view.fdt).hexdigest()
    assert fdt == (booted.artifacts / "dom0.dtb").read_bytes()


def test_a_wrong_host_key_is_refused_naming_the_mismatch(booted: BootSession, tmp_path) -> None:
    ssh = booted.ssh()
    real = paramiko.HostKeys(str(ssh.known_hosts)).lookup(ssh.endpoint.name)["ssh-ed25519"]
    blob = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1]
    wrong = paramiko.PKey.from_type_string("ssh-ed25519", base64.b64decode(blob))
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(ssh.endpoint, wrong))
    with pytest.raises(SSHError) as info:
        GuestSSH("dom0", ssh.endpoint, ssh.key, known).connect()
    assert str(info.value) == (
        f"host key mismatch: dom0's SSH server at {ssh.endpoint.host}:{ssh.endpoint.port} presented ssh-ed25519 "
        f"{fingerprint(real)}, but {known} expects ssh-ed25519 {fingerprint(wrong)} for {ssh.endpoint.name}; refused.")
    known.write_text(known_hosts_line(ssh.endpoint, real))  # the control: the same connection with dom0's own key
    with GuestSSH("dom0", ssh.endpoint, ssh.key, known) as again:
        assert again.run("echo ok").text == "ok\n"


def test_the_private_key_never_reaches_a_log(booted: BootSession) -> None:
    ssh = booted.ssh()
    pem = io.StringIO()
    ssh.key.write_private_key(pem)
    secrets = [line for line in pem.getvalue().splitlines() if not line.startswith("-----")]
    secrets.append(f"{ssh.key.signing_key.private_numbers().private_value:x}")
    booted.result.write()  # what result.json says now (the session rewrites it at the end)
    console = (booted.artifacts / "console.log").read_bytes()
    assert ssh.key.get_base64().encode() in console, "the public key was not installed over this console log"
    for path in sorted(p for p in booted.artifacts.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, f"{path.name} holds a private key"
        for secret in secrets:
            assert secret.encode() not in data, f"{path.name} holds part of the harness's private key"
    assert {"console.log", "result.json", "known_hosts"} <= {p.name for p in booted.artifacts.iterdir()}
