"""The run-time cache outside the repo: downloaded packages, extracted files, built images, captures.

Every kind of entry is kept one way. `<root>/<kind>/<name>` is a file or a directory, and
`<root>/<kind>/<name>.sha256` is its manifest: the SHA256 of each of its files, in `sha256sum`'s
format (`cd <root>/<kind> && sha256sum -c <name>.sha256` checks an entry by hand). An entry is used
only after its files were hashed again and found equal to its manifest, and, for content-addressed
entries, the manifest equal to the SHA256 the caller expects: a damaged, partial or edited entry, a
missing or extra file, or a broken manifest means the entry is built (or fetched) again.

Writers hold one file lock (xdist workers fetch and build in parallel), build an entry under a
temporary name, rename it into place and write its manifest last: a killed run leaves no manifest,
or one its entry does not match, never an entry that looks complete. Readers need no lock.

Hashing on every use costs little next to a boot (a qemu-virt boot's entries, the 27 MB kernel among
them, verify in about 30 ms), so nothing remembers a verification: a byte changed between two
boots of one process is still seen.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InfrastructureError

log = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_CACHE"
MANIFEST_SUFFIX = ".sha256"
MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (.+)")
TEMPORARY_PREFIXES = (".partial-", ".build-")  # what writers leave when killed; swept under the lock
# An entry's builder writes a file or a directory at the path it is given, or returns the file's bytes.
Builder = Callable[[Path], bytes | None]


def default_cache_root() -> Path:
    """`$XDG_CACHE_HOME/xen-arm-harness`, else `~/.cache/xen-arm-harness`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xen-arm-harness"


def cache_root() -> Path:
    """`$HARNESS_CACHE`, else the default root."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    return default_cache_root()


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A verified cache entry: its path, and the SHA256 of each of its files (the path itself for a file)."""

    path: Path
    digests: Mapping[Path, str]

    @property
    def sha256(self) -> str:
        """The SHA256 of a file entry."""
        return self.digests[self.path]


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()
        # Name the variable in errors only when the user chose the root through it.
        self.from_env = root is None and bool(os.environ.get(CACHE_ENV))
        self._lock_depth = 0

    def dir(self, *parts: str) -> Path:
        """A directory under the root for what is not an entry (apt's own state, build trees)."""
        path = self.root.joinpath(*parts)
        with self.writing():
            path.mkdir(parents=True, exist_ok=True)
        return path

    # --- entries ------------------------------------------------------------------------------

    def lookup(self, kind: str, name: str, sha256: str | None = None) -> Entry | None:
        """The entry `<kind>/<name>` when its files match its manifest (and `sha256`, for a file), else None."""
        entry, _ = self._inspect(kind, name, sha256)
        return entry

    def entry(self, kind: str, name: str, build: Builder, sha256: str | None = None, size: int | None = None) -> Entry:
        """The verified entry `<kind>/<name>`, built now under the lock when it is missing or damaged.

        `build(path)` writes a file or a directory at `path` (a temporary name), or returns a file's
        bytes; it may use other entries. `sha256` is the content a file entry must have (the lock's
        pin); `size`, the bytes the entry needs, if known beforehand (said when the disk is full)."""
        if entry := self.lookup(kind, name, sha256):
            return entry
        with self.locked():
            entry, problem = self._inspect(kind, name, sha256)  # another process may have built it meanwhile
            if entry:
                return entry
            if sha256 is not None and (entry := self._adopt(kind, name, sha256)):
                return entry
            if problem:
                log.warning("the cache entry %s/%s %s: building it again", kind, name, problem)
            return self._build(kind, name, build, sha256, size)

    def _inspect(self, kind: str, name: str, sha256: str | None) -> tuple[Entry | None, str]:
        """(the entry, "") when it verifies; else (None, what is wrong, or "" when there is no entry)."""
        path = self.root / kind / name
        try:
            listed = parse_manifest(manifest_path(path).read_text(), name)
        except FileNotFoundError:
            return None, "has no manifest" if os.path.lexists(path) else ""
        except (OSError, UnicodeDecodeError):  # e.g. the root is not a directory: the writer says so
            return None, ""
        if listed is None:
            return None, "has a damaged manifest"
        if sha256 is not None and listed != {name: sha256}:
            return None, f"is not the content expected ({sha256})"
        try:
            found = files_of(path, name)
            if set(found) != set(listed):
                odd = sorted(set(found) ^ set(listed))
                return None, f"does not hold the files its manifest lists ({', '.join(odd[:3])})"
            for rel, digest in listed.items():
                if sha256_file(found[rel]) != digest:
                    return None, f"has a damaged file ({rel})"
        except OSError as exc:
            return None, f"cannot be read ({exc.strerror})"
        return Entry(path, {found[rel]: digest for rel, digest in listed.items()}), ""

    def _adopt(self, kind: str, name: str, sha256: str) -> Entry | None:
        """A pinned file whose content is its pin, but whose manifest is missing or wrong (a cache
        written before manifests existed), gets its manifest instead of being fetched again."""
        path = self.root / kind / name
        try:
            if not path.is_file() or sha256_file(path) != sha256:
                return None
            with self.writing(f"{kind}/{name}"):
                write_atomically(manifest_path(path), f"{sha256}  {name}\n")
        except OSError:
            return None
        return Entry(path, {path: sha256})

    def _build(self, kind: str, name: str, build: Builder, sha256: str | None, size: int | None) -> Entry:
        path = self.dir(kind) / name
        manifest = manifest_path(path)
        stage = path.with_name(f".partial-{name}-{uuid.uuid4().hex[:8]}")
        with self.writing(f"{kind}/{name}", size):
            manifest.unlink(missing_ok=True)  # whatever is there is no longer a complete entry
            try:
                data = build(stage)
                if data is not None:
                    with self.writing(f"{kind}/{name}", len(data)), stage.open("wb") as f:
                        f.write(data)
                files = files_of(stage, name) if os.path.lexists(stage) else {}
                digests = {rel: sha256_file(file) for rel, file in sorted(files.items())}
                if not digests:
                    raise InfrastructureError(f"building the cache entry {kind}/{name} made no file: "
                                              "this is a bug in the harness, please report it.")
                if sha256 is not None and digests != {name: sha256}:  # builders check first, with their own words
                    raise InfrastructureError(
                        f"building the cache entry {kind}/{name} gave other content than the expected SHA256 "
                        f"{sha256}: this is a bug in the harness, please report it."
                    )
                replace(stage, path)
                write_atomically(manifest, "".join(f"{digest}  {rel}\n" for rel, digest in digests.items()))
            finally:
                remove(stage)
        return Entry(path, {path.parent / rel: digest for rel, digest in digests.items()})

    # --- the writers' lock --------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's writer lock (blocking): one fetch or build at a time across processes.

        Re-entrant within this Cache, so a builder can fetch what it needs. The outermost holder
        also sweeps what killed writers left: temporary files and trees over an hour old (a live
        writer holds the lock, so anything that old is nobody's)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with self.writing():
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / ".lock").open("a")
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                self._sweep()
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sweep(self, max_age_s: float = 3600.0) -> None:
        cutoff = time.time() - max_age_s
        leftovers = [p for prefix in TEMPORARY_PREFIXES for p in self.root.rglob(f"{prefix}*")]
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < cutoff:
                    remove(leftover)

    # --- errors a user can meet ---------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, what: str = "", needed: int | None = None) -> Iterator[None]:
        """Turn a full disk, or a root that cannot be written, into one sentence that says what to do.
        `what` names what was being written and `needed` the bytes it needs, when known."""
        try:
            yield
        except OSError as exc:
            if problem := self.problem(exc, what, needed):
                raise problem from exc
            raise

    def problem(self, exc: OSError, what: str = "", needed: int | None = None) -> InfrastructureError | None:
        """The sentence for an OSError met while writing into the cache, or None when it is not the cache's."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self.disk_full(exc, what, needed)
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
            return None
        if not isinstance(exc.filename, str) or not on_the_way(Path(exc.filename), self.root):
            return None  # not the cache's: a builder's own trouble, raised as it is
        filename = Path(os.path.abspath(exc.filename))
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            blocker = next((p for p in [filename, *filename.parents] if p.exists()), filename)
            if blocker.is_dir():
                return None
            reason = f"{blocker} is not a directory"
        else:
            reason = f"{exc.strerror}: {filename}"
        if self.from_env:
            return InfrastructureError(
                f"{CACHE_ENV}={self.root} cannot hold the image cache ({reason}): point {CACHE_ENV} at a "
                f"directory you can write, or unset it to use {default_cache_root()}."
            )
        return InfrastructureError(
            f"the image cache {self.root} cannot be written ({reason}): make it writable, or point "
            f"{CACHE_ENV} at a directory you can write."
        )

    def disk_full(self, exc: OSError, what: str = "", needed: int | None = None) -> InfrastructureError:
        details = [f"{exc.strerror}" + (f" writing {what}" if what else "")]
        if needed:
            details.append(f"it needs about {needed / 1e6:.1f} MB")
        with contextlib.suppress(OSError):
            fs = os.statvfs(self.root)
            details.append(f"{fs.f_bavail * fs.f_frsize / 1e6:.1f} MB free")
        return InfrastructureError(
            f"the disk holding the image cache {self.root} is full ({'; '.join(details)}): free some space "
            f"there, or point {CACHE_ENV} at a disk with room."
        )


# --- entries on disk ----------------------------------------------------------------------------


def full_disk_reported(output: str, path: Path) -> OSError | None:
    """The OSError a tool's output (apt's, make's) says it met writing under `path`: a full disk or quota."""
    for code in (errno.ENOSPC, errno.EDQUOT):
        if os.strerror(code) in output:  # apt: "write (28: No space left on device)"; tar, gcc alike
            return OSError(code, os.strerror(code), str(path))
    return None


def on_the_way(path: Path, root: Path) -> bool:
    """True when `path` is the root, in it, or one of the directories above it."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return path == root or path in root.parents or root in path.parents


def manifest_path(entry: Path) -> Path:
    return entry.with_name(entry.name + MANIFEST_SUFFIX)


def parse_manifest(text: str, name: str) -> dict[str, str] | None:
    """{path relative to the kind's directory: SHA256} of an entry's manifest, or None when it is damaged."""
    listed: dict[str, str] = {}
    for line in text.splitlines():
        m = MANIFEST_LINE.fullmatch(line)
        if not m:
            return None
        digest, rel = m.groups()
        parts = rel.split("/")
        if rel in listed or parts[0] != name or any(p in ("", ".", "..") for p in parts):
            return None
        listed[rel] = digest
    return listed or None


def files_of(path: Path, name: str) -> dict[str, Path]:
    """Every file of the entry at `path` (a file, or a directory tree), by its manifest name (under `name`)."""
    if not path.is_dir():
        path.stat()  # raises when there is nothing there
        return {name: path}
    found = {}
    for directory, _, files in os.walk(path):
        rel = Path(name) / Path(directory).relative_to(path)
        found.update((str(rel / f), Path(directory) / f) for f in files)
    return found


def replace(stage: Path, path: Path) -> None:
    """Put `stage` (a file or a directory) at `path`, setting aside whatever is there."""
    if os.path.lexists(path):
        old = path.with_name(f".partial-old-{path.name}-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
        os.rename(stage, path)
        remove(old)
    else:
        os.rename(stage, path)


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".partial-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

