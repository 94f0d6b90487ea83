"""Fetching pinned images from the real Debian archive into a verified cache, and every way it can fail.

These tests download busybox-static (0.8 MB) a few times from deb.debian.org; nothing bigger.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tinyfs import python_on_tmpfs

from harness.cache import Cache, manifest_path, sha256_bytes, sha256_file
from harness.errors import InfrastructureError, UnusableInput, UsageError
from harness.images import (
    LOCK,
    RELOCK_COMMAND,
    Images,
    LockedArtifact,
    StaleLock,
    extract,
    load_lock,
    load_manifest,
    release_archive,
    user_artifact,
)

PROFILE = "debian12-arm64"
OLD_MTIME_NS = 1_000_000_000


@pytest.fixture(scope="module")
def busybox() -> LockedArtifact:
    return load_lock()[PROFILE]["busybox"]


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, busybox) -> tuple[Cache, Path]:
    """One real download shared by the tests that do not test downloading itself."""
    cache = Cache(tmp_path_factory.mktemp("cache"))
    return cache, Images(cache).fetch(busybox)


@pytest.fixture(scope="module")
def deb(fetched, busybox) -> Path:
    cache, _ = fetched
    return cache.dir("debs") / f"{busybox.deb_sha256[:16]}-{busybox.package}.deb"


@pytest.fixture(scope="module")
def local_deb(tmp_path_factory) -> LockedArtifact:
    """A real .deb built here by dpkg-deb (200 KB of random bytes, so it does not compress), pinned as the
    lock pins Debian's and served by apt's copy:// method (file:// would only symlink it): no network."""
    work = tmp_path_factory.mktemp("local-deb")
    tree = work / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: harness-payload\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: xen-arm-harness <harness@localhost>\nDescription: a test payload\n"
    )
    payload = tree / "usr" / "share" / "harness-payload" / "payload"
    payload.parent.mkdir(parents=True)
    payload.write_bytes(os.urandom(200_000))
    deb = work / "harness-payload_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb], check=True, capture_output=True)
    return LockedArtifact("payload", "harness-payload", "1.0", f"copy://{deb}", sha256_file(deb),
                          deb.stat().st_size, "usr/share/harness-payload/payload", sha256_file(payload))


def seeded(tmp_path: Path, deb: Path) -> Cache:
    """A fresh cache that already holds the verified .deb entry (no download needed)."""
    cache = Cache(tmp_path / "cache")
    for path in (deb, manifest_path(deb)):
        shutil.copyfile(path, cache.dir("debs") / path.name)
    return cache


def leftovers(cache: Cache) -> list[str]:
    return sorted(p.name for p in cache.root.rglob(".partial-*"))


# --- fetch and the cache ------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_returns_the_locked_file(fetched, busybox, deb):
    cache, path = fetched
    assert path.is_file() and path.is_relative_to(cache.root)
    assert sha256_file(path) == busybox.file_sha256, "the cached file is not the one the lock pins"
    assert sha256_file(deb) == busybox.deb_sha256 and deb.stat().st_size == busybox.deb_size
    assert leftovers(cache) == []


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "remove"])
def test_damaged_file_is_detected_and_extracted_again(fetched, busybox, deb, damage):
    cache, path = fetched
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip-byte":
        bad = bytearray(good)
        bad[12345] ^= 0x01
        path.write_bytes(bytes(bad))
    else:
        path.unlink()
    os.utime(deb, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    again = Images(cache).fetch(busybox)
    assert again == path
    assert sha256_file(again) == busybox.file_sha256, f"expected the {damage} file restored"
    assert deb.stat().st_mtime_ns == OLD_MTIME_NS, "the verified .deb was downloaded again for nothing"


def test_damaged_deb_is_downloaded_again(tmp_path, busybox, deb):
    cache = seeded(tmp_path, deb)
    cached_deb = cache.dir("debs") / deb.name
    cached_deb.write_bytes(cached_deb.read_bytes()[:-1000])  # a download cut short
    path = Images(cache).fetch(busybox)
    assert sha256_file(path) == busybox.file_sha256
    assert sha256_file(cached_deb) == busybox.deb_sha256, "expected the damaged .deb replaced by a good one"
    assert leftovers(cache) == []


def test_partial_leftovers_are_not_entries(tmp_path, busybox, deb):
    cache = Cache(tmp_path / "cache")
    good_deb = deb.read_bytes()
    debs, files = cache.dir("debs"), cache.dir("files")
    # A killed download (garbage then half the package) and a killed store (all of the right bytes).
    partial_deb = debs / f".partial-{deb.name}-0a1b2c3d"
    partial_deb.write_bytes(os.urandom(512) + good_deb[: len(good_deb) // 2])
    partial_file = files / ".partial-k1ll3d"
    partial_file.write_bytes(extract(deb, busybox.file)[1])
    path = Images(cache).fetch(busybox)
    assert not path.name.startswith(".partial-")
    assert sha256_file(path) == busybox.file_sha256
    assert sha256_file(debs / deb.name) == busybox.deb_sha256
    # Left for the sweep (an hour on): young ones may be another writer's.
    assert leftovers(cache) == sorted([partial_deb.name, partial_file.name])


def test_a_pin_gone_from_the_archive_is_a_stale_lock(tmp_path, busybox):
    gone = dataclasses.replace(
        busybox,
        version="0.0-0",
        url=busybox.url.rsplit("/", 1)[0] + "/busybox-static_0.0-0_arm64.deb",
        deb_sha256=sha256_bytes(b"a version that never existed"),
    )
    cache = Cache(tmp_path / "cache")
    with pytest.raises(StaleLock) as info:
        Images(cache).fetch(gone)
    assert isinstance(info.value, InfrastructureError)
    message = str(info.value)
    assert "no longer in the Debian archive" in message and gone.url in message, message
    assert f"run `{RELOCK_COMMAND}`" in message and RELOCK_COMMAND == "./run images lock", message
    assert leftovers(cache) == [] and list(cache.dir("debs").iterdir()) == []


def test_other_bytes_than_the_lock_says_are_refused(tmp_path, busybox):
    wrong = sha256_bytes(b"not the package")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(InfrastructureError) as info:
        Images(cache).fetch(dataclasses.replace(busybox, deb_sha256=wrong))
    assert not isinstance(info.value, StaleLock)
    message = str(info.value)
    assert f"does not match the lock's SHA256 {wrong}" in message and "other bytes" in message, message
    assert leftovers(cache) == [] and list(cache.dir("debs").iterdir()) == [], "the refused bytes were kept"


def test_a_file_that_disagrees_with_the_lock_is_refused(tmp_path, busybox, deb):
    cache = seeded(tmp_path, deb)
    wrong = sha256_bytes(b"another busybox")
    with pytest.raises(InfrastructureError) as info:
        Images(cache).fetch(dataclasses.replace(busybox, file_sha256=wrong))
    message = str(info.value)
    assert f"the lock says {wrong}" in message and busybox.file_sha256 in message, message
    assert RELOCK_COMMAND in message
    assert list(cache.dir("files").iterdir()) == [], "the disagreeing file was stored"


def damage(path: Path, how: str) -> None:
    """One real way a cached file or its manifest goes bad."""
    manifest = manifest_path(path)
    if how == "flip-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:-1000])
    elif how == "delete":
        path.unlink()
    elif how == "manifest-flip-digest":
        text = manifest.read_text()
        manifest.write_text(text[:10] + ("a" if text[10] != "a" else "b") + text[11:])
    elif how == "manifest-deleted":
        manifest.unlink()
    else:
        raise AssertionError(how)


LOCAL_DAMAGE = ["flip-byte", "truncate", "delete", "manifest-flip-digest", "manifest-deleted"]


@pytest.mark.parametrize("how", LOCAL_DAMAGE)
def test_a_damaged_cached_deb_is_downloaded_again(tmp_path, local_deb, how):
    images = Images(Cache(tmp_path / "cache"))
    deb = images.fetch_deb(local_deb)
    damage(deb, how)
    if deb.exists():
        os.utime(deb, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    assert images.cache.lookup("debs", deb.name, local_deb.deb_sha256) is None, f"the {how} .deb was trusted"
    assert images.fetch_deb(local_deb) == deb
    assert sha256_file(deb) == local_deb.deb_sha256 and deb.stat().st_size == local_deb.deb_size
    assert images.cache.lookup("debs", deb.name, local_deb.deb_sha256) is not None
    # Only the manifest was wrong: the .deb is still its pin, so it gets a manifest, not a download.
    kept = deb.stat().st_mtime_ns == OLD_MTIME_NS
    assert kept == how.startswith("manifest"), f"{how}: the .deb was {'kept' if kept else 'downloaded again'}"


@pytest.mark.parametrize("how", LOCAL_DAMAGE)
def test_a_damaged_extracted_file_is_extracted_again_from_the_verified_deb(tmp_path, local_deb, how):
    images = Images(Cache(tmp_path / "cache"))
    path = images.fetch(local_deb)
    deb = images.fetch_deb(local_deb)
    os.utime(deb, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    damage(path, how)
    assert images.cache.lookup("files", path.name, local_deb.file_sha256) is None, f"the {how} file was trusted"
    assert images.fetch(local_deb) == path and sha256_file(path) == local_deb.file_sha256
    assert images.cache.lookup("files", path.name, local_deb.file_sha256) is not None
    assert deb.stat().st_mtime_ns == OLD_MTIME_NS, "the verified .deb was downloaded again for nothing"


def test_a_full_disk_while_downloading_says_so(tmp_path, local_deb):
    cache = tmp_path / "cache"
    code = (
        "import json, sys\n"
        "from harness.cache import Cache\n"
        "from harness.errors import InfrastructureError\n"
        "from pathlib import Path\n"
        "from harness.images import Images, LockedArtifact\n"
        f"entry = LockedArtifact(**json.loads({json.dumps(json.dumps(dataclasses.asdict(local_deb)))}))\n"
        f"try:\n    Images(Cache(Path({str(cache)!r}))).fetch_deb(entry)\n"
        "except InfrastructureError as exc:\n    print(exc)\n"
    )
    proc = python_on_tmpfs(cache, code, size_kb=64)  # the .deb is over 200 KB
    message = proc.stdout.strip()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert message.startswith(f"the disk holding the image cache {cache} is full"), message
    assert f"needs about {local_deb.deb_size / 1e6:.1f} MB" in message, message
    assert "network" not in message and message.endswith("."), message


# --- extract ------------------------------------------------------------------------------------


def test_extract_takes_exactly_one_member(deb, busybox):
    member, data = extract(deb, busybox.file)
    assert member == "bin/busybox" and sha256_bytes(data) == busybox.file_sha256
    member, _ = extract(deb, "bin/busy*")
    assert member == "bin/busybox"


def test_extract_pattern_matching_nothing(deb):
    with pytest.raises(InfrastructureError) as info:
        extract(deb, "boot/vmlinuz-*")
    message = str(info.value)
    assert "'boot/vmlinuz-*'" in message and "holds nothing" in message and deb.name in message, message


def test_extract_pattern_matching_two_files(deb):
    with pytest.raises(InfrastructureError) as info:
        extract(deb, "usr/share/doc/busybox-static/changelog.Debian*")
    message = str(info.value)
    assert "'usr/share/doc/busybox-static/changelog.Debian*'" in message, message
    for member in ("changelog.Debian.gz", "changelog.Debian.arm64.gz"):
        assert f"usr/share/doc/busybox-static/{member}" in message, message


# --- artifacts, overrides, the lock --------------------------------------------------------------


def test_user_artifact_missing_names_the_option(tmp_path):
    missing = tmp_path / "xen" / "xen"
    with pytest.raises(UnusableInput) as info:
        user_artifact("xen", missing)
    message = str(info.value)
    assert message.startswith(f"--xen {missing}: no such file") and message.endswith("."), message


def test_user_artifact_of_a_directory_is_refused(tmp_path):
    with pytest.raises(UnusableInput, match=r"^--kernel .* is a directory: give the kernel image file"):
        user_artifact("kernel", tmp_path)


def test_user_artifact_measures_the_file(tmp_path):
    path = tmp_path / "Image"
    path.write_bytes(b"my kernel")
    art = user_artifact("kernel", path)
    assert (art.path, art.sha256, art.origin) == (path.resolve(), sha256_bytes(b"my kernel"), "user")


def test_overrides_replace_locked_artifacts_without_fetching(tmp_path):
    locked = load_lock()[PROFILE]
    overrides = {}
    for name in [*locked, "initrd"]:
        overrides[name] = tmp_path / name
        overrides[name].write_bytes(name.encode())
    cache = Cache(tmp_path / "cache")
    arts = Images(cache).artifacts(PROFILE, {**overrides, "unused": None})
    assert set(arts) == set(overrides)
    assert all(a.origin == "user" and a.sha256 == sha256_bytes(a.name.encode()) for a in arts.values())
    assert not (cache.root / "debs").exists(), "an overridden artifact was fetched anyway"


def test_unknown_profile_lists_the_profiles(tmp_path):
    with pytest.raises(UsageError) as info:
        Images(Cache(tmp_path)).artifacts("debian13-riscv")
    message = str(info.value)
    assert "'debian13-riscv'" in message, message
    for profile in load_lock():
        assert profile in message, f"expected {profile} listed, found {message!r}"
    assert RELOCK_COMMAND in message


def test_missing_lock_file_says_how_to_make_it(tmp_path):
    with pytest.raises(UsageError, match=r"lock\.json is missing: run `\./run images lock`"):
        Images(Cache(tmp_path), lock_path=tmp_path / "lock.json").artifacts(PROFILE)


def test_locking_one_profile_adds_it_and_leaves_every_other_pin_byte_identical(tmp_path):
    """`./run images lock --profile host-amd64` against the real archive (the amd64 index, a 42 KB .deb):
    the lock without that profile is the project's lock, byte for byte, `locked` time and sources included."""
    project = json.loads(LOCK.read_text())
    del project["profiles"]["host-amd64"]
    before = json.dumps(project, indent=2) + "\n"
    lock_path = tmp_path / "lock.json"
    lock_path.write_text(before)
    Images(Cache(tmp_path / "cache"), lock_path).lock_profiles(["host-amd64"])
    after = json.loads(lock_path.read_text())
    tftpd = after["profiles"].pop("host-amd64")["tftpd"]
    assert json.dumps(after, indent=2) + "\n" == before, "locking one profile changed another pin"
    assert list(json.loads(lock_path.read_text())["profiles"])[-1] == "host-amd64", "a new profile goes last"
    assert (tftpd["package"], tftpd["file"]) == ("tftpd-hpa", "usr/sbin/in.tftpd"), tftpd


def test_locking_a_profile_the_manifest_lacks_names_the_ones_it_has(tmp_path):
    lock_path = tmp_path / "lock.json"
    lock_path.write_text(LOCK.read_text())
    with pytest.raises(UsageError) as info:
        Images(Cache(tmp_path / "cache"), lock_path).lock_profiles(["host-riscv64"])
    message = str(info.value)
    assert message.startswith("image profile host-riscv64 is not in images/manifest.yaml (it has: debian12-arm64, ")
    assert message.endswith("add it there first."), message
    assert lock_path.read_text() == LOCK.read_text(), "a refused lock request wrote the lock"


def test_locking_one_profile_without_a_lock_says_to_lock_everything(tmp_path):
    with pytest.raises(UsageError, match=r"lock\.json is missing: run `\./run images lock` to pin every profile\."):
        Images(Cache(tmp_path), lock_path=tmp_path / "lock.json").lock_profiles(["host-amd64"])


def test_profile_goes_with_images_lock_only():
    from test_cli_check import harness, one_line_error

    proc = harness("images", "fetch", "--profile", "host-amd64")
    assert proc.returncode == 2, proc.returncode
    assert one_line_error(proc) == (
        "harness: --profile goes with `images lock` only: the other actions cover every profile."
    )


def composing(tmp_path, profiles: dict) -> Images:
    """Images over the real lock and a manifest of `profiles` (composed ones over the real lock's)."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(json.dumps({"archives": {}, "profiles": profiles}))  # JSON is YAML
    return Images(Cache(tmp_path / "cache"), manifest_path=manifest)


def test_a_composed_profile_is_its_base_with_artifacts_taken_from_another(tmp_path):
    images = composing(tmp_path, {"mixed": {"base": "debian12-arm64", "take": {"kernel": "debian13-arm64"}}})
    mixed, old, new = images.locked("mixed"), load_lock()["debian12-arm64"], load_lock()["debian13-arm64"]
    assert mixed["kernel"] == new["kernel"] and mixed["xen"] == old["xen"] and mixed["busybox"] == old["busybox"]


@pytest.mark.parametrize("take, lacking", [({"dtb": "debian13-arm64"}, "debian13-arm64"),
                                           ({"xen": "debian13-armhf"}, "debian13-armhf")])
def test_taking_an_artifact_a_profile_lacks_is_one_sentence(tmp_path, take, lacking):
    images = composing(tmp_path, {"mixed": {"base": "debian12-arm64", "take": take}})
    with pytest.raises(UsageError) as info:
        images.locked("mixed")
    artifact, source = next(iter(take.items()))
    assert str(info.value) == (f"image profile mixed takes {artifact!r} from {source}, but {lacking} has no such "
                               "artifact: fix `take` in images/manifest.yaml.")


def test_a_release_the_manifest_does_not_list_is_one_sentence():
    with pytest.raises(UsageError) as info:
        release_archive({"archives": {"bookworm": {}}}, "forky", "image profile debian14-arm64")
    assert str(info.value) == ("image profile debian14-arm64 names Debian release 'forky', which "
                               "images/manifest.yaml's `archives` does not list (it lists: bookworm): add its sources "
                               "there.")


def test_a_composed_profile_is_not_locked_itself(tmp_path):
    images = composing(tmp_path, {"mixed": {"base": "debian12-arm64", "take": {"kernel": "debian13-arm64"}}})
    with pytest.raises(UsageError) as info:
        images.lock_profiles(["mixed"], manifest=load_manifest(images.manifest_path))
    assert str(info.value) == ("image profile mixed pins nothing of its own (it is composed of debian12-arm64, "
                               "debian13-arm64): lock those with `./run images lock --profile NAME`.")
