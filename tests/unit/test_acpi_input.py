"""`check acpi` on every layout people bring, built from real tables with the real tools.

The tables are the ones a real Xen 4.17 gave a real dom0 (and the machine's own), captured from the project's
qemu-virt-acpi boot (tests/unit/data/acpi/captured-xen417). From them, Debian's acpica-tools (which ./run
installs) make each layout at test time: `acpidump -f TABLE` prints acpidump's text, `acpixtract -a` cuts it
into .dat files, `iasl` compiles two real SSDTs so instance numbering (SSDT1, SSDT2) is seen. A sysfs copy is laid
out as Linux lays out /sys/firmware/acpi/tables: no RSDP or XSDT, dynamic/ and data/ sub-directories.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import UnusableInput
from harness.findings import Severity, failures
from harness.validate import acpi, acpi_input

CAPTURED = Path(__file__).parent / "data" / "acpi" / "captured-xen417"
DOM0, HOST = CAPTURED / "dom0", CAPTURED / "host"
VCPUS = 2  # the captured boot's dom0 vCPUs


def tool(*args: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=cwd, check=True)
    return proc.stdout


def acpidump_block(title: str, data: bytes, address: int = 0) -> str:
    """A table as acpidump prints it (ACPICA's ApDumpTableBuffer + AcpiUtDumpBufferToFile): the tool reads an
    RSDP from a file only as a table (it refuses it), so the RSDP's block is written here, in the same format,
    which test_acpidump_block_is_acpidumps_own_format holds to the tool's output for every other table."""
    lines = [f"{title:4.4} @ 0x{address:016X}"]
    for at in range(0, len(data), 16):
        row = data[at : at + 16]
        hexes = "".join(f"{b:02X} " for b in row).ljust(48)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"    {at:04X}: {hexes} {text}")
    return "\n".join(lines) + "\n\n"


def ssdts(tmp: Path) -> list[Path]:
    """Two real SSDTs, compiled by iasl from two one-line ASL sources."""
    out = []
    for n in (1, 2):
        source = tmp / f"ssdt{n}.asl"
        source.write_text(f'DefinitionBlock ("", "SSDT", 2, "HARNES", "TEST{n}", 1) {{ Name (XX{n}, {n}) }}\n')
        tool("iasl", "-p", tmp / f"ssdt{n}", source, cwd=tmp)
        out.append(tmp / f"ssdt{n}.aml")
    return out


def acpidump_text(tables: Path, extra: list[Path] = ()) -> str:
    """acpidump's text of a directory of captured tables (the tool for each table; the RSDP as it prints it)."""
    names = sorted(p for p in tables.iterdir() if p.name != "RSDP")
    text = tool("acpidump", *[a for p in [*names, *extra] for a in ("-f", p)])
    return acpidump_block("RSD PTR ", (tables / "RSDP").read_bytes(), 0xBC2F12A8) + text


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Every layout, made once from the real tables with the real tools."""
    tmp = tmp_path_factory.mktemp("layouts")
    ssdt1, ssdt2 = ssdts(tmp)
    text = tmp / "dom0.acpidump"
    text.write_text(acpidump_text(DOM0))
    host_text = tmp / "host.acpidump"
    host_text.write_text(acpidump_text(HOST))
    with_ssdts = tmp / "with-ssdts.acpidump"
    with_ssdts.write_text(acpidump_text(DOM0, [ssdt1, ssdt2]))
    dats = tmp / "xtract"
    dats.mkdir()
    tool("acpixtract", "-a", text, cwd=dats)
    sysfs = tmp / "sysfs"  # as Linux shows it: signatures, SSDTn, dynamic/ and data/, no RSDP or XSDT
    sysfs.mkdir()
    for table in DOM0.iterdir():
        if table.name not in ("RSDP", "XSDT"):
            shutil.copy(table, sysfs / table.name)
    shutil.copy(ssdt1, sysfs / "SSDT1")
    (sysfs / "dynamic").mkdir()
    shutil.copy(ssdt2, sysfs / "dynamic" / "SSDT2")
    (sysfs / "data").mkdir()
    (sysfs / "data" / "BERT").write_bytes(bytes(16))
    return {"text": text, "host-text": host_text, "with-ssdts": with_ssdts, "dats": dats, "sysfs": sysfs,
            "ssdt1": ssdt1, "ssdt2": ssdt2, "tmp": tmp}


def read_as(path: Path, layout: str) -> acpi.Tables:
    tables = acpi_input.read(path)
    assert tables.reading.layout == layout, f"{path} read as {tables.reading.layout}, not {layout}"
    return tables


def rules(findings) -> set[str]:
    return {f.rule for f in findings}


def not_applied(findings) -> list[str]:
    return sorted(f.where for f in findings if f.rule == "acpi.not-applied")


def with_boot_flags(raw: bytes, flags: int) -> bytes:
    """A FADT with other ARM boot flags, checksum fixed: as a firmware that got them wrong would ship it."""
    data = bytearray(raw)
    data[129:131] = flags.to_bytes(2, "little")
    data[9] = 0
    data[9] = -sum(data) & 0xFF
    return bytes(data)


# --- acpidump's text ----------------------------------------------------------------------------


def test_acpidump_block_is_acpidumps_own_format():
    for name in ("STAO", "APIC", "DSDT"):
        table = DOM0 / name
        assert acpidump_block(name, table.read_bytes()) == tool("acpidump", "-f", table)


def test_acpidump_text_reads_as_acpixtract_extracts_it(made):
    """The same file through acpixtract and through the reader: the same bytes for every table."""
    tables = acpi_input.read(made["with-ssdts"])
    out = made["tmp"] / "xtract-ssdts"
    out.mkdir()
    tool("acpixtract", "-a", made["with-ssdts"], cwd=out)
    extracted = {p.name.removesuffix(".dat").upper(): p.read_bytes() for p in out.iterdir()}
    assert {**tables.tables, "RSDP": tables.rsdp} == extracted
    assert {"SSDT1", "SSDT2", "RSDP", "FACP"} <= set(extracted)
    # and each is the captured table itself
    assert tables.rsdp == (DOM0 / "RSDP").read_bytes()
    assert all(tables.tables[p.name] == p.read_bytes() for p in DOM0.iterdir() if p.name != "RSDP")


def test_acpidump_text_of_a_real_dom0_passes_with_the_known_rsdp_defect(made):
    guest, host = read_as(made["text"], acpi_input.ACPIDUMP_TEXT), read_as(made["host-text"], acpi_input.ACPIDUMP_TEXT)
    assert guest.whole
    assert guest.reading.parts == tuple(sorted(p.name for p in DOM0.iterdir()))
    findings = acpi.validate_tables(guest, host, acpi.Profile(vcpus=VCPUS))
    assert failures(findings) == [] and not_applied(findings) == []
    assert [f.rule for f in findings if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]


def test_acpidump_text_with_crlf_line_ends_reads_the_same(made, tmp_path):
    crlf = tmp_path / "mailed.txt"
    crlf.write_bytes(made["text"].read_bytes().replace(b"\n", b"\r\n"))
    assert acpi_input.read(crlf) == acpi_input.read(made["text"])


def test_an_older_acpidumps_text_in_a_mail_reads_as_acpixtract_reads_it(made, tmp_path):
    """Older acpidumps (pmtools) wrote `RSD PTR @ 0x…`, two-space indents and lower-case hex; people paste them
    into mails, whose other lines need not be ASCII. acpixtract -f (forced past the non-ASCII) is the reference."""
    old = []
    for line in made["text"].read_text().splitlines():
        if line.startswith("RSD  @"):
            line = "RSD PTR @ 0xf6cd0"
        elif line.startswith("    "):
            offset, rest = line.strip().split(": ", 1)
            line = f"  {offset}: {rest[:48].lower()} {rest[48:]}"
        old.append(line)
    mail = tmp_path / "mail.txt"
    mail.write_bytes("\n".join(["From: someone", "Subject: Re: dom0 hangs at boot", "",
                                 "Grüße, here is the acpidump you asked for:", "", *old, "-- ", ""]).encode())
    tables = read_as(mail, acpi_input.ACPIDUMP_TEXT)
    assert tables == acpi_input.read(made["text"])
    out = tmp_path / "xtract"
    out.mkdir()
    tool("acpixtract", "-f", "-a", mail, cwd=out)
    assert {p.name.removesuffix(".dat").upper(): p.read_bytes() for p in out.iterdir()} == {
        **tables.tables, "RSDP": tables.rsdp}


def test_acpidump_text_finding_on_a_wrong_table(made, tmp_path):
    bad = tmp_path / "bad.acpidump"
    psci_smc = with_boot_flags((DOM0 / "FACP").read_bytes(), 0x0001)  # PSCI over SMC: the host's, not Xen's
    facp = acpidump_block("FACP", (DOM0 / "FACP").read_bytes())
    bad.write_text(made["text"].read_text().replace(facp, acpidump_block("FACP", psci_smc)))
    finding = next(f for f in acpi_input.check_path(bad, vcpus=VCPUS) if f.rule == "acpi.fadt.psci-hvc")
    assert (finding.where, finding.found) == ("FACP arm_boot_flags", "0x0001")


def test_acpidump_text_cut_in_the_middle_of_a_table_is_refused(made, tmp_path):
    lines = made["text"].read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("DSDT @")) + 5
    cut = tmp_path / "cut.acpidump"
    cut.write_text("".join(lines[:at] + lines[at + 1 :]))
    with pytest.raises(UnusableInput) as caught:
        acpi_input.read(cut)
    assert str(caught.value) == (f"{cut} line {at + 1}: DSDT data at offset 0x50 where 0x40 was due: the dump is "
                                 "cut or edited; take acpidump's output again")


def test_text_that_holds_no_table_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("I ran acpidump but forgot to paste it.\nFACP is fine, I think.\n")
    with pytest.raises(UnusableInput, match=r"notes.txt is text without an acpidump table in it \(a line such as "
                                            r"'FACP @ 0x…' followed by lines of hex bytes\): give a copy of"):
        acpi_input.read(notes)


def test_acpidump_text_with_more_tables_than_a_dump_holds_is_refused(tmp_path):
    path = tmp_path / "many.acpidump"
    path.write_text("".join(acpidump_block(f"T{i % 100:03d}", b"A") for i in range(5000)))
    with pytest.raises(UnusableInput, match=r"many.acpidump holds more than 4096 tables, more than a dump may"):
        acpi_input.read(path)


# --- acpixtract's .dat files ----------------------------------------------------------------------


def test_acpixtract_output_of_a_real_dom0(made):
    tables = read_as(made["dats"], acpi_input.DAT_FILES)
    assert tables == acpi_input.read(DOM0)  # the same tables as the capture they were made from
    findings = acpi.validate_tables(tables, acpi_input.read(HOST), acpi.Profile(vcpus=VCPUS))
    assert failures(findings) == []
    assert [f.rule for f in findings if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]


def test_dat_names_in_any_case_and_numbered(made, tmp_path):
    dats = tmp_path / "dats"
    shutil.copytree(made["dats"], dats)
    (dats / "apic.dat").rename(dats / "APIC.dat")
    (dats / "facp.dat").rename(dats / "FaCp.DAT")
    shutil.copy(made["ssdt1"], dats / "ssdt1.dat")
    shutil.copy(made["ssdt2"], dats / "ssdt2.dat")
    (dats / "README").write_text("from acpixtract -a\n")
    tables = read_as(dats, acpi_input.DAT_FILES)
    assert {"APIC", "FACP", "SSDT1", "SSDT2"} <= set(tables.tables)
    assert tables.reading.ignored == ("README (not a table name)",)
    # the two SSDTs are not in this XSDT: a whole dump that lists fewer tables than it holds
    count = next(f for f in acpi.validate_tables(tables) if f.rule == "acpi.xsdt.count")
    assert count.found == "9" and count.expected.startswith("11 (")


def test_a_directory_of_dat_files_and_sysfs_names_is_refused(made, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(made["dats"], mixed)
    shutil.copy(DOM0 / "FACP", mixed / "FACP")
    with pytest.raises(UnusableInput, match=r"mixed holds both tables named as sysfs names them \(FACP\) and \.dat "
                                            r"files \(apic\.dat, dbg2\.dat, dsdt\.dat\): give one dump per directory"):
        acpi_input.read(mixed)


# --- a copy of /sys/firmware/acpi/tables --------------------------------------------------------------


def test_sysfs_copy_says_what_it_read_and_what_it_could_not_check(made):
    tables = read_as(made["sysfs"], acpi_input.SYSFS)
    assert tables.reading.parts == ("APIC", "DBG2", "DSDT", "FACP", "GTDT", "IORT", "MCFG", "PPTT", "SPCR", "SSDT1",
                                    "STAO", "dynamic/SSDT2")
    assert tables.reading.ignored == ("data/ (table data, not tables)",)
    findings = acpi.validate_tables(tables, profile=acpi.Profile(vcpus=VCPUS))
    assert failures(findings) == []
    assert not_applied(findings) == ["RSDP", "XSDT"]
    rsdp = next(f for f in findings if f.where == "RSDP")
    assert "acpi.rsdp.checksum.v1" in rsdp.note and rsdp.note.startswith("not applied: ")
    assert str(tables.reading).startswith(f"read {made['sysfs']} as a copy of /sys/firmware/acpi/tables: APIC, ")


def test_a_facs_has_no_checksum_to_check(made, tmp_path):
    """iasl's FACS template, compiled: a real FACS, whose bytes need not sum to 0 (it has no checksum field)."""
    tool("iasl", "-T", "FACS", cwd=tmp_path)
    tool("iasl", tmp_path / "facs.asl", cwd=tmp_path)
    facs = (tmp_path / "facs.aml").read_bytes()
    assert facs[:4] == b"FACS" and sum(facs) % 256 != 0
    sysfs = tmp_path / "tables"
    shutil.copytree(made["sysfs"], sysfs)
    (sysfs / "FACS").write_bytes(facs)
    assert failures(acpi_input.check_path(sysfs, vcpus=VCPUS)) == []
    (sysfs / "FACP").write_bytes((DOM0 / "FACP").read_bytes()[:-1] + b"\x01")  # and a table that has one still fails
    assert "acpi.checksum" in rules(failures(acpi_input.check_path(sysfs, vcpus=VCPUS)))


def test_sysfs_copy_with_a_wrong_table(made, tmp_path):
    sysfs = tmp_path / "tables"
    shutil.copytree(made["sysfs"], sysfs)
    (sysfs / "STAO").write_bytes((DOM0 / "STAO").read_bytes()[:30])
    findings = acpi_input.check_path(sysfs, vcpus=VCPUS)
    assert "acpi.header.short" in rules(failures(findings))
    assert next(f for f in findings if f.rule == "acpi.header.short").found == "30 bytes"


def test_a_sysfs_table_that_is_a_directory_elsewhere_is_named_and_left_aside(made, tmp_path):
    sysfs = tmp_path / "tables"
    shutil.copytree(made["sysfs"], sysfs)
    (sysfs / "dynamic" / "notes").write_text("x")
    (sysfs / "extra").mkdir()
    assert acpi_input.read(sysfs).reading.ignored == (
        "data/ (table data, not tables)", "dynamic/notes (not a table name)", "extra/ (a directory)")


# --- one binary table --------------------------------------------------------------------------


def test_one_table_is_checked_alone_and_the_rest_is_not_applied():
    tables = acpi_input.read(DOM0 / "FACP")
    assert (tables.reading.layout, tables.reading.parts, tables.whole) == (acpi_input.ONE_TABLE, ("FACP",), False)
    findings = acpi.validate_tables(tables)
    assert failures(findings) == []
    assert not_applied(findings) == ["APIC", "GTDT", "RSDP", "STAO", "XSDT"]
    rsdp = acpi_input.read(DOM0 / "RSDP")
    assert rsdp.rsdp == (DOM0 / "RSDP").read_bytes() and rsdp.reading.parts == ("RSDP",)
    assert [f.rule for f in acpi.validate_tables(rsdp) if f.severity is Severity.KNOWN] == ["acpi.rsdp.checksum.v1"]
    xsdt = acpi.validate_tables(acpi_input.read(DOM0 / "XSDT"))  # alone, its entries have nothing to count against
    assert failures(xsdt) == [] and "XSDT entries" in not_applied(xsdt)


def test_one_wrong_table_gives_its_finding(made):
    bad = made["tmp"] / "facp.dat"
    bad.write_bytes(with_boot_flags((DOM0 / "FACP").read_bytes(), 0x0000))
    assert {"acpi.fadt.psci", "acpi.fadt.psci-hvc"} <= rules(failures(acpi_input.check_path(bad)))


def test_one_file_that_is_no_table_is_refused(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(100))
    with pytest.raises(UnusableInput, match=r"junk.bin is neither an ACPI table \(it starts b'\\x7fELF\\x02\\x01"
                                            r"\\x01\\x00', no signature\) nor text: give a copy of"):
        acpi_input.read(junk)


# --- never a traceback, never a hang --------------------------------------------------------------


@pytest.fixture(scope="module")
def text_lines(made) -> list[str]:
    return made["text"].read_text().splitlines(keepends=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3)), max_size=5),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from("0F @:\n\r xRSD")), max_size=8),
       tail=st.integers(0, 10**6))
def test_mangled_acpidump_text_only_ever_raises_unusable_input(text_lines, tmp_path, cuts, flips, tail):
    lines = list(text_lines)
    for at, count in cuts:
        del lines[at % max(len(lines), 1) : at % max(len(lines), 1) + count]
    text = list("".join(lines))
    for at, char in flips:
        if text:
            text[at % len(text)] = char
    path = tmp_path / "mangled.acpidump"
    path.write_text("".join(text)[: tail % (len(text) + 1)])
    try:
        tables = acpi_input.read(path)
    except UnusableInput as exc:
        assert str(exc).startswith(str(path))
        return
    assert all(f.rule in acpi.RULES for f in acpi.validate_tables(tables))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.sampled_from([b"RSD PTR ", b"FACP", b"RSD  @ 0x0\n    0000: 52\n"]))
def test_any_one_file_only_ever_raises_unusable_input(tmp_path, data):
    path = tmp_path / "given"
    path.write_bytes(data)
    try:
        tables = acpi_input.read(path)
    except UnusableInput as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)  # one sentence, on one line
        return
    assert all(f.rule in acpi.RULES for f in acpi.validate_tables(tables))
