"""Where the project's own files live: the target YAMLs (targets/) and the images (manifest, lock,
initramfs scripts under images/), and which version and commit of the harness this is.

In a checkout (and an editable install) they are the repository's targets/ and images/. A wheel
(`pip install .` from anywhere) carries the same files as package data under harness/_data/
(pyproject.toml maps them there) and the commit it was built from in harness/_data/commit.
"""

from __future__ import annotations

import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent  # the repository, when the package runs from one
INSTALLED = PACKAGE / "_data"


def in_checkout() -> bool:
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "targets").is_dir()


def data_dir(name: str) -> Path:
    """`targets` or `images`: the checkout's own, else the copy installed with the package."""
    return CHECKOUT / name if in_checkout() else INSTALLED / name


@cache
def version() -> str:
    try:
        return metadata.version("xen-arm-harness")
    except metadata.PackageNotFoundError:  # run from a checkout without installing it
        return "0+unknown"


@cache
def commit() -> str:
    """The git commit the harness runs from ("…-dirty" with uncommitted changes), or "unknown"."""
    if in_checkout() and (CHECKOUT / ".git").exists():
        try:
            proc = subprocess.run(["git", "-C", str(CHECKOUT), "describe", "--always", "--dirty", "--abbrev=12",
                                   "--match=NO-TAGS"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"
    stamped = INSTALLED / "commit"
    return stamped.read_text().strip() if stamped.is_file() else "unknown"


def describe() -> str:
    """"0.1.0 (commit 1a2b3c4d5e6f)", for --version, result.json and reports."""
    return f"{version()} (commit {commit()})"
