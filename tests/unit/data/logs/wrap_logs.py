"""Make the `wrapped-*.log.gz` fixtures: real console logs (the `ending-*` boots) as other tools write them.

    .venv/bin/python tests/unit/data/logs/wrap_logs.py      # needs moreutils (ts) and picocom: apt install them

Each is written by the real tool where one runs here, else by the tool's documented format:

- ts, ts-iso, ts-seconds: moreutils' `ts` (its default "%b %d %H:%M:%S", then '%Y-%m-%dT%H:%M:%.S', then
  `ts -s '[%.s]'`), over ending-login;
- labgrid-serial-logger, labgrid-console-log: labgrid's own SerialLoggingReporter (its StepLogger, as `pytest
  --lg-log`'s log records show console reads) and ConsoleLoggingReporter (`--lg-log` DIR's console file), both
  reading ending-watchdog through labgrid's ExternalConsoleDriver (`zcat`);
- picocom: picocom 3.1 on a pseudo-terminal that carries ending-poweroff, its output captured by util-linux
  `script` (its header and its "Terminating..." lines included);
- lava: LAVA's job log schema (lava_dispatcher's YAML logger: one `- {dt, lvl, msg}` flow mapping a line, the
  target's console as lvl "target" lines between its own "info"/"debug" lines), over ending-watchdog;
- jenkins: a Jenkins pipeline console (`[Pipeline]` step lines and a shell step's `+ command`), over ending-poweroff;
- email: ending-init-exits quoted by `sed 's/^/> /'`, as a mail reply quotes it.
"""

from __future__ import annotations

import datetime
import gzip
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def ending(name: str) -> bytes:
    return gzip.decompress((HERE / f"ending-{name}.log.gz").read_bytes())


def save(name: str, data: bytes) -> None:
    (HERE / f"wrapped-{name}.log.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"wrapped-{name}.log.gz: {len(data)} bytes")


def pipe(command: list[str], data: bytes) -> bytes:
    return subprocess.run(command, input=data, capture_output=True, check=True).stdout


def labgrid(name: str, work: Path) -> tuple[bytes, bytes]:
    """(the serial logger's log, the --lg-log console file) of labgrid reading ending NAME through zcat."""
    import logging

    from labgrid import Environment  # noqa: F401 (registers the drivers)
    from labgrid.consoleloggingreporter import ConsoleLoggingReporter
    from labgrid.driver import ExternalConsoleDriver
    from labgrid.logging import StepLogger, basicConfig
    from labgrid.target import Target

    logfile = work / "labgrid.log"
    basicConfig(level=logging.CONSOLE, filename=str(logfile))
    StepLogger.start()
    ConsoleLoggingReporter.start(str(work / "lg-log"))
    target = Target("main")
    # the child stays a while after its output: labgrid takes a child that has gone for an error
    os.chdir(HERE)  # the command, in every log line, names no directory of this machine
    console = ExternalConsoleDriver(target, "console", cmd=f"sh -c 'zcat ending-{name}.log.gz; sleep 5'")
    target.activate(console)
    deadline = time.monotonic() + 30
    size = len(ending(name))
    got = 0
    while got < size and time.monotonic() < deadline:
        got += len(console.read(size=4096, timeout=0.5))
    StepLogger._serial_logger.flush()
    target.deactivate(console)
    ConsoleLoggingReporter.stop()
    StepLogger.stop()
    logging.shutdown()
    return logfile.read_bytes(), (work / "lg-log" / "console_main_console").read_bytes()


def picocom(data: bytes) -> bytes:
    """picocom on a pseudo-terminal whose other side writes `data`, as `script` records its terminal."""
    master, slave = pty.openpty()
    tty = os.ttyname(slave)
    out = bytearray()
    with tempfile.TemporaryDirectory() as tmp:
        typescript = Path(tmp) / "typescript"
        term = subprocess.Popen(["script", "-q", "-c", f"picocom -b 115200 --exit-after 1500 {tty}", str(typescript)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        os.write(master, data.replace(b"\r\r\n", b"\r\n"))  # a UART has no second CR: Xen adds it for hvc0 only
        deadline = time.monotonic() + 30
        while term.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                out += os.read(master, 65536)
        if term.poll() is None:
            term.kill()
        os.close(master)
        os.close(slave)
        return typescript.read_bytes()


def lava(data: bytes) -> bytes:
    start = datetime.datetime(2026, 12, 3, 12, 0, 0)

    def entry(seconds: float, lvl: str, msg: str) -> str:
        dt = (start + datetime.timedelta(seconds=seconds)).isoformat()
        return "- " + yaml.safe_dump({"dt": dt, "lvl": lvl, "msg": msg}, default_flow_style=True, width=10**6,
                                     sort_keys=False).rstrip("\n") + "\n"

    lines = [entry(0, "info", "start: 2.1 qemu-boot (timeout 00:05:00) [common]"),
             entry(0.1, "debug", "boot command: qemu-system-aarch64 -machine virt,virtualization=on ...")]
    for i, line in enumerate(data.decode("utf-8", "replace").split("\n")):
        line = line.rstrip("\r")
        if line:
            lines.append(entry(1 + i / 100, "target", line))
    lines.append(entry(30, "error", "qemu-boot timed out after 300 seconds"))
    return "".join(lines).encode()


def jenkins(data: bytes) -> bytes:
    head = (b"Started by timer\n[Pipeline] Start of Pipeline\n[Pipeline] node\nRunning on lab-2 in /var/lib/jenkins/"
            b"workspace/xen-arm-nightly\n[Pipeline] {\n[Pipeline] stage\n[Pipeline] { (boot qemu-virt)\n[Pipeline] sh\n"
            b"+ ./run boot --target qemu-virt\n")
    tail = (b"\n[Pipeline] }\n[Pipeline] // stage\n[Pipeline] }\n[Pipeline] // node\n[Pipeline] End of Pipeline\n"
            b"Finished: SUCCESS\n")
    return head + data + tail


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="harness-wrap-") as tmp:
        work = Path(tmp)
        save("ts", pipe(["ts"], ending("login")))
        save("ts-iso", pipe(["ts", "%Y-%m-%dT%H:%M:%.S"], ending("login")))
        save("ts-seconds", pipe(["ts", "-s", "[%.s]"], ending("login")))
        serial, console = labgrid("watchdog", work)
        save("labgrid-serial-logger", serial)
        save("labgrid-console-log", console)
        save("picocom", picocom(ending("poweroff")))
        save("lava", lava(ending("watchdog")))
        save("jenkins", jenkins(ending("poweroff")))
        save("email", pipe(["sed", "s/^/> /"], ending("init-exits")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
