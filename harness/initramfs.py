"""A reproducible initramfs: busybox plus images/initramfs/init, as a gzipped newc cpio.

Written in Python rather than with cpio(1) so that every header field is fixed (inode numbers
counted from 1, mtime 0, uid/gid 0) and no host tool or file system detail leaks in: the same
busybox and init give the same bytes, and the cache keys the result by those inputs. Some targets'
dom0 carries more (its network drivers and SSH server, harness/dom0net.py): an `Extra` whose key
names its inputs, so that the cache is looked up without building it.
"""

from __future__ import annotations

import gzip
import posixpath
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache, sha256_bytes
from .elf import Node
from .images import IMAGES_DIR, Artifact

INIT_SCRIPT = IMAGES_DIR / "initramfs" / "init"
ACPI_DUMP = IMAGES_DIR / "initramfs" / "acpi-dump"  # installed as /bin/harness-acpi-dump
FORMAT_VERSION = "2"  # bump when the layout below changes, so cached images are rebuilt

DIRECTORIES = ("bin", "dev", "etc", "proc", "root", "sys", "tmp")
CONSOLE = ("dev/console", 5, 1)  # the kernel opens it before init runs; devtmpfs is not mounted yet


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """Serialise (name, mode, data, (rdev major, minor)) entries as a newc archive with its trailer."""
    out = bytearray()
    for ino, (name, mode, data, (rmajor, rminor)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmajor, rminor, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4)
        out += data + b"\0" * (-len(data) % 4)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


@dataclass(frozen=True)
class Extra:
    """Files beyond busybox, /init and the tools, for the targets that ask for them."""

    key: str  # names every input of the files (the cache key includes it), known without building them
    files: Callable[[], Mapping[str, Node]]  # root-relative path -> file or symlink


def build(busybox: bytes, init: bytes, tools: dict[str, bytes] | None = None,
          files: Mapping[str, Node] | None = None) -> bytes:
    """The archive: the directories, /dev/console, busybox, /init, each tool as /bin/NAME, then `files`
    in path order, each after the directories it needs (the kernel creates no missing parent)."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, stat.S_IFDIR | 0o755, b"", (0, 0)) for d in DIRECTORIES
    ]
    name, major, minor = CONSOLE
    entries.append((name, stat.S_IFCHR | 0o600, b"", (major, minor)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)))
    entries.append(("init", stat.S_IFREG | 0o755, init, (0, 0)))
    entries += [(f"bin/{n}", stat.S_IFREG | 0o755, data, (0, 0)) for n, data in sorted((tools or {}).items())]
    directories = set(DIRECTORIES)
    for path, node in sorted((files or {}).items()):
        parents = []
        parent = posixpath.dirname(path)
        while parent and parent not in directories:
            parents.insert(0, parent)
            directories.add(parent)
            parent = posixpath.dirname(parent)
        entries += [(d, stat.S_IFDIR | 0o755, b"", (0, 0)) for d in parents]
        if node.link is not None:
            entries.append((path, stat.S_IFLNK | 0o777, node.link.encode(), (0, 0)))
        else:
            entries.append((path, stat.S_IFREG | (node.mode & 0o7777), node.data, (0, 0)))
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)


def guest_tools() -> dict[str, bytes]:
    """Scripts the harness runs in its guests, installed in /bin."""
    return {"harness-acpi-dump": ACPI_DUMP.read_bytes()}


def initramfs(busybox: Artifact, cache: Cache, init_script: Path = INIT_SCRIPT, extra: Extra | None = None) -> Artifact:
    """The initramfs for this busybox (and `extra`), a cache entry keyed by its inputs: verified, or built now."""
    init = init_script.read_bytes()
    tools = guest_tools()
    inputs = [FORMAT_VERSION, busybox.sha256, sha256_bytes(init), *(sha256_bytes(t) for t in tools.values())]
    if extra is not None:
        inputs.append(extra.key)
    key = sha256_bytes(":".join(inputs).encode())

    def make(_: Path) -> bytes:
        return build(busybox.path.read_bytes(), init, tools, extra.files() if extra is not None else None)

    entry = cache.entry("initramfs", f"{key[:16]}.cpio.gz", make)
    return Artifact("initrd", entry.path, entry.sha256, "built")
