"""`harness boot` as `git bisect run` uses it: a user's own Xen build, and the exit-status contract
(0 good, 1 bad, 125 cannot test this build, 128 the lab failed), on real boots."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cache import Cache
from harness.targets import TargetSpec
from harness.xenbuild import build_xen, xen_source

pytestmark = [pytest.mark.boot, pytest.mark.requires("fault-injection"), pytest.mark.requires("extended-regions")]


def one_boot_session(artifacts: Path) -> tuple[dict, dict]:
    """The session.json a `harness boot --artifacts DIR` run writes: its one target, and its one test."""
    doc = json.loads((artifacts / "session.json").read_text())
    assert doc["kind"] == "boot" and len(doc["targets"]) == 1, doc
    [target] = doc["targets"].values()
    return target, target["tests"]["harness boot"]


def harness(*args: str, artifacts: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "boot", *args, "--artifacts", str(artifacts)],
                          capture_output=True, text=True, timeout=900)


def test_boot_a_users_xen_build(target_spec: TargetSpec, tmp_path: Path) -> None:
    """--xen boots the given image (here: Xen built from Debian's source, 4.17.5) and records it as the user's."""
    xen = build_xen(Cache(), xen_source())
    run = harness("--target", str(target_spec.path), "--xen", str(xen.path), "--json", artifacts=tmp_path / "run")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["images"]["xen"] == {"name": "xen", "path": str(xen.path), "sha256": xen.sha256, "origin": "user"}
    assert result["xen"]["release"] == "4.17.5" and result["verdict"] == "passed"


@pytest.mark.parametrize("what", ["missing", "not-an-image"])
def test_a_build_that_cannot_boot_is_untestable(what: str, target_spec: TargetSpec, tmp_path: Path) -> None:
    """125 tells git bisect to skip the commit; the reason is one sentence, no traceback."""
    xen = tmp_path / "xen"
    if what == "not-an-image":
        xen.write_bytes(b"\x7fELF" + bytes(200))  # e.g. xen-syms given by mistake
    run = harness("--target", str(target_spec.path), "--xen", str(xen), artifacts=tmp_path / "run")
    assert run.returncode == 125, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "--xen" in run.stdout + run.stderr or "Xen image" in run.stdout + run.stderr
    assert one_boot_session(tmp_path / "run")[1]["verdict"] == "error"  # as pytest reports a boot it cannot have


def test_a_bad_boot_exits_1_with_its_timeline(target_spec: TargetSpec, tmp_path: Path) -> None:
    run = harness("--target", str(target_spec.path), "--fault", "impossible-dom0-mem", artifacts=tmp_path / "run")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Xen banner" in run.stdout and "dom0 loading" in run.stdout  # the milestones it reached
    assert "verdict: CRASHED (xen-dom0-memory after 'dom0-loading')" in run.stdout
    assert "Failed to allocate requested dom0 memory" in run.stdout  # the evidence
    target, test = one_boot_session(tmp_path / "run")
    boot = target["boot"]
    assert (test["verdict"], boot["verdict"], boot["class"], boot["stage"], boot["signature"]) == (
        "failed", "crashed", "build", "dom0-loading", "xen-dom0-memory"), target
    assert any("Failed to allocate requested dom0 memory" in line for line in boot["evidence"]), boot["evidence"]
    assert (tmp_path / "run" / boot["console"]).is_file() and "xen-banner" in boot["milestones"]
    assert target["versions"]["xen"] == next(c[4:] for c in target["capabilities"] if c.startswith("xen-"))


def test_a_scheduler_xen_does_not_have_fails_the_boot(target_spec: TargetSpec, tmp_path: Path) -> None:
    """Xen falls back to its default scheduler and boots on: the boot is FAILED, in Xen's own words.

    (Debian's Xen has no null scheduler either; a name no Xen has keeps this true of any --xen build.)"""
    run = harness("--target", str(target_spec.path), "--xen-args", "sched=nosuch", artifacts=tmp_path / "run")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "xen.cmdline.fallback" in run.stdout and "Xen accepts sched=nosuch" in run.stdout, run.stdout
    assert "Could not find scheduler: nosuch (Xen used " in run.stdout, run.stdout  # Xen's line, and what it did
    assert "verdict: FAILED (1 failing finding)" in run.stdout, run.stdout


def test_a_lab_failure_exits_128(target_spec: TargetSpec, tmp_path: Path) -> None:
    """128 stops git bisect run instead of blaming the commit."""
    run = harness("--target", str(target_spec.path), "--fault", "qemu-rejects-option", artifacts=tmp_path / "run")
    assert run.returncode == 128, run.stdout + run.stderr
    assert "invalid option" in run.stdout + run.stderr and "Traceback" not in run.stdout + run.stderr
    target, test = one_boot_session(tmp_path / "run")
    assert (test["verdict"], target["boot"]["class"]) == ("error", "lab"), target


def test_ctrl_backslash_asks_where_the_boot_is_and_goes_on(target_spec: TargetSpec, tmp_path: Path) -> None:
    """SIGQUIT (Ctrl-\\) during a boot: `harness boot` prints where the machine is, then boots on and passes."""
    command = [sys.executable, "-m", "harness.cli", "boot", "--target", str(target_spec.path),
               "--artifacts", str(tmp_path / "run")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        out = []
        for line in proc.stdout:  # progress lines come as the boot goes: ask once Xen has spoken
            out.append(line)
            if "Xen banner" in line:
                proc.send_signal(signal.SIGQUIT)
                break
        out += proc.stdout.readlines()
        status = proc.wait(timeout=600)
    text = "".join(out)
    assert status == 0, text
    assert "asking the machine where it is" in text and "diagnosis (" in text, text
    assert "verdict: PASSED" in text
