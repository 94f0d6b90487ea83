"""XenQEMUDriver through real labgrid and real QEMU: start failures, power cycles, no leftovers.

No kernel is booted: a `virt` machine without one runs, silent, which is all these tests need.
Every QEMU started here is stopped in a `finally`, so none outlives the tests.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import labgrid
import libfdt
import pexpect
import pytest

import harness.lab  # noqa: F401  (registers XenQEMUDriver with labgrid)
from harness.errors import InfrastructureError
from harness.lab.qemu import XenQEMUDriver
from harness.plan.dtb import MiB, memory_bank

QEMU = shutil.which("qemu-system-aarch64") or "qemu-system-aarch64"
MACHINE_ARGS = "-machine virtualization=on,gic-version=3 -smp 2 -no-reboot -nic none"
ROOT = Path(__file__).resolve().parents[2]


def env_yaml(tmp_path: Path, extra_args: str = MACHINE_ARGS, qemu: str = QEMU, memory: str = "256M") -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(textwrap.dedent(f"""\
        targets:
          main:
            drivers:
              XenQEMUDriver:
                qemu_bin: qemu-system-aarch64
                machine: virt
                cpu: cortex-a57
                memory: {memory}
                extra_args: {extra_args}
        imports:
          - harness.lab
        tools:
          qemu-system-aarch64: {qemu}
        """))
    return path


def qemu_stderr(args: str) -> str:
    """What QEMU itself prints for these options (measured, so the quote is not assumed)."""
    cmd = [QEMU, *shlex.split(args), "-machine", "virt", "-cpu", "cortex-a57", "-m", "256M", "-display", "none",
           "-S", "-serial", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, f"QEMU accepted {args!r}: the test's bad input is not bad"
    line = proc.stderr.strip().splitlines()[0]
    assert line, "QEMU printed nothing on stderr"
    return line


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def make_env(tmp_path):
    envs: list[labgrid.Environment] = []

    def make(**kwargs) -> tuple[labgrid.Environment, XenQEMUDriver]:
        env = labgrid.Environment(config_file=str(env_yaml(tmp_path, **kwargs)))
        envs.append(env)
        return env, env.get_target("main").get_driver("XenQEMUDriver", activate=False)

    yield make
    for env in envs:
        env.cleanup()


def activate(env: labgrid.Environment, driver: XenQEMUDriver) -> XenQEMUDriver:
    env.get_target("main").activate(driver)
    return driver


# --- start failures -------------------------------------------------------------------------------


def test_invalid_qemu_option_fails_fast_quoting_qemu(make_env):
    env, driver = make_env(extra_args=f"{MACHINE_ARGS} -no-such-option")
    activate(env, driver)
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as info:
        driver.on()
    took = time.monotonic() - started
    assert took < 5, f"expected a failure within 5 s, found {took:.1f} s"
    quote = qemu_stderr("-no-such-option")
    assert quote in str(info.value), f"expected QEMU's own line {quote!r}, found {str(info.value)!r}"
    assert "exit status 1" in str(info.value)
    assert not driver.status and not driver.running()


def test_missing_qemu_binary_says_it_is_not_installed(make_env, tmp_path):
    missing = tmp_path / "bin" / "qemu-system-aarch64"
    env, driver = make_env(qemu=str(missing))
    with pytest.raises(InfrastructureError) as info:
        activate(env, driver)
        driver.on()
    message = str(info.value)
    assert str(missing) in message and "is not installed" in message, message


def test_dump_machine_dtb(make_env, tmp_path):
    _, driver = make_env(memory="384M")
    dtb = driver.dump_machine_dtb(tmp_path / "machine.dtb")
    fdt = libfdt.Fdt(dtb)
    assert fdt.totalsize() == len(dtb)
    assert memory_bank(dtb)[1] == 384 * MiB, f"expected the 384M of the options, found {memory_bank(dtb)}"
    gic = fdt.path_offset("/intc@8000000")
    assert "arm,gic-v3" in fdt.getprop(gic, "compatible").as_stringlist(), "gic-version=3 was not applied"


def test_dump_machine_dtb_quotes_qemu_on_bad_machine_options(make_env, tmp_path):
    bad = "-machine no-such-property=on"
    _, driver = make_env(extra_args=f"{MACHINE_ARGS} {bad}")
    with pytest.raises(InfrastructureError) as info:
        driver.dump_machine_dtb(tmp_path / "machine.dtb")
    quote = qemu_stderr(f"{MACHINE_ARGS} {bad}")
    assert quote in str(info.value), f"expected QEMU's own line {quote!r}, found {str(info.value)!r}"
    assert str(info.value).endswith("fix the target YAML.")
    assert not (tmp_path / "machine.dtb").exists()


# --- power ---------------------------------------------------------------------------------------


def test_power_cycle_and_off_after_qemu_died(make_env):
    env, driver = make_env()
    activate(env, driver)
    driver.on()
    try:
        assert driver.running() and driver.status == 1
        pid = driver._child.pid
        driver.off()
        assert not alive(pid), "off() left QEMU running"
        assert driver.exit_status == 0, f"expected QEMU to quit cleanly, found status {driver.exit_status}"
        driver.off()  # a second off() is harmless
        assert driver.status == 0
        driver.on()
        pid = driver._child.pid
        driver._child.kill()
        driver._child.wait(timeout=5)
        driver.off()  # QEMU already gone: no BrokenPipeError
        assert driver.exit_status == -signal.SIGKILL, f"expected -9, found {driver.exit_status}"
        assert driver.status == 0 and not alive(pid)
    finally:
        if driver._child is not None:
            driver._child.kill()
        driver.off()


def test_console_is_silent_without_a_kernel_and_eof_after_off(make_env):
    env, driver = make_env()
    activate(env, driver)
    driver.on()
    try:
        ready, _, _ = select.select([driver._clientsocket], [], [], 0.3)
        assert not ready, "a machine without a kernel printed on its console"
    finally:
        driver.off()
    with pytest.raises(pexpect.EOF, match="QEMU is not running"):
        driver.read(timeout=0.1)


@pytest.fixture
def private_tmpdir(monkeypatch):
    """A temp dir of this test's own, short enough for a socket path (AF_UNIX allows 108 bytes)."""
    private = Path(tempfile.mkdtemp(prefix="xq-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield private
    shutil.rmtree(private)


def test_console_socket_is_abstract(make_env, private_tmpdir):
    """Nothing reaches the file system: the driver's temp dir (TMPDIR, private here) stays empty."""
    private = private_tmpdir
    env, driver = make_env()
    activate(env, driver)
    driver.on()
    try:
        during = sorted(os.listdir(private))
        with open("/proc/net/unix") as f:
            sockets = f.read()
        assert f"@{driver._sockname}" in sockets, "the console socket is not in the abstract namespace"
    finally:
        driver.off()
        env.cleanup()
    assert during == [], f"on() created files in the temp dir: {during}"
    assert os.listdir(private) == []


def test_the_temp_dir_check_sees_labgrids_own_socket(tmp_path, private_tmpdir):
    """The control: labgrid's QEMUDriver puts its console socket in a temp dir, which the check above sees."""
    private = private_tmpdir
    config = env_yaml(tmp_path)
    config.write_text(config.read_text().replace("XenQEMUDriver", "QEMUDriver"))
    env = labgrid.Environment(config_file=str(config))
    try:
        env.get_target("main").get_driver("QEMUDriver")
        made = sorted(p.relative_to(private).as_posix() for p in private.rglob("*"))
        assert any(name.startswith("labgrid-qemu-tmp-") and name.endswith("/serialrw") for name in made), made
    finally:
        env.cleanup()


CHILD = """
import sys, time
import labgrid
import harness.lab
if sys.argv[2] == "without-pdeathsig":  # the control: the same driver minus the parent-death signal
    harness.lab.process.dying_with_us = lambda cmd: cmd
env = labgrid.Environment(config_file=sys.argv[1])
driver = env.get_target("main").get_driver("XenQEMUDriver")
driver.on()
print(driver._child.pid, flush=True)
time.sleep(60)
"""


def is_qemu(pid: int) -> bool:
    try:
        return alive(pid) and "qemu-system" in Path(f"/proc/{pid}/cmdline").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", ["with-pdeathsig", "without-pdeathsig"])
def test_qemu_dies_with_the_process_that_started_it(tmp_path, mode):
    config = env_yaml(tmp_path)
    cmd = [sys.executable, "-c", CHILD, str(config), mode]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    qemu_pid = None
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not power QEMU on within 30 s"
        qemu_pid = int(child.stdout.readline())
        assert is_qemu(qemu_pid), f"pid {qemu_pid} is not a running QEMU"
        child.kill()  # SIGKILL: no atexit, no cleanup in the child
        child.wait(timeout=5)
        deadline = time.monotonic() + (5 if mode == "with-pdeathsig" else 1)
        while alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if mode == "with-pdeathsig":
            assert not alive(qemu_pid), "QEMU outlived the SIGKILLed process that started it"
        else:
            assert is_qemu(qemu_pid), "without the parent-death signal QEMU died anyway: the check proves nothing"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if qemu_pid and is_qemu(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)


def test_labgrid_is_the_release_this_driver_was_written_against():
    """XenQEMUDriver replaces methods of labgrid's QEMUDriver and uses its internals (see its module)."""
    import labgrid

    from harness.lab.qemu import LABGRID_WRITTEN_FOR

    installed = ".".join(labgrid.__version__.split(".")[:2])
    assert installed == LABGRID_WRITTEN_FOR, (
        f"labgrid {labgrid.__version__} is installed, but harness/lab/qemu.py was written against labgrid "
        f"{LABGRID_WRITTEN_FOR}'s QEMUDriver internals: check each method and attribute its docstring names "
        "against the new QEMUDriver, then update LABGRID_WRITTEN_FOR.")


def test_a_console_reset_under_a_read_or_a_write_is_a_closed_console(make_env):
    """QEMU exiting with console bytes unread resets the socket (ECONNRESET), which is a closed console: EOF, so
    that the harness asks how the machine stopped, never a raw ConnectionResetError."""
    env, driver = make_env()
    activate(env, driver)
    for use in (lambda: driver.read(timeout=1), lambda: driver._send_raw(b"x" * 65536)):
        listener = socket.create_server(("127.0.0.1", 0))
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
        ours.sendall(b"unread by QEMU")  # left unread: closing now sends a reset
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()
        listener.close()
        ours.setblocking(False)
        driver._clientsocket = ours
        try:
            with pytest.raises(pexpect.EOF, match="QEMU closed the console"):
                use()
        finally:
            ours.close()
            driver._clientsocket = None
