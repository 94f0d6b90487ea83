"""Packaging hook (the metadata is in pyproject.toml): a wheel also carries the project's targets/ and
images/ and the commit it was built from, under harness/_data/, where harness/data.py finds them."""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def git_commit() -> str:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12",
                               "--match=NO-TAGS"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        data = Path(self.build_lib) / "harness" / "_data"
        shutil.rmtree(data, ignore_errors=True)
        for name in ("targets", "images"):
            shutil.copytree(ROOT / name, data / name, ignore=shutil.ignore_patterns("__pycache__"))
        (data / "commit").write_text(git_commit() + "\n")


setup(cmdclass={"build_py": BuildPyWithData})
