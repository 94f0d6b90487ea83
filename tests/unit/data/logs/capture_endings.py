"""Capture the real boots behind the `ending-*.log.gz` fixtures: how a boot ends, offline.

    flock /tmp/harness-boots.lock .venv/bin/python tests/unit/data/logs/capture_endings.py [NAME ...]

Each ending boots qemu-virt for real (Debian's Xen 4.17 and cloud kernel, `harness boot --initrd`), with dom0's
initramfs built by harness/initramfs.py from the pinned busybox and images/initramfs/init, whose last line
(`exec setsid cttyhack sh`) is replaced by the ending's own lines. The target is qemu-virt with its
"where is it?" probes off (a probe would type Xen's debug keys into the log) and a short silence deadline:
these boots never reach the harness's own prompt. The console log, exactly as captured, is gzipped here.

- login:        busybox getty on hvc0 prints "dom0 login: " and waits
- poweroff:     dom0 says it is ready, then `poweroff -f`: "reboot: Power down", Xen's "Hardware Dom0 halted"
- watchdog:     dom0 loads xen_wdt (timeout=5, from the kernel package), opens /dev/watchdog and never pets
                it, then gives its shell: 5 s later Xen's "Watchdog timer fired for domain 0"
- init-exits:   /init exits: "Kernel panic - not syncing: Attempted to kill init!"

A getty waits for ever: its boot is interrupted (SIGINT to `harness boot`, which stops QEMU) 2 s after its
"login: " reaches the console log, before the harness's silence deadline would press Xen's debug keys.
"""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from harness import dom0net, initramfs  # noqa: E402
from harness.images import Images  # noqa: E402
from harness.targets import TargetSpec, load_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
SHELL = "exec setsid cttyhack sh"
WATCHDOG_SECONDS = 5

ENDINGS = {
    "login": 'hostname dom0\nexec setsid getty -L 0 hvc0 vt100\n',
    "poweroff": 'sleep 1\npoweroff -f\n',
    "watchdog": (
        "while read -r module; do\n"
        f'    case "$module" in */xen_wdt.ko) insmod "$module" timeout={WATCHDOG_SECONDS} ;;\n'
        '                      *) insmod "$module" ;; esac\n'
        f"done < /{dom0net.MODULE_LIST}\n"
        "(exec 3>/dev/watchdog; exec sleep 3600) &\n"
        f"{SHELL}\n"
    ),
    "init-exits": "exit 1\n",
}
STOP_AFTER = {"login": b"login: "}  # endings that wait for ever: the console text to interrupt the boot after
STOP_DELAY = 2.0


def init_script(ending: str) -> bytes:
    init = initramfs.INIT_SCRIPT.read_text()
    assert init.rstrip().endswith(SHELL), "images/initramfs/init no longer ends with its shell: update this tool"
    return (init.rstrip()[: -len(SHELL)] + ENDINGS[ending]).encode()


def target_yaml(work: Path) -> Path:
    """qemu-virt without probes, hung after 20 s of silence: the ending is in the log, not the harness's keys."""
    data = yaml.safe_load((ROOT / "targets" / "qemu-virt.yaml").read_text())
    data["harness"]["deadlines"] = {"boot": 120, "silence": 20, "probe": 0}
    path = work / "qemu-virt-endings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # labgrid binds drivers in order
    return path


def initrd(spec: TargetSpec, images: Images, ending: str, work: Path) -> Path:
    arts = images.artifacts(spec.images)
    files = {}
    if ending == "watchdog":
        files = dom0net.module_files(images, images.locked(spec.images)["kernel"], ("xen_wdt",))
    busybox = arts["busybox"].path.read_bytes()
    path = work / f"{ending}.cpio.gz"
    path.write_bytes(initramfs.build(busybox, init_script(ending), initramfs.guest_tools(), files))
    return path


def capture(ending: str, work: Path) -> Path:
    target = target_yaml(work)
    spec = load_spec(str(target))
    images = Images()
    artifacts = work / ending
    boot = subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--target", str(target),
                             "--initrd", str(initrd(spec, images, ending, work)), "--artifacts", str(artifacts)],
                            cwd=ROOT)
    console, deadline = artifacts / "console.log", time.monotonic() + 300
    while boot.poll() is None and time.monotonic() < deadline:
        if ending in STOP_AFTER and console.exists() and STOP_AFTER[ending] in console.read_bytes():
            time.sleep(STOP_DELAY)
            boot.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    try:
        boot.wait(timeout=60)
    except subprocess.TimeoutExpired:
        boot.kill()
        raise
    out = HERE / f"ending-{ending}.log.gz"
    out.write_bytes(gzip.compress((artifacts / "console.log").read_bytes(), compresslevel=9, mtime=0))
    return out


def main() -> int:
    names = sys.argv[1:] or list(ENDINGS)
    if unknown := [n for n in names if n not in ENDINGS]:
        print(f"unknown ending(s) {', '.join(unknown)}: choose from {', '.join(ENDINGS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="harness-endings-") as tmp:
        for name in names:
            print(f"captured {capture(name, Path(tmp))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
