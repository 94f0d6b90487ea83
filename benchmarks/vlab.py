"""How fast a virtual board answers, in figures (speed goals live here, not in timed tests).

    flock /tmp/harness-boots.lock .venv/bin/python benchmarks/vlab.py [--repeat 3]

For each board of harness/lab/vlab.py: seconds from the PDU's "on" request to U-Boot's first byte and to
its `=>` prompt (autoboot interrupted at once); then U-Boot's `tftpb` of the pinned arm64 kernel (about
27 MB) from the lab's in.tftpd, checked by crc32, in MiB/s; and how fast labgrid's SerialDriver reads
the lab's raw serial port compared with a plain socket.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import labgrid  # noqa: E402

from harness.images import Images, load_lock  # noqa: E402
from harness.lab.vlab import BOARDS, VirtualLab  # noqa: E402

PROMPT = re.compile(rb"\n=> ")
LOAD_ADDRESS = 0x40400000


def until(sock: socket.socket, pattern: re.Pattern, timeout: float) -> tuple[bytes, float | None]:
    """Bytes read until `pattern`, and when the first byte came (monotonic)."""
    data, first, deadline = b"", None, time.monotonic() + timeout
    while not pattern.search(data):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the lab closed the serial port")
        first = first or time.monotonic()
        data += chunk
    return data, first


def command(sock: socket.socket, line: str, timeout: float = 120) -> str:
    sock.sendall(line.encode() + b"\n")
    return until(sock, PROMPT, timeout)[0].decode(errors="replace")


def power_on_to_prompt(lab: VirtualLab, name: str, sock: socket.socket) -> tuple[float, float]:
    index = lab.resources(name)["NetworkPowerPort"]["index"]
    started = time.monotonic()
    requests.get(lab.pdu_url.format(index=index, value=1), timeout=60).raise_for_status()
    _, first = until(sock, re.compile(rb"Hit any key to stop autoboot"), 30)
    sock.sendall(b" ")
    until(sock, PROMPT, 10)
    return first - started, time.monotonic() - started


def tftp_rate(lab: VirtualLab, name: str, sock: socket.socket, payload: Path) -> float:
    (lab.tftp_dir(name) / payload.name).symlink_to(payload)  # as labgrid's TFTPProviderDriver stages
    command(sock, "setenv ipaddr 10.0.2.15; setenv netmask 255.255.255.0; setenv gatewayip 10.0.2.2; "
                  f"setenv serverip {lab.tftp_address}")
    started = time.monotonic()
    out = command(sock, f"tftpb {LOAD_ADDRESS:#x} {lab.tftp_dir(name)}/{payload.name}", timeout=300)
    seconds = time.monotonic() - started
    crc = re.search(r"==> ([0-9a-f]{8})", command(sock, f"crc32 {LOAD_ADDRESS:#x} ${{filesize}}"))
    if not crc or int(crc.group(1), 16) != zlib.crc32(payload.read_bytes()):
        raise SystemExit(f"{name}: the fetched kernel's crc32 differs from the host's:\n{out}")
    (lab.tftp_dir(name) / payload.name).unlink()
    return payload.stat().st_size / seconds / (1 << 20)


def labgrid_read_rate(lab: VirtualLab, name: str, workdir: Path) -> tuple[float, float]:
    """KB/s of an `md.b` dump read by labgrid's SerialDriver, then by a plain socket."""
    config = workdir / "env.yaml"
    config.write_text(yaml.safe_dump({"targets": {"main": {"resources": lab.resources(name),
                                                           "drivers": {"SerialDriver": {}}}}}))
    env = labgrid.Environment(config_file=str(config))
    try:
        console = env.get_target("main").get_driver("SerialDriver")
        console.sendline("md.b 0x40000000 0x1000")
        started = time.monotonic()
        _, before, _, _ = console.expect(PROMPT.pattern, timeout=120)
        by_labgrid = len(before) / (time.monotonic() - started) / 1000
    finally:
        env.cleanup()
    with socket.create_connection(("127.0.0.1", lab.serial_port(name)), timeout=5) as sock:
        started = time.monotonic()
        text = command(sock, "md.b 0x40000000 0x1000")
        by_socket = len(text) / (time.monotonic() - started) / 1000
    return by_labgrid, by_socket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kernel = Images().fetch(load_lock()["debian12-arm64"]["kernel"])
    with VirtualLab(list(BOARDS)) as lab, tempfile.TemporaryDirectory() as workdir:
        for name in BOARDS:
            firsts, prompts = [], []
            for _ in range(args.repeat):
                with socket.create_connection(("127.0.0.1", lab.serial_port(name)), timeout=5) as sock:
                    first, prompt = power_on_to_prompt(lab, name, sock)
                    lab.power_off(name)
                firsts.append(first)
                prompts.append(prompt)
            with socket.create_connection(("127.0.0.1", lab.serial_port(name)), timeout=5) as sock:
                power_on_to_prompt(lab, name, sock)
                rate = tftp_rate(lab, name, sock, kernel)
            by_labgrid, by_socket = labgrid_read_rate(lab, name, Path(workdir))
            lab.power_off(name)
            print(f"{name:14} power-on to first byte {statistics.median(firsts):.2f} s, to '=>' "
                  f"{statistics.median(prompts):.2f} s (median of {args.repeat}; max {max(prompts):.2f} s)")
            print(f"{'':14} tftpb {kernel.stat().st_size / 1e6:.1f} MB: {rate:.1f} MiB/s (crc32 checked)")
            print(f"{'':14} serial read of an md.b dump: labgrid SerialDriver {by_labgrid:.1f} KB/s, "
                  f"plain socket {by_socket:.0f} KB/s")


if __name__ == "__main__":
    main()
