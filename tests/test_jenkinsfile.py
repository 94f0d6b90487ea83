"""The Jenkinsfile, checked with a real parser: Debian's groovy compiles it, then runs it against a stub of the
declarative DSL (tests/data/jenkins-dsl.groovy) that records its stages and commands, so a syntax error or a
dropped stage fails here, not on the nightly's first run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).parent / "data" / "jenkins-dsl.groovy"
GROUPS = ["arm64 DT", "arm32", "ACPI", "Xen 4.20", "virtual boards"]


def groovy(jenkinsfile: Path, *params: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not Path("/usr/lib/jvm/default-java").exists() and (java := shutil.which("java")):
        env.setdefault("JAVA_HOME", str(Path(os.path.realpath(java)).parent.parent))  # a JDK not Debian's default
    return subprocess.run(["groovy", str(STUB), str(jenkinsfile), *params], capture_output=True, text=True,
                          timeout=300, env=env)


def events(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("END"), proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_the_nightly_runs_unit_tests_then_each_target_group_in_parallel_and_skips_a_missing_farm():
    lines = events(groovy(ROOT / "Jenkinsfile"))
    stages = [line.removeprefix("STAGE ") for line in lines if line.startswith("STAGE ")]
    assert stages == ["Set up", "Unit tests", "QEMU matrix", "Board farm"], stages
    assert [line.removeprefix("BRANCH ") for line in lines if line.startswith("BRANCH ")] == GROUPS
    commands = [line.removeprefix("SH ") for line in lines if line.startswith("SH ")]
    assert commands[:2] == ["./run images refresh", "./run test tests/unit --junitxml=unit.xml -o junit_family=xunit2"]
    boots = [c for c in commands if c.startswith("./run test --target=")]
    reports = [c for c in commands if c.startswith("./run report ")]
    assert len(boots) == len(reports) == len(GROUPS), commands
    booted = {t for c in boots for t in re.search(r"--target=(\S+)", c).group(1).split(",")}
    from harness.targets import target_names

    assert booted == set(target_names()), f"targets no group boots: {set(target_names()) - booted}"
    assert all("--fail-on regression" in r and "--history baseline/" in r for r in reports), reports
    assert "ECHO Board farm skipped: no farm configured (set FARM, PLACE and BOARD to run it)." in lines


def test_parameters_reach_the_commands_and_a_farm_runs_behind_its_place_lock():
    lines = events(groovy(ROOT / "Jenkinsfile", "TARGETS=arm32", "XEN=/srv/xen", "FARM=lab:20408", "PLACE=zcu102-1",
                          "BOARD=targets/boards/zcu102.yaml"))
    assert [line for line in lines if line.startswith("BRANCH ")] == ["BRANCH arm32"]
    boot = next(line for line in lines if line.startswith("SH ./run test --target=qemu-a15"))
    assert "--xen=/srv/xen" in boot
    farm = lines.index("STEP lock [resource:labgrid-place-zcu102-1]")
    assert any(line.startswith("SH ./run test --target=targets/boards/zcu102.yaml --place=zcu102-1")
               for line in lines[farm:]), lines[farm:]


def test_an_unknown_target_group_stops_the_build_with_the_groups_named():
    proc = groovy(ROOT / "Jenkinsfile", "TARGETS=arm128")
    assert proc.returncode != 0
    assert "unknown target group 'arm128': choose from arm64 DT, arm32, ACPI, Xen 4.20, virtual boards" in proc.stderr


def test_a_syntax_error_is_caught_with_its_line(tmp_path):
    broken = tmp_path / "Jenkinsfile"
    broken.write_text((ROOT / "Jenkinsfile").read_text().replace("stage('Unit tests') {", "stage('Unit tests') ", 1))
    proc = groovy(broken)
    assert proc.returncode != 0 and "END" not in proc.stdout
    assert re.search(r"line \d+", proc.stderr), proc.stderr


@pytest.fixture(autouse=True)
def _groovy_installed() -> None:
    assert shutil.which("groovy"), "Debian's groovy is missing: ./run installs it (apt-get install groovy)"
