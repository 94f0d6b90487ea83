"""The machine's own ACPI tables are a cache entry: verified on every use, captured again when wrong.

The capture itself boots Linux under QEMU (tests/test_acpi.py does that); here a stand-in capture
writes the tables the project captured from that boot, so the key (the real target, QEMU's real
version, the real firmware) and the cache are the code under test, without a boot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from captured import DATA

from harness import acpidump, targets
from harness.cache import Cache, manifest_path, sha256_bytes
from harness.images import Artifact

HOST = DATA / "acpi" / "captured-xen417" / "host"


class Capture:
    """Stands in for the boot: writes the captured host tables into the entry being made, counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, env, kernel: Artifact, initrd: Artifact, out: Path, deadlines) -> None:
        self.calls += 1
        shutil.copytree(HOST, out)


def artifact(name: str, content: bytes) -> Artifact:
    return Artifact(name, Path("/nonexistent") / name, sha256_bytes(content), "user")


@pytest.fixture
def acpi_target() -> targets.TargetSpec:
    return targets.load_spec("qemu-virt-acpi")


def tables(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_tables_are_captured_once_then_come_verified_from_the_cache(tmp_path, acpi_target):
    cache, capture = Cache(tmp_path), Capture()
    kernel, initrd = artifact("kernel", b"kernel"), artifact("initrd", b"initrd")
    first = acpidump.host_tables(acpi_target, kernel, initrd, cache, capturer=capture)
    assert first.parent == tmp_path / "host-acpi" and tables(first) == tables(HOST)
    assert acpidump.host_tables(acpi_target, kernel, initrd, cache, capturer=capture) == first
    assert capture.calls == 1, "verified tables were captured again"
    other = acpidump.host_tables(acpi_target, kernel, artifact("initrd", b"another initrd"), cache, capturer=capture)
    assert other != first and capture.calls == 2, "another initramfs reused the old capture"


def flip_two_bytes(path: Path) -> None:
    """What a probe did to a cached FACP: the boot then failed a passed-through-table check."""
    data = bytearray(path.read_bytes())
    data[40] ^= 0x01
    data[41] ^= 0x80
    path.write_bytes(bytes(data))


DAMAGE = {
    "flip-two-bytes": lambda entry: flip_two_bytes(entry / "FACP"),
    "truncate": lambda entry: (entry / "DSDT").write_bytes((entry / "DSDT").read_bytes()[:100]),
    "delete-table": lambda entry: (entry / "GTDT").unlink(),
    "extra-table": lambda entry: shutil.copyfile(entry / "SPCR", entry / "SSDT"),
    "manifest-flip-digest": lambda entry: manifest_path(entry).write_text(
        manifest_path(entry).read_text().replace("  ", "f  ", 1)[1:]),
    "manifest-deleted": lambda entry: manifest_path(entry).unlink(),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_cached_tables_are_captured_again(tmp_path, acpi_target, how):
    cache, capture = Cache(tmp_path), Capture()
    kernel, initrd = artifact("kernel", b"kernel"), artifact("initrd", b"initrd")
    entry = acpidump.host_tables(acpi_target, kernel, initrd, cache, capturer=capture)
    DAMAGE[how](entry)
    assert cache.lookup("host-acpi", entry.name) is None, f"the tables with {how} were taken as verified"
    again = acpidump.host_tables(acpi_target, kernel, initrd, cache, capturer=capture)
    assert capture.calls == 2, f"the tables with {how} were used without a new capture"
    assert again == entry and tables(again) == tables(HOST)
