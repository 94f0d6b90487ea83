"""Images: the pinned Debian packages a boot uses, fetched through apt, verified and cached.

`images/manifest.yaml` says which packages each profile boots; `images/lock.json` pins each to an
exact version, URL and SHA256 (of the .deb and of the file taken out of it). Fetching uses apt's
own downloader (`apt-helper download-file`, which honours the host's apt proxy settings and checks
the hash) and never touches the host's apt state; locking resolves versions in a private apt state
under the cache. The .debs, the files taken out of them and the source packages' files are cache
entries (harness/cache.py) named by the lock's SHA256 and verified against it on every use. A
user's own build (`--xen PATH` …) replaces any artifact.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml

from . import elf
from .cache import Cache, full_disk_reported, sha256_bytes, sha256_file
from .data import data_dir
from .elf import Node
from .errors import InfrastructureError, UnusableInput, UsageError

log = logging.getLogger(__name__)

IMAGES_DIR = data_dir("images")
MANIFEST = IMAGES_DIR / "manifest.yaml"
LOCK = IMAGES_DIR / "lock.json"
RELOCK_COMMAND = "./run images lock"
APT_HELPER = "/usr/lib/apt/apt-helper"


class StaleLock(InfrastructureError):
    """A pinned package is no longer in the archive (Debian's security pool keeps only the newest)."""


@dataclass(frozen=True)
class LockedArtifact:
    name: str
    package: str
    version: str
    url: str
    deb_sha256: str
    deb_size: int
    file: str  # path inside the package
    file_sha256: str


@dataclass(frozen=True)
class LockedSourceFile:
    name: str  # the archive's file name, e.g. xen_4.17.5+72-g01140da4e8-1.dsc
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LockedSource:
    """A Debian source package pinned to its exact files (.dsc, .orig.tar.*, .debian.tar.*)."""

    name: str
    package: str
    suite: str
    version: str
    files: tuple[LockedSourceFile, ...]

    @property
    def dsc(self) -> LockedSourceFile:
        return next(f for f in self.files if f.name.endswith(".dsc"))


@dataclass(frozen=True)
class Artifact:
    """A file a boot uses, wherever it came from."""

    name: str
    path: Path
    sha256: str
    origin: str  # "debian PACKAGE VERSION", "user", or "built"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "origin": self.origin}


def load_manifest(path: Path = MANIFEST) -> dict:
    return yaml.safe_load(path.read_text())


def load_lock(path: Path = LOCK) -> dict[str, dict[str, LockedArtifact]]:
    if not path.is_file():
        raise UsageError(f"{path} is missing: run `{RELOCK_COMMAND}` to pin the images.")
    data = json.loads(path.read_text())
    return {
        profile: {name: LockedArtifact(name=name, **entry) for name, entry in artifacts.items()}
        for profile, artifacts in data["profiles"].items()
    }


def load_source_lock(path: Path = LOCK) -> dict[str, LockedSource]:
    if not path.is_file():
        raise UsageError(f"{path} is missing: run `{RELOCK_COMMAND}` to pin the images.")
    data = json.loads(path.read_text())
    if "sources" not in data:
        raise UsageError(f"{path} pins no source packages: run `{RELOCK_COMMAND}`.")
    return {
        name: LockedSource(
            name=name,
            package=entry["package"],
            suite=entry["suite"],
            version=entry["version"],
            files=tuple(LockedSourceFile(**f) for f in entry["files"]),
        )
        for name, entry in data["sources"].items()
    }


class Images:
    def __init__(self, cache: Cache | None = None, lock_path: Path = LOCK, manifest_path: Path = MANIFEST) -> None:
        self.cache = cache or Cache()
        self.lock_path = lock_path
        self.manifest_path = manifest_path

    # --- what a boot uses -------------------------------------------------------------------

    def artifacts(self, profile: str, overrides: dict[str, Path] | None = None) -> dict[str, Artifact]:
        """Every artifact of `profile`, fetched and verified; `overrides` replace locked ones by name."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        result: dict[str, Artifact] = {}
        for name, entry in self.locked(profile).items():
            if name in overrides:
                result[name] = user_artifact(name, overrides.pop(name))
            else:
                result[name] = self._pinned(entry)
        for name, path in overrides.items():  # artifacts the profile does not lock, e.g. an initrd
            result[name] = user_artifact(name, path)
        return result

    def artifact(self, profile: str, name: str) -> Artifact:
        """The one artifact `name` of `profile`, fetched and verified (e.g. a board's DTB)."""
        locked = self.locked(profile)
        if name not in locked:
            raise UsageError(
                f"image profile {profile!r} has no artifact {name!r} (it has: {', '.join(sorted(locked))}): "
                f"add it to images/manifest.yaml and run `{RELOCK_COMMAND} --profile {profile}`."
            )
        return self._pinned(locked[name])

    def locked(self, profile: str) -> dict[str, LockedArtifact]:
        """The pins of `profile`, by artifact name; a composed profile's are its base's with some taken from
        other profiles (compose_profile)."""
        locked = load_lock(self.lock_path)
        if profile in locked:
            return locked[profile]
        spec = load_manifest(self.manifest_path)["profiles"].get(profile)
        if spec is not None and "base" in spec:
            return compose_profile(profile, spec, self.locked)
        raise UsageError(
            f"image profile {profile!r} is not in {self.lock_path.name} "
            f"(it has: {', '.join(sorted(locked))}): run `{RELOCK_COMMAND}`."
        )

    def _pinned(self, entry: LockedArtifact) -> Artifact:
        return Artifact(entry.name, self.fetch(entry), entry.file_sha256, f"debian {entry.package} {entry.version}")

    def fetch(self, entry: LockedArtifact) -> Path:
        """The verified file `entry` names, extracted from its verified .deb when the cache lacks it."""

        def extract_file(_: Path) -> bytes:
            deb = self.fetch_deb(entry)
            member, data = extract(deb, entry.file)
            if (found := sha256_bytes(data)) != entry.file_sha256:
                raise InfrastructureError(
                    f"{member} in {deb.name} has SHA256 {found}, the lock says {entry.file_sha256}: "
                    f"the lock and the package disagree; run `{RELOCK_COMMAND}`."
                )
            return data

        name = f"{entry.file_sha256[:16]}-{Path(entry.file).name}"
        return self.cache.entry("files", name, extract_file, sha256=entry.file_sha256).path

    def fetch_deb(self, entry: LockedArtifact) -> Path:
        """The verified .deb `entry` pins, downloaded when the cache lacks it."""

        def download_deb(path: Path) -> None:
            log.info("fetching %s %s (%.1f MB)", entry.package, entry.version, entry.deb_size / 1e6)
            download(entry.url, path, entry.deb_sha256, what=f"{entry.package} {entry.version}")

        name = f"{entry.deb_sha256[:16]}-{entry.package}.deb"
        return self.cache.entry("debs", name, download_deb, sha256=entry.deb_sha256, size=entry.deb_size).path

    def program_files(self, profile: str, programs: list[str]) -> dict[str, Node]:
        """The artifacts `programs` of `profile` and what their ELF dependencies reach in the profile's packages
        (harness/elf.py: libraries, the dynamic loader, soname links), every file the profile pins itself (a
        library loaded with dlopen, which no ELF header names), and every link of those packages that leads to
        a program (xenstore-read -> xenstore). Each pinned file is checked against the lock."""
        pins = self.locked(profile)
        tree: dict[str, Node] = {}
        for pin in {p.deb_sha256: p for p in pins.values()}.values():
            tree |= read_members(self.fetch_deb(pin), lambda path: not path.startswith("usr/share/"))
        for pin in pins.values():
            node = tree.get(pin.file)
            if node is None or node.link is not None or sha256_bytes(node.data) != pin.file_sha256:
                raise InfrastructureError(f"{pin.file} in {pin.package} {pin.version} is not the file the lock pins "
                                          f"(SHA256 {pin.file_sha256}): run `{RELOCK_COMMAND} --profile {profile}`.")
        roots = [pins[name].file for name in programs]
        try:
            closure = elf.library_closure(roots, tree)
        except elf.MissingDependency as exc:
            raise UsageError(f"{exc.needed_by} needs {exc.what}, which no package of image profile {profile} has "
                             f"in {', '.join(exc.searched)}: add the package that ships it to {profile} in "
                             f"images/manifest.yaml and run `{RELOCK_COMMAND} --profile {profile}`.") from None
        except elf.ElfError as exc:
            raise UsageError(f"image profile {profile}: {exc}: pin packages of dom0's architecture.") from None
        links = {path: node for path, node in tree.items()
                 if node.link is not None and elf.resolve(tree, path)[-1:] and elf.resolve(tree, path)[-1] in roots}
        return closure | links | {pin.file: tree[pin.file] for pin in pins.values()}

    def fetch_source(self, source: LockedSource) -> list[Path]:
        """The verified files of a pinned source package, downloading those the cache lacks."""
        paths = []
        for f in source.files:

            def download_file(path: Path, f: LockedSourceFile = f) -> None:
                log.info("fetching %s (%.1f MB)", f.name, f.size / 1e6)
                download(f.url, path, f.sha256, what=f"source {f.name}")

            name = f"{f.sha256[:16]}-{f.name}"
            paths.append(self.cache.entry("sources", name, download_file, sha256=f.sha256, size=f.size).path)
        return paths

    # --- pinning ----------------------------------------------------------------------------

    def lock(self, manifest: dict | None = None) -> dict[str, dict[str, LockedArtifact]]:
        """Resolve every manifest package to the archive's newest version and rewrite the lock."""
        manifest = manifest or load_manifest(self.manifest_path)
        profiles = {profile: self._lock_profile(manifest, profile) for profile in pinning_profiles(manifest)}
        sources = self.lock_sources(manifest)
        document = {
            "comment": f"Written by `{RELOCK_COMMAND}` from images/manifest.yaml; do not edit by hand.",
            "locked": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "profiles": {p: profile_document(arts) for p, arts in profiles.items()},
        }
        if sources:
            document["sources"] = {
                n: {k: v for k, v in asdict(src).items() if k != "name"} for n, src in sources.items()
            }
        self.lock_path.write_text(json.dumps(document, indent=2) + "\n")
        return profiles

    def lock_profiles(self, names: list[str], manifest: dict | None = None) -> dict[str, dict[str, LockedArtifact]]:
        """Pin only the profiles `names` and merge them into the lock: every other pin, the sources and
        the `locked` time of the last full re-lock stay byte-identical (a new profile re-pins nothing else)."""
        manifest = manifest or load_manifest(self.manifest_path)
        if unknown := [n for n in names if n not in manifest["profiles"]]:
            raise UsageError(
                f"image profile {', '.join(unknown)} is not in images/manifest.yaml "
                f"(it has: {', '.join(manifest['profiles'])}): add it there first."
            )
        if composed := [n for n in names if n not in pinning_profiles(manifest)]:
            bases = sorted({p for n in composed for p in composed_of(manifest["profiles"][n])})
            raise UsageError(f"image profile {', '.join(composed)} pins nothing of its own (it is composed of "
                             f"{', '.join(bases)}): lock those with `{RELOCK_COMMAND} --profile NAME`.")
        if not self.lock_path.is_file():
            raise UsageError(f"{self.lock_path} is missing: run `{RELOCK_COMMAND}` to pin every profile.")
        profiles = {name: self._lock_profile(manifest, name) for name in names}
        document = json.loads(self.lock_path.read_text())  # read after resolving: the freshest lock
        for name, arts in profiles.items():
            document["profiles"][name] = profile_document(arts)  # a re-locked profile keeps its place
        self.lock_path.write_text(json.dumps(document, indent=2) + "\n")
        return profiles

    def _lock_profile(self, manifest: dict, profile: str) -> dict[str, LockedArtifact]:
        spec = manifest["profiles"][profile]
        apt = PrivateApt(self.cache, spec["architecture"], release_archive(manifest, spec["release"], profile))
        apt.update()
        locked: dict[str, LockedArtifact] = {}
        for name, art in spec["artifacts"].items():
            package = apt.follow(art["package"]) if art.get("follow_depends") else art["package"]
            version, url, size, sha = apt.resolve(package)
            stub = LockedArtifact(name, package, version, url, sha, size, art["file"], "")
            member, data = extract(self.fetch_deb(stub), art["file"])
            locked[name] = LockedArtifact(
                name, package, version, url, sha, size, member.removeprefix("./"), sha256_bytes(data)
            )
            log.info("%s/%s: %s %s", profile, name, package, version)
        if roots := spec.get("closure"):
            locked |= self._lock_closure(apt, profile, locked, roots)
        return locked

    def _lock_closure(self, apt: PrivateApt, profile: str, locked: dict[str, LockedArtifact],
                      roots: list[str]) -> dict[str, LockedArtifact]:
        """The packages the programs `roots` (artifacts of `profile`) need to run, found from their own ELF
        dependencies over their packages' dependency closure in the archive, each pinned as an artifact named
        after the package with the first file of it they need. The rest of the closure (python3 for Debian's
        scripts, udev, …) is left out: those programs never load it."""
        programs = {locked[r].package for r in roots}
        tree: dict[str, Node] = {}
        owner: dict[str, LockedArtifact] = {}
        for package in apt.depends_closure(sorted(programs)):
            version, url, size, sha = apt.resolve(package)
            pin = LockedArtifact(package, package, version, url, sha, size, "", "")
            for path, node in read_members(self.fetch_deb(pin), lambda p: not p.startswith("usr/share/")).items():
                if path not in tree:
                    tree[path], owner[path] = node, pin
        try:
            closure = elf.library_closure([locked[r].file for r in roots], tree)
        except elf.ElfError as exc:
            raise InfrastructureError(f"image profile {profile}: {exc}: the archive's dependencies do not give "
                                      "what the programs load; pin the missing package as an artifact.") from None
        needed: dict[str, LockedArtifact] = {}
        for path, node in closure.items():
            pin = owner[path]
            if node.link is None and pin.package not in programs and pin.package not in needed:
                needed[pin.package] = replace(pin, file=path, file_sha256=sha256_bytes(node.data))
                log.info("%s/%s: %s %s (for %s)", profile, pin.package, pin.package, pin.version, path)
        return needed

    def lock_sources(self, manifest: dict | None = None) -> dict[str, LockedSource]:
        """Resolve the manifest's `sources` to exact files, and fetch them once to prove the pool serves them."""
        manifest = manifest or load_manifest(self.manifest_path)
        if not manifest.get("sources"):
            return {}
        sources: dict[str, LockedSource] = {}
        for name, spec in manifest["sources"].items():
            apt = SourceApt(self.cache, release_archive(manifest, spec["release"], f"source {name}"))
            apt.update()
            version, files = apt.resolve_source(spec["package"], spec["suite"])
            sources[name] = LockedSource(name, spec["package"], spec["suite"], version, tuple(files))
            try:
                self.fetch_source(sources[name])
            except StaleLock as exc:
                # The index can list files the pool does not serve (seen for bookworm-security's xen).
                raise InfrastructureError(
                    f"Debian's {spec['suite']} index lists {spec['package']} {version}, but the archive answers 404 "
                    "for its files: pin another suite under `sources` in images/manifest.yaml."
                ) from exc
            log.info("source %s: %s %s (%s)", name, spec["package"], version, spec["suite"])
        return sources


def pinning_profiles(manifest: dict) -> list[str]:
    """The manifest's profiles that pin packages themselves (a composed profile only takes others' pins)."""
    return [name for name, spec in manifest["profiles"].items() if "base" not in spec]


def composed_of(spec: dict) -> list[str]:
    """The profiles a composed profile takes its pins from: its base, then those it takes artifacts from."""
    return [spec["base"], *spec.get("take", {}).values()]


def compose_profile(name: str, spec: dict,
                    locked: Callable[[str], dict[str, LockedArtifact]]) -> dict[str, LockedArtifact]:
    """A composed profile's pins: its `base` profile's, with each artifact named in `take` from the profile
    given there (a Xen from one release and a kernel from another, without copying a profile)."""
    pins = dict(locked(spec["base"]))
    for artifact, source in spec.get("take", {}).items():
        theirs = locked(source)
        if artifact not in theirs or artifact not in pins:
            lacking = source if artifact not in theirs else spec["base"]
            raise UsageError(f"image profile {name} takes {artifact!r} from {source}, but {lacking} has no such "
                             f"artifact: fix `take` in images/manifest.yaml.")
        pins[artifact] = replace(theirs[artifact], name=artifact)
    return pins


def release_archive(manifest: dict, release: str, who: str) -> dict:
    """The archive (keyring, sources) of Debian `release` (bookworm, trixie) that the manifest lists."""
    archives = manifest["archives"]
    if release not in archives:
        raise UsageError(f"{who} names Debian release {release!r}, which images/manifest.yaml's `archives` does "
                         f"not list (it lists: {', '.join(archives)}): add its sources there.")
    return {**archives[release], "name": release}


def profile_document(artifacts: dict[str, LockedArtifact]) -> dict[str, dict]:
    """A profile's pins as lock.json writes them (the artifact's name is its key)."""
    return {n: {k: v for k, v in asdict(a).items() if k != "name"} for n, a in artifacts.items()}


def user_artifact(name: str, path: Path) -> Artifact:
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise UnusableInput(f"--{name} {path} is a directory: give the {name} image file of your build inside it.")
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise UnusableInput(f"--{name} {path}: {what}; give the path of your own {name} build.")
    return Artifact(name, path, sha256_file(path), "user")


def download(url: str, dest: Path, sha256: str, what: str) -> None:
    """Download through apt (its proxy settings, its hash check) into `dest`, a cache entry being built."""
    cmd = [APT_HELPER, *apt_sandbox_options(), "download-file", url, str(dest), f"SHA256:{sha256}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise InfrastructureError(f"{APT_HELPER} is missing: install Debian's `apt` package.") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"downloading {what} from {url} took over 15 minutes: check the network.") from exc
    output = proc.stdout + proc.stderr
    if proc.returncode == 0 and "E: " not in output and dest.is_file():
        return
    dest.unlink(missing_ok=True)
    dest.with_name(f"{dest.name}.FAILED").unlink(missing_ok=True)  # apt keeps refused bytes there
    if re.search(r"\b404\b", output):
        raise StaleLock(
            f"{what} is no longer in the Debian archive ({url} answers 404): "
            f"run `{RELOCK_COMMAND}` to pin the current version."
        )
    if "Hash Sum mismatch" in output or "Filesize" in output:
        raise InfrastructureError(
            f"the download of {what} from {url} does not match the lock's SHA256 {sha256}: "
            "the mirror or a proxy served other bytes; retry, or check the mirror."
        )
    if full := full_disk_reported(output, dest):
        raise full  # the cache's entry() says how full, and how much the .deb needs
    reason = next((ln for ln in output.splitlines() if ln.startswith("E: ")), output.strip()[-300:])
    raise InfrastructureError(f"could not download {what} from {url} ({reason}): check the network or apt proxy.")


def apt_sandbox_options() -> list[str]:
    # As root apt drops to the _apt user, which cannot write into a user's cache directory.
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


def extract(deb: Path, pattern: str) -> tuple[str, bytes]:
    """The one member of `deb`'s data matching `pattern` (a path or a glob), with its bytes."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    matches: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and fnmatch.fnmatch(member.name.removeprefix("./"), pattern):
                    matches.append((member.name.removeprefix("./"), tar.extractfile(member).read()))
    finally:
        proc.stdout.close()
        proc.wait()
    if len(matches) != 1:
        found = ", ".join(m for m, _ in matches) or "nothing"
        raise InfrastructureError(
            f"{deb.name} should hold exactly one file matching {pattern!r} and holds {found}: "
            "fix the `file` entry in images/manifest.yaml."
        )
    return matches[0]


def iter_members(deb: Path) -> Iterator[tuple[str, tarfile.TarInfo, Callable[[], bytes]]]:
    """Each member of `deb`'s data as (path without the leading "./", its tar header, a reader of its
    bytes), streamed: a member's bytes are read only if asked for, before the next member."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                yield member.name.removeprefix("./"), member, lambda member=member: tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise InfrastructureError(f"{deb.name} cannot be read ({exc}): delete it from the cache to fetch it "
                                  "again.") from None
    finally:
        proc.stdout.close()
        proc.wait()


def read_members(deb: Path, wanted: Callable[[str], bool]) -> dict[str, Node]:
    """The symlinks of `deb`'s data and the regular files `wanted` picks by path, each with its permission
    bits (a .deb's data is trusted once the .deb's SHA256 is the lock's)."""
    members: dict[str, Node] = {}
    for path, member, read in iter_members(deb):
        if member.issym():
            members[path] = Node(member.mode & 0o7777, link=member.linkname)
        elif member.islnk():  # a hard link within the package (xenstore-read …): as good as a symlink here
            members[path] = Node(member.mode & 0o7777, link="/" + member.linkname.removeprefix("./"))
        elif member.isfile() and wanted(path):
            members[path] = Node(member.mode & 0o7777, read())
    return members


class PrivateApt:
    """An apt state of our own under the cache: one architecture, Debian's archive, no host changes."""

    SOURCES_LINE = "deb [arch={arch} signed-by={keyring}]"  # the start of each sources.list line

    def __init__(self, cache: Cache, architecture: str, archive: dict) -> None:
        self.cache = cache
        self.root = cache.dir("apt", f"{archive['name']}-{architecture}")  # one state per release and architecture
        self.architecture = architecture
        sources = self.root / "sources.list"
        kind = self.SOURCES_LINE.format(arch=architecture, keyring=archive["keyring"])
        with cache.writing("apt's own state"):
            sources.write_text(
                "".join(
                    f"{kind} {src['url']} {suite} main\n"
                    for src in archive["sources"]
                    for suite in src["suites"]
                )
            )
            for sub in ("lists/partial", "cache/archives/partial"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / "status").touch()
        self.options = [
            *("-o", f"Dir::State::Lists={self.root / 'lists'}"),
            *("-o", f"Dir::State::status={self.root / 'status'}"),
            *("-o", f"Dir::Etc::SourceList={sources}"),
            *("-o", "Dir::Etc::SourceParts=/dev/null"),
            *("-o", f"Dir::Cache={self.root / 'cache'}"),
            *("-o", f"APT::Architecture={architecture}"),
            *("-o", f"APT::Architectures::={architecture}"),
            *("-o", "Debug::NoLocking=1"),
            *apt_sandbox_options(),
        ]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([tool, *self.options, *args], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            # apt can stall for good after a write error (seen with several suites on a full disk).
            with contextlib.suppress(OSError):
                fs = os.statvfs(self.root)
                if fs.f_bavail * fs.f_frsize < 1 << 20:
                    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root))
                    raise self.cache.disk_full(full, f"apt's {self.architecture} package index") from exc
            raise InfrastructureError(
                f"`{tool} {' '.join(args)}` ({self.architecture}) took over 10 minutes: check the network or apt proxy."
            ) from exc

    def update(self, attempts: int = 3) -> None:
        # Mirrors fail transiently ("File has unexpected size … Mirror sync in progress?"): retry.
        for attempt in range(1, attempts + 1):
            proc = self._run("apt-get", "update")
            # apt exits 0 when it could not write an index ("W: … No space left on device … ignored"):
            # a full disk is neither a success, nor a mirror to retry, nor "the other suites".
            if full := full_disk_reported(proc.stderr, self.root):
                raise self.cache.disk_full(full, f"apt's {self.architecture} package index")
            if proc.returncode == 0:
                return
            log.warning("apt-get update (%s) failed, attempt %d of %d", self.architecture, attempt, attempts)
        errors = "; ".join(ln for ln in proc.stderr.splitlines() if ln.startswith("E: "))
        if "They have been ignored, or old ones used instead" in proc.stderr:
            # Some suites' indexes came through: pin from those, and say which did not (the lock shows
            # the versions chosen; a later `./run images lock` picks up the missing suite's newer ones).
            failed = sorted(set(re.findall(r"Failed to fetch \S+/dists/(\S+?)/", proc.stderr)))
            log.warning("the %s index of %s could not be read (%s); pinning from the other suites",
                        self.architecture, ", ".join(failed) or "some suites", errors)
            return
        raise InfrastructureError(
            f"could not read Debian's {self.architecture} package index ({errors}): "
            "retry later, a mirror may be syncing."
        )

    def follow(self, metapackage: str) -> str:
        """The versioned package a metapackage (e.g. linux-image-cloud-arm64) depends on."""
        fields = self._show(metapackage)
        depends = fields.get("Depends", "").split(",")[0].strip()
        if not depends:
            raise InfrastructureError(f"{metapackage} has no Depends to follow: fix images/manifest.yaml.")
        return depends.split()[0]

    def resolve(self, package: str) -> tuple[str, str, int, str]:
        """(version, URL, size, SHA256) of the newest `package` the archive holds."""
        version = self._show(package)["Version"]
        proc = self._run("apt-get", "download", "--print-uris", f"{package}={version}")
        m = re.search(r"^'(\S+)' \S+ (\d+) SHA256:([0-9a-f]{64})$", proc.stdout, re.M)
        if proc.returncode != 0 or not m:
            raise InfrastructureError(f"apt cannot locate {package} {version}: {proc.stderr.strip()[-300:]}")
        return version, m.group(1), int(m.group(2)), m.group(3)

    def depends_closure(self, packages: list[str]) -> list[str]:
        """Every package installing `packages` would bring (Depends and Pre-Depends, no Recommends), as apt
        resolves them against the archive's own metadata: `packages` included."""
        proc = self._run("apt-get", "install", "--simulate", "--no-install-recommends", *packages)
        found = re.findall(r"^Inst (\S+) ", proc.stdout, re.M)
        if proc.returncode != 0 or not found:
            raise InfrastructureError(f"apt cannot resolve what {', '.join(packages)} ({self.architecture}) depend "
                                      f"on: {proc.stderr.strip()[-300:]}")
        return sorted(found)

    def _show(self, package: str) -> dict[str, str]:
        proc = self._run("apt-cache", "show", "--no-all-versions", package)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise InfrastructureError(
                f"{package} ({self.architecture}) is not in Debian's archive: fix images/manifest.yaml."
            )
        return dict(re.findall(r"^([\w-]+): (.*)$", proc.stdout, re.M))


class SourceApt(PrivateApt):
    """A PrivateApt over Debian's source indexes (`deb-src` lines) in a state directory of its own."""

    SOURCES_LINE = "deb-src [signed-by={keyring}]"

    def __init__(self, cache: Cache, archive: dict) -> None:
        super().__init__(cache, "source", archive)  # "source" only names the state directory

    def resolve_source(self, package: str, suite: str) -> tuple[str, list[LockedSourceFile]]:
        """(version, files) of `package`'s source in `suite`: each file's URL, size and SHA256."""
        proc = self._run("apt-get", "source", "--print-uris", f"{package}/{suite}")
        version = re.search(r"^Selected version '([^']+)'", proc.stdout, re.M)
        files = [
            LockedSourceFile(name, url, int(size), sha)
            for url, name, size, sha in re.findall(r"^'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$", proc.stdout, re.M)
        ]
        if proc.returncode != 0 or not version or not any(f.name.endswith(".dsc") for f in files):
            raise InfrastructureError(
                f"apt cannot locate the source of {package} in {suite} ({proc.stderr.strip()[-300:]}): "
                "fix `sources` in images/manifest.yaml."
            )
        return version.group(1), files
