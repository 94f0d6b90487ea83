"""Where a run's artifacts go: one directory per run (console logs, DTBs, tables, result.json).

`harness boot` makes <root>/<time>-<target>-<pid>/, a pytest session <root>/<time>-pytest-<pid>/ with
one directory per target; the root is --artifacts, else $HARNESS_ARTIFACTS, else ./artifacts.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from .errors import UsageError

ROOT_ENV = "HARNESS_ARTIFACTS"
SESSION_ENV = "HARNESS_SESSION_ARTIFACTS"  # a pytest session's directory, shared with its xdist workers


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "artifacts")).expanduser().resolve()


def run_dir_name(root: Path, name: str) -> Path:
    """One directory per run: <root>/<local time>-<name>-<pid>."""
    return root / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}-{os.getpid()}"


def writable_dir(path: Path, what: str = "--artifacts") -> Path:
    """`path` as a directory this process can write, made if need be, or one sentence saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{what} {path} is a file (or lies under one): give a directory for the artifacts.") from None
    except OSError as exc:
        raise UsageError(f"cannot create {what} {path} ({exc.strerror}): give a directory you can write.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} is not writable: give a directory you can write.")
    return path
