"""Xen built with extra Kconfig options: from Debian's `xen` source package, or from a git tree (bisect).

Debian's xen-hypervisor-4.17-arm64 has CONFIG_ACPI off (it needs CONFIG_UNSUPPORTED), so booting
dom0 on ACPI needs our own build. The source is the lock's (`sources.xen`), fetched and verified
like the debs; the hypervisor alone is cross-built with Debian's compiler. `harness bisect` builds
a git worktree the same way (`build_git_tree`), in place, so that each step recompiles only what
the checkout changed. Either way, one builder (`compile_tree`) runs make, and each build is a cache
entry (harness/cache.py) keyed by its inputs (source files and patches, or the git tree's hash;
config items, compiler version, recipe), `<cache>/xen-builds/<key>/`: `xen` (the image), `config`
(Xen's .config) and `build.json` (its origin), verified on every use; the last build's log lies
beside it in `<key>.log`.

On arm64 `xen/xen` is an Image with an EFI stub: QEMU's -kernel and UEFI (as BOOTAA64.EFI) both
start it, and Xen's own `xen/xen.efi` is only a symlink to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import MappingProxyType

from .cache import Cache, full_disk_reported, sha256_bytes
from .errors import InfrastructureError, UsageError
from .images import LOCK, RELOCK_COMMAND, Artifact, Images, LockedSource, load_source_lock
from .plan.dtb import ARM64_IMAGE_MAGIC

log = logging.getLogger(__name__)

# Bump when the recipe below changes what a build produces: every cached build is then redone.
# 2: the entry holds xen, config and build.json, with the cache's manifest; the log lies beside it.
BUILD_RECIPE_VERSION = 2
# The disk a build needs, said when the disk is full: Xen 4.17's tree took 51 MB built (measured 2026-12-03).
BUILD_SPACE_BYTES = 55_000_000
DEFAULT_CONFIG: Mapping[str, str] = MappingProxyType({"CONFIG_UNSUPPORTED": "y", "CONFIG_ACPI": "y"})
# Xen's arch name -> (CROSS_COMPILE prefix, the Debian package that provides it)
TOOLCHAINS = {"arm64": ("aarch64-linux-gnu-", "gcc-aarch64-linux-gnu")}
# Host tools the build runs -> the Debian package that provides each
HOST_TOOLS = {
    "dpkg-source": "dpkg-dev",
    "make": "make",
    "gcc": "gcc",
    "flex": "flex",
    "bison": "bison",
    "python3": "python3",
    "patch": "patch",
}


class BuildFailed(InfrastructureError):
    """make failed on the tree: for the pinned source the harness's problem, for a bisected commit that commit's
    (git bisect's "skip"). A full disk, a missing tool or a timeout are plain InfrastructureErrors."""

    cached = False  # the failure was recorded by an earlier build of the same inputs


def xen_source(lock_path: Path = LOCK) -> LockedSource:
    """The `xen` source package the lock pins."""
    sources = load_source_lock(lock_path)
    if "xen" not in sources:
        raise UsageError(
            f"{lock_path.name} pins no `xen` source: add it to images/manifest.yaml, then run `{RELOCK_COMMAND}`."
        )
    return sources["xen"]


def build_xen(
    cache: Cache, source: LockedSource, arch: str = "arm64", config: Mapping[str, str] = DEFAULT_CONFIG,
    patches: Sequence[Path] = (),
) -> Artifact:
    """Xen built from `source` with `config` on top of defconfig and `patches` applied (patch -p1, after
    Debian's own): cached, or built now (about a minute)."""
    config = _checked(config, arch)
    patches = [Path(p) for p in patches]
    name = build_key(source, arch, config, toolchain_version(arch), patches)[:32]
    items = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    origin = " ".join(filter(None, [f"built {source.package} {source.version} {items}".strip(),
                                    *(f"+{p.name}" for p in patches)]))

    def build(out: Path, build_log: Path) -> None:
        work = Path(tempfile.mkdtemp(dir=cache.dir("xen-builds"), prefix=f".build-{source.dsc.sha256[:16]}-"))
        try:
            with BuildLog(build_log) as run:
                tree = unpack_source(cache, source, work, run)
                for patch in patches:
                    run("patch", "-p1", "--forward", "--batch", "-i", str(patch.resolve()), cwd=tree)
                image, dotconfig = compile_tree(tree, arch, config, run, changelog_date(tree / "debian" / "changelog"),
                                                f"{source.version} xen-arm-harness build", fresh=True)
            store(out, image, dotconfig, {"origin": origin, "arch": arch, "config": config})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return _cached(cache, name, build)


def build_git_tree(cache: Cache, tree: Path, arch: str = "arm64",
                   config: Mapping[str, str] = DEFAULT_CONFIG) -> tuple[Artifact, bool]:
    """Xen built from the git worktree `tree` as it is checked out (a clean checkout: the key is its commit's tree
    hash), in place: make recompiles what the last checkout changed. (the artifact, whether it came from the cache).
    A tree that does not compile raises BuildFailed (and again at once for the same key: `<key>.failed`)."""
    config = _checked(config, arch)
    commit = _git(tree, "rev-parse", "HEAD")
    name = git_build_key(_git(tree, "rev-parse", "HEAD^{tree}"), arch, config, toolchain_version(arch))[:32]
    if (entry := cache.lookup("xen-builds", name)) is not None:
        return _artifact(entry), True
    failed = cache.root / "xen-builds" / f"{name}.failed"  # the same tree, config and compiler fail the same way
    if failed.is_file():
        exc = BuildFailed(failed.read_text())
        exc.cached = True
        raise exc
    items = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    stamp = datetime.fromisoformat(_git(tree, "log", "-1", "--format=%cI", "HEAD")).astimezone(UTC)

    def build(out: Path, build_log: Path) -> None:
        with BuildLog(build_log) as run:
            image, dotconfig = compile_tree(tree, arch, config, run, stamp, f"git {commit[:12]} xen-arm-harness build")
        store(out, image, dotconfig, {"origin": f"built git {commit} {items}".strip(), "arch": arch, "config": config})

    try:
        return _cached(cache, name, build), False
    except BuildFailed as exc:
        failed.write_text(str(exc))
        raise


def build_key(source: LockedSource, arch: str, config: Mapping[str, str], toolchain: str,
              patches: Sequence[Path] = ()) -> str:
    """SHA256 of everything that decides the build's output (the pinned source)."""
    return _key([f"source {f.name} {f.sha256}" for f in sorted(source.files, key=lambda f: f.name)], arch, config,
                toolchain, [f"patch {p.name} {sha256_bytes(p.read_bytes())}" for p in patches])  # order matters


def git_build_key(tree_hash: str, arch: str, config: Mapping[str, str], toolchain: str) -> str:
    """SHA256 of everything that decides the build's output (a git tree: its hash says every file)."""
    return _key([f"git-tree {tree_hash}"], arch, config, toolchain)


def _key(inputs: list[str], arch: str, config: Mapping[str, str], toolchain: str, edits: Sequence[str] = ()) -> str:
    lines = [f"recipe {BUILD_RECIPE_VERSION}", f"arch {arch}", f"toolchain {toolchain}", *inputs,
             *(f"config {k}={v}" for k, v in sorted(config.items())), *edits]
    return sha256_bytes("\n".join(lines).encode())


def _checked(config: Mapping[str, str], arch: str) -> dict[str, str]:
    config = dict(config)
    for key, value in config.items():
        if not re.fullmatch(r"CONFIG_[A-Za-z0-9_]+", key) or "\n" in value:
            raise UsageError(f"{key}={value!r} is not a Kconfig item: give CONFIG_NAME and a one-line value.")
    if arch not in TOOLCHAINS:
        raise UsageError(f"cannot build Xen for {arch!r}: the harness knows {', '.join(TOOLCHAINS)}.")
    return config


def _cached(cache: Cache, name: str, build: Callable[[Path, Path], None]) -> Artifact:
    """The cache entry `xen-builds/<name>`, made by `build(out, log)` when missing; its log beside it."""
    build_log = cache.root / "xen-builds" / f"{name}.log"
    entry = cache.entry("xen-builds", name, lambda out: build(out, build_log), size=BUILD_SPACE_BYTES)
    return _artifact(entry)


def _artifact(entry) -> Artifact:
    image = entry.path / "xen"
    origin = json.loads((entry.path / "build.json").read_text())["origin"]
    return Artifact("xen", image, entry.digests[image], origin)


def toolchain_version(arch: str) -> str:
    """The first line of the cross compiler's `--version`: a compiler update means a new build."""
    prefix, package = TOOLCHAINS[arch]
    try:
        proc = subprocess.run([f"{prefix}gcc", "--version"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        proc = None
    if proc is None or proc.returncode != 0:
        raise InfrastructureError(
            f"the {arch} cross compiler {prefix}gcc is missing: install Debian's `{package}` package."
        )
    return proc.stdout.splitlines()[0].strip()


class BuildLog:
    """A build's log, and `run(*cmd, cwd=)`: a command whose output goes to it; a failure raised with its tail."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BuildLog:
        for tool, package in HOST_TOOLS.items():
            if not shutil.which(tool):
                raise InfrastructureError(f"building Xen needs `{tool}`: install Debian's `{package}` package.")
        self.file = self.path.open("w")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def __call__(self, *cmd: str, cwd: Path) -> None:
        self.file.write(f"$ {' '.join(cmd)}\n")
        self.file.flush()
        # Output comes back in memory, then goes to the log: on a full disk the log may not
        # take it, and the output is what says the disk was full.
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=_clean_env(), timeout=1800)
        except subprocess.TimeoutExpired as exc:
            raise InfrastructureError(f"`{cmd[0]}` took over 30 minutes building Xen: see {self.path}.") from exc
        output = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 and (full := full_disk_reported(output, cwd)):
            raise full  # the cache's entry() says how full, and how much a build needs
        self.file.write(output)
        self.file.flush()
        if proc.returncode != 0:
            tail = "\n".join(output.splitlines()[-15:])
            raise BuildFailed(f"building Xen in {cwd} failed (`{cmd[0]} … {cmd[-1]}` exited {proc.returncode}); "
                              f"the end of {self.path}:\n{tail}")


def unpack_source(cache: Cache, source: LockedSource, work: Path, run: Callable[..., None]) -> Path:
    """The pinned source package unpacked (Debian's patches applied) into `work`/src."""
    files = Images(cache).fetch_source(source)
    # dpkg-source wants the files side by side under their archive names.
    for path, f in zip(files, source.files, strict=True):
        (work / f.name).symlink_to(path)
    run("dpkg-source", "-x", source.dsc.name, "src", cwd=work)
    return work / "src"


def compile_tree(tree: Path, arch: str, config: dict, run: Callable[..., None], stamp: datetime, label: str,
                 fresh: bool = False) -> tuple[bytes, bytes]:
    """Cross-build the hypervisor in the Xen source tree `tree`: (the image, its .config). The config is made
    (defconfig, `config` on top, olddefconfig) when `fresh`, or when the tree's last build asked for another one;
    otherwise make rebuilds what changed since (a bisection's checkouts)."""
    log.info("building Xen in %s for %s with %s", tree, arch,
             " ".join(f"{k}={v}" for k, v in sorted(config.items())) or "defconfig")
    make = ["make", "-C", "xen", *(f"{k}={v}" for k, v in make_variables(tree, arch, stamp, label).items())]
    dotconfig = tree / "xen" / ".config"
    asked = tree / "xen" / ".harness-config"  # what the tree's .config was made from
    wanted = "".join(f"{k}={v}\n" for k, v in [("arch", arch), *sorted(config.items())])
    if fresh or not dotconfig.is_file() or not asked.is_file() or asked.read_text() != wanted:
        asked.unlink(missing_ok=True)
        run(*make, "defconfig", cwd=tree)
        with dotconfig.open("a") as f:  # later lines override defconfig's; olddefconfig settles the rest
            f.writelines(f"{k}={v}\n" for k, v in config.items())
        run(*make, "olddefconfig", cwd=tree)
        asked.write_text(wanted)
    check_config(dotconfig, config, label, arch)
    run(*make, f"-j{len(os.sched_getaffinity(0))}", cwd=tree)  # the hypervisor only, not the tools
    data = (tree / "xen" / "xen").read_bytes()
    if data[56:60] != ARM64_IMAGE_MAGIC:
        raise InfrastructureError(f"the build in {tree} made no arm64 Image: see its log.")
    return data, dotconfig.read_bytes()


def make_variables(tree: Path, arch: str, stamp: datetime, label: str) -> dict[str, str]:
    """make's variables for a build of `tree`: same inputs, same bytes (no build date, user, host or path)."""
    prefix, _ = TOOLCHAINS[arch]
    return {
        "XEN_TARGET_ARCH": arch,
        "CROSS_COMPILE": prefix,
        "XEN_BUILD_DATE": f"{stamp:%a %b %e %H:%M:%S UTC %Y}",
        "XEN_BUILD_TIME": f"{stamp:%H:%M:%S}",
        "XEN_WHOAMI": "xen-arm-harness",
        "XEN_DOMAIN": "localdomain",
        "XEN_BUILD_HOST": "localhost",
        "EXTRA_CFLAGS_XEN_CORE": f"-ffile-prefix-map={tree}=. -fdebug-prefix-map={tree}=.",
        # Debian's patches print these in the banner: "Xen version 4.17.5 (Debian VERSION) (LOCAL@DOMAIN)".
        "DEB_VERSION": label,
        "DEB_MAINTAINER": "xen-arm-harness <harness@localhost>",
    }


def store(out: Path, image: bytes, dotconfig: bytes, meta: dict) -> None:
    """A build's cache entry: the image, its .config, build.json (origin, arch, config)."""
    out.mkdir()
    (out / "config").write_bytes(dotconfig)
    (out / "xen").write_bytes(image)
    (out / "build.json").write_text(json.dumps(meta, indent=2) + "\n")


def _git(tree: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise InfrastructureError(f"`git {' '.join(args)}` failed in {tree}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def check_config(dotconfig: Path, config: Mapping[str, str], label: str, arch: str) -> None:
    """Every requested item has its value in the final .config: Kconfig drops unknown ones silently."""
    text = dotconfig.read_text()
    actual = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.M))
    actual.update((name, "n") for name in re.findall(r"^# (CONFIG_\w+) is not set$", text, re.M))
    for key, value in config.items():
        if actual.get(key) != value:
            now = f"is {key}={actual[key]}" if key in actual else "lacks it"
            raise InfrastructureError(
                f"{key}={value} did not stick: the .config of Xen ({label}) for {arch} {now} (Xen's Kconfig has "
                "no such option, or its dependencies are not met): fix the config items."
            )


def changelog_date(changelog: Path) -> datetime:
    """The date of the source's newest changelog entry (what Debian's own build stamps into Xen), in UTC."""
    m = re.search(r"^ -- .*?>  (.+)$", changelog.read_text(errors="replace"), re.M)
    if not m:
        raise InfrastructureError(f"{changelog} has no dated entry: the source package looks damaged.")
    return parsedate_to_datetime(m.group(1)).astimezone(UTC)


def _clean_env() -> dict[str, str]:
    # Flags meant for the user's own builds (or an outer make's jobserver) must not leak into this one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CFLAGS", "CPPFLAGS", "LDFLAGS", "KBUILD_OUTPUT", "O"}
    }
    env["LC_ALL"] = "C"
    return env
