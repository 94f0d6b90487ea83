"""A labgrid farm on this machine: a real `labgrid-coordinator` on 127.0.0.1, a real `labgrid-exporter`
publishing a virtual lab's boards (serial port, PDU outlet, TFTP provider) as one place each, and the
exporter host's SSH, through which labgrid's clients stage files for its TFTP server.

The exporter's host name is the lab's TFTP address (a 127.x.y.z of its own): a `RemoteTFTPProvider`
says that host, labgrid's clients ssh to it (the lab's own SSH listens there), and a board's U-Boot
fetches from it. A client needs `env()`: the coordinator's address (LG_COORDINATOR) and the lab's ssh.

`python -m harness.lab.farm --board vboard-arm64 --board vboard-a15 --state DIR` runs one until SIGTERM
or its parent's death, and writes DIR/farm.json once every place is there. Every child dies with it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..errors import InfrastructureError
from .process import dying_with_us
from .sshd import LabSSHServer
from .vlab import VirtualLab, serve

log = logging.getLogger(__name__)

EXPORTER_NAME = "vlab"
START_DEADLINE_S = 60.0
PLACE_POLL_S = 1.0
COORDINATOR_ENV = "LG_COORDINATOR"


def labgrid_tool(name: str) -> str:
    """labgrid's command-line tools live beside the Python that runs the harness."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise InfrastructureError(f"{name} is missing: install labgrid into the harness's environment (./run does it).")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalFarm:
    """`with LocalFarm(["vboard-arm64", "vboard-a15"], workdir) as farm:` … `farm.env()` for clients."""

    def __init__(self, boards: Sequence[str], workdir: Path) -> None:
        self.boards = list(boards)
        self.workdir = workdir
        self.lab: VirtualLab | None = None
        self.sshd: LabSSHServer | None = None
        self.coordinator = ""
        self.processes: dict[str, subprocess.Popen] = {}  # "coordinator", "exporter"

    def __enter__(self) -> LocalFarm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.lab = VirtualLab(self.boards)
            self.lab.start()
            self.sshd = LabSSHServer(self.workdir / "ssh", host=self.lab.tftp_address)
            self.sshd.start()
            self.coordinator = f"127.0.0.1:{free_port()}"
            self._spawn("coordinator", [labgrid_tool("labgrid-coordinator"), "--listen", self.coordinator])
            self._await(self._coordinator_answers, "the labgrid coordinator did not answer")
            exporter = self.workdir / "exporter.yaml"
            exporter.write_text(yaml.safe_dump(self.exporter_config(), sort_keys=False))
            self._spawn("exporter", [labgrid_tool("labgrid-exporter"), "--coordinator", self.coordinator,
                                     "--name", EXPORTER_NAME, "--hostname", self.lab.tftp_address, str(exporter)])
            self._await(self._exported, "the labgrid exporter did not publish the boards")
            for board in self.boards:
                self.client("-p", board, "create")
                self.client("-p", board, "add-match", f"{EXPORTER_NAME}/{board}/*")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for child in reversed(self.processes.values()):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=10)
        self.processes.clear()
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None
        if self.lab is not None:
            self.lab.close()
            self.lab = None

    # --- what it publishes ------------------------------------------------------------------

    def exporter_config(self) -> dict:
        """One resource group per board, named after it: what its place will match."""
        return {board: self.lab.resources(board) for board in self.boards}

    def env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """A client's environment: the coordinator's address and the lab host's ssh."""
        return {**self.sshd.client_env(env), COORDINATOR_ENV: self.coordinator}

    def describe(self) -> dict:
        return {"pid": os.getpid(), "coordinator": self.coordinator, "serverip": self.lab.tftp_address,
                "path": self.env()["PATH"], "places": self.boards, "workdir": str(self.workdir)}

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """labgrid-client against this farm."""
        run = subprocess.run([labgrid_tool("labgrid-client"), "--coordinator", self.coordinator, *args],
                             env=self.env(), capture_output=True, text=True, timeout=60)
        if check and run.returncode != 0:
            raise InfrastructureError(f"labgrid-client {' '.join(args)} failed: {(run.stderr or run.stdout).strip()}")
        return run

    # --- children ---------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str]) -> None:
        logfile = (self.workdir / f"{name}.log").open("ab")
        # cwd: the coordinator keeps its places.yaml and resources.yaml in its working directory
        self.processes[name] = subprocess.Popen(dying_with_us(cmd), stdout=logfile, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env() if self.sshd else None,
                                                cwd=self.workdir)
        logfile.close()

    def _await(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while not ready():
            if dead := [c for c in self.processes.values() if c.poll() is not None]:
                raise InfrastructureError(f"{what}: {Path(dead[0].args[0]).name} exited ({dead[0].returncode}); "
                                          f"see {self.workdir}/*.log.")
            if time.monotonic() > deadline:
                raise InfrastructureError(f"{what} within {START_DEADLINE_S:.0f} s: see {self.workdir}/*.log.")
            time.sleep(0.2)

    def _coordinator_answers(self) -> bool:
        host, port = self.coordinator.rsplit(":", 1)
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return True
        return False

    def _exported(self) -> bool:
        run = self.client("resources", check=False)
        return run.returncode == 0 and all(f"{EXPORTER_NAME}/{b}/" in run.stdout for b in self.boards)


# --- a farm of its own: python -m harness.lab.farm ----------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.lab.farm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", action="append", required=True, help="a virtual board, e.g. vboard-arm64")
    parser.add_argument("--state", type=Path, required=True, help="where the farm keeps its files and farm.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="farm: %(message)s", stream=sys.stderr)
    return serve(lambda: LocalFarm(args.board, args.state), functools.partial(announce, args.state / "farm.json"))


def announce(ready: Path, farm: LocalFarm) -> None:
    """farm.json, whole or not at all: readers never see half a description."""
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps(farm.describe()))
    partial.rename(ready)


if __name__ == "__main__":
    sys.exit(main())
