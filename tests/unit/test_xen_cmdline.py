"""Xen's complaints about its command line are failing findings; a healthy boot has none."""

from __future__ import annotations

import ast
import gzip
import re
from pathlib import Path

import pytest
from captured import COMPLAINTS_LOG, DATA, replay

from harness import checks, xenlog
from harness.findings import Severity, failures
from harness.monitor import ConsoleMonitor


@pytest.fixture(scope="module")
def complaining() -> ConsoleMonitor:
    return replay(COMPLAINTS_LOG.read_bytes())


def cmdline_findings(monitor: ConsoleMonitor):
    claims = xenlog.parse(monitor.text("xen"), ring=monitor.text("xen-ring"))
    return claims, checks.check_xen_cmdline(claims)


def test_each_complaint_of_a_real_boot_is_a_failing_finding(complaining):
    """sched=null no-such-param=1 dom0_max_vcpus=abc on Debian's Xen 4.17.7: three findings, each with
    Xen's own line, in the order Xen printed them."""
    claims, findings = cmdline_findings(complaining)
    assert [(f.rule, f.expected, f.found) for f in findings] == [
        ("xen.cmdline.unknown", "Xen accepts no-such-param",
         'parameter "no-such-param" unknown! (Xen ignored it)'),
        ("xen.cmdline.invalid", "Xen accepts dom0_max_vcpus=abc",
         'parameter "dom0_max_vcpus" has invalid value "abc", rc=-22! (Xen rejected the value)'),
        ("xen.cmdline.fallback", "Xen accepts sched=null",
         "Could not find scheduler: null (Xen used credit2)"),
    ]
    assert failures(findings) == findings and {f.severity for f in findings} == {Severity.ERROR}
    assert claims.cmdline.endswith("sched=null no-such-param=1 dom0_max_vcpus=abc")
    assert claims.boot == "Device Tree"  # said before the serial console was up: from the ring


def test_without_the_ring_only_the_scheduler_fallback_is_seen(complaining):
    """On Arm the parser's complaints never reach the serial line: the ring dump is what finds them."""
    claims = xenlog.parse(complaining.text("xen"))
    assert [c.kind for c in claims.complaints] == ["fallback"]
    assert claims.cmdline is None


def test_a_complaint_seen_live_and_in_the_ring_is_one_finding(complaining):
    _, findings = cmdline_findings(complaining)
    assert sum(f.rule == "xen.cmdline.fallback" for f in findings) == 1
    assert complaining.text("xen").count("Could not find scheduler: null") == 1
    assert complaining.text("xen-ring").count("Could not find scheduler: null") == 1


def captured_logs() -> list[Path]:
    return [p for p in sorted((DATA / "logs").iterdir()) if p != COMPLAINTS_LOG and ".log" in p.name]


@pytest.mark.parametrize("log", captured_logs(), ids=lambda p: p.name)
def test_captured_boots_of_the_targets_command_lines_have_no_complaints(log: Path):
    data = log.read_bytes()
    monitor = replay(gzip.decompress(data) if log.suffix == ".gz" else data)
    claims, findings = cmdline_findings(monitor)
    assert claims.complaints == [] and findings == []


# The other complaints, as Xen's sources word them (printk formats filled in), with their successors.
CATALOGUE = [
    # xen/common/sched/core.c scheduler_init()
    (["WARNING: sched_ratelimit_us outside of valid range [100,500000].", " Resetting to default 1000"],
     "fallback", "Xen accepts sched_ratelimit_us (valid: 100..500000)",
     "WARNING: sched_ratelimit_us outside of valid range [100,500000]. (Xen used the default 1000)"),
    # xen/common/sched/cpupool.c cpupool_gran_init(), via the boot's closing warnings
    (["Asymmetric cpu configuration.", "Falling back to sched-gran=cpu."],
     "fallback", "Xen accepts the sched-gran asked for", "Falling back to sched-gran=cpu. (Xen used sched-gran=cpu)"),
    # xen/drivers/char/console.c console_init_preirq()
    (["Bad console= option 'vga0'"], "invalid", "Xen accepts console=vga0",
     "Bad console= option 'vga0' (Xen ignored this console)"),
    # xen/common/kernel.c parse_params(): a boolean inverted with "no-" keeps its prefix
    (['parameter "no-ext_regions" has invalid value "1", rc=-22!'], "invalid", "Xen accepts no-ext_regions=1",
     'parameter "no-ext_regions" has invalid value "1", rc=-22! (Xen rejected the value)'),
    # a scheduler fallback whose successor line is missing (a cut log) still says what it knows
    (["Could not find scheduler: rtds"], "fallback", "Xen accepts sched=rtds",
     "Could not find scheduler: rtds (Xen used its default scheduler)"),
]


@pytest.mark.parametrize(("lines", "kind", "expected", "found"), CATALOGUE, ids=[c[0][-1] for c in CATALOGUE])
def test_catalogue(lines, kind, expected, found):
    [finding] = checks.check_xen_cmdline(xenlog.parse(["Xen version 4.17.7", *lines]))
    assert (finding.rule, finding.expected, finding.found) == (f"xen.cmdline.{kind}", expected, found)
    assert finding.fails


def test_lines_that_only_look_alike_are_not_complaints():
    lines = ["Using scheduler: SMP Credit Scheduler rev2 (credit2)", "Initializing Credit2 scheduler",
             "Scheduling granularity: cpu, 1 CPU per sched-resource", "d0v0 Unhandled SMC/HVC: 0x84000050",
             "Command line: sched=credit"]
    assert xenlog.parse(lines).complaints == []


def test_complaints_are_in_the_result_record(complaining):
    claims, _ = cmdline_findings(complaining)
    record = claims.to_dict()
    assert record["complaints"][0] == {
        "kind": "unknown", "parameter": "no-such-param", "line": 'parameter "no-such-param" unknown!',
        "expected": "Xen accepts no-such-param", "found": 'parameter "no-such-param" unknown! (Xen ignored it)',
    }
    assert record["cmdline"] == claims.cmdline


RULE_ID = re.compile(r"(xen|dt|kernel|irq|sys)\.[a-z0-9-]+(\.[a-z0-9-]+)*")


def test_every_rule_the_checks_report_is_listed():
    """`harness check rules` lists checks.RULES: every rule id written in checks.py must be there."""
    tree = ast.parse(Path(checks.__file__).read_text())
    listing = next(n.value for n in ast.walk(tree)
                   if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "RULES")
    keys = {id(k) for k in listing.keys}
    used = {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and RULE_ID.fullmatch(n.value)
            and id(n) not in keys}
    used |= {f"xen.cmdline.{kind}" for kind in ("unknown", "invalid", "fallback")}  # built from Complaint.kind
    assert len(used) > 15 and used <= set(checks.RULES), sorted(used - set(checks.RULES))


# The qemu-virt-acpi target (Xen 4.17.5 built from Debian's source, started by edk2): its console ring.
EFI_BOOT = ["Xen version 4.17.5 (Debian 4.17.5+72-g01140da4e8-1 xen-arm-harness build) (harness@localhost)",
            "Command line: xen dom0_mem=512M bootscrub=0 console=dtuart loglvl=all guest_loglvl=all",
            'parameter "xen" unknown!']


def test_xen_417_efi_image_name_is_a_known_defect_not_a_failure():
    finding = only_cmdline(checks.check_xen_cmdline(xenlog.parse(EFI_BOOT), efi=True))
    assert (finding.rule, finding.severity, finding.found) == (
        "xen.cmdline.unknown", Severity.KNOWN, 'parameter "xen" unknown! (Xen ignored it)')
    assert "b1185ce66c" in finding.note and not finding.fails


@pytest.mark.parametrize("change", ["device-tree boot", "Xen 4.20", "another word", "a later word"])
def test_the_known_defect_is_that_exact_case_only(change):
    lines, efi = list(EFI_BOOT), True
    if change == "device-tree boot":
        efi = False
    elif change == "Xen 4.20":
        lines[0] = "Xen version 4.20.4 (Debian 4.20.4+63-g7abfd2bce2-0+deb13u1)"
    elif change == "another word":
        lines[2] = 'parameter "dom0_mem" unknown!'
    else:  # the word is the user's, not Xen's image name
        lines[1] = "Command line: dom0_mem=512M xen"
    finding = only_cmdline(checks.check_xen_cmdline(xenlog.parse(lines), efi=efi))
    assert finding.severity is Severity.ERROR and finding.fails


def only_cmdline(findings):
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


def test_a_wrapped_console_ring_is_said_to_be_unread():
    """A qemu-dom0less boot with the default 16 KiB ring: domU1's console filled it, and Xen's
    'Command line:' (with anything Xen said about it) was gone by the time it was dumped."""
    ring = ["IVER16", "d1v0: vGICD: unhandled word write 0x000000ffffffff to ICACTIVER20",
            "'w' pressed -> dumping console ring buffer (dmesg)"]
    [finding] = checks.check_xen_cmdline(xenlog.parse(["Xen version 4.17.7"], ring=ring))
    assert (finding.rule, finding.found) == ("xen.cmdline.unread", "a ring that begins later: 'IVER16'")
    assert finding.fails and "conring_size=" in finding.note
    # no ring read at all (a log without a dump): nothing to say
    assert checks.check_xen_cmdline(xenlog.parse(["Xen version 4.17.7"])) == []


def test_a_whole_ring_is_read(complaining):
    claims, findings = cmdline_findings(complaining)
    assert claims.ring_start == "Checking for initrd in /chosen"  # Xen's first line on Arm
    assert "xen.cmdline.unread" not in {f.rule for f in findings}
