"""Xen's debug-key dumps read from real captured boots (arm64 and arm32), and from broken or hostile ones."""

from __future__ import annotations

import gzip
import itertools

import pytest
from captured import DEBUGKEYS_ARM32_LOG, DEBUGKEYS_ARM64_LOG, replay
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.debugkeys import (
    DUMP_LINES_KEPT,
    EventChannel,
    Registers,
    VcpuState,
    exception_level,
    parse,
)
from harness.monitor import triage


def xen_lines(log) -> list[str]:
    return replay(gzip.decompress(log.read_bytes())).text("xen")


@pytest.fixture(scope="module")
def arm64() -> list[str]:
    return xen_lines(DEBUGKEYS_ARM64_LOG)


@pytest.fixture(scope="module")
def arm32() -> list[str]:
    return xen_lines(DEBUGKEYS_ARM32_LOG)


def block(lines: list[str], who: str) -> list[str]:
    """One register block of a captured dump, from its first line to the next dump's."""
    start = lines.index(f"*** Dumping {who} state: ***")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("*** Dumping", "'")))
    return lines[start:end]


def test_arm64_dump_of_d0qreg(arm64):
    dump = parse(arm64)
    assert dump.keys == "d0qreg"
    assert [r.who for r in dump.registers] == ["CPU0 guest d0v0", "CPU1 host", "Dom0 vcpu#0", "Dom0 vcpu#1"]
    guest, host, vcpu0, vcpu1 = dump.registers
    assert guest == Registers("CPU0 guest d0v0", 0, 0, 0, 0xffffdf39418de4c0, None,
                              "64-bit EL1h (Guest Kernel, handler)", 1)
    assert host == Registers("CPU1 host", 1, None, None, 0x25b0c8, "domain.c#idle_loop+0x128/0x140",
                             "64-bit EL2h (Hypervisor, handler)", 2,
                             ("[<000000000025b0c8>] domain.c#idle_loop+0x128/0x140 (PC)",
                              "[<000000000025b084>] domain.c#idle_loop+0xe4/0x140 (LR)"))
    assert dump.host() == [host]
    # '0' prints its vCPUs from one pCPU: its "CPU:" line (0 for both) is not where they run
    assert (vcpu0.cpu, vcpu0.domain, vcpu0.vcpu, vcpu0.pc, vcpu0.el) == (None, 0, 0, 0xffffdf39423af4fc, 1)
    assert (vcpu1.cpu, vcpu1.vcpu, vcpu1.pc, vcpu1.symbol, vcpu1.trace) == (None, 1, 0xffffdf39423af4fc, None, ())
    assert dump.vcpus == [VcpuState(0, 0, 0, False, True, 1), VcpuState(0, 1, 1, False, True, 1)]
    assert all(v.blocked for v in dump.vcpus)
    assert dump.channels == [EventChannel(0, 1, False, False, 2, 1, "d=0"),
                             EventChannel(0, 2, False, False, 5, 0, "v=2")]
    assert [c.virq for c in dump.channels] == [None, 2]
    # every line from the first key's to the last dump's end, and nothing before
    assert dump.lines[0] == "'d' pressed -> dumping registers" and dump.lines[-1] == "gnttab_usage_print_all ] done"
    assert dump.lines == arm64[arm64.index(dump.lines[0]):]
    assert len(dump.lines) == 269


def test_arm32_dump_of_hd0qreg(arm32):
    dump = parse(arm32)
    assert dump.keys == "hd0qreg"
    assert [r.who for r in dump.registers] == ["CPU0 host", "CPU1 host", "Dom0 vcpu#0", "Dom0 vcpu#1"]
    for cpu, host in enumerate(dump.host()):
        assert (host.cpu, host.pc, host.symbol, host.mode, host.el) == (
            cpu, 0x258bbc, "domain.c#idle_loop+0x138/0x150", "Hypervisor", 2)
        assert host.trace == ("[<00258bbc>] domain.c#idle_loop+0x138/0x150 (PC)",
                              "[<00258b64>] domain.c#idle_loop+0xe0/0x150 (LR)")
    vcpu0 = dump.registers[2]
    assert (vcpu0.cpu, vcpu0.domain, vcpu0.vcpu, vcpu0.pc, vcpu0.mode, vcpu0.el) == (
        None, 0, 0, 0xc041fcc8, "32-bit Guest SVC", 1)
    assert dump.vcpus == [VcpuState(0, 0, 0, False, True, 1), VcpuState(0, 1, 1, False, True, 1)]
    assert [(c.port, c.state, c.vcpu, c.detail) for c in dump.channels] == [(1, 2, 1, "d=0"), (2, 5, 0, "v=2")]
    assert dump.lines[0] == "'h' pressed -> showing installed handlers" and len(dump.lines) == 242
    assert dump.lines == arm32[arm32.index(dump.lines[0]):]


@pytest.mark.parametrize("log", [DEBUGKEYS_ARM64_LOG, DEBUGKEYS_ARM32_LOG], ids=["arm64", "arm32"])
def test_a_triaged_log_gives_the_same_dump(log):
    """triage keeps only Xen's own text of a log: enough for the same dump as a full replay."""
    monitor, _ = triage(gzip.decompress(log.read_bytes()), prompt="dom0# ")
    assert parse(monitor.text("xen")) == parse(xen_lines(log))


@pytest.mark.parametrize(("mode", "el"), [
    ("64-bit EL2h (Hypervisor, handler)", 2), ("64-bit EL1t (Guest Kernel, thread)", 1),
    ("64-bit EL0t (Guest User)", 0), ("Hypervisor", 2), ("32-bit Guest SVC", 1), ("32-bit Guest SYS", 1),
    ("32-bit Guest USR", 0), ("32-bit Monitor", 3), ("Unknown", None), ("", None),
])
def test_exception_level_from_xens_mode_string(mode, el):
    assert exception_level(mode) == el


# --- broken dumps: what can be read is, the rest is skipped ---------------------------------------


def test_a_block_cut_short_gives_nothing_and_the_next_one_is_read(arm64):
    host = block(arm64, "CPU1 host")
    cut = host[:4]  # header, banner, CPU:, PC:: no mode yet
    dump = parse(["'d' pressed -> dumping registers", *cut, *host])
    assert [r.who for r in dump.registers] == ["CPU1 host"] and dump.registers[0].pc == 0x25b0c8
    assert dump.lines == ["'d' pressed -> dumping registers", *cut, *host]


def test_a_block_cut_in_its_call_trace_keeps_what_it_had(arm64):
    host = block(arm64, "CPU1 host")
    dump = parse(host[: host.index("Xen call trace:") + 2])
    assert dump.registers[0].trace == ("[<000000000025b0c8>] domain.c#idle_loop+0x128/0x140 (PC)",)


@pytest.mark.parametrize("broken", [
    None,  # no PC line
    "PC:     zzzzzzzzzzzzzzzz domain.c#idle_loop+0x128/0x140",
    "PC:     0x25b0c8",
    "PC:",
], ids=["missing", "not-hex", "0x", "empty"])
def test_a_block_without_a_readable_pc_is_skipped(arm64, broken):
    host = block(arm64, "CPU1 host")
    at = next(i for i, text in enumerate(host) if text.startswith("PC:"))
    bad = host[:at] + ([broken] if broken else []) + host[at + 1:]
    dump = parse([*bad, *block(arm64, "Dom0 vcpu#1")])
    assert [r.who for r in dump.registers] == ["Dom0 vcpu#1"]


def test_a_block_without_its_mode_is_skipped(arm64):
    host = [text for text in block(arm64, "CPU1 host") if not text.startswith("CPSR:")]
    assert parse(host).registers == []


def test_lines_of_xens_messages_inside_a_dump_are_neither_part_nor_end_of_it(arm64):
    dump = parse(arm64)
    noisy = []
    for text in arm64:
        noisy.append(text)
        if text.startswith(("PC:", "    VCPU", "       2 [")):
            noisy.append("d0v1 Unhandled SMC/HVC: 0x84000050")
    assert parse(noisy) == dump


def test_a_register_dump_without_its_header_is_no_debug_key_dump(arm64):
    """A panic's registers (show_execution_state) have no "*** Dumping" line: not a debug key's."""
    assert parse(block(arm64, "CPU1 host")[1:]).registers == []


def test_a_second_banner_ends_a_block(arm64):
    host = block(arm64, "CPU1 host")
    dump = parse([*host[:8], *host[1:]])  # a panic's dump begins in the middle of a block
    assert [r.pc for r in dump.registers] == [0x25b0c8] and dump.registers[0].trace == ()


def test_a_vcpu_without_its_pause_flags_and_ports_without_a_domain_are_skipped():
    dump = parse([
        "'q' pressed -> dumping domain info (now = 1)",
        "VCPU information and callbacks for domain 0:",
        "    VCPU0: CPU0 [has=F] poll=0 upcall_pend=01 upcall_mask=00 ",
        "GICH_LRs (vcpu 0) mask=0",
        "    pause_count=0 pause_flags=1",  # not right after its VCPU line: not its
        "    VCPU1: CPU1 [has=T] poll=0 upcall_pend=01 upcall_mask=00 dirty_cpu=1",
        "    pause_count=0 pause_flags=4",
        "'e' pressed -> dumping event-channel info",
        "       1 [1/0/  -   ]: s=2 n=1 x=0 d=0",
        "Event channel information for domain 3:",
        "       7 [1/1/B -   ]: s=3 n=0 x=0 p=9 i=41",
    ])
    assert dump.keys == "qe"
    assert dump.vcpus == [VcpuState(0, 1, 1, True, False, 4)] and not dump.vcpus[0].blocked
    assert dump.channels == [EventChannel(3, 7, True, True, 3, 0, "p=9 i=41")]


def test_what_follows_a_dump_is_not_part_of_it(arm64):
    after = ["*** Serial input to DOM0 (type 'CTRL-a' three times to switch input)", "Freed 1234kB init memory"]
    assert parse([*arm64, *after]).lines == parse(arm64).lines
    q = ["'q' pressed -> dumping domain info (now = 1)", "Notifying guest 0:0 (virq 1, port 0)"]
    assert parse([*q, "Freed 1234kB init memory"]).lines == q
    runq = ["sched_smt_power_savings: disabled", "NOW=1", "\tinstload           = 0"]
    assert parse([*runq, *after]).lines == runq and parse(runq).keys == "r"


def test_parse_stops_after_a_bounded_number_of_lines():
    dump = parse(itertools.repeat("'d' pressed -> dumping registers"))  # endless: parse must still return
    assert len(dump.lines) == DUMP_LINES_KEPT and len(dump.keys) == DUMP_LINES_KEPT


@st.composite
def mutated_dumps(draw: st.DrawFn) -> list[str]:
    """A captured dump with lines dropped, repeated, cut or garbled."""
    lines = list(draw(st.sampled_from(CAPTURED)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(lines) - 1))
        what = draw(st.sampled_from(["drop", "repeat", "cut", "garble"]))
        if what == "drop":
            del lines[at]
        elif what == "repeat":
            lines.insert(at, lines[at])
        elif what == "cut":
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
        else:
            lines[at] = draw(st.text(max_size=80))
    return lines[: draw(st.integers(0, len(lines)))]


CAPTURED = [xen_lines(DEBUGKEYS_ARM64_LOG), xen_lines(DEBUGKEYS_ARM32_LOG)]


@settings(max_examples=150, deadline=None)
@given(mutated_dumps() | st.lists(st.text(max_size=120), max_size=40))
def test_mutated_dumps_and_garbage_never_crash(lines):
    dump = parse(lines)
    assert len(dump.lines) <= len(lines)
    assert all(isinstance(r.pc, int) and r.mode for r in dump.registers)
