"""The one way every cache entry is kept: verified by content on every use, built again when wrong.

Entries here are made by small builders (real files, real directories, real processes racing for the
lock); the kinds that use this mechanism (debs, files, sources, initramfs, Xen builds, host ACPI
captures) are tested through their own code in their own test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinyfs import python_on_tmpfs, run_on_tmpfs

from harness.cache import Cache, Entry, manifest_path, sha256_bytes, sha256_file
from harness.errors import InfrastructureError

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(sys.executable).parent / "harness"
FILE_BYTES = os.urandom(3000)
TREE = {"APIC": os.urandom(264), "DSDT": os.urandom(5224), "sub/deeper": b"nested"}


class Builder:
    """Makes a file entry (returns its bytes) or a directory entry (writes a tree), counting its calls."""

    def __init__(self, tree: bool = False) -> None:
        self.tree = tree
        self.calls = 0

    def __call__(self, path: Path) -> bytes | None:
        self.calls += 1
        if not self.tree:
            return FILE_BYTES
        for name, data in TREE.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return None


def contents(entry: Entry) -> dict[str, bytes]:
    if entry.path.is_file():
        return {"": entry.path.read_bytes()}
    return {str(p.relative_to(entry.path)): p.read_bytes() for p in entry.path.rglob("*") if p.is_file()}


def expected(tree: bool) -> dict[str, bytes]:
    return TREE if tree else {"": FILE_BYTES}


def leftovers(cache: Cache) -> list[str]:
    return sorted(p.name for p in cache.root.rglob(".partial-*"))


# --- one entry, verified on every use -----------------------------------------------------------


@pytest.mark.parametrize("tree", [False, True], ids=["file", "directory"])
def test_an_entry_is_built_once_then_verified_and_reused(tmp_path, tree):
    cache, build = Cache(tmp_path), Builder(tree)
    assert cache.lookup("kind", "key") is None
    first = cache.entry("kind", "key", build)
    assert first.path == tmp_path / "kind" / "key" and contents(first) == expected(tree)
    assert first.digests == {p: sha256_file(p) for p in [first.path, *first.path.rglob("*")] if p.is_file()}
    again = cache.entry("kind", "key", build)
    assert again == first and build.calls == 1, "a verified entry was built again"
    assert cache.lookup("kind", "key") == first
    assert leftovers(cache) == []


@pytest.mark.parametrize("tree", [False, True], ids=["file", "directory"])
def test_the_manifest_is_what_sha256sum_checks(tmp_path, tree):
    cache = Cache(tmp_path)
    entry = cache.entry("kind", "key", Builder(tree))
    proc = subprocess.run(["sha256sum", "--strict", "-c", "key.sha256"], cwd=entry.path.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK") == len(expected(tree)), proc.stdout


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def damage(entry: Entry, how: str) -> None:
    """One real way an entry goes bad on disk."""
    victim = max(entry.digests, key=lambda p: p.stat().st_size)  # a real file of it, the biggest
    manifest = manifest_path(entry.path)
    if how == "flip-byte":
        flip_byte(victim)
    elif how == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif how == "delete-file":
        victim.unlink()
    elif how == "delete-entry":
        (victim if entry.path.is_file() else entry.path / "APIC").unlink()
        if entry.path.is_dir():
            for p in sorted(entry.path.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            entry.path.rmdir()
    elif how == "extra-file":
        (entry.path.parent / "key" / "EXTRA").write_bytes(b"a table nobody captured")
    elif how == "manifest-flip-digest":
        text = manifest.read_text()
        manifest.write_text(("1" if text[0] == "0" else "0") + text[1:])
    elif how == "manifest-other-name":
        manifest.write_text(manifest.read_text().replace("key", "kez", 1))
    elif how == "manifest-truncated":
        manifest.write_text(manifest.read_text()[:40])
    elif how == "manifest-empty":
        manifest.write_text("")
    elif how == "manifest-deleted":
        manifest.unlink()
    else:
        raise AssertionError(how)


DAMAGE = ["flip-byte", "truncate", "delete-file", "delete-entry", "manifest-flip-digest", "manifest-other-name",
          "manifest-truncated", "manifest-empty", "manifest-deleted"]


@pytest.mark.parametrize("tree", [False, True], ids=["file", "directory"])
@pytest.mark.parametrize("how", [*DAMAGE, "extra-file"])
def test_a_damaged_entry_is_seen_and_built_again(tmp_path, tree, how, caplog):
    if how == "extra-file" and not tree:
        how = "manifest-other-name"  # a file entry has no room for an extra file
    cache, build = Cache(tmp_path), Builder(tree)
    damage(cache.entry("kind", "key", build), how)
    assert cache.lookup("kind", "key") is None, f"the {how} entry was taken as verified"
    rebuilt = cache.entry("kind", "key", build)
    assert build.calls == 2, f"the {how} entry was not built again"
    assert contents(rebuilt) == expected(tree) and cache.lookup("kind", "key") == rebuilt
    assert leftovers(cache) == []
    if how not in ("delete-entry", "manifest-deleted"):
        assert "the cache entry kind/key" in caplog.text and "building it again" in caplog.text, caplog.text


def test_a_file_entry_must_have_the_expected_content(tmp_path):
    cache = Cache(tmp_path)
    right = sha256_bytes(FILE_BYTES)
    entry = cache.entry("debs", "pinned", Builder(), sha256=right)
    assert entry.sha256 == right
    assert cache.lookup("debs", "pinned", sha256=sha256_bytes(b"another pin")) is None
    # A manifest rewritten to agree with damaged bytes still disagrees with the pin.
    flip_byte(entry.path)
    manifest_path(entry.path).write_text(f"{sha256_file(entry.path)}  pinned\n")
    assert cache.lookup("debs", "pinned") is not None and cache.lookup("debs", "pinned", sha256=right) is None
    assert cache.entry("debs", "pinned", Builder(), sha256=right).path.read_bytes() == FILE_BYTES


@pytest.mark.parametrize("manifest", ["none", "damaged"])
def test_a_pinned_file_with_its_pinned_content_gets_a_manifest_not_a_new_download(tmp_path, manifest):
    """A cache written before manifests existed: its files are verified against their pins and kept."""
    cache, build = Cache(tmp_path), Builder()
    old = cache.dir("debs") / "pinned"
    old.write_bytes(FILE_BYTES)
    if manifest == "damaged":
        manifest_path(old).write_text("not a manifest\n")
    assert cache.lookup("debs", "pinned", sha256=sha256_bytes(FILE_BYTES)) is None  # readers do not adopt
    entry = cache.entry("debs", "pinned", build, sha256=sha256_bytes(FILE_BYTES))
    assert build.calls == 0 and entry.path == old and entry.sha256 == sha256_bytes(FILE_BYTES)
    assert manifest_path(old).read_text() == f"{sha256_bytes(FILE_BYTES)}  pinned\n"
    assert cache.lookup("debs", "pinned", sha256=sha256_bytes(FILE_BYTES)) == entry
    # Other content than the pin is fetched again, manifest or not.
    old.write_bytes(b"other bytes")
    manifest_path(old).unlink()
    assert cache.entry("debs", "pinned", build, sha256=sha256_bytes(FILE_BYTES)).path.read_bytes() == FILE_BYTES
    assert build.calls == 1


def test_a_builder_giving_other_content_than_expected_is_refused(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(InfrastructureError, match=r"other content than the expected SHA256 0{64}"):
        cache.entry("debs", "pinned", Builder(), sha256="0" * 64)
    assert list((tmp_path / "debs").iterdir()) == [], "refused content was kept"


def test_a_failing_builder_leaves_no_entry_and_no_leftovers(tmp_path):
    cache = Cache(tmp_path)
    cache.entry("kind", "key", Builder(tree=True))

    def fails(path: Path) -> None:
        path.mkdir()
        (path / "half").write_bytes(b"written before the failure")
        raise InfrastructureError("the download broke")

    flip_byte(tmp_path / "kind" / "key" / "DSDT")
    with pytest.raises(InfrastructureError, match="the download broke"):
        cache.entry("kind", "key", fails)
    assert cache.lookup("kind", "key") is None and not manifest_path(tmp_path / "kind" / "key").exists()
    assert leftovers(cache) == []


@pytest.mark.parametrize("made", ["nothing", "an empty directory"])
def test_a_builder_that_makes_no_file_is_a_sentence_not_an_entry(tmp_path, made):
    cache = Cache(tmp_path)
    with pytest.raises(InfrastructureError, match=r"^building the cache entry kind/key made no file: .*report it\.$"):
        cache.entry("kind", "key", lambda path: None if made == "nothing" else path.mkdir())
    assert cache.lookup("kind", "key") is None and leftovers(cache) == []


def test_a_builder_may_use_other_entries_under_the_same_lock(tmp_path):
    cache = Cache(tmp_path)

    def from_another_entry(path: Path) -> bytes:
        return cache.entry("debs", "inner", Builder()).path.read_bytes()[::-1]

    outer = cache.entry("files", "outer", from_another_entry)
    assert outer.path.read_bytes() == FILE_BYTES[::-1] and cache.lookup("debs", "inner") is not None


def test_processes_racing_for_one_entry_build_it_once(tmp_path):
    calls = tmp_path / "calls"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom harness.cache import Cache\n"
        "def build(path):\n"
        f"    with open({str(calls)!r}, 'a') as f: f.write('built\\n')\n"
        "    time.sleep(0.3)\n    return b'the same bytes'\n"
        f"print(Cache(Path({str(tmp_path / 'cache')!r})).entry('kind', 'key', build).sha256)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    digests = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert digests == {sha256_bytes(b"the same bytes")}
    assert calls.read_text() == "built\n", "more than one process built the entry"


def test_what_killed_writers_left_is_swept_after_an_hour(tmp_path):
    cache = Cache(tmp_path)
    kind = cache.dir("kind")
    old_stage, new_stage, old_tree = kind / ".partial-key-0", kind / ".partial-key-1", kind / ".build-x"
    for p in (old_stage, new_stage):
        p.write_bytes(b"half")
    (old_tree / "src").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    for p in (old_stage, old_tree):
        os.utime(p, (two_hours_ago, two_hours_ago))
    cache.entry("kind", "key", Builder())
    assert not old_stage.exists() and not old_tree.exists()
    assert new_stage.exists(), "a temporary file under an hour old may be another writer's"


# --- what the user is told ----------------------------------------------------------------------


def test_a_full_disk_while_storing_says_so(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import json\nfrom pathlib import Path\nfrom harness.cache import Cache\n"
        "from harness.errors import InfrastructureError\n"
        f"cache = Cache(Path({str(cache)!r}))\n"
        "try:\n    cache.entry('files', 'big', lambda path: bytes(1_000_000))\n"
        "except InfrastructureError as exc:\n"
        "    print(json.dumps([str(exc), sorted(str(p.relative_to(cache.root)) for p in cache.root.rglob('*'))]))\n"
    )
    proc = python_on_tmpfs(cache, code, size_kb=64)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    message, left = json.loads(proc.stdout)
    assert message.startswith(f"the disk holding the image cache {cache} is full (No space left on device "
                              "writing files/big; it needs about 1.0 MB; "), message
    assert " MB free): free some space there, or point HARNESS_CACHE at a disk with room." in message, message
    assert left == [".lock", "files"], f"the partial entry was left on the full disk: {left}"



# --- the cache directory itself, as `harness` reports it ----------------------------------------


def harness_env(cache: Path | str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HARNESS_CACHE": str(cache), "HARNESS_ARTIFACTS": str(tmp_path / "artifacts")}


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `harness: …` line that says what went wrong (`boot` prints it with its progress, on stdout)."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, f"harness printed a traceback:\n{output}"
    progress = ("harness: booting ", "harness: artifacts in ")
    lines = [ln for ln in output.splitlines() if ln.startswith("harness: ") and not ln.startswith(progress)]
    assert len(lines) == 1, f"expected one error line, found {output!r}"
    return lines[0]


def test_a_cache_path_that_is_a_file_is_one_sentence(tmp_path):
    not_a_dir = tmp_path / "hostname"
    not_a_dir.write_text("a regular file\n")
    for cache, verb in [(not_a_dir, ["images", "fetch"]), (not_a_dir / "sub", ["images", "fetch"]),
                        (not_a_dir, ["boot", "--target", "qemu-virt"])]:
        proc = subprocess.run([HARNESS, *verb], capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=harness_env(cache, tmp_path))
        assert proc.returncode == 128, f"{verb}: expected exit 128, found {proc.returncode}: {proc.stderr}"
        line = error_line(proc)
        assert f"HARNESS_CACHE={cache}" in line and f"{not_a_dir} is not a directory" in line, line
        assert "point HARNESS_CACHE at a directory you can write" in line and line.endswith("."), line


def test_a_read_only_cache_directory_is_one_sentence(tmp_path):
    cache = tmp_path / "cache"
    proc = run_on_tmpfs(cache, [HARNESS, "boot", "--target", "qemu-virt"], read_only=True,
                        env=harness_env(cache, tmp_path))
    assert proc.returncode == 128, f"expected exit 128, found {proc.returncode}: {proc.stderr}"
    line = error_line(proc)
    assert f"HARNESS_CACHE={cache}" in line and "Read-only file system" in line, line
    assert "point HARNESS_CACHE at a directory you can write" in line, line
