"""`harness boot` refuses what it cannot use in one sentence, before anything boots; `--version`; the
result record's documented fields."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_cli_check import harness, one_line_error

from harness import data
from harness.debugkeys import DebugDump, Registers
from harness.diagnose import Diagnosis, VcpuSample
from harness.errors import UnusableInput
from harness.images import user_artifact
from harness.result import FIELDS, SCHEMA_VERSION, BootResult


def test_version_names_the_version_and_the_commit():
    run = harness("--version")
    assert run.returncode == 0
    assert re.fullmatch(r"harness \S+ \(commit [0-9a-f]{12}(-dirty)?\)\n", run.stdout), run.stdout


@pytest.mark.parametrize("where", ["option", "environment"])
def test_artifacts_that_are_a_file_are_refused(where: str, tmp_path: Path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    args, env = (["--artifacts", afile], None) if where == "option" else ([], {"HARNESS_ARTIFACTS": str(afile)})
    run = harness("boot", *args, env=env)
    assert run.returncode == 128
    assert one_line_error(run).endswith(f"{afile} is a file (or lies under one): give a directory for the artifacts.")


def test_an_empty_fault_name_is_refused_not_ignored():
    run = harness("boot", "--fault", "")
    assert run.returncode == 128
    assert one_line_error(run).startswith("harness: unknown fault '': choose one of impossible-dom0-mem")


def test_a_directory_given_as_a_build_says_so(tmp_path: Path):
    with pytest.raises(UnusableInput, match=r"--xen \S+ is a directory: give the xen image file of your build"):
        user_artifact("xen", tmp_path)


def test_an_untestable_build_says_so_and_exits_125(tmp_path: Path):
    """git bisect's skip: the build under test cannot be booted (here a directory instead of Xen's image)."""
    run = harness("boot", "--xen", tmp_path, "--artifacts", tmp_path / "run")
    assert run.returncode == 125, run.stdout + run.stderr
    assert "verdict: UNTESTABLE (this build cannot be booted, so it was not tested)" in run.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["verdict"] == "untestable" and "is a directory" in result["error"]


def test_result_json_fields_are_the_documented_ones(tmp_path: Path):
    record = BootResult("qemu-virt", tmp_path)
    record.decide()
    written = json.loads(record.write().read_text())
    assert list(written) == list(FIELDS), "result.json and FIELDS in harness/result.py must list the same fields"
    assert written["schema"] == SCHEMA_VERSION
    assert written["harness"] == {"version": data.version(), "commit": data.commit()}
    assert written["diagnosis"] is None


def test_result_json_carries_the_diagnosis(tmp_path: Path):
    record = BootResult("qemu-virt", tmp_path)
    host = Registers("CPU1 host", 1, None, None, 0x25b0c8, "domain.c#idle_loop+0x128/0x140", "Hypervisor", 2)
    record.diagnosis = Diagnosis("debug-keys+qmp", "dom0:init", 4.5, [[VcpuSample(0, 0x25b0c8, 2, "EL2h", 6.5)]],
                                 DebugDump("d0", [host]), True, ["xen-debugkeys.txt"], "Xen answers its console")
    record.decide()
    written = json.loads(record.write().read_text())["diagnosis"]
    assert written == record.diagnosis.to_dict()
    assert written["xen_registers"] == [{"who": "CPU1 host", "cpu": 1, "pc": "0x25b0c8", "el": 2,
                                         "symbol": "domain.c#idle_loop+0x128/0x140"}]
    assert written["dumps"] == ["xen-debugkeys.txt"] and written["vcpus"][0]["pc"] == "0x25b0c8"
