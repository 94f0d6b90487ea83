"""The toolstack targets' checks, on what a real qemu-virt-xl boot recorded (tests/unit/data/toolstack/,
captured from this harness's own boot): the real report passes, and each wrong value fails with expected vs
found. Also the domU's libxl-built device tree, the relayed console, the root disk and the target section."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
import subprocess
import time
from pathlib import Path

import pytest

from harness import checks, rootfs, toolstack
from harness.elf import Node
from harness.errors import UsageError
from harness.findings import Finding, Severity
from harness.guest import GuestView
from harness.monitor import ConsoleMonitor, Verdict
from harness.targets import load_spec, target_names
from harness.toolstack import ToolstackReport
from harness.xenlog import XenClaims

DATA = Path(__file__).parent / "data" / "toolstack"
CAPTURED = json.loads((DATA / "qemu-virt-xl-result.json").read_text())
DOMU_DTB = (DATA / "qemu-virt-xl-domu1.dtb").read_bytes()
CLAIMS = XenClaims(version="4.17", release="4.17.7")
ARGS = {"cpus": 2, "dom0_vcpus": 2, "dom0_memory_mb": 512, "domu_name": "domu1", "domu_memory_mb": 256}


def report(**changes) -> ToolstackReport:
    data = copy.deepcopy(CAPTURED["toolstack"])
    data["domu_events"] = toolstack.EventCounts(**data["domu_events"])
    data["dom0_events"] = toolstack.EventCounts(**data["dom0_events"])
    found = ToolstackReport(**data)
    for name, value in changes.items():
        setattr(found, name, value)
    return found


def rules(found: ToolstackReport, **args) -> list[str]:
    return [f.rule for f in toolstack.check(found, CLAIMS, **{**ARGS, **args})]


def test_the_captured_boot_passes() -> None:
    assert toolstack.check(report(), CLAIMS, **ARGS) == []


def test_a_xenbus_state_stuck_at_3_is_named_with_its_path() -> None:
    found = toolstack.check(report(xenbus={**report().xenbus, "vbd frontend": "3"}), CLAIMS, **ARGS)
    assert [f.rule for f in found] == ["xenbus.state"], found
    assert found[0].expected.startswith("4") and found[0].found == "3", found[0]
    assert "/local/domain/1/device/vbd/51712/state" in found[0].where


def test_a_backend_that_never_connects_says_so() -> None:
    found = toolstack.check(report(xenbus={**report().xenbus, "vif backend": "2"}), CLAIMS, **ARGS)
    assert ["never connected" in f.note for f in found] == [True], found


def test_a_pv_disk_hash_mismatch_fails_the_read() -> None:
    found = toolstack.check(report(pv_disk_sha256_domu="0" * 64), CLAIMS, **ARGS)
    assert [f.rule for f in found] == ["pv.disk.read"], found
    assert found[0].found == "0" * 64 and CAPTURED["toolstack"]["pv_disk_sha256_dom0"] in found[0].expected


def test_bytes_the_domu_wrote_that_dom0_does_not_read_back_fail() -> None:
    assert rules(report(written_sha256_dom0="1" * 64)) == ["pv.disk.write"]


def test_the_root_disk_must_give_the_known_bytes_and_count_its_spi() -> None:
    assert rules(report(disk_sha256="2" * 64)) == ["disk.sha256"]
    irq = report().disk_irq
    assert rules(report(disk_irq={**irq, "after": irq["before"]})) == ["disk.irq"]
    assert rules(report(disk_irq={**irq, "hwirq": 27})) == ["disk.irq"]
    assert rules(report(disk_irq={})) == ["disk.irq"]


def test_xenstore_xl_info_and_xl_list_must_agree_with_xen() -> None:
    assert rules(report(xenstore_dom0=["error: could not connect"])) == ["toolstack.xenstore"]
    assert rules(report(), cpus=4) == ["toolstack.xl-info"]
    assert rules(report(), dom0_memory_mb=1024) == ["toolstack.xl-list"]
    crashed = [line.replace("-b----", "--c---") for line in report().xl_list]
    assert rules(report(xl_list=crashed)) == ["toolstack.xl-list"]
    found = toolstack.check(report(), XenClaims(version="4.20"), **ARGS)
    assert [(f.rule, f.found) for f in found] == [("toolstack.xl-info", "4.17")], found


def test_event_channels_that_do_not_fire_and_pings_that_fail_are_findings() -> None:
    quiet = toolstack.EventCounts(before={"blkif": 5}, after={"blkif": 5})
    assert rules(report(domu_events=quiet)) == ["pv.events"]
    lost = ["3 packets transmitted, 0 packets received, 100% packet loss"]
    assert rules(report(ping_dom0_to_domu=lost)) == ["pv.net.ping"]
    assert rules(report(ping_dom0_to_domu=lost), network=False) == []


def test_event_rows_are_read_by_their_xen_chip() -> None:
    interrupts = ("           CPU0       CPU1\n"
                  " 12:        300         21  GICv3  31 Level     events\n"
                  " 17:          4          1  xen-dyn-lateeoi     Edge    -event     blkif\n"
                  " 18:          2          0  xen-dyn     Edge    -event     vif0-q0-tx\n"
                  " 19:          9          0  xen-percpu    -virq      timer0\n"
                  "IPI0:        21        117       Rescheduling interrupts\n")
    assert toolstack.event_totals(interrupts) == {"blkif": 5, "vif0-q0-tx": 2, "timer0": 9}


def test_libxls_domu_tree_has_xens_guest_layout_and_a_moved_grant_region_fails() -> None:
    view = GuestView("domu1", fdt=DOMU_DTB)
    expect = checks.expectation(CLAIMS, 1)
    assert checks.check_device_tree(view, expect, "domU") == []
    grant = struct.pack(">QQ", 0x38000000, 0x01000000)  # reg[0]: GUEST_GNTTAB_BASE, 16 MiB
    assert DOMU_DTB.count(grant) == 1
    moved = DOMU_DTB.replace(grant, struct.pack(">QQ", 0x39000000, 0x01000000))
    found = checks.check_device_tree(GuestView("domu1", fdt=moved), expect, "domU")
    assert found and any("0x38000000" in f.expected and "0x39000000" in f.found for f in found), found


def test_libxls_extended_regions_for_a_32_bit_domu_are_a_known_upstream_inconsistency() -> None:
    found = [Finding("dt.ext.32bit", Severity.ERROR, "/hypervisor reg[1..]", "no extended regions", "0x48000000-…")]
    known = toolstack.known_libxl_defects(found, is_32bit=True)
    assert [f.severity for f in known] == [Severity.KNOWN] and "libxl_arm.c" in known[0].note
    assert toolstack.known_libxl_defects(found, is_32bit=False) == found


def test_a_relayed_domu_console_is_the_domus_own() -> None:
    monitor = ConsoleMonitor(prompt="dom0# |domu1# ")
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\ndom0# xl create -c /etc/xen/domu.cfg\n")
    monitor.relay = "dom1"
    monitor.feed(b"Parsing config from /etc/xen/domu.cfg\n[    0.000000] Booting Linux on physical CPU 0x0\n"
                 b"harness-init: domu1 ready\ndomu1# ")
    assert {"dom1:xl-create", "dom1:kernel", "dom1:init", "dom1:shell"} <= set(monitor.reached), monitor.reached
    assert "dom0:kernel" not in monitor.reached


def test_dom0s_prompt_ends_the_relay() -> None:
    """xl returned (it failed, or was detached): dom0's prompt and what follows are dom0's again."""
    monitor = ConsoleMonitor(prompt="dom0# |domu1# ")
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\n")
    monitor.relay, monitor.relay_end = "dom1", re.compile("dom0# ")
    monitor.feed(b"sh: xl: not found\ndom0# ")
    assert monitor.relay is None and "dom1:shell" not in monitor.reached, monitor.reached
    assert [line.source for line in monitor.lines[-1:]] == ["dom1"]  # xl's own words were still the relay's
    monitor.relay = "dom1"
    monitor.feed(b"domu1# \x1b[6ndom0# \x1b[6n")  # Ctrl-] at the domU's prompt: dom0's follows on its line
    assert monitor.relay is None


@pytest.mark.parametrize("line, signature", [
    ("libxl: error: libxl_create.c:1976:console_xswait_callback: domain 1 console tty: timed out", "libxl-error"),
    ("xl: unable to exec console client: No such file or directory", "libxl-error"),
    ("xenconsole: Could not open /var/lock/xenconsole.1: No such file or directory", "xenconsoled-error"),
    ("[   30.1] XENBUS: Timeout connecting to device: device/vbd/51712 (local state 3, remote state 2)",
     "xenbus-unconnected"),
])
def test_toolstack_failures_seen_on_a_console_are_named(line: str, signature: str) -> None:
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\n")
    monitor.relay = "dom1"
    monitor.feed(line.encode() + b"\n")
    assert monitor.failure is not None and monitor.failure.signature == signature, monitor.failure
    assert monitor.failure.verdict is Verdict.FAILED


def test_xl_lines_stop_where_the_domus_kernel_speaks() -> None:
    lines = ["Parsing config from /etc/xen/domu.cfg", "[    0.000000] Linux version 6.1", "later"]
    assert toolstack.xl_lines(lines) == ["Parsing config from /etc/xen/domu.cfg"]


def test_the_root_disk_is_the_same_bytes_from_the_same_files(tmp_path: Path) -> None:
    files = {"bin/tool": Node(0o755, b"#!/bin/sh\necho hi\n"), "bin/link": Node(0o777, link="tool"),
             "etc/harness/on-disk": Node(0o644, b"x\n"), "srv/known.bin": Node(0o644, bytes(range(256)) * 64)}
    first, second = tmp_path / "a.ext4", tmp_path / "b.ext4"
    rootfs.make_ext4(files, first, "harness-dom0")
    time.sleep(1.1)  # the staged files' ctime (which mke2fs copies) is a second later
    rootfs.make_ext4(dict(reversed(files.items())), second, "harness-dom0")
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(second.read_bytes()).hexdigest()
    listing = subprocess.run(["debugfs", "-R", "cat /srv/known.bin", str(first)], capture_output=True, timeout=60)
    assert listing.stdout == bytes(range(256)) * 64
    label = subprocess.run(["dumpe2fs", "-h", str(first)], capture_output=True, text=True, timeout=60).stdout
    assert "Filesystem volume name:   harness-dom0" in label


def test_the_domu_config_names_its_pv_disk_network_and_scripts() -> None:
    spec = load_spec("qemu-virt-xl")
    config = rootfs.domu_config(spec.toolstack)
    assert 'name = "domu1"' in config and "memory = 256" in config
    assert f"script=harness-block, target={rootfs.PV_DISK}" in config
    assert f"ip={rootfs.DOMU_ADDRESS}, script=harness-vif" in config
    assert f"harness.net={rootfs.DOMU_ADDRESS}/24" in config


def test_a_toolstack_target_without_its_section_or_root_argument_is_refused(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "targets" / "qemu-virt-xl.yaml").read_text()
    (tmp_path / "no-section.yaml").write_text(text.split("  toolstack:\n")[0] + "  capabilities: [toolstack]\n")
    with pytest.raises(UsageError, match="toolstack capability needs a toolstack: section"):
        load_spec("no-section", tmp_path)
    (tmp_path / "no-root.yaml").write_text(text.replace(" harness.root=LABEL=harness-dom0", ""))
    with pytest.raises(UsageError, match="harness.root=LABEL=harness-dom0"):
        load_spec("no-root", tmp_path)


def test_the_experimental_a15_toolstack_target_loads_outside_the_matrix() -> None:
    path = Path(__file__).parents[2] / "targets" / "experimental" / "qemu-a15-xl.yaml"
    spec = load_spec(str(path))
    assert spec.can("toolstack") and spec.arch == "arm32" and spec.toolstack.profile == "dom0-toolstack-armhf"
    assert "qemu-a15-xl" not in target_names()
