"""What Xen says it gave its guests, read from its own console lines.

Xen is the first of the three witnesses: it prints its version, dom0's grant table range, the PPI
it allocated for dom0's event channel interrupt, and each domain's extended regions. These lines
come from xen/arch/arm/domain_build.c (4.17); their format is part of what the checks rely on.

Xen also says when it did not do what its command line asked, and boots on regardless: those lines
are its complaints, each a failing finding (checks.check_xen_cmdline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .validate.dt import Region

VERSION = re.compile(r"^Xen version (\d+)\.(\d+)(\.\S+)?")
GRANT = re.compile(r"^Grant table range: (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\s*$")
EVENT_PPI = re.compile(r"^Allocating PPI (\d+) for event channel interrupt")
EXTENDED = re.compile(r"^d(\d+): extended region (\d+): (0x[0-9a-fA-F]+)->(0x[0-9a-fA-F]+)\s*$")
NO_EXTENDED_32BIT = re.compile(r"^d(\d+): extended regions not supported for 32-bit guests")
# Xen 4.17 says "Booting using ACPI" only at some log levels; it always lists the MADT's GICCs.
ACPI = re.compile(r"^(?:Booting using (ACPI|Device Tree)|ACPI: GICC )")
COMMAND_LINE = re.compile(r"^Command line: (.*)$")  # arch/arm/setup.c start_xen(): what Xen parsed

# Xen's complaints about its command line, as Xen 4.17 and 4.20 word them (the same in both). Xen
# carries on after each one without what was asked. On Arm the command line is parsed before the
# serial console is up: the parser's own complaints reach only Xen's console ring (debug key 'w').
# xen/common/kernel.c parse_params(): the key as given (with any "no-" prefix), never the value of an
# unknown one.
CMDLINE_UNKNOWN = re.compile(r'^parameter "([^"]*)" unknown!')
CMDLINE_INVALID = re.compile(r'^parameter "([^"]*)" has invalid value "([^"]*)", rc=(-?\d+)!')
# xen/common/sched/core.c scheduler_init(): a scheduler that is not built in (Debian's Xen has only
# credit and credit2) gives way to CONFIG_SCHED_DEFAULT, named on the next line.
SCHED_MISSING = re.compile(r"^Could not find scheduler: (.*)$")
SCHED_USED = re.compile(r"^Using '([^']*)' \((\S*)\)")
# xen/common/sched/core.c scheduler_init(), two lines: the range, then " Resetting to default N".
RATELIMIT = re.compile(r"^WARNING: sched_ratelimit_us outside of valid range \[(-?\d+),(-?\d+)\]")
RATELIMIT_DEFAULT = re.compile(r"^\s*Resetting to default (\d+)")
# xen/common/sched/cpupool.c cpupool_gran_init(), printed in the boot's closing warnings (x86 only:
# CONFIG_HAS_SCHED_GRANULARITY; on Arm sched-gran= is an unknown parameter).
GRAN_FALLBACK = re.compile(r"^Falling back to sched-gran=(\w+)\.")
# xen/drivers/char/console.c console_init_preirq(): seen on the serial line only after a good console.
BAD_CONSOLE = re.compile(r"^Bad console= option '([^']*)'")
LOOKAHEAD = 3  # lines after a complaint that may say what Xen did instead


@dataclass(frozen=True)
class Complaint:
    """One thing Xen's command line asked for that Xen did not do, in Xen's own words."""

    kind: str  # "unknown", "invalid" or "fallback": the finding's rule is xen.cmdline.<kind>
    parameter: str  # as Xen names it: "no-such-param", "dom0_max_vcpus", "sched", "console"
    line: str  # Xen's line, the evidence
    expected: str  # what the command line asked for: "Xen accepts sched=null"
    found: str  # what Xen did: "Could not find scheduler: null (Xen used credit2)"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "parameter": self.parameter, "line": self.line, "expected": self.expected,
                "found": self.found}


@dataclass
class XenClaims:
    version: str | None = None  # "4.17"
    release: str | None = None  # "4.17.7", as the banner says
    boot: str | None = None  # "ACPI" or "Device Tree", when Xen says
    grant: Region | None = None  # the hardware domain's grant table range (end exclusive)
    event_ppi: int | None = None  # INTID of dom0's event channel interrupt
    extended: dict[int, list[Region]] = field(default_factory=dict)  # domid -> regions
    no_extended_32bit: set[int] = field(default_factory=set)  # domains Xen said are 32-bit
    cmdline: str | None = None  # "Command line: …", when Xen's console ring was read
    ring_start: str | None = None  # the first line of Xen's console ring dump, when one was read
    complaints: list[Complaint] = field(default_factory=list)  # what Xen did not do of its command line

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "release": self.release,
            "boot": self.boot,
            "grant": str(self.grant) if self.grant else None,
            "event_ppi": self.event_ppi,
            "extended": {f"d{d}": [str(r) for r in regions] for d, regions in self.extended.items()},
            "no_extended_32bit": [f"d{d}" for d in sorted(self.no_extended_32bit)],
            "cmdline": self.cmdline,
            "ring_start": self.ring_start,
            "complaints": [c.to_dict() for c in self.complaints],
        }


def parse(xen_lines: Iterable[str], ring: Iterable[str] = ()) -> XenClaims:
    """Claims from Xen's lines (without the "(XEN) " prefix), and its complaints from those and from
    `ring`, a dump of Xen's console ring (the same lines again, with those printed before the serial
    console was up)."""
    xen_lines, ring = list(xen_lines), list(ring)
    claims = XenClaims(complaints=complaints([*ring, *xen_lines]), ring_start=ring[0] if ring else None)
    claims.cmdline = next((m.group(1) for text in [*ring, *xen_lines] if (m := COMMAND_LINE.match(text))), None)
    for text in xen_lines:
        if (m := VERSION.match(text)) and claims.version is None:
            claims.version = f"{m.group(1)}.{m.group(2)}"
            claims.release = claims.version + (m.group(3) or "")
        elif m := GRANT.match(text):
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            claims.grant = Region(start, end - start)
        elif m := EVENT_PPI.match(text):
            claims.event_ppi = int(m.group(1))
        elif m := EXTENDED.match(text):
            start, end = int(m.group(3), 16), int(m.group(4), 16)
            claims.extended.setdefault(int(m.group(1)), []).append(Region(start, end - start))
        elif m := NO_EXTENDED_32BIT.match(text):
            claims.no_extended_32bit.add(int(m.group(1)))
        elif m := ACPI.match(text):
            claims.boot = m.group(1) or "ACPI"
    if claims.boot is None:  # on Arm, "Booting using …" is printed before the serial console is up
        claims.boot = next((m.group(1) or "ACPI" for text in ring if (m := ACPI.match(text))), None)
    return claims


def complaints(xen_lines: Iterable[str]) -> list[Complaint]:
    """Xen's complaints about its command line, each once (a ring dump repeats the console's lines)."""
    lines = list(xen_lines)
    found: dict[tuple[str, str], Complaint] = {}
    for i, text in enumerate(lines):
        after = lines[i + 1 : i + 1 + LOOKAHEAD]
        if complaint := _complaint(text, after):
            found.setdefault((complaint.kind, complaint.line), complaint)
    return list(found.values())


def _complaint(text: str, after: list[str]) -> Complaint | None:
    line = text.strip()
    if m := CMDLINE_UNKNOWN.match(line):
        return Complaint("unknown", m.group(1), line, f"Xen accepts {m.group(1)}", f"{line} (Xen ignored it)")
    if m := CMDLINE_INVALID.match(line):
        return Complaint("invalid", m.group(1), line, f"Xen accepts {m.group(1)}={m.group(2)}",
                         f"{line} (Xen rejected the value)")
    if m := SCHED_MISSING.match(line):
        used = next((u.group(2) for a in after if (u := SCHED_USED.match(a))), None)
        return Complaint("fallback", "sched", line, f"Xen accepts sched={m.group(1)}",
                         f"{line} (Xen used {used or 'its default scheduler'})")
    if m := RATELIMIT.match(line):
        default = next((d.group(1) for a in after if (d := RATELIMIT_DEFAULT.match(a))), None)
        return Complaint("fallback", "sched_ratelimit_us", line,
                         f"Xen accepts sched_ratelimit_us (valid: {m.group(1)}..{m.group(2)})",
                         f"{line} (Xen used {'the default ' + default if default else 'its default'})")
    if m := GRAN_FALLBACK.match(line):
        return Complaint("fallback", "sched-gran", line, "Xen accepts the sched-gran asked for",
                         f"{line} (Xen used sched-gran={m.group(1)})")
    if m := BAD_CONSOLE.match(line):
        return Complaint("invalid", "console", line, f"Xen accepts console={m.group(1)}",
                         f"{line} (Xen ignored this console)")
    return None
