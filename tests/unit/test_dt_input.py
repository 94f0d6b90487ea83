"""`check dtb` on every layout people bring, built from real trees with the real tools.

The trees are real: the DT a real Xen 4.17 gave a real arm64 dom0 (qemu-virt, GICv3) and the one it gave a
real 32-bit dom0 (qemu-a15). A DTS is what `dtc -I dtb -O dts` (Debian's device-tree-compiler, which ./run
installs) decompiles them to; a /proc/device-tree copy is written as Linux lays it out (a directory per node,
name@address, a file per property, `name` files included) and read back by `dtc -I fs` as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fdtree import flatten, write_procfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import InfrastructureError, UnusableInput
from harness.findings import failures
from harness.validate import dt, dt_input
from harness.validate.dt import Expectation, Region

DATA = Path(__file__).parent / "data"
DOM0_PATH = DATA / "qemu-virt-gicv3-dom0.dtb"
DOM0 = DOM0_PATH.read_bytes()
A15_DOM0_PATH = DATA / "dt" / "qemu-a15-dom0.dtb"
# What Xen 4.17 printed on the boot that produced DOM0
EXPECT = Expectation(xen_version="4.17", grant=Region(0x40200000, 0x40000),
                     extended=(Region(0x40400000, 0x1FC00000), Region(0x80000000, 0x40000000)), event_intid=16)
HARNESS = Path(sys.executable).parent / "harness"


def dtc(*args: str | Path) -> bytes:
    return subprocess.run(["dtc", *map(str, args)], capture_output=True, timeout=60, check=True).stdout


def without_name_files(tree: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """Linux's `name` pseudo-properties left out: they were not in the blob Linux was given."""
    return {path: {k: v for k, v in props.items() if k != "name"} for path, props in tree.items()}


def rules(findings) -> set[str]:
    return {f.rule for f in findings}


# --- a DTB --------------------------------------------------------------------------------------


def test_a_dtb_is_read_as_it_is():
    data, reading = dt_input.read(DOM0_PATH)
    assert data == DOM0 and (reading.path, reading.layout) == (str(DOM0_PATH), dt_input.DTB_LAYOUT)
    assert dt_input.check_path(DOM0_PATH, "dom0", EXPECT) == []


def test_what_is_neither_a_dtb_nor_a_dts_is_refused(tmp_path):
    notes = tmp_path / "board.txt"
    notes.write_text("the board's device tree is attached\n")
    with pytest.raises(UnusableInput) as caught:
        dt_input.read(notes)
    assert str(caught.value) == (f"{notes} is neither a DTB (no FDT magic d00dfeed) nor a DTS (no /dts-v1/ tag): "
                                 "pass a .dtb (e.g. a copy of /sys/firmware/fdt), a .dts, or a copy of "
                                 "/proc/device-tree")


# --- a DTS --------------------------------------------------------------------------------------


@pytest.fixture
def dom0_dts(tmp_path) -> Path:
    path = tmp_path / "dom0.dts"
    path.write_bytes(dtc("-q", "-I", "dtb", "-O", "dts", DOM0_PATH))
    return path


def test_a_dts_decompiled_from_the_real_dtb_compiles_back_to_the_same_tree(dom0_dts):
    data, reading = dt_input.read(dom0_dts)
    assert reading.layout == dt_input.DTS_LAYOUT
    assert flatten(data) == flatten(DOM0)
    assert dt_input.check_path(dom0_dts, "dom0", EXPECT) == []


def test_a_dts_with_a_wrong_event_ppi(dom0_dts):
    text = dom0_dts.read_text()
    assert text.count("interrupts = <0x01 0x00 0xf08>;") == 1, "dtc no longer writes the node this way"
    dom0_dts.write_text(text.replace("interrupts = <0x01 0x00 0xf08>;", "interrupts = <0x01 0x01 0xf08>;"))
    finding = next(f for f in dt_input.check_path(dom0_dts, "dom0", EXPECT) if f.rule == "dt.dom0.irq")
    assert finding.found == "INTID 17 from <0x1 0x1 0xf08>"


def test_a_dts_dtc_cannot_compile_is_refused_with_dtcs_error(dom0_dts):
    dom0_dts.write_text(dom0_dts.read_text().replace("interrupts = <0x01 0x00 0xf08>;", "interrupts = <0x01"))
    with pytest.raises(UnusableInput, match=rf"^{dom0_dts} is a DTS that dtc cannot compile \(Error: {dom0_dts}:\d+\."
                                            r"\d+-\d+ syntax error\): fix it, or give the \.dtb$"):
        dt_input.read(dom0_dts)
    dom0_dts.write_text('/dts-v1/;\n#include <dt-bindings/interrupt-controller/arm-gic.h>\n/ { };\n')
    with pytest.raises(UnusableInput, match=r"run it through cpp first, as the kernel's build does \(it uses "
                                            r"#include\), or give the \.dtb$"):
        dt_input.read(dom0_dts)


def test_a_dts_that_would_compile_to_gigabytes_is_stopped(tmp_path):
    path = tmp_path / "huge.dts"
    path.write_text('/dts-v1/;\n/ { blob = /incbin/("/dev/zero", 0, 0x1800000); };\n')  # 24 MiB of zeros
    with pytest.raises(UnusableInput, match=r"huge.dts is a DTS that dtc cannot compile \(it compiles to more than "
                                            r"the 16 MiB a DTB may be\)"):
        dt_input.read(path)


def test_a_dts_that_takes_more_memory_than_dtc_may_use_is_stopped(tmp_path):
    path = tmp_path / "greedy.dts"  # 2 GiB of zeros read into dtc's memory before anything is written
    path.write_text('/dts-v1/;\n/ { blob = /incbin/("/dev/zero", 0, 0x80000000); };\n')
    # dtc says so itself when its realloc fails, and aborts when something else's malloc does: either is one line
    with pytest.raises(UnusableInput, match=r"greedy.dts is a DTS that dtc cannot compile \((it needs more than "
                                            r"the 1 GiB of memory dtc may use|FATAL ERROR: \w+\(\) failed .*)\)"):
        dt_input.read(path)


def test_without_dtc_a_dts_says_what_to_install(dom0_dts, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(InfrastructureError, match="dtc is not installed: install Debian's device-tree-compiler"):
        dt_input.read(dom0_dts)


# --- a copy of /proc/device-tree --------------------------------------------------------------------


def test_a_procfs_copy_is_read_as_dtc_reads_it(tmp_path):
    root = tmp_path / "device-tree"
    write_procfs(DOM0, root)
    assert (root / "hypervisor" / "name").read_bytes() == b"hypervisor\0"
    assert (root / "pl031@9010000" / "reg").is_file()  # a node per directory, named name@address
    data, reading = dt_input.read(root)
    assert reading.layout == dt_input.PROCFS_LAYOUT and flatten(data) == flatten(DOM0)
    assert without_name_files(flatten(dtc("-q", "-I", "fs", "-O", "dtb", root))) == flatten(DOM0)
    assert dt_input.check_path(root, "dom0", EXPECT) == []


def test_a_procfs_copy_whose_interrupt_parent_is_no_gic(tmp_path):
    root = tmp_path / "device-tree"
    write_procfs(DOM0, root)
    clock = (root / "apb-pclk" / "phandle").read_bytes()  # QEMU's fixed clock: no interrupt controller
    (root / "hypervisor" / "interrupt-parent").write_bytes(clock)
    finding = next(f for f in dt_input.check_path(root, "dom0", EXPECT) if f.rule == "dt.irq.parent.gic")
    assert finding.where == "/hypervisor interrupt-parent -> /apb-pclk"
    assert finding.found.startswith("/apb-pclk: no interrupt-controller property; compatible 'fixed-clock'")


def test_a_procfs_copy_of_a_32bit_dom0_with_an_extended_region(tmp_path):
    """As a user runs it: no --arch, the tree's Cortex-A15 CPUs make it a 32-bit domain; --arch arm64 overrides."""
    root = tmp_path / "device-tree"
    write_procfs(A15_DOM0_PATH.read_bytes(), root)
    reg = (root / "hypervisor" / "reg").read_bytes()
    (root / "hypervisor" / "reg").write_bytes(reg + (0x80000000).to_bytes(8, "big") + (0x40000000).to_bytes(8, "big"))
    proc = subprocess.run([HARNESS, "check", "dtb", root], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[:2] == [f"read {root} as a copy of /proc/device-tree",
                                            "domain: arm32 (from /cpus: arm,cortex-a15, 32-bit only)"]
    assert "dt.ext.32bit" in proc.stdout and "note: Xen gives no extended regions to 32-bit guests" in proc.stdout
    overridden = subprocess.run([HARNESS, "check", "dtb", root, "--arch", "arm64", "--json"], capture_output=True,
                                text=True, timeout=60)
    record = json.loads(overridden.stdout)
    assert record["arch"] == {"name": "arm64", "why": "given (--arch)"}
    assert "dt.ext.32bit" not in {f["rule"] for f in record["findings"]}


def test_a_procfs_copy_with_a_node_where_a_property_should_be_is_refused(tmp_path):
    root = tmp_path / "device-tree"
    write_procfs(DOM0, root)
    os.mkfifo(root / "hypervisor" / "status")
    with pytest.raises(UnusableInput, match=r"hypervisor/status is a FIFO, not a property file: pass a copy of "):
        dt_input.read(root)


# --- never a traceback, never a hang ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dts_text(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dts") / "dom0.dtb"
    path.write_bytes(DOM0)
    return dtc("-q", "-I", "dtb", "-O", "dts", path).decode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["", ";", "{", "}", "<", ">", '"', "0x",
                                                                        "/incbin/(", "&", "/delete-node/ "])),
                      min_size=1, max_size=5),
       tail=st.integers(0, 10**6))
def test_mangled_dts_only_ever_raises_unusable_input(dts_text, tmp_path, edits, tail):
    text = dts_text
    for at, token in edits:
        at %= len(text) + 1
        text = text[:at] + token + text[at + 1 :]
    path = tmp_path / "mangled.dts"
    path.write_text(text[: max(tail % (len(text) + 1), len("/dts-v1/"))])
    try:
        data, _ = dt_input.read(path)
        findings = dt.validate_dtb(data, "dom0", EXPECT)
    except UnusableInput as exc:
        assert str(exc).startswith(str(path))
    else:
        assert all(f.rule in dt.RULES for f in findings) and isinstance(failures(findings), list)
