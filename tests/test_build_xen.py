"""harness.xenbuild for real: fetch, unpack and cross build Debian's Xen source (about half a minute on
2 idle cores, once per session into a private cache; the corrupted-artifact test builds once more).

Every other damage to the entry is shown to be seen (by the cache's own lookup) and then undone, so it
costs no build; the cache's rebuild for each kind of damage is tested in tests/unit/test_cache.py. The
pure parts (build keys, source pins) are unit-tested in tests/unit/test_xenbuild.py.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
from pathlib import Path

import pytest
from unit.tinyfs import python_on_tmpfs

from harness.cache import Cache, manifest_path, sha256_file
from harness.errors import InfrastructureError
from harness.xenbuild import BUILD_SPACE_BYTES, DEFAULT_CONFIG, build_key, build_xen, toolchain_version, xen_source


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("xenbuild-cache"))


@pytest.fixture(scope="session")
def source():
    return xen_source()


@pytest.fixture(scope="session")
def built(cache, source):
    return build_xen(cache, source)


def test_artifact_is_an_arm64_image_that_uefi_can_start(built, source):
    data = built.path.read_bytes()
    assert data[56:60] == b"ARM\x64"  # arm64 Image header: what QEMU's -kernel loads
    # ...and a PE32+ EFI application for arm64: what UEFI starts as BOOTAA64.EFI
    assert data[:2] == b"MZ"
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[pe : pe + 4] == b"PE\0\0"
    assert struct.unpack_from("<H", data, pe + 4)[0] == 0xAA64
    assert struct.unpack_from("<H", data, pe + 24)[0] == 0x20B
    assert struct.unpack_from("<H", data, pe + 24 + 68)[0] == 10  # IMAGE_SUBSYSTEM_EFI_APPLICATION
    assert b"xen,xen-4.17\0" in data
    assert f"{source.version} xen-arm-harness build\0".encode() in data  # printed in the banner
    assert built.sha256 == sha256_file(built.path)
    assert built.origin == f"built xen {source.version} CONFIG_ACPI=y CONFIG_UNSUPPORTED=y"


def test_qemu_starts_it_and_it_prints_its_version(built):
    # No dom0 is given, so Xen stops at "Missing kernel boot module": the banner comes before that.
    cmd = [
        "qemu-system-aarch64", "-machine", "virt,virtualization=on,gic-version=3", "-cpu", "cortex-a57",
        "-m", "1024", "-nographic", "-no-reboot", "-net", "none", "-kernel", str(built.path),
        "-append", "console=dtuart dtuart=/pl011@9000000 bootscrub=0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        seen = b""
        while b"Xen version" not in seen and time.monotonic() < deadline and (line := proc.stdout.readline()):
            seen = line
    finally:
        proc.kill()
        proc.wait()
    assert re.search(rb"\(XEN\) Xen version 4\.17\.\d+ \(Debian 4\.17\.\S+ xen-arm-harness build\)", seen), seen


def test_config_has_acpi_and_unsupported(built):
    config = (built.path.parent / "config").read_text().splitlines()
    assert "CONFIG_ACPI=y" in config
    assert "CONFIG_UNSUPPORTED=y" in config


def test_same_inputs_come_from_the_cache_without_make(cache, source, built):
    first = build_xen(cache, source)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.parent.iterdir()}
    second = build_xen(cache, source)
    assert (second.path, second.sha256) == (first.path, first.sha256)
    assert {p.name: p.stat().st_mtime_ns for p in second.path.parent.iterdir()} == stamps  # no make, no log


def build_log(built) -> Path:
    return built.path.parent.with_name(f"{built.path.parent.name}.log")


@pytest.mark.parametrize("how", ["flip-byte-in-xen", "delete-config", "edit-build.json", "extra-file",
                                 "manifest-flip-digest", "manifest-deleted"])
def test_any_damage_to_the_cached_build_is_seen(cache, built, how):
    entry = built.path.parent
    manifest = manifest_path(entry)
    saved = {p: p.read_bytes() for p in [*entry.iterdir(), manifest]}
    try:
        if how == "flip-byte-in-xen":
            data = bytearray(saved[built.path])
            data[len(data) // 2] ^= 0x01
            built.path.write_bytes(bytes(data))
        elif how == "delete-config":
            (entry / "config").unlink()
        elif how == "edit-build.json":
            (entry / "build.json").write_text(json.dumps({"origin": "built elsewhere"}))
        elif how == "extra-file":
            (entry / "xen.efi").write_bytes(b"a file the build did not make")
        elif how == "manifest-flip-digest":
            manifest.write_text(manifest.read_text().replace("  ", "0  ", 1)[1:])
        else:
            manifest.unlink()
        assert cache.lookup("xen-builds", entry.name) is None, f"the build with {how} was taken as verified"
    finally:
        (entry / "xen.efi").unlink(missing_ok=True)
        for path, data in saved.items():
            path.write_bytes(data)
    assert cache.lookup("xen-builds", entry.name) is not None  # undone: the session's build stays


def test_a_corrupted_artifact_is_rebuilt_to_the_same_bytes(cache, source, built):
    log = build_log(built)
    log_before = log.stat().st_mtime_ns
    good = sha256_file(built.path)
    built.path.write_bytes(b"not xen")
    assert cache.lookup("xen-builds", built.path.parent.name) is None
    rebuilt = build_xen(cache, source)
    assert log.stat().st_mtime_ns > log_before  # make really ran again
    assert rebuilt.path == built.path
    assert rebuilt.sha256 == sha256_file(rebuilt.path) == good  # the build is reproducible
    assert not list(rebuilt.path.parent.parent.glob(".build-*"))  # the temp tree is gone
    assert not list(rebuilt.path.parent.parent.glob(".partial-*"))


def test_an_option_kconfig_drops_is_named(cache, source):
    config = {**DEFAULT_CONFIG, "CONFIG_NO_SUCH_OPTION_XYZ": "y"}
    with pytest.raises(InfrastructureError, match=r"CONFIG_NO_SUCH_OPTION_XYZ=y did not stick") as err:
        build_xen(cache, source, config=config)
    assert "\n" not in str(err.value)
    name = build_key(source, "arm64", config, toolchain_version("arm64"))[:32]
    builds = cache.root / "xen-builds"
    assert "olddefconfig" in (builds / f"{name}.log").read_text()  # the log stays for the user
    assert cache.lookup("xen-builds", name) is None and not (builds / name).exists()
    assert not list(builds.glob(".build-*")) and not list(builds.glob(".partial-*"))


def test_a_full_disk_during_the_build_says_so(cache, source, built):
    """The cache on a real 8 MB file system: the source files (4.9 MB) fit, their unpacked tree does not."""
    root = cache.root.parent / "full-disk-cache"
    code = (
        "import json, shutil\nfrom pathlib import Path\n"
        "from harness.cache import Cache\nfrom harness.errors import InfrastructureError\n"
        "from harness.xenbuild import build_xen, xen_source\n"
        f"root = Path({str(root)!r})\n"
        f"shutil.copytree({str(cache.root / 'sources')!r}, root / 'sources')\n"
        "try:\n    build_xen(Cache(root), xen_source())\n    message = 'built'\n"
        "except InfrastructureError as exc:\n    message = str(exc)\n"
        "print(json.dumps([message, sorted(p.name for p in (root / 'xen-builds').iterdir())]))\n"
    )
    proc = python_on_tmpfs(root, code, size_kb=8192)
    assert proc.returncode == 0, proc.stderr
    message, left = json.loads(proc.stdout)
    name = built.path.parent.name
    assert message.startswith(f"the disk holding the image cache {root} is full (No space left on device "
                              f"writing xen-builds/{name}; it needs about {BUILD_SPACE_BYTES / 1e6:.1f} MB;"), message
    assert "network" not in message and "\n" not in message, message
    assert left == [f"{name}.log"], f"expected only the build's log left, found {left}"


