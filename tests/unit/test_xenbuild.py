"""harness.xenbuild's pure parts and source pinning: build keys, a missing compiler, pins that left the
archive. The real builds are in tests/test_build_xen.py (they take minutes, not seconds).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace

import pytest

from harness.cache import Cache
from harness.errors import InfrastructureError, UsageError
from harness.images import Images, LockedSourceFile, StaleLock, load_lock, load_manifest, load_source_lock
from harness.xenbuild import (
    DEFAULT_CONFIG,
    BuildFailed,
    build_git_tree,
    build_key,
    build_xen,
    git_build_key,
    xen_source,
)

TOOLCHAIN = "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"  # for the pure key tests


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("xenbuild-cache"))


@pytest.fixture(scope="session")
def source():
    return xen_source()


def test_the_key_changes_with_every_input_and_only_then(source):
    base = build_key(source, "arm64", DEFAULT_CONFIG, TOOLCHAIN)
    assert build_key(source, "arm64", dict(reversed(DEFAULT_CONFIG.items())), TOOLCHAIN) == base
    changed_file = replace(source.files[1], sha256="0" * 64)
    other_source = replace(source, files=(source.files[0], changed_file, *source.files[2:]))
    variants = [
        build_key(other_source, "arm64", DEFAULT_CONFIG, TOOLCHAIN),
        build_key(source, "arm64", {**DEFAULT_CONFIG, "CONFIG_DEBUG": "y"}, TOOLCHAIN),
        build_key(source, "arm64", {**DEFAULT_CONFIG, "CONFIG_ACPI": "n"}, TOOLCHAIN),
        build_key(source, "arm64", DEFAULT_CONFIG, "aarch64-linux-gnu-gcc (Debian 12.2.0-15) 12.2.0"),
        build_key(source, "arm32", DEFAULT_CONFIG, TOOLCHAIN),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_a_missing_cross_compiler_names_the_package(cache, source, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InfrastructureError, match=r"install Debian's `gcc-aarch64-linux-gnu` package"):
        build_xen(cache, source)


def test_a_source_pin_gone_from_the_archive_is_a_stale_lock(cache, source):
    gone = LockedSourceFile("xen_4.17.0-0.dsc", "http://deb.debian.org/debian/pool/main/x/xen/xen_4.17.0-0.dsc",
                            1, "0" * 64)  # fmt: skip
    with pytest.raises(StaleLock, match=r"run `\./run images lock`"):
        Images(cache).fetch_source(replace(source, files=(gone,)))


def test_lock_pins_the_source_files_beside_the_profiles(cache, tmp_path):
    manifest = {**load_manifest(), "profiles": {}}  # profiles are locked as before; skip their 23 MB here
    lock_path = tmp_path / "lock.json"
    Images(cache, lock_path).lock(manifest)
    assert load_lock(lock_path) == {}
    xen = load_source_lock(lock_path)["xen"]
    assert (xen.package, xen.suite) == ("xen", "bookworm")
    assert xen.version.startswith("4.17.")
    kinds = sorted(re.sub(r".*?\.(dsc|orig\.tar|debian\.tar).*", r"\1", f.name) for f in xen.files)
    assert kinds == ["debian.tar", "dsc", "orig.tar"]
    for f in xen.files:
        assert f.url.startswith("http://deb.debian.org/debian/pool/main/x/xen/")
        assert f.size > 0 and re.fullmatch(r"[0-9a-f]{64}", f.sha256)


def test_the_project_lock_still_loads_both_ways():
    assert "debian12-arm64" in load_lock()
    assert xen_source().dsc.name.endswith(".dsc")


def test_a_lock_without_sources_says_to_relock(tmp_path):
    lock_path = tmp_path / "lock.json"
    lock_path.write_text('{"profiles": {}}')
    assert load_lock(lock_path) == {}
    with pytest.raises(UsageError, match=r"\./run images lock"):
        load_source_lock(lock_path)


def test_a_git_tree_is_keyed_by_its_tree_hash_and_config():
    base = git_build_key("a" * 40, "arm64", {}, TOOLCHAIN)
    assert git_build_key("a" * 40, "arm64", {}, TOOLCHAIN) == base
    assert len({base, git_build_key("b" * 40, "arm64", {}, TOOLCHAIN),
                git_build_key("a" * 40, "arm64", {"CONFIG_DEBUG": "y"}, TOOLCHAIN)}) == 3


def test_a_git_tree_that_does_not_build_fails_once_then_from_the_cache(tmp_path):
    """make really runs (and fails) in the tree the first time; the same tree, config and compiler then fail at once."""
    tree = tmp_path / "xen-src"
    (tree / "xen").mkdir(parents=True)
    (tree / "xen" / "Makefile").write_text("defconfig:\n\t@echo 'xen/Makefile: broken on purpose'; exit 2\n")
    env = {"GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@b.invalid", "GIT_COMMITTER_NAME": "A",
           "GIT_COMMITTER_EMAIL": "a@b.invalid", "PATH": os.environ["PATH"]}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "broken"]):
        subprocess.run(["git", "-C", str(tree), *cmd], check=True, env=env, capture_output=True)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(BuildFailed, match="exited 2") as first:
        build_git_tree(cache, tree, config={})
    assert not first.value.cached and "broken on purpose" in str(first.value)
    with pytest.raises(BuildFailed, match="exited 2") as again:
        build_git_tree(cache, tree, config={})
    assert again.value.cached
