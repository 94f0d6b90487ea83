"""The validators and the ACPI capture on tables and trees captured from the project's own
qemu-virt-acpi boot (Xen 4.17 built with CONFIG_ACPI, dom0 on ACPI, QEMU 7.2 + edk2)."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import tarfile

import pytest
from captured import DATA

from harness import acpidump
from harness.findings import Severity, failures
from harness.validate import acpi, acpi_input, dt

CAPTURED = DATA / "acpi" / "captured-xen417"


@pytest.fixture(scope="module")
def guest() -> acpi.Tables:
    return acpi_input.read(CAPTURED / "dom0")


@pytest.fixture(scope="module")
def host() -> acpi.Tables:
    return acpi_input.read(CAPTURED / "host")


def test_real_dom0_tables_pass_with_xens_known_rsdp_defect(guest, host):
    findings = acpi.validate_tables(guest, host, acpi.Profile(vcpus=2))
    assert failures(findings) == []
    assert [f.rule for f in findings if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]
    summary = next(f for f in findings if f.rule == "acpi.host.summary")
    assert summary.found.startswith("rewritten APIC, FACP, RSDP, XSDT; new STAO")


def test_real_tables_wrong_vcpu_count(guest, host):
    finding = next(f for f in failures(acpi.validate_tables(guest, host, acpi.Profile(vcpus=1)))
                   if f.rule == "acpi.madt.gicc-count")
    assert (finding.expected, finding.found) == ("1", "2")


def test_real_tables_a_passed_through_table_that_changed(guest, host):
    gtdt = bytearray(guest.tables["GTDT"])
    gtdt[40] ^= 1
    changed = acpi.Tables({**guest.tables, "GTDT": bytes(gtdt)}, guest.rsdp)
    rules = {f.rule for f in failures(acpi.validate_tables(changed, host, acpi.Profile(vcpus=2)))}
    assert {"acpi.checksum", "acpi.passthrough.changed"} <= rules


def test_real_acpi_dom0_tree():
    tree = (DATA / "acpi-dom0.dtb").read_bytes()
    assert failures(dt.validate_dtb(tree, "acpi-dom0", dt.Expectation(xen_version="4.17"))) == []
    # read as a DT dom0's tree it lacks what the guest would need to find Xen
    rules = {f.rule for f in failures(dt.validate_dtb(tree, "dom0"))}
    assert {"dt.reg.missing", "dt.irq.missing"} <= rules


def kcore_header(segments: list[tuple[int, int, int]]) -> bytes:
    """An ELF64 header with PT_LOAD program headers (offset, paddr, size), like /proc/kcore's."""
    phoff, phentsize = 64, 56
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, len(segments) + 1)
    header += struct.pack("<IIQQQQQQ", 4, 0, 0x270, 0, 0, 0, 0, 0)  # PT_NOTE first, as Linux does
    for offset, paddr, size in segments:
        header += struct.pack("<IIQQQQQQ", 1, 7, offset, 0xFFFF000000000000 | paddr, paddr, size, size, 0x1000)
    return bytes(header)


def test_kcore_offsets_as_measured_in_an_acpi_dom0():
    # program headers read from dom0's /proc/kcore in the qemu-virt-acpi boot
    header = kcore_header([(0x20003000, 0x60000000, 0x20000000), (0x7C2F4000, 0xBC2F1000, 0x1000),
                           (0x800008003000, 2**64 - 1, 0x1000)])
    assert acpidump.kcore_offset(header, 0xBC2F12A8, 0x24) == 0x7C2F42A8
    assert acpidump.kcore_offset(header, 0x60000010, 8) == 0x20003010
    assert acpidump.kcore_offset(header, 0xBC2F1FF0, 0x20) is None  # runs past the segment
    assert acpidump.kcore_offset(header, 0x1000, 8) is None
    assert acpidump.kcore_offset(b"not an ELF", 0, 1) is None
    assert acpidump.kcore_offset(header[:100], 0xBC2F12A8, 0x24) is None  # truncated program headers


def test_a_first_kcore_page_cut_through_its_program_headers_is_seen():
    """read_physical reads kcore's first page, and its first 64 KiB only when the page cuts the program headers."""
    few = kcore_header([(0x20003000, 0x60000000, 0x20000000)])
    many = kcore_header([(0x1000 * i, 0x60000000 + 0x100000 * i, 0x1000) for i in range(80)])  # 81 * 56 > 4 KiB
    assert not acpidump._headers_cut(few[:4096])
    assert acpidump._headers_cut(many[:4096]) and not acpidump._headers_cut(many)
    assert acpidump.kcore_offset(many[:4096], 0x60000000 + 0x100000 * 79, 8) is None
    assert acpidump.kcore_offset(many, 0x60000000 + 0x100000 * 79, 8) == 0x1000 * 79


def test_pointers_from_the_real_kernel_log():
    log = (CAPTURED.parent.parent / "logs" / "qemu-virt-dom0-dmesg.txt").read_text().splitlines()
    assert acpidump.pointers(log) == {}  # a DT dom0 has none
    acpi_log = ["[    0.000000] ACPI: RSDP 0x00000000BC2F12A8 000024 (v02 BOCHS )",
                "[    0.000000] ACPI: XSDT 0x00000000BC2F1238 00006C (v01 BOCHS  BXPC     00000001      01000013)"]
    assert acpidump.pointers(acpi_log) == {"RSDP": (0xBC2F12A8, 0x24), "XSDT": (0xBC2F1238, 0x6C)}


def test_unpack_keeps_only_table_files(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("./FACP", b"f" * 8), ("./SSDT1", b"s"), ("./notes.txt", b"n"), ("./data/BERT", b"b")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert acpidump.unpack(buffer.getvalue(), tmp_path) == ["FACP", "SSDT1"]
    assert (tmp_path / "FACP").read_bytes() == b"f" * 8


# An independent reader: ACPICA's disassembler (Debian's acpica-tools) decodes the same bytes. Where
# the validator says a field is wrong, iasl must read the same wrong value from the same table.
def iasl(raw: bytes, name: str, tmp_path) -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    subprocess.run(["iasl", "-d", str(path)], capture_output=True, check=True, timeout=60)
    return path.with_suffix(".dsl").read_text()


def rechecksummed(raw: bytes, offset: int, value: bytes) -> bytes:
    data = bytearray(raw)
    data[offset : offset + len(value)] = value
    data[9] = 0
    data[9] = (-sum(data)) & 0xFF
    return bytes(data)


def test_iasl_agrees_on_the_real_tables(guest, tmp_path):
    facp = iasl(guest.tables["FACP"], "FACP", tmp_path)
    assert re.search(r"ARM Flags \(decoded below\) : 0003", facp) and re.search(r"Hardware Reduced \(V5\) : 1", facp)
    apic = iasl(guest.tables["APIC"], "APIC", tmp_path)
    assert len(re.findall(r"Subtable Type : 0B \[Generic Interrupt Controller\]", apic)) == 2
    assert re.search(r"Subtable Type : 0C \[Generic Interrupt Distributor\]", apic)
    assert re.search(r"Ignore UART : 01", iasl(guest.tables["STAO"], "STAO", tmp_path))


@pytest.mark.parametrize(("table", "offset", "value", "rule", "iasl_says"), [
    ("FACP", 129, b"\x01\x00", "acpi.fadt.psci-hvc", r"ARM Flags \(decoded below\) : 0001"),
    ("STAO", 36, b"\x00", "acpi.stao.uart", r"Ignore UART : 00"),
])
def test_iasl_reads_what_the_validator_flags(guest, host, tmp_path, table, offset, value, rule, iasl_says):
    bad = rechecksummed(guest.tables[table], offset, value)
    changed = acpi.Tables({**guest.tables, table: bad}, guest.rsdp)
    assert rule in {f.rule for f in failures(acpi.validate_tables(changed, host, acpi.Profile(vcpus=2)))}
    assert re.search(iasl_says, iasl(bad, table, tmp_path))
