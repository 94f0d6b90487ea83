"""Xen built from Debian's `xen` source package with extra Kconfig options.

Debian's xen-hypervisor-4.17-arm64 has CONFIG_ACPI off (it needs CONFIG_UNSUPPORTED), so booting
dom0 on ACPI needs our own build. The source is the lock's (`sources.xen`), fetched and verified
like the debs; the hypervisor alone is cross-built with Debian's compiler. Each build is a cache
entry (harness/cache.py) keyed by its inputs (source files, config items, compiler version,
recipe), `<cache>/xen-builds/<key>/`: `xen` (the image), `config` (Xen's .config) and `build.json`
(its origin), verified on every use; the last build's log lies beside it in `<key>.log`.

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
from collections.abc import Mapping, Sequence
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
    config = dict(config)
    for key, value in config.items():
        if not re.fullmatch(r"CONFIG_[A-Za-z0-9_]+", key) or "\n" in value:
            raise UsageError(f"{key}={value!r} is not a Kconfig item: give CONFIG_NAME and a one-line value.")
    if arch not in TOOLCHAINS:
        raise UsageError(f"cannot build Xen for {arch!r}: the harness knows {', '.join(TOOLCHAINS)}.")
    toolchain = toolchain_version(arch)
    patches = [Path(p) for p in patches]
    name = build_key(source, arch, config, toolchain, patches)[:32]
    build_log = cache.root / "xen-builds" / f"{name}.log"
    entry = cache.entry("xen-builds", name,
                        lambda out: _build(cache, out, source, arch, config, build_log, patches),
                        size=BUILD_SPACE_BYTES)
    image = entry.path / "xen"
    origin = json.loads((entry.path / "build.json").read_text())["origin"]
    return Artifact("xen", image, entry.digests[image], origin)


def build_key(source: LockedSource, arch: str, config: Mapping[str, str], toolchain: str,
              patches: Sequence[Path] = ()) -> str:
    """SHA256 of everything that decides the build's output."""
    lines = [
        f"recipe {BUILD_RECIPE_VERSION}",
        f"arch {arch}",
        f"toolchain {toolchain}",
        *(f"source {f.name} {f.sha256}" for f in sorted(source.files, key=lambda f: f.name)),
        *(f"config {k}={v}" for k, v in sorted(config.items())),
        *(f"patch {p.name} {sha256_bytes(p.read_bytes())}" for p in patches),  # in order: order matters
    ]
    return sha256_bytes("\n".join(lines).encode())


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


def _build(cache: Cache, out: Path, source: LockedSource, arch: str, config: dict, build_log: Path,
           patches: Sequence[Path] = ()) -> None:
    """Build Xen into the directory `out` (the cache entry being made), logging to `build_log`."""
    for tool, package in HOST_TOOLS.items():
        if not shutil.which(tool):
            raise InfrastructureError(f"building Xen needs `{tool}`: install Debian's `{package}` package.")
    files = Images(cache).fetch_source(source)
    items = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    upstream = re.match(r"[\d.]+", source.version.split(":")[-1]).group(0).rstrip(".")
    log.info("building Xen %s for %s with %s (about a minute)", upstream, arch, items or "defconfig")
    work = Path(tempfile.mkdtemp(dir=cache.dir("xen-builds"), prefix=f".build-{source.dsc.sha256[:16]}-"))
    try:
        with build_log.open("w") as logf:

            def run(*cmd: str, cwd: Path) -> None:
                logf.write(f"$ {' '.join(cmd)}\n")
                logf.flush()
                # Output comes back in memory, then goes to the log: on a full disk the log may not
                # take it, and the output is what says the disk was full.
                try:
                    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          env=_clean_env(), timeout=1800)
                except subprocess.TimeoutExpired as exc:
                    raise InfrastructureError(
                        f"`{cmd[0]}` took over 30 minutes building Xen: see {build_log}."
                    ) from exc
                output = proc.stdout.decode(errors="replace")
                if proc.returncode != 0 and (full := full_disk_reported(output, work)):
                    raise full  # the cache's entry() says how full, and how much a build needs
                logf.write(output)
                logf.flush()
                if proc.returncode != 0:
                    tail = "\n".join(output.splitlines()[-15:])
                    raise InfrastructureError(
                        f"building Xen {source.version} for {arch} failed (`{cmd[0]} … {cmd[-1]}` exited "
                        f"{proc.returncode}); the end of {build_log}:\n{tail}"
                    )

            # dpkg-source wants the files side by side under their archive names.
            for path, f in zip(files, source.files, strict=True):
                (work / f.name).symlink_to(path)
            run("dpkg-source", "-x", source.dsc.name, "src", cwd=work)
            tree = work / "src"
            for patch in patches:
                run("patch", "-p1", "--forward", "--batch", "-i", str(patch.resolve()), cwd=tree)
            stamp = changelog_date(tree / "debian" / "changelog")
            prefix, _ = TOOLCHAINS[arch]
            variables = {
                "XEN_TARGET_ARCH": arch,
                "CROSS_COMPILE": prefix,
                # Same inputs, same bytes: no build date, user, host or temp path in the image.
                "XEN_BUILD_DATE": f"{stamp:%a %b %e %H:%M:%S UTC %Y}",
                "XEN_BUILD_TIME": f"{stamp:%H:%M:%S}",
                "XEN_WHOAMI": "xen-arm-harness",
                "XEN_DOMAIN": "localdomain",
                "XEN_BUILD_HOST": "localhost",
                "EXTRA_CFLAGS_XEN_CORE": f"-ffile-prefix-map={tree}=. -fdebug-prefix-map={tree}=.",
                # Debian's patches print these in the banner: "Xen version 4.17.5 (Debian VERSION) (LOCAL@DOMAIN)".
                "DEB_VERSION": f"{source.version} xen-arm-harness build",
                "DEB_MAINTAINER": "xen-arm-harness <harness@localhost>",
            }
            make = ["make", "-C", "xen", *(f"{k}={v}" for k, v in variables.items())]
            run(*make, "defconfig", cwd=tree)
            dotconfig = tree / "xen" / ".config"
            with dotconfig.open("a") as f:  # later lines override defconfig's; olddefconfig settles the rest
                f.writelines(f"{k}={v}\n" for k, v in config.items())
            run(*make, "olddefconfig", cwd=tree)
            check_config(dotconfig, config, source.version, arch)
            run(*make, f"-j{len(os.sched_getaffinity(0))}", cwd=tree)  # the hypervisor only, not the tools
        data = (tree / "xen" / "xen").read_bytes()
        if data[56:60] != ARM64_IMAGE_MAGIC:
            raise InfrastructureError(f"the build of Xen {source.version} made no arm64 Image: see {build_log}.")
        out.mkdir()
        (out / "config").write_bytes(dotconfig.read_bytes())
        (out / "xen").write_bytes(data)
        origin = " ".join(filter(None, [f"built {source.package} {source.version} {items}".strip(),
                                        *(f"+{p.name}" for p in patches)]))
        meta = {"origin": origin, "arch": arch, "config": config}
        (out / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_config(dotconfig: Path, config: Mapping[str, str], version: str, arch: str) -> None:
    """Every requested item has its value in the final .config: Kconfig drops unknown ones silently."""
    text = dotconfig.read_text()
    actual = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.M))
    actual.update((name, "n") for name in re.findall(r"^# (CONFIG_\w+) is not set$", text, re.M))
    for key, value in config.items():
        if actual.get(key) != value:
            now = f"is {key}={actual[key]}" if key in actual else "lacks it"
            raise InfrastructureError(
                f"{key}={value} did not stick: the .config of Xen {version} for {arch} {now} (Xen's Kconfig has "
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
