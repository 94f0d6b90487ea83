"""`pip install .` (not editable) gives a working `harness` anywhere: the wheel carries the targets, the
image manifest and lock, the initramfs scripts, and the commit it was built from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import data, targets

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_installed_elsewhere_runs_with_its_own_data(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = site / "harness"
    assert (installed / "_data" / "images" / "initramfs" / "init").is_file()

    def harness(*args: str) -> str:
        # Far from the checkout, with the installed copy first on the path (before the editable one).
        main = "import sys; from harness.cli import main; sys.exit(main())"
        run = subprocess.run([sys.executable, "-c", main, *args], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    where = subprocess.run([sys.executable, "-c", "import harness.data as d; print(d.data_dir('targets'))"],
                           capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
    assert where.stdout.strip() == str(installed / "_data" / "targets"), where.stdout + where.stderr
    listed = harness("targets")
    assert [line.split()[0] for line in listed.splitlines()] == targets.target_names(), listed
    assert "debian12-arm64" in harness("images", "list")
    assert harness("--version").strip() == f"harness {data.version()} (commit {data.commit()})"
