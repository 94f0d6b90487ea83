"""Where a quiet machine is: Xen's debug keys over its console, every vCPU's PC through QEMU, symbolized.

When the console goes quiet before the current stage's milestone, the strategy asks the machine
without ending the boot (`Prober`): QEMU's vCPUs (`info registers -a`, sampled a few times: works
when Xen is wedged or its console is dead), then Xen's debug keys (boards too). `decide` reads those
facts; only a conclusive pattern ends the boot early, with a named signature. Anything else waits
for the deadline as before, and the hung verdict carries the diagnosis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .debugkeys import DebugDump, Registers


@dataclass(frozen=True)
class VcpuSample:
    """One vCPU of the machine (a pCPU to Xen) as QEMU saw it."""

    cpu: int  # QEMU's vCPU index: Xen's pCPU number
    pc: int
    el: int | None  # exception level: 2 Xen, 1 a guest's kernel, 0 user space (None: unknown)
    mode: str  # QEMU's word for it: "EL2h", "EL1h", "hyp32", "svc32", …
    t: float = 0.0  # seconds since power-on
    symbol: str | None = None  # "idle_loop+0x128/0x140 [xen]", "default_idle_call+0x3c/0x1d0 [dom0]"

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "pc": f"{self.pc:#x}", "el": self.el, "mode": self.mode, "t": self.t,
                "symbol": self.symbol}

    def __str__(self) -> str:
        el = f"EL{self.el}" if self.el is not None else self.mode
        return f"CPU{self.cpu} {el} pc {self.pc:#x} {self.symbol or '(no symbol)'}"


@dataclass
class Diagnosis:
    """What the harness found out about a quiet (or failed) machine; result.json's `diagnosis`."""

    method: str  # "debug-keys", "qmp", "debug-keys+qmp", "none": how the machine was asked
    stage: str  # the last milestone reached
    quiet_since: float  # seconds since power-on of the last console byte (0.0: nothing printed)
    samples: list[list[VcpuSample]] = field(default_factory=list)  # QEMU's vCPUs, sample after sample
    dump: DebugDump | None = None  # what Xen's debug keys printed (None: not asked or no answer)
    xen_answered: bool | None = None  # None: not asked
    dumps: list[str] = field(default_factory=list)  # the dumps' files, relative to the artifacts
    conclusion: str = ""  # in words
    signature: str | None = None  # conclusive: the failure's signature; None: inconclusive
    seconds_from_quiet: float | None = None  # from quiet_since to the verdict

    @property
    def conclusive(self) -> bool:
        return self.signature is not None

    def latest(self) -> list[VcpuSample]:
        return self.samples[-1] if self.samples else []

    def xen_registers(self) -> list[Registers]:
        return self.dump.registers if self.dump else []

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "stage": self.stage,
            "conclusion": self.conclusion,
            "signature": self.signature,
            "vcpus": [s.to_dict() for s in self.latest()],
            "samples": len(self.samples),
            "xen_answered": self.xen_answered,
            "xen_registers": [{"who": r.who, "cpu": r.cpu, "pc": f"{r.pc:#x}", "el": r.el, "symbol": r.symbol}
                              for r in self.xen_registers()],
            "dumps": self.dumps,
            "quiet_since": self.quiet_since,
            "seconds_from_quiet": self.seconds_from_quiet,
        }

    def report(self) -> list[str]:
        """The lines the text report prints under the verdict."""
        lines = [f"diagnosis ({self.method}): {self.conclusion or 'inconclusive'}"]
        lines += [f"    {s}" for s in self.latest()]
        lines += [f"    Xen: {r.who} pc {r.pc:#x} {r.symbol or ''}".rstrip() for r in self.xen_registers()]
        if self.seconds_from_quiet is not None:
            lines.append(f"    {self.seconds_from_quiet:.1f} s from the last console byte to the verdict")
        lines += [f"    debug-key dump: {path}" for path in self.dumps]
        return lines


# QEMU's `info registers -a`: "CPU#0" then, on arm64, " PC=… " and "PSTATE=600002c9 -ZC- EL2h";
# on arm32, "R15=…" and "PSR=600700da -ZC- A hyp32".
QEMU_CPU = re.compile(r"^CPU#(\d+)", re.M)
QEMU_PC64 = re.compile(r"\bPC=([0-9a-f]+)")
QEMU_PSTATE = re.compile(r"\bPSTATE=[0-9a-f]+ \S+ (EL(\d)[ht])")
QEMU_PC32 = re.compile(r"\bR15=([0-9a-f]+)")
QEMU_PSR = re.compile(r"\bPSR=[0-9a-f]+ \S+ (?:\S+ )?(usr32|fiq32|irq32|svc32|mon32|abt32|hyp32|und32|sys32)")
ARM32_EL = {"usr32": 0, "hyp32": 2, "mon32": 3}  # every other mode is a kernel's (EL1)


def parse_qemu_registers(text: str, t: float = 0.0) -> list[VcpuSample]:
    """Every vCPU's PC and exception level in QEMU's `info registers -a` output."""
    samples = []
    starts = list(QEMU_CPU.finditer(text))
    for i, m in enumerate(starts):
        block = text[m.end() : starts[i + 1].start() if i + 1 < len(starts) else None]
        if (pc := QEMU_PC64.search(block)) and (ps := QEMU_PSTATE.search(block)):
            samples.append(VcpuSample(int(m.group(1)), int(pc.group(1), 16), int(ps.group(2)), ps.group(1), t))
        elif (pc := QEMU_PC32.search(block)) and (ps := QEMU_PSR.search(block)):
            mode = ps.group(1)
            samples.append(VcpuSample(int(m.group(1)), int(pc.group(1), 16), ARM32_EL.get(mode, 1), mode, t))
    return samples
