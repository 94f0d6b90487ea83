"""ACPI tables out of a running guest: the ones Xen built for dom0, and the machine's own.

Linux exposes every table in /sys/firmware/acpi/tables, which /bin/harness-acpi-dump (in the
harness's initramfs) copies; but not the RSDP and the XSDT, and Debian's STRICT_DEVMEM keeps
/dev/mem from them. /proc/kcore reaches them: its program headers map physical addresses
(p_paddr) to file offsets, and the kernel's log says where the two are ("ACPI: RSDP 0x… 000024").
Under Xen that is the only way: dom0's ACPI tables live in pages Xen maps at dom0's grant-table
address, not 1:1 with the machine.

The machine's own tables ("host" tables, to tell what Xen rewrote from what it passed through)
come from booting the same QEMU machine and firmware with Linux alone and the same capture; they
depend only on those inputs, so each capture is a cache entry keyed by them, verified on every use.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import labgrid

from .cache import Cache, sha256_bytes, sha256_file
from .errors import InfrastructureError, UsageError
from .guest import GuestShell, ProbeError
from .images import Artifact
from .lab.strategy import Status
from .monitor import BootFailure
from .targets import Deadlines, GuestSpec, TargetSpec
from .validate.acpi import TABLE_NAME

log = logging.getLogger(__name__)

POINTER = re.compile(r"ACPI: (RSDP|XSDT) 0x([0-9A-Fa-f]+) ([0-9A-Fa-f]+) ")
KCORE_HEADER_BYTES = 65536  # the ELF header and every program header of /proc/kcore
# Linux alone on the machine, playing dom0's part so that the target's dom0 ShellDriver talks to it.
HOST_CMDLINE = "console=ttyAMA0 acpi=force rdinit=/init guest=dom0"
# (environment, kernel, initrd, the directory to write, deadlines): what a capture of the host's tables runs
HostCapture = Callable[[labgrid.Environment, Artifact, Artifact, Path, Deadlines], None]
CAPTURE_VERSION = "3"  # bump when what a capture holds changes (3: the cache's manifest, no .complete)


def pointers(kernel_log: list[str]) -> dict[str, tuple[int, int]]:
    """Where the kernel's log says the RSDP and the XSDT are: name -> (physical address, length)."""
    found = {}
    for line in kernel_log:
        if m := POINTER.search(line):
            found.setdefault(m.group(1), (int(m.group(2), 16), int(m.group(3), 16)))
    return found


def kcore_offset(header: bytes, paddr: int, length: int) -> int | None:
    """The /proc/kcore file offset of physical [paddr, paddr+length), from its ELF program headers."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return None
    phoff, = struct.unpack_from("<Q", header, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 56 > len(header):
            return None
        p_type, _, p_offset, _, p_paddr, _, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", header, at)
        if p_type == 1 and p_paddr != 2**64 - 1 and p_paddr <= paddr and paddr + length <= p_paddr + p_memsz:
            return p_offset + (paddr - p_paddr)
    return None


def unpack(tar: bytes, dest: Path) -> list[str]:
    """The regular files of a tar made by harness-acpi-dump, flat into `dest`; their names."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            path = Path(member.name)
            name = path.name
            top_level = path.parent in (Path("."), Path(""))  # sysfs's data/ and dynamic/ hold no tables
            if member.isfile() and top_level and TABLE_NAME.match(name):
                (dest / name).write_bytes(archive.extractfile(member).read())
                names.append(name)
    return sorted(names)


def capture(shell: GuestShell, dest: Path, kernel_log: list[str]) -> list[str]:
    """Every ACPI table the guest was given, RSDP and XSDT included, as files in `dest`; their names.
    `kernel_log` is the guest's dmesg, which says where the RSDP and the XSDT are."""
    if not shell.run("command -v harness-acpi-dump", check=False):
        raise UsageError(f"{shell.guest}'s initramfs has no /bin/harness-acpi-dump: ACPI targets need the "
                         "harness's initramfs (leave out --initrd).")
    shell.run("harness-acpi-dump /tmp/acpi && tar -cf /tmp/acpi.tar -C /tmp/acpi .", timeout=60)
    names = unpack(shell.read_file("/tmp/acpi.tar"), dest)
    shell.run(f"dd if=/proc/kcore of=/tmp/kcore.head bs={KCORE_HEADER_BYTES} count=1 2>/dev/null")
    header = shell.read_file("/tmp/kcore.head")
    for name, (paddr, length) in pointers(kernel_log).items():
        offset = kcore_offset(header, paddr, length)
        if offset is None or not 0 < length <= 4096:
            continue
        shell.run(f"dd if=/proc/kcore of=/tmp/{name} bs=1 skip={offset} count={length} 2>/dev/null")
        (dest / name).write_bytes(shell.read_file(f"/tmp/{name}"))
        names.append(name)
    return sorted(names)


def read_physical(shell: GuestShell, paddr: int, length: int, name: str) -> bytes | None:
    """[paddr, paddr+length) of a guest's physical memory that its kernel maps (RAM, ACPI reclaim), through
    /proc/kcore; None when kcore does not map it. Its first page holds every program header but on a machine
    with dozens of memory regions: the whole KCORE_HEADER_BYTES is read only then (each byte crosses a console)."""
    offset = None
    for size in (4096, KCORE_HEADER_BYTES):
        shell.run(f"dd if=/proc/kcore of=/tmp/kcore.{size} bs={size} count=1 2>/dev/null")
        header = shell.read_file(f"/tmp/kcore.{size}")
        if (offset := kcore_offset(header, paddr, length)) is not None or not _headers_cut(header):
            break
    if offset is None:
        return None
    shell.run(f"dd if=/proc/kcore of=/tmp/{name} bs=1 skip={offset} count={length} 2>/dev/null")
    return shell.read_file(f"/tmp/{name}")


def _headers_cut(header: bytes) -> bool:
    """The ELF program headers run past the bytes read."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return False
    phoff, = struct.unpack_from("<Q", header, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    return phoff + phentsize * phnum > len(header)


def host_tables(
    spec: TargetSpec, kernel: Artifact, initrd: Artifact, cache: Cache, capturer: HostCapture | None = None
) -> Path:
    """The machine's own ACPI tables (RSDP and XSDT included), verified from the cache or captured now.
    `capturer` replaces the boot that captures them (tests)."""
    env = labgrid.Environment(config_file=str(spec.path))
    try:
        qemu = env.get_target("main").get_driver("XenQEMUDriver", activate=False)
        firmware = Path(env.config.get_image_path(qemu.bios))
        if not firmware.is_file():
            raise InfrastructureError(f"{firmware}, the target's firmware, is missing: install Debian's "
                                      "qemu-efi-aarch64 (./run does it).")
        inputs = [CAPTURE_VERSION, qemu.qemu_version(), *qemu.machine_args()[1:],
                  sha256_file(firmware), kernel.sha256, initrd.sha256]
        key = sha256_bytes("\0".join(inputs).encode())[:16]
        deadlines = Deadlines.from_config(spec.deadlines)

        def capture_tables(out: Path) -> None:
            log.info("reading the machine's own ACPI tables: booting Linux on it without Xen")
            (capturer or _capture_host)(env, kernel, initrd, out, deadlines)

        return cache.entry("host-acpi", key, capture_tables).path
    finally:
        env.cleanup()


def _capture_host(env, kernel: Artifact, initrd: Artifact, out: Path, deadlines: Deadlines) -> None:
    """Boot Linux alone on the target's machine (its own strategy, without Xen) and capture its tables
    into the directory `out`."""
    target = env.get_target("main")
    qemu = target.get_driver("XenQEMUDriver", activate=False)
    env.config.data.setdefault("images", {})["host-kernel"] = str(kernel.path)
    qemu.kernel, qemu.dtb, qemu.boot_args = "host-kernel", None, HOST_CMDLINE
    qemu.loader_args = ["-initrd", str(initrd.path)]
    strategy = target.get_driver("XenStrategy")
    strategy.hypervisor = False
    strategy.guests = [GuestSpec("dom0", 0, HOST_CMDLINE)]  # Linux plays dom0's part: its shell driver and prompt
    strategy.deadlines = deadlines
    try:
        strategy.transition(Status.shell)
        machine = GuestShell(strategy.shell("dom0"), "the machine's Linux", strategy.monitor)
        names = capture(machine, out, machine.run("dmesg", timeout=60))
    except (BootFailure, ProbeError) as exc:
        raise InfrastructureError(f"reading the machine's own ACPI tables failed: {exc}") from None
    finally:
        strategy.transition(Status.off)
    if not names:
        raise InfrastructureError("the machine's Linux showed no ACPI tables: check that the target's firmware "
                                  "gives ACPI (an edk2 build such as Debian's qemu-efi-aarch64).")
