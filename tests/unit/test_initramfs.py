"""The initramfs is reproducible, reads back with the real cpio(1) as the kernel needs it, and is cached."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness.cache import Cache, manifest_path, sha256_bytes
from harness.elf import Node
from harness.images import Artifact
from harness.initramfs import CONSOLE, DIRECTORIES, INIT_SCRIPT, Extra, build, guest_tools, initramfs

FAKE_BUSYBOX = b"\x7fELF not really busybox, but bytes the archive must carry unchanged\n" * 3
INIT = INIT_SCRIPT.read_bytes()
# cpio -itv --numeric-uid-gid: mode, links, uid, gid, size or "major, minor", date (3 fields), name
LISTING = re.compile(r"^(\S{10})\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+,\s*\d+|\d+)\s+(\w+\s+\d+\s+\S+)\s+(.+)$")


def cpio(archive: bytes, *args: str) -> bytes:
    """Run the real cpio on the gunzipped archive (as the kernel unpacks it)."""
    raw = subprocess.run(["gzip", "-dc"], input=archive, capture_output=True, check=True).stdout
    proc = subprocess.run(["cpio", "--quiet", *args], input=raw, capture_output=True,
                          env={**os.environ, "TZ": "UTC", "LC_ALL": "C"})
    assert proc.returncode == 0, f"cpio {' '.join(args)} failed: {proc.stderr.decode()}"
    return proc.stdout


def listing(archive: bytes) -> dict[str, dict[str, str]]:
    entries = {}
    for line in cpio(archive, "-itv", "--numeric-uid-gid").decode().splitlines():
        m = LISTING.match(line)
        assert m, f"unexpected cpio listing line {line!r}"
        mode, _, uid, gid, size, date, name = m.groups()
        entries[name] = {"mode": mode, "owner": f"{uid}:{gid}", "size": size, "date": " ".join(date.split())}
    return entries


@pytest.fixture(scope="module")
def archive() -> bytes:
    return build(FAKE_BUSYBOX, INIT, guest_tools())


def test_same_inputs_same_bytes_and_init_changes_them(archive):
    assert build(FAKE_BUSYBOX, INIT, guest_tools()) == archive
    other_init = build(FAKE_BUSYBOX, INIT + b"# changed\n")
    other_busybox = build(FAKE_BUSYBOX + b"x", INIT)
    assert len({archive, other_init, other_busybox}) == 3, "a changed input did not change the archive"


def test_cpio_lists_what_the_kernel_needs(archive):
    entries = listing(archive)
    tools = {f"bin/{name}" for name in guest_tools()}
    assert set(entries) == {"init", "bin/busybox", CONSOLE[0], *DIRECTORIES, *tools}, f"found {sorted(entries)}"
    assert entries["init"]["mode"] == "-rwxr-xr-x", f"expected /init mode 755, found {entries['init']['mode']}"
    assert entries["init"]["size"] == str(len(INIT))
    assert entries["bin/busybox"]["mode"] == "-rwxr-xr-x"
    assert entries["bin/busybox"]["size"] == str(len(FAKE_BUSYBOX))
    for name, script in guest_tools().items():
        assert entries[f"bin/{name}"]["mode"] == "-rwxr-xr-x" and entries[f"bin/{name}"]["size"] == str(len(script))
    console = entries[CONSOLE[0]]
    assert console["mode"].startswith("c"), f"expected a char device, found {console['mode']}"
    assert re.sub(r"\s", "", console["size"]) == "5,1", f"expected device 5,1, found {console['size']}"
    for directory in DIRECTORIES:
        assert entries[directory]["mode"] == "drwxr-xr-x", f"{directory}: found {entries[directory]['mode']}"
    for name, entry in entries.items():
        assert entry["owner"] == "0:0", f"{name}: expected owner 0:0, found {entry['owner']}"
        assert entry["date"] == "Jan 1 1970", f"{name}: expected mtime 0 (Jan 1 1970 UTC), found {entry['date']}"


def test_cpio_reads_back_the_file_contents(archive):
    assert cpio(archive, "-i", "--to-stdout", "init") == INIT
    assert cpio(archive, "-i", "--to-stdout", "bin/busybox") == FAKE_BUSYBOX


def test_listing_check_fails_on_a_different_archive(tmp_path):
    """The same cpio checks see a host-made archive's owner and mtime (so they are not vacuous)."""
    (tmp_path / "init").write_bytes(INIT)
    (tmp_path / "init").chmod(0o644)
    raw = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=b"init\n", cwd=tmp_path,
                         capture_output=True, check=True).stdout
    made = subprocess.run(["gzip", "-c"], input=raw, capture_output=True, check=True).stdout
    entry = listing(made)["init"]
    assert entry["mode"] == "-rw-r--r--"
    assert entry["date"] != "Jan 1 1970", entry


def busybox_artifact(tmp_path: Path, data: bytes = FAKE_BUSYBOX) -> Artifact:
    path = tmp_path / "busybox"
    path.write_bytes(data)
    return Artifact("busybox", path, sha256_bytes(data), "user")


def test_initramfs_is_built_once_and_cached_by_inputs(tmp_path):
    cache = Cache(tmp_path / "cache")
    busybox = busybox_artifact(tmp_path)
    init = tmp_path / "init"
    init.write_bytes(INIT)
    first = initramfs(busybox, cache, init)
    assert first.path.read_bytes() == build(FAKE_BUSYBOX, INIT, guest_tools())
    assert first.sha256 == sha256_bytes(first.path.read_bytes())
    os.utime(first.path, ns=(1_000_000_000, 1_000_000_000))  # any rebuild would give it a new mtime
    second = initramfs(busybox, cache, init)
    assert second.path == first.path and second.sha256 == first.sha256
    assert second.path.stat().st_mtime_ns == 1_000_000_000, "the cached initramfs was rebuilt"
    init.write_bytes(INIT + b"# another init\n")
    third = initramfs(busybox, cache, init)
    assert third.path != first.path, "a changed init reused the old image"
    assert third.path.read_bytes() == build(FAKE_BUSYBOX, init.read_bytes(), guest_tools())
    other = initramfs(busybox_artifact(tmp_path, FAKE_BUSYBOX + b"!"), cache, init)
    assert other.path not in (first.path, third.path), "a changed busybox reused an old image"


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete", "manifest-flip-digest", "manifest-deleted"])
def test_corrupt_cached_initramfs_is_rebuilt(tmp_path, damage):
    cache = Cache(tmp_path / "cache")
    busybox = busybox_artifact(tmp_path)
    built = initramfs(busybox, cache)
    good = built.path.read_bytes()
    manifest = manifest_path(built.path)
    assert manifest.read_text() == f"{sha256_bytes(good)}  {built.path.name}\n"
    if damage == "flip-byte":
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        built.path.write_bytes(bytes(bad))
    elif damage == "truncate":
        built.path.write_bytes(good[: len(good) // 3])
    elif damage == "delete":
        built.path.unlink()
    elif damage == "manifest-flip-digest":
        manifest.write_text(("1" if good[:1] == b"0" else "0") * 64 + f"  {built.path.name}\n")
    else:
        manifest.unlink()
    if built.path.exists():
        os.utime(built.path, ns=(1_000_000_000, 1_000_000_000))
    assert cache.lookup("initramfs", built.path.name) is None, f"the {damage} entry was taken as verified"
    again = initramfs(busybox, cache)
    assert again.path == built.path
    assert again.path.read_bytes() == good, f"expected the {damage} entry rebuilt to the same bytes"
    assert again.path.stat().st_mtime_ns != 1_000_000_000, "the damaged entry was returned as is"
    assert again.sha256 == sha256_bytes(good)


# --- what some targets' dom0 carries beyond busybox and /init -------------------------------------

EXTRA_FILES = {
    "usr/sbin/server": Node(0o755, b"\x7fELF a server"),
    "lib/x-linux-gnu/libfoo.so.1": Node(0o777, link="libfoo.so.1.2"),
    "lib/x-linux-gnu/libfoo.so.1.2": Node(0o644, b"a library"),
    "etc/passwd": Node(0o644, b"root:*:0:0:root:/root:/bin/sh\n"),
}


def test_extra_files_keep_their_modes_and_links_and_come_after_their_directories():
    archive = build(FAKE_BUSYBOX, INIT, guest_tools(), EXTRA_FILES)
    assert build(FAKE_BUSYBOX, INIT, guest_tools(), dict(reversed(EXTRA_FILES.items()))) == archive
    names = cpio(archive, "-it").decode().splitlines()
    for name in ("usr", "usr/sbin", "lib", "lib/x-linux-gnu"):
        assert name in names, f"no directory entry {name}: the kernel would not create it ({names})"
    for path in EXTRA_FILES:
        parent = path.rsplit("/", 1)[0]
        assert parent in DIRECTORIES or names.index(parent) < names.index(path), f"{path} before {parent}"
    entries = listing(archive)
    assert entries["usr/sbin/server"]["mode"] == "-rwxr-xr-x"
    assert entries["lib/x-linux-gnu/libfoo.so.1.2"]["mode"] == "-rw-r--r--"
    assert entries["lib/x-linux-gnu/libfoo.so.1 -> libfoo.so.1.2"]["mode"] == "lrwxrwxrwx"
    assert entries["usr"]["mode"] == "drwxr-xr-x" and entries["etc"]["mode"] == "drwxr-xr-x"
    assert names.count("etc") == 1, "etc was listed twice"
    assert cpio(archive, "-i", "--to-stdout", "lib/x-linux-gnu/libfoo.so.1.2") == b"a library"
    assert cpio(archive, "-i", "--to-stdout", "etc/passwd") == EXTRA_FILES["etc/passwd"].data


def test_an_extra_is_keyed_by_its_inputs_and_built_only_on_a_miss(tmp_path):
    cache = Cache(tmp_path / "cache")
    busybox = busybox_artifact(tmp_path)
    builds = []

    def files():
        builds.append(1)
        return EXTRA_FILES

    plain = initramfs(busybox, cache)
    with_extra = initramfs(busybox, cache, extra=Extra("inputs-1", files))
    assert with_extra.path != plain.path, "an initramfs with more files reused the plain one"
    assert with_extra.path.read_bytes() == build(FAKE_BUSYBOX, INIT, guest_tools(), EXTRA_FILES)
    assert initramfs(busybox, cache, extra=Extra("inputs-1", files)).path == with_extra.path
    assert len(builds) == 1, "the extra files were made again although the cache had the initramfs"
    assert initramfs(busybox, cache, extra=Extra("inputs-2", files)).path != with_extra.path
    assert len(builds) == 2
