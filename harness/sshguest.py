"""A guest over SSH (paramiko): a second channel into dom0, beside its serial console, where dom0 has a network.

What makes the connection trustworthy, and what never leaks:

- the harness's key: an ECDSA key pair made for the boot, kept in memory only (no file, no log); its
  public half is appended to the guest's /root/.ssh/authorized_keys over the serial console;
- the guest's host key: checked against a known_hosts file with paramiko's RejectPolicy, never learned
  on first use. The lab provides the file (a board's `board: ssh: known_hosts:`); for a board whose
  dom0 makes a new key at every boot (the virtual boards) the harness writes it, in the boot's
  artifacts, from the key dom0 printed on its serial console (`dropbearkey -y`);
- commands run on exec channels, each with a deadline, and give exit status, stdout and stderr;
- files come out as guest.py's console transfer does, framed: dropbear has no SFTP, so one exec
  channel prints a snapshot's length and SHA256, then its bytes, and both are checked.

Every failure is one sentence that says which: connection refused, no answer, no SSH server behind
the port, authentication failed, host key mismatch or unknown (with the fingerprints), a command that
failed or ran past its deadline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import select
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .errors import HarnessError
from .guest import GuestShell

HOST_KEY = "/etc/dropbear/dropbear_ed25519_host_key"  # where images/initramfs/init (and dropbear -R) put it
CONNECT_TIMEOUT_S = 60.0  # TCG guests under load answer slowly: banner, key exchange, authentication each
POLL_S = 0.05
# paramiko's transport logs each failure as a traceback; the SSHError raised for it says it in one sentence
LOG_CHANNEL = "harness.sshguest.paramiko"
logging.getLogger(LOG_CHANNEL).setLevel(logging.CRITICAL)
# The guest's half of a file copy: a snapshot (a /proc file changes between reads), its length and SHA256,
# then its bytes. The snapshot's own exit status is the command's.
COPY = ('f=$(mktemp) && cat {path} > "$f" && wc -c < "$f" && sha256sum < "$f" && cat "$f"; '
        's=$?; rm -f "$f"; exit $s')


class SSHError(HarnessError):
    """The guest's SSH server could not be reached or trusted, or a command over it failed."""


@dataclass(frozen=True)
class Endpoint:
    """Where a guest's SSH server answers, as the lab gives it (labgrid's NetworkService)."""

    host: str
    port: int
    username: str

    @property
    def name(self) -> str:
        """The host as OpenSSH and paramiko name it in known_hosts: `[host]:port` unless the port is 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Completed:
    command: str
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256 of the public key blob, base64 without padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def public_key_line(key: paramiko.PKey, comment: str) -> str:
    """`TYPE BASE64 COMMENT`, as authorized_keys takes it."""
    return f"{key.get_name()} {key.get_base64()} {comment}"


def host_key_from_console(lines: list[str], guest: str) -> paramiko.PKey:
    """The public key in what `dropbearkey -y` printed (`TYPE BASE64 COMMENT` after `Public key portion is:`)."""
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0].startswith(("ssh-", "ecdsa-")):
            try:
                return paramiko.PKey.from_type_string(words[0], base64.b64decode(words[1], validate=True))
            except (ValueError, paramiko.SSHException) as exc:
                raise SSHError(f"{guest} printed a host key the harness cannot read ({words[0]}: {exc}).") from None
    shown = " | ".join(lines[-3:]) or "nothing"
    raise SSHError(f"{guest} printed no SSH host key for `dropbearkey -y -f {HOST_KEY}` (it said: {shown}): its "
                   "initramfs needs dropbear and harness.net= on its command line (dom0: network: ssh: in the target).")


def known_hosts_line(endpoint: Endpoint, key: paramiko.PKey) -> str:
    return f"{endpoint.name} {key.get_name()} {key.get_base64()}\n"


def decode_copy(data: bytes) -> bytes:
    """The file a COPY command printed, checked against the length and SHA256 it printed first."""
    size_line, _, rest = data.partition(b"\n")
    digest_line, _, payload = rest.partition(b"\n")
    if not size_line.strip().isdigit() or len(digest_line) < 64:
        raise ValueError(f"expected a length and a SHA256 first, found {data[:80]!r}")
    size, digest = int(size_line), digest_line[:64].decode(errors="replace")
    found = hashlib.sha256(payload).hexdigest()
    if len(payload) != size or found != digest:
        raise ValueError(f"expected {size} bytes with SHA256 {digest}, received {len(payload)} bytes with SHA256 "
                         f"{found}")
    return payload


class _Reject(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, saying in one sentence which key was refused and why."""

    def __init__(self, guest: str, known_hosts: Path) -> None:
        self.guest, self.known_hosts = guest, known_hosts

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        raise SSHError(f"host key unknown: {self.known_hosts} has no {key.get_name()} key for {hostname}, where "
                       f"{self.guest}'s SSH server presented {fingerprint(key)}; refused (no key is trusted on "
                       "first use).")


class GuestSSH:
    """`GuestSSH(guest, endpoint, key, known_hosts).connect()`, then run() and read_file(); close() at the end."""

    def __init__(self, guest: str, endpoint: Endpoint, key: paramiko.PKey, known_hosts: Path,
                 timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.guest = guest
        self.endpoint = endpoint
        self.key = key
        self.known_hosts = known_hosts
        self.timeout = timeout
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> GuestSSH:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> GuestSSH:
        where = f"{self.guest}'s SSH server at {self.endpoint.host}:{self.endpoint.port}"
        client = paramiko.SSHClient()
        client.set_log_channel(LOG_CHANNEL)
        try:
            client.load_system_host_keys(str(self.known_hosts))  # read, never written back
        except OSError as exc:
            raise SSHError(f"cannot read the known_hosts {self.known_hosts} ({exc.strerror}): the lab must provide "
                           "it (board: ssh: known_hosts:).") from None
        client.set_missing_host_key_policy(_Reject(self.guest, self.known_hosts))
        started = time.monotonic()
        try:
            client.connect(self.endpoint.host, self.endpoint.port, username=self.endpoint.username, pkey=self.key,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           look_for_keys=False, allow_agent=False)
        except SSHError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SSHError(f"host key mismatch: {where} presented {exc.key.get_name()} {fingerprint(exc.key)}, but "
                           f"{self.known_hosts} expects {exc.expected_key.get_name()} {fingerprint(exc.expected_key)} "
                           f"for {self.endpoint.name}; refused.") from None
        except paramiko.AuthenticationException:
            client.close()
            raise SSHError(f"authentication failed: {where} refused the harness's key for {self.endpoint.username} "
                           f"({fingerprint(self.key)}): it is not in the guest's authorized_keys.") from None
        except (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError):
            client.close()
            raise SSHError(f"connection refused: nothing listens at {self.endpoint.host}:{self.endpoint.port} "
                           f"(the lab's port for {self.guest}'s SSH).") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            if isinstance(exc, TimeoutError) or time.monotonic() - started >= self.timeout:
                raise SSHError(f"no answer: {where} did not complete the SSH handshake within {self.timeout:g} "
                               "s.") from None
            # a user-net port forward accepts the connection, then closes it when nothing listens behind it
            raise SSHError(f"no SSH server: {where} closed the connection before the SSH handshake ended ({exc}): "
                           f"is an SSH server listening in {self.guest} (its /tmp/dropbear.log)?") from None
        self._client = client
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, command: str, timeout: float = 30.0, check: bool = True) -> Completed:
        """`command` in the guest's shell on an exec channel; past `timeout` the channel is closed."""
        if self._client is None or (transport := self._client.get_transport()) is None or not transport.is_active():
            raise SSHError(f"the SSH connection to {self.guest} is closed: connect first.")
        deadline = time.monotonic() + timeout
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHError(f"{self.guest} refused to run `{command}` over SSH ({exc}).") from None
        stdout, stderr = bytearray(), bytearray()
        with contextlib.closing(channel):
            while True:
                if channel.recv_ready():
                    stdout += channel.recv(1 << 16)
                elif channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(1 << 16)
                elif channel.exit_status_ready() and channel.eof_received:
                    break
                elif channel.closed:
                    raise SSHError(f"{self.guest} closed the SSH channel of `{command}` without an exit status.")
                elif time.monotonic() > deadline:
                    raise SSHError(f"`{command}` did not finish within {timeout:g} s in {self.guest} over SSH.")
                else:
                    select.select([channel], [], [], POLL_S)
            status = channel.recv_exit_status()
        done = Completed(command, status, bytes(stdout), bytes(stderr))
        if check and status != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise SSHError(f"`{command}` failed in {self.guest} over SSH with status {status}: {said[0]}")
        return done

    def read_file(self, path: str, timeout: float = 120.0) -> bytes:
        """A file of the guest, checked against the length and SHA256 the guest computed."""
        done = self.run(COPY.format(path=shlex.quote(path)), timeout=timeout, check=False)
        if done.status != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise SSHError(f"copying {path} out of {self.guest} over SSH failed with status {done.status}: {said[0]}")
        try:
            return decode_copy(done.stdout)
        except ValueError as exc:
            raise SSHError(f"copying {path} out of {self.guest} over SSH failed: {exc}.") from None


def new_key() -> paramiko.PKey:
    """A key pair for one boot (ECDSA P-256: paramiko generates it, dropbear accepts it), in memory only."""
    return paramiko.ECDSAKey.generate()


def authorize(shell: GuestShell, key: paramiko.PKey, comment: str) -> None:
    """Over the guest's serial console: let `key` in as root."""
    line = public_key_line(key, comment)
    shell.run(f"mkdir -p /root/.ssh && chmod 700 /root/.ssh && echo {shlex.quote(line)} >> /root/.ssh/authorized_keys")


def read_host_key(shell: GuestShell) -> paramiko.PKey:
    """Over the guest's serial console: the SSH host key its dropbear presents."""
    return host_key_from_console(shell.run(f"dropbearkey -y -f {HOST_KEY}", check=False), shell.guest)
