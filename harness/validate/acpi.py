"""Validate the ACPI tables an ACPI-booted Xen dom0 on arm64 receives.

Input is a set of tables named as Linux names them in ``/sys/firmware/acpi/tables`` (by signature,
``SSDT1``/``SSDT2`` when a signature repeats), with the RSDP apart, whatever layout they came in
(harness/validate/acpi_input.py reads them); optionally the host's tables, to tell what Xen
rewrote from what it passed through.

What Xen 4.17 does (xen/arch/arm/acpi/domain_build.c, ``prepare_acpi``): it copies the host
FADT and ORs PSCI_COMPLIANT|PSCI_USE_HVC into ``arm_boot_flags``; builds a new MADT (host
header, the host GICD, one GICC per dom0 vCPU, GICR/ITS for GICv3); builds an STAO
(header copied from the MADT, revision 1, length 37, Ignore UART = 1); copies the host XSDT,
points its FADT and MADT entries at the new tables and appends the STAO; copies the RSDP and
points it at the new XSDT. Every other table is mapped 1:1 and reaches dom0 byte-identical.

Everything here is a pure function of bytes: harness/validate/acpi_input.py reads what users bring.
Every offset is bounds-checked: a malformed table becomes a finding, never an exception.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness import inputs
from harness.findings import Finding, Severity, capped

HEADER_LEN = 36
RSDP_V1_LEN = 20  # ACPI 1.0 part covered by the first checksum
RSDP_V2_LEN = 36
FADT_MIN_LEN = 132  # through the minor version byte (offset 131), ACPI 5.1
FADT_HV_ID_END = 276  # hypervisor vendor identity is bytes 268..275, ACPI 6.0+
MADT_FIXED_LEN = 44  # header + local interrupt controller address + flags
STAO_MIN_LEN = 37  # header + Ignore UART
GTDT_MIN_LEN = 72  # through the virtual timer GSIV/flags (offset 64..71)
SPCR_MIN_LEN = 52  # through the base address GAS (offset 40..51)

MADT_GICC = 0x0B
MADT_GICD = 0x0C
GTDT_PPI_RANGES = ((16, 31), (1056, 1119))  # PPIs and GICv3.1 extended PPIs

# Reached through the FADT (X_DSDT, X_FIRMWARE_CTRL), never listed in the XSDT.
NOT_IN_XSDT = frozenset({"DSDT", "FACS"})
# The FACS has a signature and a length but no checksum (ACPI 6.5 5.2.10): bytes 8.. are its hardware signature.
NO_CHECKSUM = frozenset({"FACS"})
# Linux does not expose these in sysfs: present only when the harness captured them.
CAPTURE_ONLY = frozenset({"RSDP", "XSDT"})
# Tables Xen hides from dom0. Xen 4.17 on Arm hides none: acpi_map_other_tables() maps every
# table of the host root table list and the guest XSDT keeps every host entry. (On x86 Xen
# renames DMAR to XMAR; that does not apply here.) Kept as a profile knob for other versions.
XEN_HIDES: frozenset[str] = frozenset()

TABLE_NAME = re.compile(r"^([A-Z0-9_]{4})(\d*)$")  # Linux sysfs: signature + instance number
XSDT_RULES = frozenset({"acpi.stao.xsdt"})  # under acpi.stao, but it compares the XSDT with the host's
DYNAMIC = "dynamic/"  # tables Linux loaded at run time (sysfs's dynamic/): checked, but no XSDT lists them
_HEADER = struct.Struct("<4sIBB6s8sI4sI")

RULES: dict[str, str] = {
    "acpi.not-applied": "a table the rules need is not in the input (RSDP and XSDT are not in a sysfs copy; one "
    "table given holds no other): its rules were not applied (info)",
    "acpi.header.short": "a table file is shorter than the 36-byte ACPI header, so nothing in it can be read",
    "acpi.header.signature": "the header signature differs from the file name's signature "
    "(sysfs names files by signature)",
    "acpi.length": "the header length disagrees with the file: below 36, past the end of the file (error), "
    "or followed by trailing bytes (warning)",
    "acpi.checksum": "the bytes of a table (all `length` of them) do not sum to 0 mod 256 (the FACS has no checksum)",
    "acpi.duplicate": "a table that must be unique (FACP, APIC, STAO) appears more than once",
    "acpi.rsdp.short": "the RSDP is shorter than 20 bytes (any revision) or 36 bytes (revision 2+)",
    "acpi.rsdp.signature": "the RSDP does not start with 'RSD PTR '",
    "acpi.rsdp.revision": "the RSDP revision is below 2, so it has no XSDT address (arm64 needs ACPI 2.0+)",
    "acpi.rsdp.length": "the RSDP length field is below 36, past the end of the capture, or followed by "
    "trailing bytes (warning)",
    "acpi.rsdp.checksum.v1": "the ACPI 1.0 checksum (first 20 bytes) of the RSDP does not sum to 0; "
    "known when the extended checksum is right (Xen 4.17 defect)",
    "acpi.rsdp.checksum.ext": "the RSDP extended checksum (all `length` bytes) does not sum to 0",
    "acpi.rsdp.xsdt": "the RSDP XSDT address is zero",
    "acpi.xsdt.length": "the XSDT body is not a whole number of 8-byte entries",
    "acpi.xsdt.entry": "an XSDT entry is zero or repeats another entry's address",
    "acpi.xsdt.count": "the XSDT entry count differs from the tables in the dump that the XSDT lists "
    "(all but DSDT and FACS). Limit: guest physical addresses are not in a sysfs dump, so "
    "entries cannot be resolved to signatures; only the count is compared",
    "acpi.stao.xsdt": "with the host XSDT: the guest XSDT must be the host's plus one appended entry per "
    "expected new table (Xen appends the STAO last), at an address the host does not use",
    "acpi.fadt.missing": "a whole dump has no FADT (FACP)",
    "acpi.fadt.short": "the FADT is too short to hold the ARM boot flags and minor version (132 bytes)",
    "acpi.fadt.revision": "the FADT version (major at header offset 8, minor at offset 131) is below 5.1, "
    "the first with ARM boot flags",
    "acpi.fadt.hw-reduced": "FADT flags (offset 112) lack HW_REDUCED_ACPI (bit 20), required on arm64",
    "acpi.fadt.psci": "FADT arm_boot_flags (offset 129) lack PSCI_COMPLIANT (bit 0), which Xen sets",
    "acpi.fadt.psci-hvc": "FADT arm_boot_flags (offset 129) lack PSCI_USE_HVC (bit 1): dom0 must call PSCI "
    "through Xen with HVC, and Xen sets it",
    "acpi.fadt.hypervisor-id": "FADT hypervisor vendor identity (offset 268, ACPI 6.0+): reported (info), "
    "an error only when the profile expects a value and it differs",
    "acpi.madt.missing": "a whole dump has no MADT (APIC)",
    "acpi.madt.short": "the MADT is shorter than its 44-byte fixed part",
    "acpi.madt.entry": "a MADT subtable has a length below 2, runs past the table, or is a GICC too "
    "short for its flags",
    "acpi.madt.gicc-count": "the number of enabled GICC entries (flags bit 0) differs from the expected "
    "dom0 vCPU count (reported as info when no count is expected)",
    "acpi.madt.gicd": "the MADT does not hold exactly one GICD (none: error, several: warning)",
    "acpi.gtdt.missing": "a whole dump has no GTDT: dom0 Linux has no architected timer without it",
    "acpi.gtdt.short": "the GTDT is too short to hold the non-secure EL1 and virtual timer GSIVs",
    "acpi.gtdt.timer": "a GTDT non-secure EL1 or virtual timer GSIV is not a PPI (16-31 or 1056-1119)",
    "acpi.spcr.short": "the SPCR is too short to hold the UART base address",
    "acpi.spcr.uart": "the UART the SPCR describes, which Xen keeps for itself (info)",
    "acpi.stao.missing": "a whole dump has no STAO: Xen adds one so dom0 ignores the UART Xen owns",
    "acpi.stao.short": "the STAO is shorter than 37 bytes (header + Ignore UART)",
    "acpi.stao.uart": "STAO Ignore UART is not 1 although an SPCR describes a UART, or is not a boolean",
    "acpi.stao.names": "the STAO name list (after offset 37) is not NUL-terminated ASCII",
    "acpi.passthrough.changed": "with host tables: a table Xen should pass through byte-identical differs "
    "from the host's",
    "acpi.rewrite.identical": "with host tables: a table expected to be rewritten is byte-identical (info)",
    "acpi.rewrite.unexpected": "with host tables: the guest has a table the host lacks and that is not an "
    "expected new table (Xen added or renamed it)",
    "acpi.host.missing": "with host tables: a host table is absent from the guest; Xen 4.17 on Arm hides "
    "none (RSDP/XSDT are exempt: capture-only)",
    "acpi.host.hidden": "with host tables: a host table is absent from the guest, as the profile allows (info)",
    "acpi.host.summary": "with host tables: which tables Xen rewrote, added, and passed through (info)",
}

KNOWN_DEFECTS: dict[str, str] = {
    "acpi.rsdp.checksum.v1": "Xen 4.17's acpi_create_rsdp (xen/arch/arm/acpi/domain_build.c) replaces "
    "xsdt_physical_address, then fixes the sum over all 36 bytes by adjusting the ACPI 1.0 `checksum` "
    "byte instead of `extended_checksum`: the 20-byte checksum breaks while the extended one holds. "
    "Known upstream defect, harmless: arm64 Linux takes the RSDP from the EFI configuration table "
    "without validating its checksums",
}


@dataclass(frozen=True)
class TableHeader:
    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int


@dataclass(frozen=True)
class Tables:
    tables: dict[str, bytes]  # name (signature + optional instance; DYNAMIC + name if loaded at run time) -> bytes
    rsdp: bytes | None = None
    # a whole dump: a table it lacks is missing from the machine (an error); else (one table given) its rules
    # are only not applied
    whole: bool = True
    reading: inputs.Reading | None = field(default=None, compare=False)  # what acpi_input made of the user's path


@dataclass(frozen=True)
class Profile:
    vcpus: int | None = None  # expected dom0 vCPUs (enabled GICC count); None = not checked
    hypervisor_id: str | None = None  # expected FADT hypervisor vendor id; None = report only
    expect_rewritten: frozenset[str] = frozenset({"FACP", "APIC", "XSDT", "RSDP"})
    expect_new: frozenset[str] = frozenset({"STAO"})
    may_hide: frozenset[str] = XEN_HIDES  # host tables allowed to be absent in the guest


DEFAULT_PROFILE = Profile()


class _Malformed(Exception):
    """A table cannot be parsed at all; validate_tables turns it into its finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding


# ---------------------------------------------------------------------------- helpers


def signature_of(name: str) -> str:
    """The ACPI signature a sysfs file name stands for: 'SSDT2' -> 'SSDT', 'DBG2' -> 'DBG2', 'dynamic/SSDT1' -> 'SSDT'.
    """
    name = name.removeprefix(DYNAMIC)
    m = TABLE_NAME.match(name)
    return m.group(1) if m else name[:4]


def _sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def _text(raw: bytes) -> str:
    # OEM fields are space- or NUL-padded ASCII; keep anything else visible rather than fail.
    return raw.rstrip(b"\0 ").decode("ascii", "backslashreplace")


def _u16(data: bytes, off: int) -> int | None:
    return struct.unpack_from("<H", data, off)[0] if off + 2 <= len(data) else None


def _u32(data: bytes, off: int) -> int | None:
    return struct.unpack_from("<I", data, off)[0] if off + 4 <= len(data) else None


def _u64(data: bytes, off: int) -> int | None:
    return struct.unpack_from("<Q", data, off)[0] if off + 8 <= len(data) else None


def _err(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule, Severity.ERROR, where, expected, found, note)


def _names_with(tables: Mapping[str, bytes], sig: str) -> list[str]:
    return sorted(n for n in tables if signature_of(n) == sig)


def _not_applied(signature: str, *prefixes: str) -> Finding:
    """The info that a table is not in the input, so the rules under `prefixes` (e.g. acpi.rsdp) were not applied."""

    def needs(rule: str, prefix: str) -> bool:
        return rule == prefix or (rule.startswith(f"{prefix}.") and rule not in XSDT_RULES - {prefix})

    rules = sorted(r for r in RULES if any(needs(r, p) for p in prefixes) and not r.endswith(".missing"))
    return Finding("acpi.not-applied", Severity.INFO, signature, "present", "absent from the input",
                   f"not applied: {', '.join(rules)}")


def _the_table(
    guest: Tables, headers: Mapping[str, TableHeader], signature: str, rule: str, min_len: int,
    missing: str = "present",
) -> tuple[str, bytes] | Finding:
    """The first `signature` table and its bytes, or the finding that it is absent (missing from a whole dump,
    else its rules not applied) or too short to read."""
    tables = guest.tables
    names = _names_with(headers, signature)
    if not names and not guest.whole and not _names_with(tables, signature):
        return _not_applied(signature, rule)
    if not names:
        return _err(f"{rule}.missing", signature, missing, "absent")
    name = names[0]
    data = _body(tables[name], headers[name])
    if len(data) < min_len:
        return _err(f"{rule}.short", f"{name} length", f">= {min_len} bytes", f"{len(data)} bytes")
    return name, data



def _body(raw: bytes, header: TableHeader) -> bytes:
    """The bytes the header claims, never more than the file holds."""
    return raw[: max(HEADER_LEN, min(header.length, len(raw)))]


# ---------------------------------------------------------------------------- parsing


def parse_header(raw: bytes, name: str) -> TableHeader:
    """Parse the 36-byte ACPI header; a file too short for it raises a private error."""
    if len(raw) < HEADER_LEN:
        raise _Malformed(_err("acpi.header.short", f"{name} header", f">= {HEADER_LEN} bytes", f"{len(raw)} bytes"))
    sig, length, rev, csum, oem, oem_tab, oem_rev, creator, creator_rev = _HEADER.unpack_from(raw)
    return TableHeader(
        signature=sig.decode("latin-1"),
        length=length,
        revision=rev,
        checksum=csum,
        oem_id=_text(oem),
        oem_table_id=_text(oem_tab),
        oem_revision=oem_rev,
        creator_id=_text(creator),
        creator_revision=creator_rev,
    )


def xsdt_entries(raw: bytes, header: TableHeader) -> list[int]:
    """The 64-bit XSDT entries; a partial trailing entry is left out (reported elsewhere)."""
    body = _body(raw, header)[HEADER_LEN:]
    return [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]


# ---------------------------------------------------------------------------- checks


def _check_header(name: str, raw: bytes, h: TableHeader) -> list[Finding]:
    out: list[Finding] = []
    want_sig = signature_of(name)
    if h.signature != want_sig:
        out.append(_err("acpi.header.signature", f"{name} signature", repr(want_sig), repr(h.signature)))
    if h.length < HEADER_LEN:
        out.append(_err("acpi.length", f"{name} length", f">= {HEADER_LEN}", str(h.length)))
        return out
    if h.length > len(raw):
        out.append(
            _err(
                "acpi.length",
                f"{name} length",
                f"<= {len(raw)} (file size)",
                str(h.length),
                "table truncated",
            )
        )
        return out  # cannot sum bytes that are not there
    if h.length < len(raw):
        out.append(
            Finding(
                "acpi.length",
                Severity.WARNING,
                f"{name} length",
                f"{len(raw)} (file size)",
                str(h.length),
                f"{len(raw) - h.length} trailing bytes after the table",
            )
        )
    total = 0 if h.signature in NO_CHECKSUM else _sum8(raw[: h.length])
    if total:
        out.append(
            _err(
                "acpi.checksum",
                f"{name} checksum",
                "0x00",
                f"0x{total:02x}",
                f"sum of all {h.length} bytes mod 256 (checksum byte 0x{h.checksum:02x})",
            )
        )
    return out


def _check_rsdp(raw: bytes) -> list[Finding]:
    out: list[Finding] = []
    if len(raw) < RSDP_V1_LEN:
        return [_err("acpi.rsdp.short", "RSDP", f">= {RSDP_V1_LEN} bytes", f"{len(raw)} bytes")]
    if raw[:8] != b"RSD PTR ":
        out.append(_err("acpi.rsdp.signature", "RSDP signature", repr("RSD PTR "), repr(raw[:8].decode("latin-1"))))
    v1 = _sum8(raw[:RSDP_V1_LEN])
    v1_where = f"RSDP checksum (bytes 0-{RSDP_V1_LEN - 1})"
    revision = raw[15]
    ext: int | None = None  # None: extended checksum not computable
    if revision < 2:
        out.append(_err("acpi.rsdp.revision", "RSDP revision", ">= 2", str(revision)))
    elif len(raw) < RSDP_V2_LEN:
        out.append(_err("acpi.rsdp.short", "RSDP", f">= {RSDP_V2_LEN} bytes (revision 2+)", f"{len(raw)} bytes"))
    else:
        length = _u32(raw, 20) or 0
        if length < RSDP_V2_LEN:
            out.append(_err("acpi.rsdp.length", "RSDP length", f">= {RSDP_V2_LEN}", str(length)))
        elif length > len(raw):
            out.append(_err("acpi.rsdp.length", "RSDP length", f"<= {len(raw)} (capture size)", str(length)))
        else:
            if length < len(raw):
                out.append(
                    Finding(
                        "acpi.rsdp.length",
                        Severity.WARNING,
                        "RSDP length",
                        f"{len(raw)} (capture size)",
                        str(length),
                        f"{len(raw) - length} trailing bytes after the RSDP",
                    )
                )
            ext = _sum8(raw[:length])
            if ext:
                out.append(
                    _err(
                        "acpi.rsdp.checksum.ext",
                        f"RSDP extended checksum (bytes 0-{length - 1})",
                        "0x00",
                        f"0x{ext:02x}",
                    )
                )
        if _u64(raw, 24) == 0:
            out.append(_err("acpi.rsdp.xsdt", "RSDP xsdt_physical_address", "non-zero", "0x0000000000000000"))
    if v1:
        rule = "acpi.rsdp.checksum.v1"
        if ext == 0:  # exactly Xen 4.17's signature: v1 broken, extended checksum right
            out.append(Finding(rule, Severity.KNOWN, v1_where, "0x00", f"0x{v1:02x}", KNOWN_DEFECTS[rule]))
        else:
            out.append(_err(rule, v1_where, "0x00", f"0x{v1:02x}"))
    return out


def _listed_in_xsdt(tables: Iterable[str]) -> list[str]:
    return sorted(n for n in tables if signature_of(n) not in NOT_IN_XSDT | CAPTURE_ONLY and not n.startswith(DYNAMIC))


def _check_xsdt(
    guest: Tables, headers: Mapping[str, TableHeader], host: Tables | None, profile: Profile
) -> list[Finding]:
    if "XSDT" not in headers:
        return []
    out: list[Finding] = []
    raw, h = guest.tables["XSDT"], headers["XSDT"]
    body_len = len(_body(raw, h)) - HEADER_LEN
    if body_len % 8:
        out.append(_err("acpi.xsdt.length", "XSDT length", "36 + 8 * entries", str(h.length)))
    entries = xsdt_entries(raw, h)
    first_at: dict[int, int] = {}
    for i, addr in enumerate(entries):
        if addr == 0:
            out.append(_err("acpi.xsdt.entry", f"XSDT entry[{i}]", "non-zero address", f"0x{addr:016x}"))
        elif addr in first_at:
            out.append(
                _err(
                    "acpi.xsdt.entry",
                    f"XSDT entry[{i}]",
                    "an address no other entry uses",
                    f"0x{addr:016x} (also entry[{first_at[addr]}])",
                )
            )
        else:
            first_at[addr] = i
    listed = _listed_in_xsdt(guest.tables)
    if not guest.whole:
        out.append(Finding("acpi.not-applied", Severity.INFO, "XSDT entries", "the tables the XSDT lists",
                           "only the XSDT in the input", "not applied: acpi.xsdt.count"))
    elif len(entries) != len(listed):
        out.append(
            _err(
                "acpi.xsdt.count",
                "XSDT entries",
                f"{len(listed)} ({', '.join(listed) or 'no tables'})",
                str(len(entries)),
                "compared by count only: a sysfs dump has no addresses to resolve entries with",
            )
        )
    host_raw = host.tables.get("XSDT") if host else None
    if host_raw is not None:
        try:
            host_entries = xsdt_entries(host_raw, parse_header(host_raw, "XSDT"))
        except _Malformed:
            return out  # an unreadable host XSDT gives nothing to compare against
        new = sorted(s for s in profile.expect_new if s not in NOT_IN_XSDT | CAPTURE_ONLY)
        want = len(host_entries) + len(new)
        appended = entries[len(host_entries) :]
        host_addresses = set(host_entries)  # a set: thousands of entries on either side stay linear
        reused = [a for a in appended if a in host_addresses]
        if len(entries) != want:
            out.append(
                _err(
                    "acpi.stao.xsdt",
                    "XSDT entries",
                    f"{want} (host {len(host_entries)} + {len(new)} new: {', '.join(new) or '-'})",
                    str(len(entries)),
                )
            )
        elif reused:
            out.append(
                _err(
                    "acpi.stao.xsdt",
                    f"XSDT entry[{len(host_entries)}:]",
                    "addresses the host XSDT does not use",
                    ", ".join(f"0x{a:016x}" for a in reused),
                )
            )
    return out


def _check_fadt(guest: Tables, headers: Mapping[str, TableHeader], profile: Profile) -> list[Finding]:
    found = _the_table(guest, headers, "FACP", "acpi.fadt", FADT_MIN_LEN)
    if isinstance(found, Finding):
        return [found]
    name, data = found
    out: list[Finding] = []
    major, minor = headers[name].revision, data[131]
    if (major, minor) < (5, 1):
        out.append(_err("acpi.fadt.revision", f"{name} revision", ">= 5.1", f"{major}.{minor}"))
    flags = _u32(data, 112) or 0
    if not flags & (1 << 20):
        out.append(_err("acpi.fadt.hw-reduced", f"{name} flags", "bit 20 (HW_REDUCED_ACPI) set", f"0x{flags:08x}"))
    boot = _u16(data, 129) or 0
    if not boot & 1:
        out.append(_err("acpi.fadt.psci", f"{name} arm_boot_flags", "bit 0 (PSCI_COMPLIANT) set", f"0x{boot:04x}"))
    if not boot & 2:
        out.append(_err("acpi.fadt.psci-hvc", f"{name} arm_boot_flags", "bit 1 (PSCI_USE_HVC) set", f"0x{boot:04x}"))
    where = f"{name} hypervisor_vendor_identity"
    found = (
        repr(_text(data[268:FADT_HV_ID_END]))
        if len(data) >= FADT_HV_ID_END
        else f"absent (FADT is {len(data)} bytes, needs {FADT_HV_ID_END})"
    )
    if profile.hypervisor_id is None:
        out.append(Finding("acpi.fadt.hypervisor-id", Severity.INFO, where, "(not checked)", found))
    elif found != repr(profile.hypervisor_id):
        out.append(_err("acpi.fadt.hypervisor-id", where, repr(profile.hypervisor_id), found))
    return out


def _check_madt(guest: Tables, headers: Mapping[str, TableHeader], profile: Profile) -> list[Finding]:
    found = _the_table(guest, headers, "APIC", "acpi.madt", MADT_FIXED_LEN)
    if isinstance(found, Finding):
        return [found]
    name, data = found
    out: list[Finding] = []
    enabled = gicd = 0
    off, index = MADT_FIXED_LEN, 0
    while off < len(data):
        where = f"{name} entry[{index}] at 0x{off:x}"
        if off + 2 > len(data):
            out.append(_err("acpi.madt.entry", where, "2-byte type/length", f"{len(data) - off} byte"))
            break
        kind, length = data[off], data[off + 1]
        if length < 2:  # would never advance: stop rather than loop
            out.append(_err("acpi.madt.entry", where, "length >= 2", str(length)))
            break
        if off + length > len(data):
            out.append(_err("acpi.madt.entry", where, f"length <= {len(data) - off}", str(length)))
            break
        if kind == MADT_GICC:
            gicc_flags = _u32(data[off : off + length], 12)
            if gicc_flags is None:
                out.append(_err("acpi.madt.entry", where, "GICC length >= 16", str(length)))
            elif gicc_flags & 1:
                enabled += 1
        elif kind == MADT_GICD:
            gicd += 1
        off += length
        index += 1
    if profile.vcpus is None:
        out.append(Finding("acpi.madt.gicc-count", Severity.INFO, f"{name} GICC", "(not checked)", str(enabled)))
    elif enabled != profile.vcpus:
        out.append(
            _err(
                "acpi.madt.gicc-count",
                f"{name} GICC",
                str(profile.vcpus),
                str(enabled),
                "enabled GICC entries",
            )
        )
    if gicd == 0:
        out.append(_err("acpi.madt.gicd", f"{name} GICD", "1", "0"))
    elif gicd > 1:
        out.append(Finding("acpi.madt.gicd", Severity.WARNING, f"{name} GICD", "1", str(gicd)))
    return out


def _check_gtdt(guest: Tables, headers: Mapping[str, TableHeader]) -> list[Finding]:
    found = _the_table(guest, headers, "GTDT", "acpi.gtdt", GTDT_MIN_LEN)
    if isinstance(found, Finding):
        return [found]
    name, data = found
    out: list[Finding] = []
    for field_name, off in (("non_secure_el1_gsiv", 56), ("virtual_timer_gsiv", 64)):
        gsiv = _u32(data, off) or 0
        if not any(lo <= gsiv <= hi for lo, hi in GTDT_PPI_RANGES):
            out.append(_err("acpi.gtdt.timer", f"{name} {field_name}", "a PPI (16-31 or 1056-1119)", str(gsiv)))
    return out


def _check_spcr(tables: Mapping[str, bytes], headers: Mapping[str, TableHeader]) -> list[Finding]:
    out: list[Finding] = []
    for name in _names_with(headers, "SPCR"):
        data = _body(tables[name], headers[name])
        if len(data) < SPCR_MIN_LEN:
            out.append(_err("acpi.spcr.short", f"{name} length", f">= {SPCR_MIN_LEN} bytes", f"{len(data)} bytes"))
            continue
        found = f"interface type {data[36]} at 0x{_u64(data, 44) or 0:x}"
        out.append(
            Finding(
                "acpi.spcr.uart",
                Severity.INFO,
                f"{name} base_address",
                "(reported)",
                found,
                "Xen keeps this UART and denies dom0 its MMIO page",
            )
        )
    return out


def _check_stao(guest: Tables, headers: Mapping[str, TableHeader], spcr_present: bool) -> list[Finding]:
    found = _the_table(guest, headers, "STAO", "acpi.stao", STAO_MIN_LEN, "present (Xen adds it for dom0)")
    if isinstance(found, Finding):
        return [found]
    name, data = found
    out: list[Finding] = []
    ignore_uart = data[36]
    if ignore_uart > 1:
        out.append(_err("acpi.stao.uart", f"{name} ignore_uart", "0 or 1", str(ignore_uart)))
    elif spcr_present and ignore_uart != 1:
        out.append(_err("acpi.stao.uart", f"{name} ignore_uart", "1", str(ignore_uart), "an SPCR describes Xen's UART"))
    names_blob = data[STAO_MIN_LEN:]
    if names_blob and (not names_blob.endswith(b"\0") or not names_blob.isascii()):
        out.append(
            Finding(
                "acpi.stao.names",
                Severity.WARNING,
                f"{name} name list",
                "NUL-terminated ASCII strings",
                repr(names_blob[:32]),
            )
        )
    return out


def _first_difference(a: bytes, b: bytes) -> tuple[int, int]:
    """(offset of the first differing byte, number of differing bytes incl. length difference)."""
    diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    extra = abs(len(a) - len(b))
    first = diffs[0] if diffs else min(len(a), len(b))
    return first, len(diffs) + extra


def _all_raw(t: Tables) -> dict[str, bytes]:
    raw = dict(t.tables)
    if t.rsdp is not None:
        raw["RSDP"] = t.rsdp
    return raw


def classify(guest: Tables, host: Tables) -> dict[str, str]:
    """Each table name -> 'identical', 'rewritten', 'new' (guest only) or 'missing' (host only)."""
    g, h = _all_raw(guest), _all_raw(host)
    result: dict[str, str] = {}
    for name in sorted(g.keys() | h.keys()):
        if name in g and name in h:
            result[name] = "identical" if g[name] == h[name] else "rewritten"
        else:
            result[name] = "new" if name in g else "missing"
    return result


def _compare_host(guest: Tables, host: Tables, profile: Profile) -> list[Finding]:
    out: list[Finding] = []
    g, h = _all_raw(guest), _all_raw(host)
    kinds = classify(guest, host)
    for name, kind in kinds.items():
        sig = signature_of(name)
        if kind == "rewritten" and sig not in profile.expect_rewritten:
            first, count = _first_difference(h[name], g[name])
            out.append(
                _err(
                    "acpi.passthrough.changed",
                    name,
                    "byte-identical to the host",
                    f"{count} bytes differ, first at 0x{first:x} (host {len(h[name])} bytes, guest {len(g[name])})",
                )
            )
        elif kind == "identical" and sig in profile.expect_rewritten:
            out.append(
                Finding(
                    "acpi.rewrite.identical",
                    Severity.INFO,
                    name,
                    "rewritten by Xen",
                    "byte-identical to the host",
                )
            )
        elif kind == "new" and sig not in profile.expect_new:
            out.append(
                _err(
                    "acpi.rewrite.unexpected",
                    name,
                    f"only these new tables: {', '.join(sorted(profile.expect_new)) or '-'}",
                    "a table the host does not have",
                )
            )
        elif kind == "missing" and sig not in CAPTURE_ONLY:
            if sig in profile.may_hide:
                out.append(Finding("acpi.host.hidden", Severity.INFO, name, "may be hidden", "absent in the guest"))
            else:
                out.append(_err("acpi.host.missing", name, "present, as in the host", "absent"))

    def group(kind: str) -> str:
        return ", ".join(n for n, k in kinds.items() if k == kind) or "-"

    out.append(
        Finding(
            "acpi.host.summary",
            Severity.INFO,
            "host vs guest",
            f"rewritten {', '.join(sorted(profile.expect_rewritten))}; new {', '.join(sorted(profile.expect_new))}",
            f"rewritten {group('rewritten')}; new {group('new')}; identical {group('identical')}; "
            f"missing {group('missing')}",
        )
    )
    return out


def validate_tables(guest: Tables, host: Tables | None = None, profile: Profile = DEFAULT_PROFILE) -> list[Finding]:
    """Every finding about the guest's tables (and, given the host's, what Xen changed), at most
    MAX_PER_RULE of each rule and then their count. Never raises."""
    return capped(_findings(guest, host, profile))


def _findings(guest: Tables, host: Tables | None, profile: Profile) -> list[Finding]:
    out: list[Finding] = []
    if guest.rsdp is None:
        out.append(_not_applied("RSDP", "acpi.rsdp"))
    else:
        out.extend(_check_rsdp(guest.rsdp))
    if "XSDT" not in guest.tables:
        out.append(_not_applied("XSDT", "acpi.xsdt", *XSDT_RULES))
    headers: dict[str, TableHeader] = {}
    for name in sorted(guest.tables):
        raw = guest.tables[name]
        try:
            headers[name] = parse_header(raw, name)
        except _Malformed as exc:
            out.append(exc.finding)
            continue
        out.extend(_check_header(name, raw, headers[name]))
    for sig in ("FACP", "APIC", "STAO"):
        dups = _names_with(guest.tables, sig)
        if len(dups) > 1:
            out.append(_err("acpi.duplicate", sig, "one table", ", ".join(dups)))
    spcr_present = bool(_names_with(guest.tables, "SPCR") or (host and _names_with(host.tables, "SPCR")))
    out.extend(_check_xsdt(guest, headers, host, profile))
    out.extend(_check_fadt(guest, headers, profile))
    out.extend(_check_madt(guest, headers, profile))
    out.extend(_check_gtdt(guest, headers))
    out.extend(_check_spcr(guest.tables, headers))
    out.extend(_check_stao(guest, headers, spcr_present))
    if host is not None:
        out.extend(_compare_host(guest, host, profile))
    return out
