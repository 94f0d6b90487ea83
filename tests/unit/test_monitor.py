"""The console monitor on captured real console logs (good and bad) and on the catalogue's own strings."""

from __future__ import annotations

import gzip

import pytest
from captured import COMPLAINTS_LOG, DATA, HEALTHY_LOG, RING_TWICE_LOG, replay

from harness.monitor import (
    EVIDENCE_WINDOW_S,
    MAX_LINE_BYTES,
    TRIAGE_KEEP_LINES,
    ConsoleMonitor,
    MachineExit,
    Verdict,
    qemu_failure,
    triage,
)

LOGS = DATA / "logs"


def fault_log(name: str) -> bytes:
    return gzip.decompress((LOGS / f"fault-{name}.log.gz").read_bytes())


def test_healthy_boot_reaches_every_milestone_in_order(healthy_monitor):
    assert list(healthy_monitor.reached) == [
        "xen-banner", "dom0-loading", "xen-handover", "dom0:kernel", "dom0:xen-found",
        "dom0:grant-table", "dom0:events", "dom0:init", "dom0:shell",
    ]
    assert healthy_monitor.failure is None


@pytest.mark.parametrize("chunk", [1, 7, 100, 65536])
def test_line_splitting_does_not_depend_on_chunking(chunk):
    monitor = replay(HEALTHY_LOG.read_bytes(), chunk=chunk)
    assert [line.text for line in monitor.lines] == [line.text for line in replay(HEALTHY_LOG.read_bytes()).lines]
    assert "dom0:shell" in monitor.reached


def test_healthy_log_has_known_noise_and_no_failure():
    text = HEALTHY_LOG.read_text()
    assert "unhandled word write" in text and "ARM_SMCCC_ARCH_WORKAROUND_1" in text  # the noise is really there
    monitor, verdict = triage(HEALTHY_LOG.read_bytes())
    assert verdict is Verdict.PASSED and monitor.failure is None


def test_sources_are_attributed(healthy_monitor):
    by_source = {line.source for line in healthy_monitor.lines}
    assert by_source == {"xen", "dom0"}
    assert healthy_monitor.reached["xen-banner"].text.startswith("Xen version 4.17")
    assert healthy_monitor.reached["dom0:kernel"].source == "dom0"


# Each captured failing boot (tests/test_faults.py produced them) gives the same verdict offline as live.
CAPTURED = [
    ("impossible-dom0-mem", Verdict.CRASHED, "dom0-loading", "xen-dom0-memory"),
    ("missing-dom0-kernel", Verdict.CRASHED, "dom0-loading", "xen-missing-module"),
    ("dom0-init-missing-panic-reboots", Verdict.CRASHED, "dom0:events", "no-root-fs"),
    ("dom0-init-missing-panic-hangs", Verdict.CRASHED, "dom0:events", "no-root-fs"),
    ("dom0-console-not-hvc0", Verdict.INCOMPLETE, "xen-handover", "log-ends"),
    ("dom0-watchdog-fires", Verdict.CRASHED, "dom0:shell", "xen-watchdog"),
]


@pytest.mark.parametrize(("name", "verdict", "stage", "signature"), CAPTURED, ids=[c[0] for c in CAPTURED])
def test_captured_failures_are_classified(name, verdict, stage, signature):
    monitor, got = triage(fault_log(name))
    assert (got, monitor.failure.stage, monitor.failure.signature) == (verdict, stage, signature)
    assert monitor.failure.evidence, "a failure must quote the console"


def test_xen_panic_reason_is_the_detail():
    monitor, _ = triage(fault_log("impossible-dom0-mem"))
    assert monitor.failure.detail == "Failed to allocate requested dom0 memory. 2272MB unallocated"
    assert any(line.text.startswith("Panic on CPU 0:") for line in monitor.failure.evidence)


def test_most_specific_signature_names_the_failure():
    # "Missing kernel boot module?" comes before Xen's generic panic: the specific one wins.
    monitor, _ = triage(fault_log("missing-dom0-kernel"))
    assert monitor.failure.signature == "xen-missing-module"
    assert {"xen-panic", "xen-dom0-setup"} <= {sig.name for sig, _ in monitor._matches}


# The catalogue against the strings Xen and Linux really print (from their sources).
CATALOGUE = [
    ("(XEN) Panic on CPU 1:", "xen-panic", Verdict.CRASHED),
    ("(XEN) Could not set up DOM0 guest OS (rc = -12)", "xen-dom0-setup", Verdict.CRASHED),
    ("(XEN) Xen BUG at common/sched/core.c:1234", "xen-bug", Verdict.CRASHED),
    ("(XEN) Assertion 'v->is_running' failed at common/domain.c:123", "xen-bug", Verdict.CRASHED),
    ("(XEN) CPU0: Unexpected Trap: Data Abort", "xen-fatal-trap", Verdict.CRASHED),
    ("(XEN) Domain 1 (vcpu#0) crashed on cpu#1:", "xen-domain-crash", Verdict.CRASHED),
    ("(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds.", "xen-domain-crash", Verdict.CRASHED),
    ("(XEN) Hardware Dom0 shutdown: rebooting machine", "dom0-reboot", Verdict.CRASHED),
    ("[    3.1] Kernel panic - not syncing: Attempted to kill init!", "init-killed", Verdict.CRASHED),
    ("[    3.1] Unable to handle kernel NULL pointer dereference at virtual address 0", "kernel-oops",
     Verdict.CRASHED),
    ("[    3.1] Internal error: Oops: 96000004 [#1] SMP", "kernel-oops", Verdict.CRASHED),
    ("[   25.0] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu-stall", Verdict.HUNG),
    ("[    0.0] xen:grant_table: Xen grant table region is not found", "no-grant-table", Verdict.FAILED),
    ("[    0.0] Xen event channel interrupt not found", "no-event-irq", Verdict.FAILED),
    ("[    0.0] xen:events: Error request IRQ 12", "event-irq-request", Verdict.FAILED),
    ("[    0.0] gnttab share frames (addr=0x38000000) is not mapped!", "gnttab-unmapped", Verdict.FAILED),
    # xen/common/sched/core.c and xen/common/shutdown.c (4.17): a domain that stopped petting its watchdog
    ("(XEN) Watchdog timer fired for domain 0", "xen-watchdog", Verdict.CRASHED),
    ("(XEN) Hardware Dom0 shutdown: watchdog rebooting machine", "xen-watchdog", Verdict.CRASHED),
    # init/do_mounts.c, kernel/exit.c, kernel/watchdog.c, kernel/hung_task.c, lib/bug.c (Linux 6.1)
    ("[    1.4] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", "no-root-fs",
     Verdict.CRASHED),
    ("[   48.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:93]", "soft-lockup", Verdict.HUNG),
    ("[  242.6] INFO: task sh:93 blocked for more than 120 seconds.", "hung-task", Verdict.HUNG),
    ("[  242.6] Kernel panic - not syncing: hung_task: blocked tasks", "hung-task", Verdict.HUNG),
    ("[    5.0] kernel BUG at mm/slub.c:4321!", "kernel-oops", Verdict.CRASHED),
    ("[    5.0] BUG: unable to handle page fault for address: 0000000000001234", "kernel-oops", Verdict.CRASHED),
    ("Oops: 0000 [#1] PREEMPT SMP", "kernel-oops", Verdict.CRASHED),
    # QEMU's stderr inside a console log (softmmu/vl.c, hw/core/loader.c): the lab's, as on a live boot's stderr
    ("qemu-system-aarch64: -no-such-option: invalid option", "qemu-bad-option", Verdict.INFRASTRUCTURE),
    ("qemu-system-aarch64: Some ROM regions are overlapping", "qemu-rom-overlap", Verdict.INFRASTRUCTURE),
    ("qemu-system-arm: could not load kernel 'xen'", "qemu-cannot-load", Verdict.INFRASTRUCTURE),
]


@pytest.mark.parametrize("line", [
    "[    3.1] busybox: /etc/x: No such file or directory",  # QEMU's words from someone else: not QEMU's error
    "[    3.1] Could not open /dev/watchdog",
    "[    3.1] watchdog: watchdog0: watchdog did not stop!",
    "(XEN) Hardware Dom0 halted: halting machine",  # an orderly power-off
    "[    5.9] reboot: Power down",
])
def test_look_alikes_are_no_failure(line):
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\n" + line.encode() + b"\n")
    assert monitor.failure is None, f"{line!r} matched {monitor.failure and monitor.failure.signature}"


@pytest.mark.parametrize(("line", "signature", "verdict"), CATALOGUE, ids=[c[1] + ":" + c[0][:30] for c in CATALOGUE])
def test_catalogue_matches_real_strings(line, signature, verdict):
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\n" + line.encode() + b"\n")
    assert monitor.failure is not None, f"no signature matched {line!r}"
    assert (monitor.failure.signature, monitor.failure.verdict) == (signature, verdict)
    assert monitor.failure.stage == "xen-banner"


@pytest.mark.parametrize("noise", [
    "(XEN) d0v0: vGICD: unhandled word write 0x000000ffffffff to ICACTIVER0",
    "(XEN) d0v1 Unhandled SMC/HVC: 0x84000050",
    "(XEN) **** No support for ARM_SMCCC_ARCH_WORKAROUND_1. ****",
    "(XEN) **** Please update your firmware.                ****",
])
def test_known_noise_is_never_a_failure(noise):
    monitor = ConsoleMonitor()
    monitor.feed(noise.encode() + b"\n")
    assert monitor.failure is None


def test_guest_signatures_ignore_xen_lines_and_vice_versa():
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n(XEN) Kernel panic - not syncing: quoted by Xen\n")
    assert monitor.failure is None
    monitor.feed(b"Panic on CPU 0:\n")  # a guest line that looks like Xen's
    assert monitor.failure is None


def test_domu_console_lines_are_attributed_to_the_domain():
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n(XEN) DOM1: [    0.0] Booting Linux on physical CPU 0x0\n"
                 b"(XEN) DOM1: [    0.0] Xen 4.17 support found\n")
    assert monitor.reached["dom1:kernel"].source == "dom1"
    assert "dom1:xen-found" in monitor.reached and "dom0:kernel" not in monitor.reached


def test_firmware_lines_before_xen_banner():
    monitor = ConsoleMonitor()
    monitor.feed(b"UEFI firmware (version edk2 built on Jan 1)\nBdsDxe: loading Boot0001\n"
                 b"(XEN) Xen version 4.17.7\nafter\n")
    assert monitor.reached["firmware"].source == "firmware"
    assert monitor.lines[-1].source == "dom0"


def test_prompt_on_a_partial_line():
    monitor = ConsoleMonitor(prompt=r"dom0# ")
    monitor.feed(b"(XEN) Xen version 4.17.7\nharness-init: dom0 ready\n\x1b[6ndom0# \x1b[6n")
    assert "dom0:shell" in monitor.reached
    assert list(monitor.reached)[-2:] == ["dom0:init", "dom0:shell"]


def test_evidence_waits_for_lines_after_the_failure():
    now = [0.0]
    monitor = ConsoleMonitor(clock=lambda: now[0])
    monitor.feed(b"(XEN) Xen version 4.17.7\n(XEN) Panic on CPU 0:\n")
    assert monitor.failure is not None and not monitor.settled()
    now[0] += EVIDENCE_WINDOW_S / 2
    monitor.feed(b"(XEN) Could not set up DOM0 guest OS (rc = -22)\n")
    assert not monitor.settled()
    assert monitor.failure.signature == "xen-dom0-setup"  # the reason line arrived and named it
    assert monitor.failure.detail == "Could not set up DOM0 guest OS (rc = -22)"
    now[0] += EVIDENCE_WINDOW_S
    assert monitor.settled()
    assert monitor.conclude().decided == pytest.approx(1.5 * EVIDENCE_WINDOW_S)


def test_silence_and_qemu_exit_are_recorded_once():
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n")
    hang = monitor.hang("no console output for 60 s")
    assert (hang.verdict, hang.stage, hang.signature) == (Verdict.HUNG, "xen-banner", "silence")
    assert monitor.exited(MachineExit(0)) is hang  # the first verdict stands


def test_an_exit_nobody_asked_for_is_the_labs():
    failure = ConsoleMonitor().exited(MachineExit(0))
    assert (failure.verdict, failure.stage, failure.signature) == (Verdict.INFRASTRUCTURE, "power-on", "machine-exit")
    assert "without any console output" in failure.description
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n(XEN) *** LOADING DOMAIN 0 ***\n")
    failure = monitor.exited(MachineExit(0))
    assert (failure.verdict, failure.stage, failure.signature) == (
        Verdict.INFRASTRUCTURE, "dom0-loading", "machine-exit"), failure.message()
    assert "without the guests or Xen asking it to stop" in failure.description


@pytest.mark.parametrize(("end", "named"), [
    (MachineExit(-9), "SIGKILL (signal 9)"),  # kill -9, the OOM killer
    (MachineExit(0, "qemu-system-aarch64: terminating on signal 15 from pid 4242 (pytest)\n"), "SIGTERM (signal 15)"),
    (MachineExit(0, "qemu-system-aarch64: terminating on signal 2\n"), "SIGINT (signal 2)"),  # a stray Ctrl-C
    (MachineExit(0, "", "host-signal"), "a signal"),
])
def test_a_machine_killed_by_a_signal_is_the_labs_fault_and_names_it(end, named):
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n")
    failure = monitor.exited(end)
    assert (failure.verdict, failure.signature) == (Verdict.INFRASTRUCTURE, "machine-killed"), failure.message()
    assert named in failure.description


@pytest.mark.parametrize("console", [
    b"(XEN) Hardware Dom0 halted: halting machine\n",
    b"[   2.1] reboot: Power down\n(XEN) Hardware Dom0 halted: halting machine\n",
    b"(XEN) Manual reset required ('noreboot' specified)\n",
])
def test_a_stop_the_guest_or_xen_asked_for_is_theirs(console):
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n" + console)
    failure = monitor.exited(MachineExit(0))
    assert (failure.verdict, failure.signature) == (Verdict.CRASHED, "guest-stop"), failure.message()
    assert failure.line is not None and failure.line.text in console.decode()


def test_qemus_own_shutdown_report_says_the_guest_asked():
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n")
    failure = monitor.exited(MachineExit(0, "", "guest-shutdown"))
    assert (failure.verdict, failure.signature) == (Verdict.CRASHED, "guest-stop"), failure.message()
    assert "guest-shutdown" in failure.detail


@pytest.mark.parametrize(("stderr", "signature"), [
    ("qemu-system-aarch64: -no-such-option: invalid option", "qemu-bad-option"),
    ("qemu-system-aarch64: Some ROM regions are overlapping\nThese ROM regions might have been loaded",
     "qemu-rom-overlap"),
    ("qemu-system-aarch64: Invalid parameter 'gic-versionx'", "qemu-bad-option"),
    ("qemu-system-aarch64: something new went wrong", "qemu-error"),
])
def test_qemu_stderr_is_classified_as_infrastructure(stderr, signature):
    failure = qemu_failure(stderr)
    assert (failure.verdict, failure.signature) == (Verdict.INFRASTRUCTURE, signature)
    assert failure.detail.startswith("qemu-system-aarch64:")


def test_triage_of_a_cut_log_names_the_last_stage():
    log = HEALTHY_LOG.read_bytes()
    cut = log[: log.index(b"Grant table initialized")]
    monitor, verdict = triage(cut)
    assert verdict is Verdict.INCOMPLETE  # offline, a cut capture and a hang look the same: never "hung"
    assert monitor.failure.stage == "dom0:xen-found" and monitor.failure.signature == "log-ends"


# Xen's serial input focus, as dom0less boots print it (captured from a qemu-dom0less boot).
FOCUS = (
    b"(XEN) Xen version 4.17.7 (Debian)\n(XEN) Freed 348kB init memory.\n"
    b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\n"
    b"(XEN) DOM1: [    1.9] Booting Linux on physical CPU 0x0\n"
    b"dom0# \x1b[6n(XEN) *** Serial input to DOM1 (type 'CTRL-a' three times to switch input)\n"
    b"(XEN) domU1# \x1b[6n\n(XEN) DOMU1MARKER\n(XEN) d0v0: vGICD: unhandled word write 0xffffffff to ICACTIVER0\n"
    b"(XEN) domU1# \x1b[6n*** Serial input to Xen (type 'CTRL-a' three times to switch input)\n"
    b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\n"
)


def test_focus_follows_xens_serial_input_lines():
    monitor = ConsoleMonitor(prompt=r"dom0# |(?:\(XEN\) )?domU1# ")
    seen = []
    for line in FOCUS.split(b"\n"):
        monitor.feed(line + b"\n")
        seen.append(monitor.focus)
    assert seen[2] == 0 and seen[4] == 1 and seen[-2] == 0
    assert None in seen  # "Serial input to Xen"
    assert {"dom0:shell", "dom1:shell", "dom1:kernel"} <= set(monitor.reached)


def test_focused_domu_lines_carry_xens_prefix_but_are_the_domus():
    monitor = ConsoleMonitor().replay(FOCUS)
    by_text = {line.text: line.source for line in monitor.lines}
    assert by_text["DOMU1MARKER"] == "dom1"
    assert by_text["d0v0: vGICD: unhandled word write 0xffffffff to ICACTIVER0"] == "xen"  # Xen's own, even then
    assert by_text["*** Serial input to Xen (type 'CTRL-a' three times to switch input)"] == "xen"  # prefix-less
    assert by_text["dom0#"] == "dom0"  # the prompt before Xen's line on the same console line


def test_prompt_of_a_focused_domu_on_a_partial_line():
    monitor = ConsoleMonitor(prompt=r"(?:\(XEN\) )?domU1# ")
    monitor.feed(FOCUS.split(b"(XEN) domU1#")[0] + b"(XEN) domU1# \x1b[6n")
    assert "dom1:shell" in monitor.reached and "dom0:shell" not in monitor.reached


def test_a_qemu_warning_does_not_turn_a_guest_crash_into_a_lab_failure():
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7\n")
    monitor.feed(b"(XEN) Hardware Dom0 halted: halting machine\n")
    failure = monitor.exited(MachineExit(0, "qemu-system-aarch64: warning: host doesn't support requested feature\n"))
    assert (failure.verdict, failure.signature) == (Verdict.CRASHED, "guest-stop")
    silent = ConsoleMonitor().exited(MachineExit(1, "qemu-system-aarch64: warning: something\n"))  # nothing printed
    assert silent.verdict is Verdict.INFRASTRUCTURE


def test_line_numbers_count_console_lines_not_pieces():
    monitor = ConsoleMonitor().replay(FOCUS)
    by_text = {line.text: line.number for line in monitor.lines}
    assert by_text["dom0#"] == by_text["*** Serial input to DOM1 (type 'CTRL-a' three times to switch input)"] == 5
    assert by_text["DOMU1MARKER"] == 7  # the split line above did not shift the count


class ReplayConsole:
    """A console that plays a captured log in chunks, then has nothing more to say (as labgrid's read)."""

    def __init__(self, data: bytes, monitor: ConsoleMonitor, chunk: int = 4096) -> None:
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        self.monitor = monitor

    def read(self, size=1, timeout=0.0, max_size=None):
        import pexpect

        if not self.chunks:
            raise pexpect.TIMEOUT("quiet")
        data = self.chunks.pop(0)
        self.monitor.feed(data)
        return data


def test_wait_raises_a_failure_seen_before_the_awaited_milestone():
    from harness.lab.strategy import wait_until
    from harness.monitor import BootFailure
    from harness.targets import Deadlines

    # a guest oops, then its shell prompt anyway: the prompt must not hide the oops
    log = HEALTHY_LOG.read_bytes()
    at = log.index(b"Run /init as init process")
    oops = b"[    1.2] Unable to handle kernel NULL pointer dereference at virtual address 0\n"
    now = [0.0]
    monitor = ConsoleMonitor(prompt="dom0# ", clock=lambda: now[0])
    console = ReplayConsole(log[:at] + oops + log[at:], monitor, chunk=len(log) + len(oops))
    with pytest.raises(BootFailure) as raised:
        def condition():
            now[0] += 0.5  # time passes between reads
            return "dom0:shell" in monitor.reached
        wait_until(console, monitor, Deadlines(), condition, "dom0's shell")
    assert raised.value.failure.signature == "kernel-oops"
    assert "dom0:shell" in monitor.reached  # it was there, and still did not count


# --- bounded work on any log ----------------------------------------------------------------


def test_a_line_longer_than_the_bound_is_judged_in_pieces():
    long = b"".join(b"%06d " % i for i in range(6000))  # 42000 bytes: two whole pieces and a rest
    assert len(long) > 2 * MAX_LINE_BYTES
    log = b"(XEN) Xen version 4.17.7\n" + long + b"\nafter\n"
    for chunk in (7, 4096, len(log)):
        monitor = ConsoleMonitor().replay(log, chunk)
        pieces = [line for line in monitor.lines if line.number == 2]
        assert [p.text.encode() for p in pieces] == [  # a Line's text loses trailing blanks
            long[:MAX_LINE_BYTES].rstrip(), long[MAX_LINE_BYTES : 2 * MAX_LINE_BYTES].rstrip(),
            long[2 * MAX_LINE_BYTES :].rstrip(),
        ], f"chunk {chunk}"
        assert monitor.lines[-1].text == "after" and monitor.lines[-1].number == 3


def test_a_log_without_newlines_is_judged_in_pieces_as_it_arrives():
    # about 1 MB of kernel noise that never ends its line, a panic starting the 61st piece, then more noise
    noise = b"[    1.000000] some noise that never ends its line; " * 21_000
    log = b"(XEN) Xen version 4.17.7 " + noise[: 60 * MAX_LINE_BYTES - 25] + b"Kernel panic - not syncing: x " + noise
    monitor = ConsoleMonitor().replay(log, 4096)
    assert monitor.line_count == len(log) // MAX_LINE_BYTES  # every whole piece judged, the rest still pending
    assert len(monitor._partial) == len(log) % MAX_LINE_BYTES
    assert {line.number for line in monitor.lines} == {1}  # all pieces of console line 1
    assert "xen-banner" in monitor.reached
    assert monitor.failure is not None and monitor.failure.signature == "kernel-panic"
    assert monitor.failure.line.text.startswith("Kernel panic - not syncing: x [    1.000000] some noise")


def test_a_prompt_is_never_found_in_the_middle_of_a_cut_line():
    monitor = ConsoleMonitor(prompt=r"dom0# ")
    monitor.feed(b"(XEN) Xen version 4.17.7\n" + b"x" * MAX_LINE_BYTES + b"dom0# ")
    assert "dom0:shell" not in monitor.reached
    monitor.feed(b"\ndom0# ")
    assert "dom0:shell" in monitor.reached


def test_triage_keeps_a_bounded_window_and_the_same_evidence():
    failing = fault_log("impossible-dom0-mem")
    log = failing + HEALTHY_LOG.read_bytes() * 8  # the failure, then a lot more log
    full, verdict = triage(log, keep_lines=None)
    bounded, bounded_verdict = triage(log)
    assert (bounded_verdict, bounded.failure.signature) == (verdict, full.failure.signature) == (
        Verdict.CRASHED, "xen-dom0-memory")
    assert bounded.failure.evidence == full.failure.evidence and bounded.failure.detail == full.failure.detail
    assert bounded.line_count == full.line_count == len(full.lines) > 5_000
    assert len(bounded.lines) <= 2 * TRIAGE_KEEP_LINES
    assert bounded.lines[-1] == full.lines[-1]
    assert len(bounded._matches) <= len(full._matches) < 20  # later panics in the log add nothing to remember


def test_triage_of_chunks_equals_triage_of_bytes():
    log = fault_log("missing-dom0-kernel")
    whole, verdict = triage(log)
    chunked, chunked_verdict = triage(log[i : i + 1000] for i in range(0, len(log), 1000))
    assert chunked_verdict is verdict and chunked.failure.to_dict() == whole.failure.to_dict()
    assert chunked.reached == whole.reached


def test_xen_console_ring_dump_is_history_not_news():
    """Lines Xen prints for debug key 'w' are recorded as "xen-ring": its old '*** Serial input to DOM0'
    does not move the focus, its old banner reaches no milestone, and the dump's end is counted."""
    monitor = replay(COMPLAINTS_LOG.read_bytes())
    ring = monitor.text("xen-ring")
    assert monitor.ring_dumps == 1
    assert ring[-1] == "'w' pressed -> dumping console ring buffer (dmesg)"  # the ring's own copy ends it
    assert 'parameter "no-such-param" unknown!' in ring  # printed before the serial console was up
    assert 'parameter "no-such-param" unknown!' not in monitor.text("xen")
    assert any(line.startswith("*** Serial input to DOM0") for line in ring)
    assert monitor.focus == 0  # from the live line after the dump, not from the ring's
    assert monitor.reached["xen-banner"].source == "xen"
    assert monitor.failure is None


def test_unfinished_ring_dump_keeps_its_lines_apart():
    """A log cut in the middle of a dump: what was dumped so far is still ring history."""
    data = COMPLAINTS_LOG.read_bytes()
    cut = data[: data.index(b'(XEN) parameter "dom0_max_vcpus"')]
    monitor = replay(cut)
    assert monitor.ring_dumps == 0
    assert monitor.text("xen-ring")[-1] == 'parameter "no-such-param" unknown!'


def test_a_second_ring_dump_ends_at_its_own_w_line_not_the_first_dumps():
    """The ring keeps the first press's 'w' line: the second dump ends only at its last one, and
    Xen's live '*** Serial input to DOM0' after it still gives dom0 the focus."""
    monitor = replay(RING_TWICE_LOG.read_bytes())
    assert monitor.ring_dumps == 2 and monitor.focus == 0
    live = monitor.text("xen")
    assert live.count("'w' pressed -> dumping console ring buffer (dmesg)") == 2
    assert live[-1].startswith("*** Serial input to DOM0")
    ring = monitor.text("xen-ring")
    assert ring.count("Checking for initrd in /chosen") == 2  # each dump is the whole ring
