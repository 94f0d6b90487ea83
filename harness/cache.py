"""The run-time cache outside the repo: downloaded packages, extracted files, built images.

Entries are named by the SHA256 of their content (or of their inputs, for built images), written
to a temporary name and renamed into place, so a killed run leaves no entry that looks complete.
A process-wide file lock serialises writers (xdist workers fetch in parallel).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """`$HARNESS_CACHE`, else `$XDG_CACHE_HOME/xen-arm-harness`, else `~/.cache/xen-arm-harness`."""
    if env := os.environ.get("HARNESS_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xen-arm-harness"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's writer lock (blocking): one fetch or build at a time across processes.

        The holder also sweeps what killed writers left: temporary files and build trees over an
        hour old (a live writer holds the lock, so anything that old is nobody's)."""
        with (self.dir() / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sweep(self, max_age_s: float = 3600.0) -> None:
        cutoff = time.time() - max_age_s
        for leftover in [*self.root.rglob(".partial-*"), *self.root.rglob(".build-*")]:
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < cutoff:
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink()

    def verified(self, path: Path, sha256: str) -> bool:
        """True when `path` exists with exactly this content. A corrupt entry is left for the writer,
        which replaces it atomically under the lock (removing it here could race another worker)."""
        return path.is_file() and sha256_file(path) == sha256

    def store(self, path: Path, data: bytes) -> Path:
        """Write `data` atomically to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return path
