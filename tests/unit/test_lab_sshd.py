"""The lab host's SSH (harness/lab/sshd.py) as labgrid's clients use it: OpenSSH's own ssh and rsync,
a multiplexed master connection, host-key checking, and no other key let in."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness.lab.sshd import LabSSHServer


@pytest.fixture
def sshd(tmp_path: Path):
    with LabSSHServer(tmp_path / "lab") as server:
        yield server


def ssh(sshd: LabSSHServer, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", *args], env=sshd.client_env(), capture_output=True, text=True, timeout=60, **kwargs)


def test_a_command_its_output_and_its_exit_status(sshd):
    run = ssh(sshd, "127.0.0.1", "echo out; echo err >&2; exit 3")
    assert (run.returncode, run.stdout, run.stderr) == (3, "out\n", "err\n")
    assert ssh(sshd, "localhost", "cat", input="through stdin").stdout == "through stdin"


def test_rsync_copies_a_file_as_a_remote_tftp_provider_stages_one(sshd, tmp_path):
    source = tmp_path / "xen"
    source.write_bytes(bytes(range(256)) * 20_000)
    run = subprocess.run(["rsync", "--compress", "--times", "-e", "ssh", str(source), f"127.0.0.1:{tmp_path}/staged/"],
                         env=sshd.client_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "staged" / "xen").read_bytes() == source.read_bytes()


def test_a_multiplexed_master_carries_later_commands(sshd, tmp_path):
    control = tmp_path / "control"
    master = subprocess.Popen(["ssh", "-x", "-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-N",
                               "127.0.0.1"], env=sshd.client_env())
    try:
        deadline = time.monotonic() + 30
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run = ssh(sshd, "-o", "ControlMaster=no", "-o", f"ControlPath={control}", "127.0.0.1", "echo via master")
        assert run.stdout == "via master\n", run.stderr
    finally:
        ssh(sshd, "-o", f"ControlPath={control}", "-O", "exit", "127.0.0.1")
        master.wait(timeout=10)


def test_another_key_or_another_host_key_is_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(other)], check=True)
    run = ssh(sshd, "-o", f"IdentityFile={other}", "-o", "IdentitiesOnly=yes", "-i", str(other),
              "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd.workdir / 'known_hosts'}",
              "-p", str(sshd.port), "127.0.0.1", "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr, run.stderr
    impostor = " ".join((tmp_path / "other_key.pub").read_text().split()[:2])  # a host key that is not the lab's
    (sshd.workdir / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    run = ssh(sshd, "127.0.0.1", "true")
    assert run.returncode == 255 and "IDENTIFICATION HAS CHANGED" in run.stderr, run.stderr
