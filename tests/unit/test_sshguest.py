"""A guest over SSH (harness/sshguest.py) against a real SSH server on loopback (the lab host's own, harness/lab/
sshd.py, which runs commands in this host's shell as dropbear runs them in dom0's): commands, deadlines, checked
copies, and one sentence for each way a connection is refused. Plus the pure parts: the host key as dom0's console
printed it (captured from a vboard-arm64 boot), the known_hosts line, the framed copy."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from harness.lab.sshd import LabSSHServer
from harness.sshguest import (
    COPY,
    Endpoint,
    GuestSSH,
    SSHError,
    decode_copy,
    fingerprint,
    host_key_from_console,
    known_hosts_line,
    new_key,
    public_key_line,
)

DROPBEARKEY_Y = (Path(__file__).parent / "data" / "ssh" / "dropbearkey-y-ed25519.txt").read_text().splitlines()


@pytest.fixture
def sshd(tmp_path: Path):
    with LabSSHServer(tmp_path / "lab") as server:
        yield server


def endpoint(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port, pwd.getpwuid(os.getuid()).pw_name)


def lab_client_key(sshd: LabSSHServer) -> paramiko.PKey:
    return paramiko.ECDSAKey.from_private_key_file(str(sshd.workdir / "client_key"))


def connected(sshd: LabSSHServer, **kwargs) -> GuestSSH:
    return GuestSSH("dom0", endpoint(sshd.port), lab_client_key(sshd), sshd.workdir / "known_hosts", **kwargs).connect()


def refusal(sshd_port: int, key: paramiko.PKey, known_hosts: Path, timeout: float = 10) -> str:
    with pytest.raises(SSHError) as info:
        GuestSSH("dom0", endpoint(sshd_port), key, known_hosts, timeout=timeout).connect()
    message = str(info.value)
    assert "\n" not in message and message.endswith((".", "?")), message
    return message


# --- commands and files ---------------------------------------------------------------------------


def test_a_command_gives_its_status_stdout_and_stderr(sshd):
    with connected(sshd) as ssh:
        done = ssh.run("echo out; echo err >&2; exit 3", check=False)
        assert (done.status, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
        assert ssh.run("printf '%s' \"$((6 * 7))\"").text == "42"
        with pytest.raises(SSHError, match=r"^`echo boom >&2; exit 4` failed in dom0 over SSH with status 4: boom$"):
            ssh.run("echo boom >&2; exit 4")


def test_a_command_past_its_deadline_is_stopped_and_said(sshd):
    with connected(sshd) as ssh:
        started = time.monotonic()
        with pytest.raises(SSHError, match=r"^`sleep 2` did not finish within 0\.5 s in dom0 over SSH\.$"):
            ssh.run("sleep 2", timeout=0.5)
        assert time.monotonic() - started < 1.5
        assert ssh.run("echo still here").text == "still here\n", "one late command broke the connection"


def test_a_file_comes_out_whole_and_checked(sshd, tmp_path):
    payload = bytes(range(256)) * 1200 + b"\n\n no newline at the end"
    (tmp_path / "blob").write_bytes(payload)
    with connected(sshd) as ssh:
        assert ssh.read_file(str(tmp_path / "blob")) == payload
        with pytest.raises(SSHError, match=r"^copying /no/such/file out of dom0 over SSH failed with status \d+: "
                                           r".*No such file or directory$"):
            ssh.read_file("/no/such/file")


def test_the_framed_copy_decodes_only_what_its_header_vouches_for(sshd, tmp_path):
    (tmp_path / "f").write_bytes(b"twelve bytes")
    with connected(sshd) as ssh:
        framed = ssh.run(COPY.format(path=tmp_path / "f")).stdout
    assert framed == b"12\n" + hashlib.sha256(b"twelve bytes").hexdigest().encode() + b"  -\ntwelve bytes"
    assert decode_copy(framed) == b"twelve bytes"
    with pytest.raises(ValueError, match=r"^expected 12 bytes with SHA256 [0-9a-f]{64}, received 6 bytes with SHA256 "):
        decode_copy(framed[:-6])
    with pytest.raises(ValueError, match=r"^expected 12 bytes with SHA256 (\w+), received 12 bytes with SHA256 (?!\1)"):
        decode_copy(framed[:-1] + b"S")
    with pytest.raises(ValueError, match=r"^expected a length and a SHA256 first, found b'sh: 1: cannot open"):
        decode_copy(b"sh: 1: cannot open /x: No such file\n")


# --- refusals: each one sentence that says which --------------------------------------------------


def test_a_host_key_other_than_the_known_one_is_refused_naming_both(sshd, tmp_path):
    other = paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(endpoint(sshd.port), other))
    message = refusal(sshd.port, lab_client_key(sshd), known)
    served = paramiko.HostKeys(str(sshd.workdir / "known_hosts")).lookup(f"[127.0.0.1]:{sshd.port}")
    real = served["ecdsa-sha2-nistp256"]
    assert message == (f"host key mismatch: dom0's SSH server at 127.0.0.1:{sshd.port} presented ecdsa-sha2-nistp256 "
                       f"{fingerprint(real)}, but {known} expects ecdsa-sha2-nistp256 {fingerprint(other)} for "
                       f"[127.0.0.1]:{sshd.port}; refused.")


def test_a_host_the_known_hosts_lacks_is_refused_not_learned(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(endpoint(sshd.port + 1), paramiko.ECDSAKey.generate()))  # another port
    message = refusal(sshd.port, lab_client_key(sshd), known)
    assert re.fullmatch(rf"host key unknown: {re.escape(str(known))} has no ecdsa-sha2-nistp256 key for "
                        rf"\[127\.0\.0\.1\]:{sshd.port}, where dom0's SSH server presented SHA256:\S+; refused "
                        r"\(no key is trusted on first use\)\.", message), message
    assert known.read_text().count("\n") == 1, "the refused key was written into the known_hosts"


def test_a_key_the_guest_does_not_know_fails_authentication(sshd):
    stranger = new_key()
    message = refusal(sshd.port, stranger, sshd.workdir / "known_hosts")
    assert message == (f"authentication failed: dom0's SSH server at 127.0.0.1:{sshd.port} refused the harness's key "
                       f"for {endpoint(0).username} ({fingerprint(stranger)}): it is not in the guest's "
                       "authorized_keys.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_connection_refused(tmp_path):
    port = free_port()
    (tmp_path / "known_hosts").write_text("")
    message = refusal(port, new_key(), tmp_path / "known_hosts")
    assert message == f"connection refused: nothing listens at 127.0.0.1:{port} (the lab's port for dom0's SSH)."


@pytest.mark.parametrize("behaviour", ["closes", "says nothing"])
def test_a_port_without_an_ssh_server_behind_it(tmp_path, behaviour):
    """A user-net port forward accepts and then closes when nothing listens in the guest; a hung guest says nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held = []

    def serve() -> None:
        conn, _ = listener.accept()
        (held.append(conn) if behaviour == "says nothing" else conn.close())

    threading.Thread(target=serve, daemon=True).start()
    (tmp_path / "known_hosts").write_text("")
    try:
        message = refusal(port, new_key(), tmp_path / "known_hosts", timeout=1.5)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    if behaviour == "closes":
        assert message.startswith(f"no SSH server: dom0's SSH server at 127.0.0.1:{port} closed the connection before "
                                  "the SSH handshake ended ("), message
        assert message.endswith("): is an SSH server listening in dom0 (its /tmp/dropbear.log)?"), message
    else:
        assert message == (f"no answer: dom0's SSH server at 127.0.0.1:{port} did not complete the SSH handshake "
                           "within 1.5 s."), message


def test_a_known_hosts_the_lab_did_not_provide_is_one_sentence(tmp_path):
    missing = tmp_path / "lab" / "known_hosts"
    assert refusal(free_port(), new_key(), missing) == (
        f"cannot read the known_hosts {missing} (No such file or directory): the lab must provide it "
        "(board: ssh: known_hosts:).")


# --- the host key dom0's console printed, as known_hosts --------------------------------------------


def test_the_host_key_dom0_printed_is_the_key_of_the_fingerprint_it_printed():
    key = host_key_from_console(DROPBEARKEY_Y, "dom0")
    printed = next(line.split()[1] for line in DROPBEARKEY_Y if line.startswith("Fingerprint:"))
    assert (key.get_name(), fingerprint(key)) == ("ssh-ed25519", printed)


def test_the_known_hosts_line_names_a_port_as_openssh_does(tmp_path):
    key = host_key_from_console(DROPBEARKEY_Y, "dom0")
    line = known_hosts_line(Endpoint("127.0.0.1", 2222, "root"), key)
    assert line == f"[127.0.0.1]:2222 ssh-ed25519 {key.get_base64()}\n"
    assert known_hosts_line(Endpoint("192.0.2.7", 22, "root"), key).startswith("192.0.2.7 ssh-ed25519 ")
    (tmp_path / "known_hosts").write_text(line)
    assert paramiko.HostKeys(str(tmp_path / "known_hosts")).lookup("[127.0.0.1]:2222")["ssh-ed25519"] == key


def test_a_console_without_a_host_key_is_one_sentence():
    with pytest.raises(SSHError, match=r"^dom0 printed no SSH host key for `dropbearkey -y -f /etc/dropbear/"
                                       r"dropbear_ed25519_host_key` \(it said: sh: dropbearkey: not found\): its "
                                       r"initramfs needs dropbear"):
        host_key_from_console(["sh: dropbearkey: not found"], "dom0")
    damaged = [line.replace("AAAAC3", "AAA!C3") for line in DROPBEARKEY_Y]
    with pytest.raises(SSHError, match=r"^dom0 printed a host key the harness cannot read \(ssh-ed25519: "):
        host_key_from_console(damaged, "dom0")


def test_the_harness_key_is_fresh_and_its_public_line_carries_no_secret():
    key, other = new_key(), new_key()
    assert fingerprint(key) != fingerprint(other)
    line = public_key_line(key, "harness@boot")
    assert line == f"ecdsa-sha2-nistp256 {key.get_base64()} harness@boot"
    assert paramiko.PKey.from_type_string("ecdsa-sha2-nistp256", base64.b64decode(key.get_base64())) == key
