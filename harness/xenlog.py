"""What Xen says it gave its guests, read from its own console lines.

Xen is the first of the three witnesses: it prints its version, dom0's grant table range, the PPI
it allocated for dom0's event channel interrupt, and each domain's extended regions. These lines
come from xen/arch/arm/domain_build.c (4.17); their format is part of what the checks rely on.
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



@dataclass
class XenClaims:
    version: str | None = None  # "4.17"
    release: str | None = None  # "4.17.7", as the banner says
    boot: str | None = None  # "ACPI" or "Device Tree", when Xen says
    grant: Region | None = None  # the hardware domain's grant table range (end exclusive)
    event_ppi: int | None = None  # INTID of dom0's event channel interrupt
    extended: dict[int, list[Region]] = field(default_factory=dict)  # domid -> regions
    no_extended_32bit: set[int] = field(default_factory=set)  # domains Xen said are 32-bit

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "release": self.release,
            "boot": self.boot,
            "grant": str(self.grant) if self.grant else None,
            "event_ppi": self.event_ppi,
            "extended": {f"d{d}": [str(r) for r in regions] for d, regions in self.extended.items()},
        }


def parse(xen_lines: Iterable[str]) -> XenClaims:
    """Claims from Xen's lines (without the "(XEN) " prefix)."""
    claims = XenClaims()
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
    return claims
