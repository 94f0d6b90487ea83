"""A real small (or read-only) file system for one command: a tmpfs in a private mount namespace.

`unshare --user --map-root-user --mount` gives the command its own mount table, as root or as any
user (Debian enables unprivileged user namespaces), so the tmpfs needs no privileges, is seen by
nobody else, and is gone when the command exits, even if pytest is killed. The kernel itself then
answers ENOSPC or EROFS: no mock decides what a full or read-only disk looks like.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Mount, then run the rest of the arguments: sh -c SCRIPT sh OPTIONS MOUNTPOINT COMMAND...
MOUNT_THEN_RUN = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'


def run_on_tmpfs(
    mountpoint: Path, command: list[str | Path], size_kb: int = 64, read_only: bool = False,
    env: dict[str, str] | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run `command` with a fresh tmpfs of `size_kb` KiB (read-only when asked) mounted at `mountpoint`."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k,mode=0755" + (",ro" if read_only else "")
    argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT_THEN_RUN, "sh", options,
            str(mountpoint), *map(str, command)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert "mount:" not in proc.stderr and "unshare:" not in proc.stderr, f"no private tmpfs here: {proc.stderr}"
    return proc


def python_on_tmpfs(mountpoint: Path, code: str, size_kb: int = 64, read_only: bool = False,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python `code` (this interpreter, this sys.path) with the tmpfs mounted at `mountpoint`."""
    return run_on_tmpfs(mountpoint, [sys.executable, "-c", code], size_kb, read_only, env)
