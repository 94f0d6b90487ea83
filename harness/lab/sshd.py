"""An SSH server for a lab host that the harness runs itself (paramiko), so that labgrid's clients can
reach an exporter on this machine the way they reach one across a lab: run a command, copy a file with
rsync (how a `RemoteTFTPProvider` stages Xen and the guests' images), hold a multiplexed connection.

It binds 127.0.0.1 on a free port, has a host key and one client key of its own, and writes an OpenSSH
client config (port, key, known host) that `client_env()` puts in front of every `ssh` the process runs:
nothing on the machine (no sshd, no ~/.ssh) is touched. Commands run as the user running the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import paramiko

from ..errors import InfrastructureError

ACCEPT_POLL_S = 0.2


class _Auth(paramiko.ServerInterface):
    """One client key, exec requests only (and the sessions OpenSSH opens for them)."""

    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.commands: dict[int, str] = {}
        self.ready = threading.Condition()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        with self.ready:
            self.commands[channel.get_id()] = command.decode(errors="replace")
            self.ready.notify_all()
        return True

    def check_channel_env_request(self, channel, name, value) -> bool:  # noqa: ARG002
        return True  # OpenSSH sends LANG and friends; they are not needed


class LabSSHServer:
    """`with LabSSHServer(workdir) as sshd:` … `sshd.client_env()` for the processes that ssh to it."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host  # any 127.x.y.z: a lab host's own address
        self.port = 0
        self._host_key = paramiko.ECDSAKey.generate()
        self._client_key = paramiko.ECDSAKey.generate()
        self._socket: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._transports: list[paramiko.Transport] = []

    def __enter__(self) -> LabSSHServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not shutil.which("ssh") or not shutil.which("rsync"):
            raise InfrastructureError("the lab's SSH needs Debian's openssh-client and rsync packages (./run installs "
                                      "them).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((self.host, 0))
        self._socket.listen(16)
        self._socket.settimeout(ACCEPT_POLL_S)
        self.port = self._socket.getsockname()[1]
        self._write_client_files()
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stop.set()
        for transport in self._transports:
            transport.close()
        if self._socket is not None:
            self._socket.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- what a client needs ----------------------------------------------------------------

    def _write_client_files(self) -> None:
        key = self.workdir / "client_key"
        self._client_key.write_private_key_file(str(key))
        key.chmod(0o600)
        known = self.workdir / "known_hosts"
        known.write_text(f"[{self.host}]:{self.port} {self._host_key.get_name()} {self._host_key.get_base64()}\n")
        config = self.workdir / "ssh_config"
        config.write_text(
            f"Host {self.host}{' localhost' if self.host == '127.0.0.1' else ''}\n"
            f"  HostName {self.host}\n  Port {self.port}\n  User {_user()}\n"
            f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
            "  StrictHostKeyChecking yes\n  PasswordAuthentication no\n  BatchMode yes\n"
        )
        wrappers = self.workdir / "bin"
        wrappers.mkdir(exist_ok=True)
        ssh = wrappers / "ssh"  # every ssh of the client process (labgrid's, rsync's) reads this config
        ssh.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
        ssh.chmod(0o755)

    def client_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """`env` (default: this process's) with the lab's ssh first on PATH."""
        env = dict(os.environ if env is None else env)
        env["PATH"] = f"{self.workdir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    # --- serving ----------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        self._transports.append(transport)
        transport.add_server_key(self._host_key)
        auth = _Auth(self._client_key)
        try:
            transport.start_server(server=auth)
        except (paramiko.SSHException, EOFError, OSError):
            return
        while transport.is_active() and not self._stop.is_set():
            channel = transport.accept(timeout=ACCEPT_POLL_S)
            if channel is not None:
                self._spawn(self._run, channel, auth)

    def _run(self, channel: paramiko.Channel, auth: _Auth) -> None:
        with auth.ready:
            auth.ready.wait_for(lambda: channel.get_id() in auth.commands or channel.closed, timeout=30)
        command = auth.commands.pop(channel.get_id(), None)
        if command is None:  # a shell or subsystem request: not offered
            channel.close()
            return
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=Path.home())
        pumps = [threading.Thread(target=_pump_out, args=(proc.stdout, channel.sendall), daemon=True),
                 threading.Thread(target=_pump_out, args=(proc.stderr, channel.sendall_stderr), daemon=True),
                 threading.Thread(target=_pump_in, args=(channel, proc.stdin), daemon=True)]
        for pump in pumps:
            pump.start()
        status = proc.wait()
        for pump in pumps[:2]:
            pump.join()
        with contextlib.suppress(OSError, EOFError):
            channel.send_exit_status(status)
            channel.shutdown_write()
        channel.close()


def _pump_out(stream, send) -> None:
    with contextlib.suppress(OSError, EOFError):
        while data := stream.read1(65536):
            send(data)


def _pump_in(channel: paramiko.Channel, stdin) -> None:
    with contextlib.suppress(OSError, EOFError):
        while data := channel.recv(65536):
            stdin.write(data)
            stdin.flush()
    with contextlib.suppress(OSError):
        stdin.close()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
