"""The installed `harness` console script, run as a user runs it: exit codes, output, never a traceback."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import libfdt
import pytest

from harness import targets
from harness.validate import dt

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(sys.executable).parent / "harness"
DATA = Path(__file__).parent / "data"
DOM0_DTB = DATA / "qemu-virt-gicv3-dom0.dtb"
ACPI_DOM0 = DATA / "acpi" / "dom0"
ACPI_HOST = DATA / "acpi" / "host"
HEALTHY_LOG = DATA / "logs" / "qemu-virt-healthy.log"


def harness(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(HARNESS), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    for stream in (proc.stdout, proc.stderr):
        assert "Traceback" not in stream, f"harness {' '.join(map(str, args))} printed a traceback:\n{stream}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: "), f"expected one line on stderr, found {proc.stderr!r}"
    assert proc.stdout == "", f"expected nothing on stdout, found {proc.stdout!r}"
    return lines[0]


def gicc_enabled(madt: bytes) -> int:
    """Enabled GICC entries (type 0x0b, flags bit 0) in a MADT, counted here from the raw table."""
    count, offset = 0, 44
    while offset + 2 <= len(madt):
        kind, length = madt[offset], madt[offset + 1]
        if kind == 0x0B and struct.unpack_from("<I", madt, offset + 12)[0] & 1:
            count += 1
        offset += max(length, 2)
    return count


def test_console_script_is_installed():
    assert HARNESS.is_file() and os.access(HARNESS, os.X_OK), f"{HARNESS} is missing: pip install -e ."


# --- check dtb ----------------------------------------------------------------------------------


def test_check_dtb_healthy_dom0():
    proc = harness("check", "dtb", DOM0_DTB, "--profile", "dom0", "--xen-version", "4.17")
    assert proc.returncode == 0, f"expected exit 0, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    arch = dt.domain_arch(DOM0_DTB.read_bytes())
    assert proc.stdout.splitlines() == [f"read {DOM0_DTB} as a DTB", f"domain: arm64 ({arch.why})", "", "no findings"]
    json_proc = harness("check", "dtb", DOM0_DTB, "--xen-version", "4.17", "--json")
    assert (json_proc.returncode, json.loads(json_proc.stdout)) == (0, {
        "input": str(DOM0_DTB), "read": [{"path": str(DOM0_DTB), "layout": "a DTB", "parts": [], "ignored": []}],
        "profile": "dom0", "xen_version": "4.17", "arch": {"name": "arm64", "why": arch.why}, "host": None,
        "findings": []})


@pytest.fixture
def swapped_compatible(tmp_path) -> Path:
    fdt = libfdt.Fdt(bytearray(DOM0_DTB.read_bytes()))
    node = fdt.path_offset("/hypervisor")
    first, second = fdt.getprop(node, "compatible").as_stringlist()
    assert first.startswith("xen,xen-") and second == "xen,xen", "the fixture's compatible is not the healthy one"
    fdt.setprop(node, "compatible", f"{second}\0{first}\0".encode())
    path = tmp_path / "swapped.dtb"
    path.write_bytes(bytes(fdt.as_bytearray()))
    return path


def test_check_dtb_wrong_compatible_order(swapped_compatible):
    proc = harness("check", "dtb", swapped_compatible, "--profile", "dom0", "--xen-version", "4.17")
    assert proc.returncode == 1, f"expected exit 1, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "dt.compatible.order" in proc.stdout and "error" in proc.stdout, proc.stdout


def test_a_wrong_xen_version_against_a_xen_4_20_dom0_says_expected_and_found():
    """dom0's tree from a real Xen 4.20 boot (qemu-virt-xen420): right for 4.20, a compatible error for 4.17."""
    dtb = DATA / "qemu-virt-xen420-dom0.dtb"
    assert harness("check", "dtb", dtb, "--profile", "dom0", "--xen-version", "4.20").returncode == 0
    proc = harness("check", "dtb", dtb, "--profile", "dom0", "--xen-version", "4.17", "--json")
    errors = [f for f in json.loads(proc.stdout)["findings"] if f["severity"] == "error"]
    assert proc.returncode == 1 and [(f["rule"], f["expected"], f["found"]) for f in errors] == [
        ("dt.compatible.version", '"xen,xen-4.17" (the Xen that booted: 4.17)', '"xen,xen-4.20"')], errors


def test_check_dtb_json(swapped_compatible):
    proc = harness("check", "dtb", swapped_compatible, "--xen-version", "4.17", "--json")
    assert proc.returncode == 1
    record = json.loads(proc.stdout)
    assert {k: v for k, v in record.items() if k not in ("findings", "read", "arch")} == {
        "input": str(swapped_compatible), "profile": "dom0", "xen_version": "4.17", "host": None}
    findings = record["findings"]
    assert isinstance(findings, list) and findings
    for finding in findings:
        assert {"rule", "severity", "where", "expected", "found"} <= set(finding), finding
    order = [f for f in findings if f["rule"] == "dt.compatible.order"]
    assert order and order[0]["severity"] == "error", findings
    assert order[0]["found"] == '"xen,xen", "xen,xen-4.17"', order[0]
    assert order[0]["expected"].startswith('"xen,xen-<major>.<minor>", "xen,xen"'), order[0]


WITNESSES = DATA / "witnesses"


def test_check_dtb_against_the_host_prints_the_judged_difference():
    proc = harness("check", "dtb", WITNESSES / "qemu-virt-dom0.dtb", "--host", WITNESSES / "qemu-virt-host.dtb")
    assert proc.returncode == 0, f"expected exit 0, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "- /pl011@9000000" in proc.stdout and "Xen's console UART: Xen keeps it" in proc.stdout
    assert proc.stdout.rstrip().endswith("no findings")


def test_check_dtb_host_finds_xens_uart_left_visible(tmp_path):
    host = WITNESSES / "qemu-virt-host.dtb"
    fdt = libfdt.Fdt(bytearray(host.read_bytes()))  # the host tree as "dom0's": nothing hidden, nothing written
    path = tmp_path / "unedited.dtb"
    path.write_bytes(bytes(fdt.as_bytearray()))
    proc = harness("check", "dtb", path, "--host", host, "--json")
    assert proc.returncode == 1, f"expected exit 1, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    record = json.loads(proc.stdout)
    assert record["host"] == str(host)
    found = {f["rule"] for f in record["findings"]}
    assert {"dt.host.uart", "dt.host.multiboot", "dt.node.count"} <= found, found


def test_check_dtb_unreadable_host_is_one_sentence(tmp_path):
    junk = tmp_path / "host.dtb"
    junk.write_bytes(b"not a tree")
    proc = harness("check", "dtb", WITNESSES / "qemu-virt-dom0.dtb", "--host", junk)
    assert proc.returncode == 2 and str(junk) in one_line_error(proc)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (d / "empty.dtb", b""),
        lambda d: (d / "junk.dtb", b"\xd0\x0d\xfe\xed" + os.urandom(60)),
        lambda d: (d / "text.dtb", b"this is not a device tree\n" * 10),
    ],
    ids=["empty-file", "junk-with-magic", "text"],
)
def test_check_dtb_unusable_file(tmp_path, make):
    path, data = make(tmp_path)
    path.write_bytes(data)
    proc = harness("check", "dtb", path)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert str(path) in one_line_error(proc)


@pytest.mark.parametrize("kind", ["dtb", "acpi"])
def test_check_nonexistent_or_empty_directory(tmp_path, kind):
    for path in (tmp_path / "nowhere", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        proc = harness("check", kind, path)
        assert proc.returncode == 2, f"check {kind} {path.name}: expected exit 2, found {proc.returncode}"
        assert str(path) in one_line_error(proc)


def test_check_dtb_directory_of_junk_reads_as_a_tree_without_xen(tmp_path):
    """A directory is taken as a copy of /proc/device-tree: junk files are properties of a tree with no node."""
    (tmp_path / "a").write_bytes(os.urandom(100))
    (tmp_path / "README").write_text("junk\n")
    proc = harness("check", "dtb", tmp_path)
    assert proc.returncode == 1, f"expected exit 1, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "dt.node.count" in proc.stdout


# --- check acpi ---------------------------------------------------------------------------------


def test_check_acpi_healthy_dom0_shows_the_known_rsdp_finding():
    rsdp = (ACPI_DOM0 / "RSDP").read_bytes()
    v1_sum, full_sum = sum(rsdp[:20]) & 0xFF, sum(rsdp[:36]) & 0xFF
    assert v1_sum != 0 and full_sum == 0, "the fixture no longer shows Xen 4.17's RSDP defect"
    vcpus = gicc_enabled((ACPI_DOM0 / "APIC").read_bytes())
    proc = harness("check", "acpi", ACPI_DOM0, "--host", ACPI_HOST, "--vcpus", vcpus)
    assert proc.returncode == 0, f"expected exit 0, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    known = [ln for ln in proc.stdout.splitlines() if "acpi.rsdp.checksum.v1" in ln]
    assert known and known[0].startswith("known"), proc.stdout
    assert f"{v1_sum:#04x}" in known[0], f"expected the measured sum {v1_sum:#04x}, found {known[0]!r}"
    assert "note: Xen 4.17's acpi_create_rsdp" in proc.stdout


def test_check_acpi_wrong_vcpu_count():
    found = gicc_enabled((ACPI_DOM0 / "APIC").read_bytes())
    proc = harness("check", "acpi", ACPI_DOM0, "--host", ACPI_HOST, "--vcpus", found + 1, "--json")
    assert proc.returncode == 1, f"expected exit 1, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    record = json.loads(proc.stdout)
    assert {k: v for k, v in record.items() if k not in ("findings", "read")} == {
        "input": str(ACPI_DOM0), "host": str(ACPI_HOST), "vcpus": found + 1, "hypervisor_id": None}
    sysfs = "a copy of /sys/firmware/acpi/tables"
    assert [(r["path"], r["layout"]) for r in record["read"]] == [(str(ACPI_DOM0), sysfs), (str(ACPI_HOST), sysfs)]
    assert record["read"][0]["parts"] == sorted(p.name for p in ACPI_DOM0.iterdir())
    count = [f for f in record["findings"] if f["rule"] == "acpi.madt.gicc-count"]
    assert count and count[0]["severity"] == "error", proc.stdout
    assert (count[0]["expected"], count[0]["found"]) == (str(found + 1), str(found)), count[0]


def test_check_acpi_directory_of_junk(tmp_path):
    (tmp_path / "junk.bin").write_bytes(os.urandom(64))
    (tmp_path / "notes.txt").write_text("not a table\n")
    proc = harness("check", "acpi", tmp_path)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert str(tmp_path) in one_line_error(proc)


def test_check_acpi_one_table_says_what_it_read_and_what_it_did_not_check():
    proc = harness("check", "acpi", ACPI_DOM0 / "FACP")
    assert proc.returncode == 0, f"expected exit 0, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert proc.stdout.splitlines()[0] == f"read {ACPI_DOM0 / 'FACP'} as one binary table: FACP"
    record = json.loads(harness("check", "acpi", ACPI_DOM0 / "FACP", "--json").stdout)
    assert sorted(f["where"] for f in record["findings"] if f["rule"] == "acpi.not-applied") == [
        "APIC", "GTDT", "RSDP", "STAO", "XSDT"]


def test_check_acpi_text_without_tables_is_one_sentence(tmp_path):
    path = tmp_path / "acpidump.txt"
    path.write_text("acpidump: command not found\n")
    proc = harness("check", "acpi", path)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert one_line_error(proc).startswith(f"harness: {path} is text without an acpidump table in it")


# --- what a user brings: never a hang, never a traceback -----------------------------------------


@pytest.mark.parametrize("verb", [("check", "dtb"), ("triage",)], ids=["check-dtb", "triage"])
def test_a_fifo_is_refused_at_once(tmp_path, verb):
    path = tmp_path / "dump.dtb"
    os.mkfifo(path)  # nobody writes to it: reading it would wait forever
    proc = harness(*verb, path, timeout=20)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert f"{path} is a FIFO, not a file" in one_line_error(proc)


@pytest.mark.parametrize("verb", [("check", "dtb"), ("triage",)], ids=["check-dtb", "triage"])
def test_dev_zero_is_refused_at_once(verb):
    proc = harness(*verb, "/dev/zero", timeout=20)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "/dev/zero is a character device, not a file" in one_line_error(proc)


def test_an_oversized_dtb_is_refused(tmp_path):
    path = tmp_path / "x.dtb"
    with path.open("wb") as fh:
        fh.truncate(300 << 20)
    proc = harness("check", "dtb", path, timeout=20)
    assert proc.returncode == 2
    assert f"{path} is 300 MiB, over the 16 MiB a DTB may be" in one_line_error(proc)


def test_triage_with_an_invalid_prompt_regex_says_so():
    proc = harness("triage", "--prompt", "(", HEALTHY_LOG)
    assert proc.returncode == 2, f"expected exit 2, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    line = one_line_error(proc)
    assert "--prompt '(' is not a regular expression (missing ), unterminated subpattern" in line, line


def test_triage_of_a_healthy_log_and_of_an_empty_one(tmp_path):
    proc = harness("triage", "--prompt", "dom0# ", "--json", HEALTHY_LOG)
    assert proc.returncode == 0, f"expected exit 0, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert json.loads(proc.stdout)["verdict"] == "passed"
    empty = tmp_path / "empty.log"
    empty.write_bytes(b" \n\n")
    proc = harness("triage", empty)  # a board that printed nothing: a live boot's verdict, not a usage error
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verdict: hung after stage 'power-on': no console output [signature silence]" in proc.stdout


# --- boot and targets ---------------------------------------------------------------------------


def test_boot_unknown_target_is_a_lab_error_with_a_sentence(tmp_path):
    proc = harness("boot", "--target", "nope", env={"HARNESS_ARTIFACTS": str(tmp_path / "artifacts")})
    assert proc.returncode == 128, f"expected exit 128, found {proc.returncode}: {proc.stdout}{proc.stderr}"
    line = one_line_error(proc)
    assert "unknown target 'nope'" in line and line.endswith("."), line
    for name in targets.target_names():
        assert name in line, f"expected {name} listed, found {line!r}"
    assert not (tmp_path / "artifacts").exists(), "an artifacts directory was made for a boot that never started"


def test_targets_lists_qemu_virt():
    proc = harness("targets")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == len(targets.target_names())
    spec = targets.load_spec("qemu-virt")
    row = next((ln for ln in lines if ln.split()[0] == "qemu-virt"), None)
    assert row is not None, proc.stdout
    assert spec.description in row and f"[{', '.join(sorted(spec.capabilities))}]" in row, row


def test_targets_json_lists_every_target():
    proc = harness("targets", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    listed = {t["name"]: t for t in json.loads(proc.stdout)}
    assert set(listed) == set(targets.target_names())
    spec = targets.load_spec("qemu-a15")
    assert listed["qemu-a15"] == {"name": "qemu-a15", "description": spec.description, "arch": "arm32",
                                  "boot": spec.boot, "capabilities": sorted(spec.capabilities), "path": str(spec.path)}


def test_every_verb_but_triage_and_boot_has_json():
    """boot's --json and triage's are tested with them; these are the rest, and --version."""
    version = json.loads(harness("--version", "--json").stdout)
    assert set(version) == {"harness", "commit"}
    assert harness("--version").stdout == f"harness {version['harness']} (commit {version['commit']})\n"
    rules = json.loads(harness("check", "rules", "--json").stdout)
    assert rules["dt.ext.32bit"].startswith("a 32-bit domain") and "acpi.not-applied" in rules
    proc = harness("images", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    text_rows = harness("images", "list").stdout.splitlines()
    assert len(listing["images"]) + len(listing["sources"]) == len(text_rows)
    assert all({"profile", "name", "package", "version", "path"} == set(row) for row in listing["images"])


def test_check_rules_lists_the_boot_checks_too():
    proc = harness("check", "rules")
    assert proc.returncode == 0
    listed = {line.split()[0] for line in proc.stdout.splitlines()}
    assert {"xen.cmdline.unknown", "xen.cmdline.invalid", "xen.cmdline.fallback", "xen.grant",
            "dt.compatible.order", "acpi.rsdp.checksum.v1"} <= listed


def test_triage_reports_xens_complaints_about_its_command_line(tmp_path: Path):
    """A saved log in which Xen ignored part of its command line is judged as `harness boot` judges it."""
    log = DATA / "logs" / "qemu-virt-xen-cmdline-complaints.log"
    proc = harness("triage", log)
    assert proc.returncode == 1, proc.stdout
    assert "Could not find scheduler: null (Xen used credit2)" in proc.stdout
    assert 'parameter "no-such-param" unknown!' in proc.stdout
    # the fixture keeps dom0's kernel start but not the rest of its kernel log: no proof that dom0 found Xen
    assert "verdict: failed after stage 'dom0:kernel'" in proc.stdout and "xen-discovery-missing" in proc.stdout
    record = json.loads(harness("triage", "--json", log).stdout)
    assert record["verdict"] == "failed"
    assert [f["rule"] for f in record["findings"]] == [
        "xen.cmdline.unknown", "xen.cmdline.invalid", "xen.cmdline.fallback"]
    # Without the kernel's start (Xen's boot, then dom0's prompt) the findings alone fail the log.
    fragment = tmp_path / "no-kernel-start.log"
    fragment.write_bytes(b"".join(line for line in log.read_bytes().splitlines(keepends=True)
                                  if b"Booting Linux" not in line))
    proc = harness("triage", fragment)
    assert proc.returncode == 1 and proc.stdout.rstrip().endswith("verdict: failed"), proc.stdout
    assert 'parameter "no-such-param" unknown!' in proc.stdout
    healthy = harness("triage", DATA / "logs" / "qemu-virt-healthy.log")
    assert healthy.returncode == 0 and "xen.cmdline" not in healthy.stdout
