"""The hang diagnosis's reading of what it was told (harness/diagnose.py): each conclusive pattern on the
facts that prove it, and the near miss beside it that must stay inconclusive (no false red)."""

from __future__ import annotations

from captured import DATA

from harness.debugkeys import DebugDump, EventChannel, Registers, VcpuState
from harness.diagnose import Diagnosis, VcpuSample, decide, parse_qemu_registers
from harness.monitor import ConsoleMonitor

XEN_BOOT = b"(XEN) Xen version 4.17.5 (Debian)\n(XEN) *** LOADING DOMAIN 0 ***\n"
HANDOVER = XEN_BOOT + b"(XEN) Freed 368kB init memory.\n"
DOM0_TALKS = HANDOVER + b"[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]\n"


def monitor(console: bytes = b"") -> ConsoleMonitor:
    return ConsoleMonitor(prompt=r"dom0# ").replay(console)


def sample(cpu: int, pc: int, el: int, symbol: str | None, t: float = 0.0) -> VcpuSample:
    return VcpuSample(cpu, pc, el, f"EL{el}h", t, symbol)


def samples(*cpus: tuple[int, int, str | None], count: int = 4, step: int = 0) -> list[list[VcpuSample]]:
    """`count` samples of the vCPUs (el, pc, symbol), each PC moved on by `step` bytes per sample."""
    return [[sample(i, pc + n * step, el, symbol, n * 0.25) for i, (el, pc, symbol) in enumerate(cpus)]
            for n in range(count)]


def judged(console: bytes, **facts) -> Diagnosis:
    return decide(Diagnosis("qmp", "test", 0.0, **facts), monitor(console))


IDLE = (2, 0x25b0c4, "domain.c#idle_loop+0x124/0x140 [xen]")
DOM0 = (1, 0xffff800008265bb8, "__btf_verifier_log_type+0x148/0x210 [linux]")


def test_qemus_registers_are_read_on_both_arches():
    arm64 = parse_qemu_registers((DATA / "debugkeys" / "qemu-virt-info-registers.txt").read_text())
    arm32 = parse_qemu_registers((DATA / "debugkeys" / "qemu-a15-info-registers.txt").read_text())
    assert [(s.cpu, s.pc, s.el, s.mode) for s in arm64] == [(0, 0x25b0c4, 2, "EL2h"), (1, 0x25b0c4, 2, "EL2h")]
    assert [(s.cpu, s.pc, s.el, s.mode) for s in arm32] == [(0, 0x258bb8, 2, "hyp32"), (1, 0x258bb8, 2, "hyp32")]
    assert parse_qemu_registers("CPU#0\n PC=zz\n") == [] and parse_qemu_registers("") == []


def test_no_el2():
    assert judged(b"", samples=samples((1, 0x40200544, None), (1, 0, None))).signature == "no-el2"
    assert judged(b"", samples=samples((1, 0x40200544, None), IDLE)).signature != "no-el2"  # one CPU reached EL2


def test_xens_console_silent():
    assert judged(b"", samples=samples(IDLE, DOM0)).signature == "xen-console-silent"  # its guests run
    assert judged(b"", samples=samples(IDLE, IDLE)).signature == "xen-console-silent"  # its CPUs idle
    busy = samples((2, 0x220a38, "_spin_lock_irq+0x48/0x64 [xen]"), (2, 0x2a0000, "setup_mm+0x10/0x400 [xen]"),
                   step=0x100)
    assert judged(b"", samples=busy).signature is None  # Xen at work, not yet asked: it may just be slow
    assert judged(b"", samples=busy, xen_answered=False).signature == "xen-console-silent"  # and deaf: silent


def test_xen_hung():
    assert judged(XEN_BOOT, samples=samples(IDLE), xen_answered=False).signature == "xen-hung"
    hung = judged(XEN_BOOT, xen_answered=False)  # a board: no QEMU to ask
    assert hung.signature == "xen-hung" and "no QEMU" in hung.conclusion
    assert judged(XEN_BOOT, samples=samples(IDLE), xen_answered=True).signature is None


DOM0_IDLE = (1, 0xffff800008baf4fc, "cpu_do_idle+0xc/0x14 [linux]")


def test_dom0_console_silent():
    """dom0 past its boot (idle, or in user space) and not a word on Xen's console since the handover."""
    assert judged(HANDOVER, samples=samples(IDLE, DOM0_IDLE)).signature == "dom0-console-silent"
    assert judged(HANDOVER, samples=samples(IDLE, (0, 0x4a1000, None))).signature == "dom0-console-silent"  # init
    guest = Registers("CPU0 guest d0v0", 0, 0, 0, 0xc041d548, "cpu_ca15_do_idle+0x8/0xc [linux]", "32-bit Guest SVC", 1)
    assert judged(HANDOVER, dump=DebugDump("d", [guest]), xen_answered=True).signature == "dom0-console-silent"
    # a kernel proper before its console is up: Linux 6.12 LPAE reads its device tree for seconds under TCG
    early = (1, 0xc0fc636c, "fdt_get_property_by_offset_+0x0/0x50 [linux]")
    assert judged(HANDOVER, samples=samples(IDLE, early)).signature is None
    assert judged(HANDOVER, samples=samples(IDLE, DOM0)).signature is None
    # a second vCPU of dom0's up: past console_init (a dom0 that panicked silently, say), whatever they run
    stopped = Registers("Dom0 vcpu#0", None, 0, 0, 0xffff800008026ae8, "local_cpu_stop+0x44/0x4c [linux]",
                        "64-bit EL1h", 1)
    delaying = Registers("CPU1 guest d0v1", 1, 0, 1, 0xffff800008b705c0, "__delay_cycles+0x5c/0x7c [linux]",
                         "64-bit EL1h", 1)
    assert judged(HANDOVER, dump=DebugDump("d0", [stopped, delaying]),
                  xen_answered=True).signature == "dom0-console-silent"
    offline = Registers("Dom0 vcpu#1", None, 0, 1, 0x0, None, "64-bit EL1h", 1)  # never brought up: PC 0
    assert judged(HANDOVER, dump=DebugDump("d0", [stopped, offline]), xen_answered=True).signature is None
    # a 32-bit zImage unpacking itself (MMU off, no symbol): silent, and healthy
    unpacking = (1, 0x67a01234, None)
    assert judged(HANDOVER, samples=samples(IDLE, unpacking, step=0x100)).signature is None
    unnamed = Registers("CPU0 guest d0v0", 0, 0, 0, 0x67a01234, None, "32-bit Guest SVC", 1)
    assert judged(HANDOVER, dump=DebugDump("d", [unnamed]), xen_answered=True).signature is None
    assert judged(DOM0_TALKS, samples=samples(IDLE, DOM0_IDLE)).signature is None  # dom0 printed: not silent
    assert judged(HANDOVER, samples=samples(IDLE, IDLE)).signature is None  # dom0 not running: no proof


def events(blocked: bool = True, pending: bool = True, masked: bool = False, upcall: bool = True) -> DebugDump:
    vcpus = [VcpuState(0, n, n, upcall, True, 1 if blocked else 0) for n in range(2)]
    return DebugDump("qe", [], vcpus, [EventChannel(0, 1, False, False, 2, 1, "d=0"),
                                        EventChannel(0, 2, pending, masked, 5, 0, "v=2")])


def test_events_undelivered():
    console = DOM0_TALKS + b"(XEN) Allocating PPI 16 for event channel interrupt\n"
    found = judged(console, dump=events(), xen_answered=True)
    assert found.signature == "events-undelivered"
    assert "port 2 (VIRQ_CONSOLE)" in found.conclusion and "PPI 16" in found.conclusion
    for near_miss in (events(blocked=False), events(pending=False), events(masked=True), events(upcall=False)):
        assert judged(console, dump=near_miss, xen_answered=True).signature is None


def test_a_cpu_spinning():
    """A spin is believed when two probes of one quiet spell see Xen's own code in one place: one probe's second
    on a lock is only a starved lock holder under TCG on a loaded host."""
    spin = (2, 0x2aeab4, "domain_build.c#harness_fault_spin+0x4/0x10 [xen]")
    twice = samples(spin, IDLE)
    assert judged(XEN_BOOT, samples=twice, earlier=twice).signature == "cpu-spinning"
    assert judged(XEN_BOOT, samples=twice).signature is None  # one probe only
    assert judged(XEN_BOOT, samples=samples(spin, IDLE, step=0x40), earlier=twice).signature is None  # moves on
    assert judged(XEN_BOOT, samples=samples(spin, IDLE, count=2), earlier=twice).signature is None  # too few
    elsewhere = samples((2, 0x2b0000, "setup.c#start_xen+0x10/0x900 [xen]"), IDLE)
    assert judged(XEN_BOOT, samples=twice, earlier=elsewhere).signature is None  # not the same spin
    lock = samples((2, 0x220a38, "_spin_lock_irq+0x48/0x64 [xen]"), IDLE)
    assert judged(XEN_BOOT, samples=lock, earlier=lock, xen_answered=True).signature is None  # the false red once seen


def test_a_guest_busy_in_one_function_is_described_never_concluded():
    """dom0's kernel in one function through two probes: honest work as often as a spin (a 32-bit dom0's RSA in
    mpihelp_submul_1 under TCG was once concluded "spinning" 0.5 s before its init started)."""
    busy = (1, 0xc08e555c, "mpihelp_submul_1+0x1c/0x54 [linux]")
    twice = samples(IDLE, busy)
    described = judged(DOM0_TALKS, samples=twice, earlier=twice)
    assert described.signature is None and "mpihelp_submul_1" in described.conclusion
    idle = samples(IDLE, (1, 0xffff800008123450, "default_idle_call+0x3c/0x1d0 [linux]"))
    assert judged(DOM0_TALKS, samples=idle, earlier=idle).signature is None  # idle is not stuck either


def test_a_spin_confirmed_by_xens_own_dump():
    """QEMU saw CPU0 spin, then Xen's 'd' dump (answered from its interrupt handler) found it in the same
    function: seen twice, a spin. A CPU that waits on a lock, or found elsewhere by the dump, is no proof."""
    spin = (2, 0x2aeab4, "domain_build.c#harness_fault_spin+0x4/0x10 [xen]")
    there = Registers("CPU0 host", 0, None, None, 0x2aeab4, "domain_build.c#harness_fault_spin+0x4/0x10", "EL2h", 2)
    found = judged(XEN_BOOT, samples=samples(spin, IDLE), dump=DebugDump("d", [there]), xen_answered=True)
    assert found.signature == "cpu-spinning" and "harness_fault_spin" in found.conclusion
    moved = Registers("CPU0 host", 0, None, None, 0x2b0000, "setup.c#start_xen+0x10/0x900", "EL2h", 2)
    assert judged(XEN_BOOT, samples=samples(spin, IDLE), dump=DebugDump("d", [moved]),
                  xen_answered=True).signature is None
    lock = (2, 0x220a38, "_spin_lock_irq+0x48/0x64 [xen]")
    held = Registers("CPU0 host", 0, None, None, 0x220a38, "_spin_lock_irq+0x48/0x64", "EL2h", 2)
    assert judged(XEN_BOOT, samples=samples(lock, IDLE), dump=DebugDump("d", [held]),
                  xen_answered=True).signature is None


def test_quiet_spells_probe_three_times_a_spell_and_start_again_on_output():
    from harness.lab.strategy import PROBES_PER_SPELL, QuietSpells

    now = [0.0]
    m = ConsoleMonitor(clock=lambda: now[0])
    m.start()
    spells = QuietSpells(m, 1.5)
    assert spells.due() == 1.5  # nothing yet: 1.5 s of quiet to go
    for probe in range(1, PROBES_PER_SPELL + 1):
        now[0] += 2.0
        assert spells.due() <= 0
        spells.probed()
        # the next one as long again after this one; none after the last of the spell
        assert spells.due() == (1.5 if probe < PROBES_PER_SPELL else float("inf"))
    m.feed(b"news\n")
    assert spells.due() == 1.5  # a new spell
    assert QuietSpells(m, 0).due() == float("inf")  # probing off
    assert QuietSpells(m, 1.5, since=now[0] + 1.0).due() == 2.5  # a wait that began later counts from its start


def test_a_machine_that_went_on_while_asked_is_not_stuck():
    # what proves dom0 silent, but dom0 printed a line while QEMU and Xen were being asked
    moved = judged(HANDOVER, samples=samples(IDLE, DOM0_IDLE),
                   moved_on="[    0.000000] Booting Linux on physical CPU 0x0")
    assert moved.signature is None and "went on while it was asked" in moved.conclusion
    assert "Booting Linux" in moved.conclusion


def test_a_question_asked_before_the_console_was_quiet_long_is_answered_not_judged():
    """Ctrl-\\ a few milliseconds after Xen handed over: the look finds dom0 running and silent, which after a
    quiet spell would end the boot; asked at once, it is only described and the wait goes on."""
    import pexpect

    from harness.diagnose import WHERE_REQUESTED
    from harness.lab.strategy import wait_until
    from harness.targets import Deadlines

    m = monitor(HANDOVER)
    asked = []

    def probe(may_end: frozenset[str] | None) -> Diagnosis:
        asked.append(may_end)
        diag = judged(HANDOVER, samples=samples(IDLE, DOM0_IDLE))
        assert diag.signature == "dom0-console-silent"  # what a quiet spell's probe would conclude
        if may_end is not None and diag.signature not in may_end:
            diag.signature = None
        return diag

    class Console:
        reads = 0

        def read(self, size: int, timeout: float, max_size: int) -> bytes:
            self.reads += 1
            if self.reads == 2:  # dom0 talks right after the question
                m.feed(b"[    0.000000] Booting Linux on physical CPU 0x0\n")
                return b"x"
            raise pexpect.TIMEOUT("quiet")

    WHERE_REQUESTED.set()
    try:
        found = wait_until(Console(), m, Deadlines(probe=1.5), lambda: "dom0:kernel" in m.reached or None,
                           "dom0's kernel", probe=probe)
    finally:
        WHERE_REQUESTED.clear()
    assert found and asked == [frozenset()] and m.failure is None


def test_the_prober_notes_a_guest_line_printed_while_it_asked():
    import pexpect

    from harness.diagnose import Prober

    m = monitor(HANDOVER)
    m.start()
    lines = [b"[    0.000000] Booting Linux on physical CPU 0x0\n"]

    class Console:
        abort = None

        def read(self, size: int, timeout: float, max_size: int) -> bytes:
            if not lines:
                raise pexpect.TIMEOUT("quiet")
            m.feed(lines.pop())
            return b"x"

    registers = (DATA / "debugkeys" / "qemu-virt-info-registers.txt").read_text()
    diag = Prober(Console(), m, qemu=lambda command: registers, hypervisor=False).probe(samples=2)
    assert diag.moved_on.startswith("[    0.000000] Booting Linux")
    quiet = Prober(Console(), monitor(HANDOVER), qemu=lambda command: registers, hypervisor=False).probe(samples=2)
    assert quiet.moved_on == "" and len(quiet.samples) == 2


def test_a_prompt_that_xens_line_completed_is_no_progress():
    """Ctrl-a after dom0's prompt: Xen's "*** Serial input" line completes the prompt's line ("dom0#"), which is
    the guest waiting, not the guest at work."""
    m = monitor(DOM0_TALKS + b"dom0# ")
    count = m.line_count
    m.feed(b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\n\n")
    assert m.progress_since(count) is None
    m.feed(b"[   12.000000] random: crng init done\n")
    assert m.progress_since(count).text == "[   12.000000] random: crng init done"
