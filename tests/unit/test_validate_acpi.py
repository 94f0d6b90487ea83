"""Unit tests for harness.validate.acpi, on tables built here with struct in the shape Xen 4.17
gives an ACPI dom0 on QEMU virt + edk2 (and the host tables it starts from).

The committed dump under tests/unit/data/acpi/ is this builder's output; regenerate it with
``python tests/unit/test_validate_acpi.py`` (a test checks it has not drifted).
"""

from __future__ import annotations

import contextlib
import signal
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import UnusableInput
from harness.findings import MAX_PER_RULE, Finding, Severity, failures
from harness.validate.acpi import (
    DEFAULT_PROFILE,
    KNOWN_DEFECTS,
    RULES,
    Profile,
    TableHeader,
    Tables,
    classify,
    parse_header,
    signature_of,
    validate_tables,
)
from harness.validate.acpi_input import check_path
from harness.validate.acpi_input import read as read_tables

DATA = Path(__file__).parent / "data" / "acpi"

# ---------------------------------------------------------------------------- builder


def checksummed(raw: bytes, at: int = 9) -> bytes:
    """Set the checksum byte so the whole table sums to 0 mod 256."""
    b = bytearray(raw)
    b[at] = 0
    b[at] = -sum(b) & 0xFF
    return bytes(b)


def table(sig: str, body: bytes, revision: int = 1, oem: bytes = b"BOCHS ", oem_table: bytes = b"BXPC    ") -> bytes:
    header = struct.pack("<4sIBB6s8sI4sI", sig.encode(), 36 + len(body), revision, 0, oem, oem_table, 1, b"BXPC", 1)
    return checksummed(header + body)


def patch(raw: bytes, off: int, fmt: str, value: int | bytes, fix: bool = True) -> bytes:
    """Overwrite one field; fix the table checksum unless told not to."""
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, value)
    return checksummed(bytes(b)) if fix else bytes(b)


def fadt(boot_flags: int, major: int = 6, minor: int = 3, flags: int = 1 << 20, hv: bytes = b"QEMU") -> bytes:
    b = bytearray(276)  # ACPI 6.x FADT length
    struct.pack_into("<I", b, 112, flags)
    struct.pack_into("<H", b, 129, boot_flags)
    b[131] = minor
    b[268:276] = hv.ljust(8, b"\0")
    return table("FACP", bytes(b[36:]), revision=major)


def gicc(uid: int, enabled: bool = True) -> bytes:
    entry = struct.pack("<BBHIII", 0x0B, 80, 0, uid, uid, 1 if enabled else 0)
    return entry + bytes(80 - len(entry))


GICD = struct.pack("<BBHIQIB3s", 0x0C, 24, 0, 0, 0x08000000, 0, 3, bytes(3))
GICR = struct.pack("<BBHQI", 0x0E, 16, 0, 0x080A0000, 0x00F60000)


def madt(cpus: int, with_gicd: bool = True, extra: bytes = b"") -> bytes:
    body = struct.pack("<II", 0, 0) + (GICD if with_gicd else b"")
    body += b"".join(gicc(i) for i in range(cpus)) + GICR + extra
    return table("APIC", body, revision=4)


def gtdt(ns_el1: int = 30, virt: int = 27) -> bytes:
    b = bytearray(104)  # ACPI 6.3 GTDT, revision 3
    struct.pack_into("<IIIIIIII", b, 48, 29, 0, ns_el1, 0, virt, 0, 26, 0)
    struct.pack_into("<QII", b, 80, 0xFFFFFFFFFFFFFFFF, 0, 0)
    struct.pack_into("<II", b, 96, 28, 0)
    return table("GTDT", bytes(b[36:]), revision=3)


def spcr() -> bytes:
    b = bytearray(80)
    b[36] = 3  # ARM PL011
    struct.pack_into("<BBBBQ", b, 40, 0, 32, 0, 3, 0x09000000)
    return table("SPCR", bytes(b[36:]), revision=2)


def stao(ignore_uart: int = 1, names: bytes = b"") -> bytes:
    # Xen copies the MADT header's OEM fields, sets revision 1 and length 37.
    return table("STAO", bytes([ignore_uart]) + names, revision=1)


def xsdt(addrs: list[int]) -> bytes:
    return table("XSDT", b"".join(struct.pack("<Q", a) for a in addrs))


def rsdp(xsdt_addr: int) -> bytes:
    b = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, b"BOCHS ", 2, 0, 36, xsdt_addr, 0, bytes(3)))
    b[8] = -sum(b[:20]) & 0xFF
    b[32] = -sum(b) & 0xFF
    return bytes(b)


def xen_rsdp(host_rsdp: bytes, xsdt_addr: int) -> bytes:
    """What Xen 4.17's acpi_create_rsdp does: new XSDT address, fix the 36-byte sum via `checksum`."""
    b = bytearray(host_rsdp)
    struct.pack_into("<Q", b, 24, xsdt_addr)
    b[8] = (b[8] - sum(b)) & 0xFF
    return bytes(b)


DSDT = table("DSDT", b"\x10\x0e\\_SB_" + bytes(30), revision=2)
HOST_ADDRS = {"FACP": 0x5C4F0000, "APIC": 0x5C4E0000, "GTDT": 0x5C4D0000, "SPCR": 0x5C4C0000}
GUEST_ADDRS = {"FACP": 0x38000000, "APIC": 0x38000118, "STAO": 0x380001F8}
HOST_XSDT_ADDR, GUEST_XSDT_ADDR = 0x5C4B0000, 0x38000220


def host_set() -> dict[str, bytes]:
    """Host tables from QEMU virt + edk2 (4 CPUs, PSCI over SMC since EL2 is on)."""
    return {
        "FACP": fadt(boot_flags=0x0001),
        "APIC": madt(cpus=4),
        "GTDT": gtdt(),
        "DSDT": DSDT,
        "SPCR": spcr(),
        "XSDT": xsdt(list(HOST_ADDRS.values())),
        "RSDP": rsdp(HOST_XSDT_ADDR),
    }


def guest_set() -> dict[str, bytes]:
    """What Xen 4.17 hands a 2-vCPU dom0 built from host_set()."""
    host = host_set()
    addrs = dict(HOST_ADDRS, FACP=GUEST_ADDRS["FACP"], APIC=GUEST_ADDRS["APIC"])
    return {
        "FACP": fadt(boot_flags=0x0003),
        "APIC": madt(cpus=2),
        "GTDT": host["GTDT"],
        "DSDT": host["DSDT"],
        "SPCR": host["SPCR"],
        "STAO": stao(),
        "XSDT": xsdt([*addrs.values(), GUEST_ADDRS["STAO"]]),
        "RSDP": xen_rsdp(host["RSDP"], GUEST_XSDT_ADDR),
    }


def as_tables(tables: dict[str, bytes]) -> Tables:
    rest = {k: v for k, v in tables.items() if k != "RSDP"}
    return Tables(tables=rest, rsdp=tables.get("RSDP"))


def write_dump(directory: Path, tables: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, raw in tables.items():
        (directory / name).write_bytes(raw)
    return directory


def run(
    guest: dict[str, bytes] | None = None,
    host: dict[str, bytes] | None | bool = True,
    profile: Profile = DEFAULT_PROFILE,
) -> list[Finding]:
    """Validate (default: the good guest against the good host) and check every rule is documented."""
    guest = guest_set() if guest is None else guest
    host_tables = as_tables(host_set() if host is True else host) if host else None
    findings = validate_tables(as_tables(guest), host_tables, profile)
    assert all(isinstance(f, Finding) and f.rule in RULES for f in findings), findings
    return findings


def only(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


def failing(findings: list[Finding], rule: str) -> Finding:
    """The one failing finding with this rule."""
    hits = [f for f in only(findings, rule) if f.fails]
    assert len(hits) == 1, findings
    return hits[0]


# ---------------------------------------------------------------------------- the good set


def test_builder_reproduces_xen_rsdp_defect() -> None:
    raw = guest_set()["RSDP"]
    assert sum(raw[:20]) & 0xFF != 0
    assert sum(raw) & 0xFF == 0
    host = host_set()["RSDP"]
    assert sum(host[:20]) & 0xFF == 0 and sum(host) & 0xFF == 0


def test_good_set_has_no_failures_and_one_known_defect() -> None:
    findings = run(profile=Profile(vcpus=2))
    assert failures(findings) == []
    known = [f for f in findings if f.severity is Severity.KNOWN]
    assert len(known) == 1
    (k,) = known
    assert k.rule == "acpi.rsdp.checksum.v1"
    assert k.where == "RSDP checksum (bytes 0-19)"
    assert k.expected == "0x00"
    assert k.found == f"0x{sum(guest_set()['RSDP'][:20]) & 0xFF:02x}" and k.found != "0x00"
    assert "acpi_create_rsdp" in k.note and k.note == KNOWN_DEFECTS["acpi.rsdp.checksum.v1"]
    assert not k.fails


def test_good_set_without_host_has_no_failures() -> None:
    findings = run(host=None)
    assert failures(findings) == []
    assert [f.rule for f in findings if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]
    assert not only(findings, "acpi.host.summary")


def test_good_set_reports_the_unchecked_values_as_info() -> None:
    findings = run()
    (hv,) = only(findings, "acpi.fadt.hypervisor-id")
    assert hv.severity is Severity.INFO and hv.found == "'QEMU'" and hv.expected == "(not checked)"
    (cpus,) = only(findings, "acpi.madt.gicc-count")
    assert cpus.severity is Severity.INFO and cpus.found == "2"
    (uart,) = only(findings, "acpi.spcr.uart")
    assert uart.found == "interface type 3 at 0x9000000"


def test_host_summary_names_rewritten_new_and_passed_through() -> None:
    (summary,) = only(run(), "acpi.host.summary")
    assert summary.severity is Severity.INFO
    assert summary.found == ("rewritten APIC, FACP, RSDP, XSDT; new STAO; identical DSDT, GTDT, SPCR; missing -")
    assert classify(as_tables(guest_set()), as_tables(host_set()))["GTDT"] == "identical"


def test_check_path_on_dumped_directories(tmp_path: Path) -> None:
    guest = write_dump(tmp_path / "guest", guest_set())
    host = write_dump(tmp_path / "host", host_set())
    findings = check_path(guest, host, vcpus=2)
    assert failures(findings) == []
    assert [f.rule for f in findings if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]
    bad = check_path(guest, host, vcpus=3, hypervisor_id="XenVMM")
    assert {f.rule for f in failures(bad)} == {"acpi.madt.gicc-count", "acpi.fadt.hypervisor-id"}


def test_committed_fixture_dump_matches_builder() -> None:
    for kind, tables in (("dom0", guest_set()), ("host", host_set())):
        loaded = read_tables(DATA / kind)
        assert loaded == as_tables(tables), f"regenerate {DATA / kind}: python {__file__}"
    assert failures(check_path(DATA / "dom0", DATA / "host", vcpus=2)) == []


# ---------------------------------------------------------------------------- headers


def test_parse_header_fields() -> None:
    h = parse_header(guest_set()["STAO"], "STAO")
    assert h == TableHeader("STAO", 37, 1, h.checksum, "BOCHS", "BXPC", 1, "BXPC", 1)


def test_parse_header_short_raises_a_private_error_not_unusable_input() -> None:
    with pytest.raises(Exception) as caught:
        parse_header(b"GTDT" + bytes(10), "GTDT")
    assert not isinstance(caught.value, UnusableInput)
    assert caught.value.finding.rule == "acpi.header.short"  # type: ignore[attr-defined]


def test_bad_checksum() -> None:
    guest = guest_set()
    guest["GTDT"] = patch(guest["GTDT"], 60, "<I", 4, fix=False)  # flags byte changed, checksum not
    f = failing(run(guest), "acpi.checksum")
    assert f.where == "GTDT checksum" and f.expected == "0x00" and f.found == "0x04"
    assert not only(run(), "acpi.checksum")


def test_short_header() -> None:
    guest = guest_set()
    guest["GTDT"] = guest["GTDT"][:20]
    f = failing(run(guest), "acpi.header.short")
    assert (f.where, f.expected, f.found) == ("GTDT header", ">= 36 bytes", "20 bytes")


def test_length_past_end_of_file() -> None:
    guest = guest_set()
    guest["GTDT"] = patch(guest["GTDT"], 4, "<I", 4096)
    findings = run(guest)
    f = failing(findings, "acpi.length")
    assert (f.where, f.expected, f.found) == ("GTDT length", "<= 104 (file size)", "4096")
    assert not only(findings, "acpi.checksum")  # not summed past the end


def test_length_below_header_size() -> None:
    guest = guest_set()
    guest["SPCR"] = patch(guest["SPCR"], 4, "<I", 12)
    f = failing(run(guest), "acpi.length")
    assert (f.expected, f.found) == (">= 36", "12")


def test_trailing_bytes_warn() -> None:
    guest = guest_set()
    guest["DSDT"] = guest["DSDT"] + b"\xaa\x56"  # still sums to 0 overall, but not part of the table
    f = failing(run(guest), "acpi.length")
    assert f.severity is Severity.WARNING
    assert (f.expected, f.found) == (f"{len(guest['DSDT'])} (file size)", str(len(guest["DSDT"]) - 2))


def test_header_signature_differs_from_file_name() -> None:
    guest = guest_set()
    guest["GTDT"] = patch(guest["GTDT"], 0, "4s", b"GTDX")
    f = failing(run(guest), "acpi.header.signature")
    assert (f.expected, f.found) == ("'GTDT'", "'GTDX'")


def test_sysfs_instance_names_map_to_signatures() -> None:
    assert [signature_of(n) for n in ("SSDT1", "SSDT12", "DBG2", "DBG21", "FACP")] == [
        "SSDT",
        "SSDT",
        "DBG2",
        "DBG2",
        "FACP",
    ]


def test_duplicate_fadt() -> None:
    guest = guest_set()
    guest["FACP1"], guest["FACP2"] = guest.pop("FACP"), fadt(boot_flags=3)
    f = failing(run(guest), "acpi.duplicate")
    assert (f.where, f.found) == ("FACP", "FACP1, FACP2")


# ---------------------------------------------------------------------------- RSDP


def test_rsdp_signature() -> None:
    guest = guest_set()
    guest["RSDP"] = b"RSD PTX" + guest["RSDP"][7:]
    f = failing(run(guest), "acpi.rsdp.signature")
    assert (f.expected, f.found) == ("'RSD PTR '", "'RSD PTX '")


def test_rsdp_both_checksums_wrong_is_an_error_not_known() -> None:
    guest = guest_set()
    raw = bytearray(guest["RSDP"])
    raw[32] = (raw[32] + 1) & 0xFF  # break the extended checksum too
    guest["RSDP"] = bytes(raw)
    findings = run(guest)
    v1 = failing(findings, "acpi.rsdp.checksum.v1")
    ext = failing(findings, "acpi.rsdp.checksum.ext")
    assert v1.severity is Severity.ERROR and v1.found != "0x00"
    assert (ext.where, ext.expected, ext.found) == ("RSDP extended checksum (bytes 0-35)", "0x00", "0x01")
    assert not [f for f in findings if f.severity is Severity.KNOWN]


def test_rsdp_only_extended_checksum_wrong() -> None:
    guest = guest_set()
    guest["RSDP"] = rsdp(GUEST_XSDT_ADDR)[:32] + b"\x07" + bytes(3)  # v1 right, ext wrong
    findings = run(guest)
    assert failing(findings, "acpi.rsdp.checksum.ext").found != "0x00"
    assert not only(findings, "acpi.rsdp.checksum.v1")


def test_correct_rsdp_gives_no_known_finding() -> None:
    guest = guest_set()
    guest["RSDP"] = rsdp(GUEST_XSDT_ADDR)
    findings = run(guest)
    assert failures(findings) == []
    assert not [f for f in findings if f.severity is Severity.KNOWN]


def test_rsdp_revision_and_length_and_zero_xsdt() -> None:
    guest = guest_set()
    v1_only = bytearray(rsdp(GUEST_XSDT_ADDR)[:20])
    v1_only[15] = 0
    v1_only[8] = 0
    v1_only[8] = -sum(v1_only) & 0xFF
    guest["RSDP"] = bytes(v1_only)
    f = failing(run(guest), "acpi.rsdp.revision")
    assert (f.expected, f.found) == (">= 2", "0")

    guest["RSDP"] = patch(rsdp(GUEST_XSDT_ADDR), 20, "<I", 200, fix=False)
    f = failing(run(guest), "acpi.rsdp.length")
    assert (f.expected, f.found) == ("<= 36 (capture size)", "200")

    guest["RSDP"] = rsdp(0)
    f = failing(run(guest), "acpi.rsdp.xsdt")
    assert f.found == "0x0000000000000000"

    guest["RSDP"] = b"RSD PTR "
    f = failing(run(guest), "acpi.rsdp.short")
    assert (f.expected, f.found) == (">= 20 bytes", "8 bytes")


def test_missing_rsdp_and_xsdt_are_reported_not_failed() -> None:
    guest = guest_set()
    del guest["RSDP"], guest["XSDT"]
    findings = run(guest)
    assert failures(findings) == []
    assert sorted(f.where for f in only(findings, "acpi.not-applied")) == ["RSDP", "XSDT"]


# ---------------------------------------------------------------------------- XSDT


def test_xsdt_count_against_the_dump() -> None:
    guest = guest_set()
    del guest["SPCR"]  # XSDT still lists 5 tables, the dump now has 4 it could list
    f = failing(run(guest, host=None), "acpi.xsdt.count")
    assert (f.expected, f.found) == ("4 (APIC, FACP, GTDT, STAO)", "5")


def test_xsdt_zero_and_duplicate_entries() -> None:
    guest = guest_set()
    guest["XSDT"] = xsdt([GUEST_ADDRS["FACP"], 0, HOST_ADDRS["GTDT"], HOST_ADDRS["GTDT"], GUEST_ADDRS["STAO"]])
    hits = only(run(guest), "acpi.xsdt.entry")
    assert [(f.where, f.found) for f in hits] == [
        ("XSDT entry[1]", "0x0000000000000000"),
        ("XSDT entry[3]", "0x000000005c4d0000 (also entry[2])"),
    ]


def test_xsdt_partial_entry() -> None:
    guest = guest_set()
    guest["XSDT"] = checksummed(patch(guest["XSDT"] + bytes(4), 4, "<I", len(guest["XSDT"]) + 4))
    f = failing(run(guest), "acpi.xsdt.length")
    assert f.found == str(len(guest["XSDT"]))


def test_stao_not_appended_to_xsdt_against_host() -> None:
    guest = guest_set()
    guest["XSDT"] = xsdt([GUEST_ADDRS["FACP"], GUEST_ADDRS["APIC"], HOST_ADDRS["GTDT"], HOST_ADDRS["SPCR"]])
    f = failing(run(guest), "acpi.stao.xsdt")
    assert (f.expected, f.found) == ("5 (host 4 + 1 new: STAO)", "4")
    guest["XSDT"] = xsdt(
        [GUEST_ADDRS["FACP"], GUEST_ADDRS["APIC"], HOST_ADDRS["GTDT"], HOST_ADDRS["SPCR"], HOST_ADDRS["GTDT"]]
    )
    f = failing(run(guest), "acpi.stao.xsdt")
    assert (f.where, f.found) == ("XSDT entry[4:]", "0x000000005c4d0000")


# ---------------------------------------------------------------------------- FADT


@pytest.mark.parametrize(("major", "minor", "fails"), [(5, 0, True), (4, 9, True), (5, 1, False), (6, 0, False)])
def test_fadt_revision(major: int, minor: int, fails: bool) -> None:
    guest = guest_set()
    guest["FACP"] = fadt(boot_flags=3, major=major, minor=minor)
    hits = only(run(guest), "acpi.fadt.revision")
    if fails:
        (f,) = hits
        assert f.fails and (f.expected, f.found) == (">= 5.1", f"{major}.{minor}")
    else:
        assert hits == []


def test_fadt_hw_reduced_clear() -> None:
    guest = guest_set()
    guest["FACP"] = fadt(boot_flags=3, flags=0)
    f = failing(run(guest), "acpi.fadt.hw-reduced")
    assert (f.where, f.expected, f.found) == ("FACP flags", "bit 20 (HW_REDUCED_ACPI) set", "0x00000000")


@pytest.mark.parametrize(
    ("boot_flags", "failing_rules"),
    [
        (0x0001, {"acpi.fadt.psci-hvc"}),
        (0x0002, {"acpi.fadt.psci"}),
        (0x0000, {"acpi.fadt.psci", "acpi.fadt.psci-hvc"}),
        (0x0003, set()),
    ],
)
def test_fadt_psci_flags(boot_flags: int, failing_rules: set[str]) -> None:
    guest = guest_set()
    guest["FACP"] = fadt(boot_flags=boot_flags)
    hits = [f for f in run(guest) if f.rule.startswith("acpi.fadt.psci")]
    assert {f.rule for f in hits} == failing_rules
    for f in hits:
        assert f.fails and f.where == "FACP arm_boot_flags" and f.found == f"0x{boot_flags:04x}"


def test_fadt_host_flags_fail_as_a_dom0_table() -> None:
    f = failing(run(host_set(), host=None), "acpi.fadt.psci-hvc")  # the host FADT, PSCI over SMC
    assert f.found == "0x0001"


def test_hypervisor_id_mismatch_only_when_profile_asks() -> None:
    assert failures(only(run(), "acpi.fadt.hypervisor-id")) == []
    f = failing(run(profile=Profile(hypervisor_id="XenVMM")), "acpi.fadt.hypervisor-id")
    assert (f.where, f.expected, f.found) == ("FACP hypervisor_vendor_identity", "'XenVMM'", "'QEMU'")
    assert only(run(profile=Profile(hypervisor_id="QEMU")), "acpi.fadt.hypervisor-id") == []


def test_hypervisor_id_absent_in_an_acpi_5_1_fadt() -> None:
    guest = guest_set()
    guest["FACP"] = table("FACP", fadt(boot_flags=3, major=5, minor=1)[36:268], revision=5)
    (info,) = only(run(guest), "acpi.fadt.hypervisor-id")
    assert info.severity is Severity.INFO and info.found == "absent (FADT is 268 bytes, needs 276)"
    f = failing(run(guest, profile=Profile(hypervisor_id="XenVMM")), "acpi.fadt.hypervisor-id")
    assert f.found.startswith("absent")


def test_fadt_missing_and_short() -> None:
    guest = guest_set()
    del guest["FACP"]
    assert failing(run(guest), "acpi.fadt.missing").found == "absent"
    guest["FACP"] = table("FACP", bytes(60), revision=6)
    f = failing(run(guest), "acpi.fadt.short")
    assert (f.expected, f.found) == (">= 132 bytes", "96 bytes")


# ---------------------------------------------------------------------------- STAO


def test_stao_missing() -> None:
    guest = guest_set()
    del guest["STAO"]
    f = failing(run(guest), "acpi.stao.missing")
    assert (f.where, f.found) == ("STAO", "absent")


def test_stao_ignore_uart_zero_with_spcr() -> None:
    guest = guest_set()
    guest["STAO"] = stao(ignore_uart=0)
    f = failing(run(guest), "acpi.stao.uart")
    assert (f.where, f.expected, f.found) == ("STAO ignore_uart", "1", "0")


def test_stao_ignore_uart_zero_without_any_spcr_passes() -> None:
    guest, host = guest_set(), host_set()
    guest["STAO"] = stao(ignore_uart=0)
    del guest["SPCR"], host["SPCR"]
    guest["XSDT"] = xsdt([GUEST_ADDRS["FACP"], GUEST_ADDRS["APIC"], HOST_ADDRS["GTDT"], GUEST_ADDRS["STAO"]])
    host["XSDT"] = xsdt([HOST_ADDRS["FACP"], HOST_ADDRS["APIC"], HOST_ADDRS["GTDT"]])
    findings = run(guest, host)
    assert only(findings, "acpi.stao.uart") == []
    assert failures(findings) == []


def test_stao_spcr_in_host_only_still_requires_ignore_uart() -> None:
    guest = guest_set()
    guest["STAO"] = stao(ignore_uart=0)
    del guest["SPCR"]
    assert failing(run(guest), "acpi.stao.uart").found == "0"


def test_stao_short_bad_boolean_and_names() -> None:
    guest = guest_set()
    guest["STAO"] = table("STAO", b"")
    assert failing(run(guest), "acpi.stao.short").found == "36 bytes"
    guest["STAO"] = stao(ignore_uart=7)
    f = failing(run(guest), "acpi.stao.uart")
    assert (f.expected, f.found) == ("0 or 1", "7")
    guest["STAO"] = stao(names=b"\\_SB.COM0")  # no NUL terminator
    f = failing(run(guest), "acpi.stao.names")
    assert f.severity is Severity.WARNING and f.found == repr(b"\\_SB.COM0")
    guest["STAO"] = stao(names=b"\\_SB.COM0\0")
    assert only(run(guest, host=None), "acpi.stao.names") == []


# ---------------------------------------------------------------------------- MADT


def test_gicc_count_differs_from_vcpus() -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=1)
    f = failing(run(guest, profile=Profile(vcpus=2)), "acpi.madt.gicc-count")
    assert (f.where, f.expected, f.found) == ("APIC GICC", "2", "1")
    assert failures(run(profile=Profile(vcpus=2))) == []


def test_disabled_gicc_is_not_counted() -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=2, extra=gicc(2, enabled=False))
    assert failures(only(run(guest, profile=Profile(vcpus=2)), "acpi.madt.gicc-count")) == []
    assert failing(run(guest, profile=Profile(vcpus=3)), "acpi.madt.gicc-count").found == "2"


def test_no_gicd() -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=2, with_gicd=False)
    f = failing(run(guest), "acpi.madt.gicd")
    assert (f.expected, f.found) == ("1", "0")


def test_two_gicds_warn() -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=2, extra=GICD)
    f = failing(run(guest), "acpi.madt.gicd")
    assert f.severity is Severity.WARNING and f.found == "2"


@pytest.mark.parametrize(
    ("extra", "expected", "found"),
    [
        (b"\x0b\x00", "length >= 2", "0"),
        (b"\x0b\x50\x00", "length <= 3", "80"),
        (b"\x0b", "2-byte type/length", "1 byte"),
    ],
)
def test_malformed_madt_entries(extra: bytes, expected: str, found: str) -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=2, extra=extra)
    f = failing(run(guest), "acpi.madt.entry")
    assert (f.expected, f.found) == (expected, found)


def test_gicc_too_short_for_flags() -> None:
    guest = guest_set()
    guest["APIC"] = madt(cpus=2, extra=b"\x0b\x08" + bytes(6))
    assert failing(run(guest), "acpi.madt.entry").expected == "GICC length >= 16"


def test_madt_missing_and_short() -> None:
    guest = guest_set()
    guest["APIC"] = table("APIC", b"\0\0\0")
    assert failing(run(guest), "acpi.madt.short").found == "39 bytes"
    del guest["APIC"]
    assert failing(run(guest), "acpi.madt.missing").found == "absent"


# ---------------------------------------------------------------------------- GTDT, SPCR


def test_gtdt_timer_not_a_ppi() -> None:
    guest, host = guest_set(), host_set()
    guest["GTDT"] = host["GTDT"] = gtdt(virt=40)
    f = failing(run(guest, host), "acpi.gtdt.timer")
    assert (f.where, f.expected, f.found) == ("GTDT virtual_timer_gsiv", "a PPI (16-31 or 1056-1119)", "40")


def test_gtdt_missing_and_short() -> None:
    guest = guest_set()
    guest["GTDT"] = table("GTDT", bytes(8))
    assert failing(run(guest, host=None), "acpi.gtdt.short").found == "44 bytes"
    del guest["GTDT"]
    assert failing(run(guest, host=None), "acpi.gtdt.missing").found == "absent"


def test_spcr_short() -> None:
    guest = guest_set()
    guest["SPCR"] = table("SPCR", bytes(4))
    assert failing(run(guest, host=None), "acpi.spcr.short").found == "40 bytes"


# ---------------------------------------------------------------------------- against the host


def test_gtdt_changed_vs_host() -> None:
    guest = guest_set()
    guest["GTDT"] = gtdt(ns_el1=31)
    f = failing(run(guest), "acpi.passthrough.changed")
    assert f.where == "GTDT" and f.expected == "byte-identical to the host"
    assert f.found == "2 bytes differ, first at 0x9 (host 104 bytes, guest 104)"  # checksum + GSIV


def test_unexpected_rewrite_when_profile_does_not_expect_it() -> None:
    profile = Profile(expect_rewritten=frozenset({"FACP", "XSDT", "RSDP"}))
    f = failing(run(profile=profile), "acpi.passthrough.changed")
    assert f.where == "APIC" and f.found.endswith("(host 404 bytes, guest 244)")


def test_unexpected_new_table() -> None:
    guest = guest_set()
    guest["XMAR"] = table("XMAR", bytes(8))
    f = failing(run(guest), "acpi.rewrite.unexpected")
    assert (f.where, f.expected, f.found) == (
        "XMAR",
        "only these new tables: STAO",
        "a table the host does not have",
    )


def test_expected_rewrite_identical_is_info() -> None:
    guest, host = guest_set(), host_set()
    host["FACP"] = guest["FACP"]
    findings = run(guest, host)
    (f,) = only(findings, "acpi.rewrite.identical")
    assert f.severity is Severity.INFO and f.where == "FACP" and f.found == "byte-identical to the host"
    assert failures(findings) == []


def test_host_table_missing_from_guest() -> None:
    host = host_set()
    host["MCFG"] = table("MCFG", bytes(8 + 16))
    f = failing(run(host=host), "acpi.host.missing")
    assert (f.where, f.expected, f.found) == ("MCFG", "present, as in the host", "absent")
    hidden = run(host=host, profile=Profile(may_hide=frozenset({"MCFG"})))
    assert only(hidden, "acpi.host.missing") == [] and only(hidden, "acpi.host.hidden")[0].where == "MCFG"


def test_capture_only_tables_missing_from_guest_are_not_a_host_finding() -> None:
    guest = guest_set()
    del guest["XSDT"], guest["RSDP"]
    assert only(run(guest), "acpi.host.missing") == []


# ---------------------------------------------------------------------------- read_tables


def test_read_tables_layout(tmp_path: Path) -> None:
    d = write_dump(tmp_path, guest_set())
    (d / "SSDT1").write_bytes(table("SSDT", bytes(4)))
    (d / "SSDT2").write_bytes(table("SSDT", bytes(5)))
    (d / "data").mkdir()  # sysfs has data/ and dynamic/ sub-directories
    (d / "dynamic").mkdir()
    (d / "XSDT.addrs").write_text("junk")
    (d / "notes.txt").write_text("junk")
    loaded = read_tables(d)
    assert loaded.rsdp == guest_set()["RSDP"]
    assert sorted(loaded.tables) == ["APIC", "DSDT", "FACP", "GTDT", "SPCR", "SSDT1", "SSDT2", "STAO", "XSDT"]
    f = failing(validate_tables(loaded), "acpi.xsdt.count")  # SSDTs are listed in a real XSDT
    assert f.found == "5" and f.expected.startswith("7 (")


def test_read_tables_unusable(tmp_path: Path) -> None:
    with pytest.raises(UnusableInput, match="nope does not exist"):
        read_tables(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UnusableInput, match="file is empty: give a copy of /sys/firmware/acpi/tables, acpixtract"):
        read_tables(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no tables here")
    with pytest.raises(UnusableInput, match="no ACPI tables"):
        read_tables(empty)
    with pytest.raises(UnusableInput):
        check_path(write_dump(tmp_path / "g", guest_set()), tmp_path / "missing-host")


# ---------------------------------------------------------------------------- bounded work


def test_a_huge_xsdt_gives_bounded_findings_in_linear_work() -> None:
    # a host XSDT of 40,000 entries and a guest one of 80,000 (640 KB, under a table's limit) that appends
    # 20,000 zero entries and 20,000 new addresses: each appended entry was looked up in the host's list
    host = host_set()
    host_addrs = [*HOST_ADDRS.values(), *range(0x70000000, 0x70000000 + 8 * 39_996, 8)]
    host["XSDT"] = xsdt(host_addrs)
    guest = guest_set()
    guest["XSDT"] = xsdt([*host_addrs, *[0] * 20_000, *range(0x90000000, 0x90000000 + 8 * 20_000, 8)])
    findings = run(guest, host)
    zero = only(findings, "acpi.xsdt.entry")
    assert [f.where for f in zero] == [f"XSDT entry[{i}]" for i in range(40_000, 40_000 + MAX_PER_RULE)] + [
        f"XSDT entry[{40_000 + MAX_PER_RULE}] ... XSDT entry[59999]"]
    assert zero[-1].found == f"{20_000 - MAX_PER_RULE} more like them, not listed" and zero[-1].fails
    count = failing(findings, "acpi.stao.xsdt")
    assert (count.expected, count.found) == ("40001 (host 40000 + 1 new: STAO)", "80000")
    assert len(findings) < 40


# ---------------------------------------------------------------------------- rule tables


def test_rule_tables_are_consistent() -> None:
    assert set(KNOWN_DEFECTS) <= set(RULES)
    assert all(rule.startswith("acpi.") and text for rule, text in RULES.items())


# ---------------------------------------------------------------------------- property test

_JUNK_NAMES = ["FACP2", "SSDT9", "ZZZZ", "RSDP", "XSDT", "data", "notes.txt", "XSDT.addrs", "1234"]
_HUGE = [0, 1, 20, 35, 36, 37, 0x7FFFFFFF, 0xFFFFFFFF]
_MADT_HEADS = [44, 45, 68, 69, 148, 149, 228, 229]
_SMALL = [0, 1, 2, 3, 11, 12, 15, 16, 0x0B, 0x0C, 0xFF]

_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10), st.integers(0, 300)),
    st.tuples(st.just("flip"), st.integers(0, 10), st.integers(0, 300), st.integers(0, 255)),
    st.tuples(st.just("length"), st.integers(0, 10), st.sampled_from(_HUGE) | st.integers(0, 2**32 - 1)),
    st.tuples(st.just("delete"), st.integers(0, 10)),
    st.tuples(st.just("set32"), st.integers(0, 10), st.integers(0, 300), st.sampled_from(_HUGE)),
    # MADT subtable type/length bytes of the good APIC (GICD, GICC0, GICC1, GICR): loop and bounds bait
    st.tuples(st.just("madt"), st.sampled_from(_MADT_HEADS), st.sampled_from(_SMALL)),
    st.tuples(st.just("junk"), st.sampled_from(_JUNK_NAMES), st.binary(max_size=120)),
    st.tuples(st.just("dir"), st.sampled_from(["data", "dynamic", "SSDT3", "GTDT"])),
)


def _mutate(tables: dict[str, bytes], ops: list[tuple], dirs: set[str]) -> None:
    for op in ops:
        names = sorted(tables)
        kind = op[0]
        if kind == "junk":
            tables[op[1]] = op[2]
            dirs.discard(op[1])
        elif kind == "dir":
            tables.pop(op[1], None)
            dirs.add(op[1])
        elif names:
            name = names[op[1] % len(names)]
            raw = bytearray(tables[name])
            if kind == "truncate":
                tables[name] = bytes(raw[: op[2]])
            elif kind == "flip" and raw:
                raw[op[2] % len(raw)] = op[3]
                tables[name] = bytes(raw)
            elif kind == "length" and len(raw) >= 24:
                struct.pack_into("<I", raw, 20 if name == "RSDP" else 4, op[2])
                tables[name] = bytes(raw)
            elif kind == "delete":
                del tables[name]
            elif kind == "set32" and len(raw) >= 4:
                struct.pack_into("<I", raw, op[2] % (len(raw) - 3), op[3])
                tables[name] = bytes(raw)
        if kind == "madt" and "APIC" in tables and op[1] < len(tables["APIC"]):
            raw = bytearray(tables["APIC"])
            raw[op[1]] = op[2]
            tables["APIC"] = bytes(raw)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the run) when the body takes longer than `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise _Hang(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    guest_ops=st.lists(_mutation, max_size=6),
    host_ops=st.lists(_mutation, max_size=3),
    with_host=st.booleans(),
    vcpus=st.none() | st.integers(0, 8),
)
def test_mutated_dumps_only_ever_raise_unusable_input(
    guest_ops: list[tuple], host_ops: list[tuple], with_host: bool, vcpus: int | None
) -> None:
    guest, host = guest_set(), host_set()
    guest_dirs: set[str] = set()
    host_dirs: set[str] = set()
    _mutate(guest, guest_ops, guest_dirs)
    _mutate(host, host_ops, host_dirs)
    with _time_limit(5):  # a hostile length must never make a walk loop
        # In memory: validate_tables never raises at all.
        findings = validate_tables(as_tables(guest), as_tables(host) if with_host else None, Profile(vcpus=vcpus))
    assert all(f.rule in RULES for f in findings)
    with tempfile.TemporaryDirectory() as tmp, _time_limit(5):
        g, h = write_dump(Path(tmp) / "g", guest), write_dump(Path(tmp) / "h", host)
        for root, dirs in ((g, guest_dirs), (h, host_dirs)):
            for d in dirs:
                (root / d).mkdir()
        try:
            on_disk = check_path(g, h if with_host else None, vcpus=vcpus)
        except UnusableInput as exc:
            assert str(exc)
        else:
            assert all(isinstance(f, Finding) and f.rule in RULES for f in on_disk)


def _write_fixtures() -> None:
    for kind, tables in (("dom0", guest_set()), ("host", host_set())):
        write_dump(DATA / kind, tables)
    print(f"wrote {DATA}", file=sys.stderr)


if __name__ == "__main__":
    _write_fixtures()
