"""ACPI tables a user brings, read into one set of tables for the validator, whatever layout they came in:

- a copy of ``/sys/firmware/acpi/tables``: a file per table named by signature (``FACP``, ``SSDT1``, ``SSDT2``),
  ``dynamic/`` (tables Linux loaded at run time, read too), ``data/`` (table data, not tables); the harness's
  own captures add ``RSDP`` and ``XSDT`` beside them;
- a ``.dat`` per table, as ``acpixtract -a`` and ``acpidump -b`` write them (``facp.dat``, ``ssdt1.dat``,
  ``rsdp.dat``; any case);
- ``acpidump``'s text: per table a ``SIG @ 0xADDRESS`` line, then ``OFFSET: hex bytes  ascii`` lines, read as
  acpixtract reads them (ACPICA's acpixtract.c); ``RSD PTR`` is printed as ``RSD  @``;
- one binary table, named by its own signature.

Each reading says which layout it saw and what it read; the validator only ever sees the tables. A dump holds the
whole machine's tables (a table it lacks is missing); one table given alone leaves the others' rules not applied.
"""

from __future__ import annotations

import io
import re
import stat
from pathlib import Path

from harness import inputs
from harness.errors import UnusableInput
from harness.findings import Finding
from harness.validate.acpi import DYNAMIC, TABLE_NAME, Profile, Tables, validate_tables

SYSFS = "a copy of /sys/firmware/acpi/tables"
DAT_FILES = "one .dat file per table (acpixtract -a, acpidump -b)"
ACPIDUMP_TEXT = "acpidump's text output"
ONE_TABLE = "one binary table"
RSDP_SIGNATURE = b"RSD PTR "
DAT_NAME = re.compile(r"^([A-Za-z0-9_]{4})(\d*)\.dat$", re.IGNORECASE)
SIGNATURE = re.compile(rb"^[A-Z0-9_!]{4}")  # ACPICA's AcpiUtValidNameseg, upper case as tables have it
# acpixtract's rules: a header is a line under 49 characters, not indented, holding " @ "; a data line is
# indented and holds ": "; its bytes are the up to 16 hex pairs after the offset, within 48 characters
HEADER_MAX = 49
DATA_LINE = re.compile(r"^\s+([0-9A-Fa-f]+):((?: [0-9A-Fa-f]{2}){1,16})")


def read(path: Path) -> Tables:
    """The tables at a path in any of the layouts above; UnusableInput, saying what was seen, for anything else."""
    path = Path(path)
    if stat.S_ISDIR(inputs.examine(path, inputs.ACPI_DUMP).st_mode):
        return _read_directory(path)
    data = inputs.read_file(path, inputs.ACPI_TEXT)
    if _is_text(data):  # first: an old acpidump's text starts "RSD PTR @" as a binary RSDP starts "RSD PTR "
        return _from_acpidump(path, data)
    if data.startswith(RSDP_SIGNATURE):
        return Tables({}, data, whole=False, reading=inputs.Reading(str(path), ONE_TABLE, ("RSDP",)))
    if SIGNATURE.match(data):
        name = data[:4].decode("ascii")
        return Tables({name: data}, whole=False, reading=inputs.Reading(str(path), ONE_TABLE, (name,)))
    seen = "empty" if not data else f"neither an ACPI table (it starts {data[:8]!r}, no signature) nor text"
    raise UnusableInput(f"{path} is {seen}: {inputs.ACPI_HINT}")


def check_path(path: Path, host: Path | None = None, vcpus: int | None = None,
               hypervisor_id: str | None = None) -> list[Finding]:
    """Read a guest's tables (and optionally the host's) in any layout and validate them."""
    return validate_tables(read(path), read(host) if host is not None else None,
                           Profile(vcpus=vcpus, hypervisor_id=hypervisor_id))


def _is_text(data: bytes) -> bool:
    """Text, judged on its start: no control character but white space (NULs are tolerated, as acpixtract does;
    bytes over 0x7f too, for a dump inside a mail). A binary table always has one: its revision byte, at least."""
    head = data[:4096].replace(b"\0", b"")
    return bool(head) and not any(b < 32 and b not in b"\t\r\n\f\v" or b == 127 for b in head)


def _read_directory(directory: Path) -> Tables:
    budget = inputs.Budget(directory, inputs.ACPI_DUMP)
    sysfs: dict[str, Path] = {}
    dat: dict[str, Path] = {}
    ignored: list[str] = []
    for entry in inputs.list_dir(directory, budget):
        if entry.what == inputs.DIRECTORY:
            if entry.name == DYNAMIC.rstrip("/"):
                for inner in inputs.list_dir(entry.path, budget):
                    if TABLE_NAME.match(inner.name) and inner.what != inputs.DIRECTORY:
                        sysfs[DYNAMIC + inner.name] = inner.path
                    else:
                        ignored.append(f"{DYNAMIC}{inner.name} (not a table name)")
            else:
                why = "table data, not tables" if entry.name == "data" else "a directory"
                ignored.append(f"{entry.name}/ ({why})")
        elif entry.name == "RSDP" or TABLE_NAME.match(entry.name):
            sysfs[entry.name] = entry.path
        elif m := DAT_NAME.match(entry.name):
            dat[(m.group(1) + m.group(2)).upper()] = entry.path
        else:
            ignored.append(f"{entry.name} (not a table name)")
    if sysfs and dat:
        raise UnusableInput(f"{directory} holds both tables named as sysfs names them ({', '.join(sorted(sysfs)[:3])}) "
                            f"and .dat files ({', '.join(sorted(p.name for p in dat.values())[:3])}): give one dump "
                            "per directory")
    found, layout = (dat, DAT_FILES) if dat else (sysfs, SYSFS)
    if not found:
        raise UnusableInput(f"{directory} holds no ACPI tables: neither files named by signature (FACP, APIC, as in "
                            "/sys/firmware/acpi/tables) nor .dat files (facp.dat, as acpixtract -a writes): "
                            f"{inputs.ACPI_HINT}")
    tables: dict[str, bytes] = {}
    rsdp: bytes | None = None
    for name, path in sorted(found.items()):
        data = inputs.read_file(path, inputs.ACPI_TABLE, budget)  # a link is followed to a regular file only
        if name == "RSDP":
            rsdp = data
        else:
            tables[name] = data
    reading = inputs.Reading(str(directory), layout, tuple(sorted(found)), tuple(ignored))
    return Tables(tables, rsdp, whole=True, reading=reading)


def _from_acpidump(path: Path, text: bytes) -> Tables:
    """Every table block of acpidump's text, as acpixtract extracts it; the offsets must run on without a gap."""
    blocks: list[tuple[str, bytearray]] = []
    expected = 0
    for number, raw in enumerate(io.BytesIO(text), start=1):  # line by line: no list of every line in memory
        line = raw.rstrip(b"\r\n").decode("latin-1")
        if line and not line[0].isspace() and " @ " in line and len(line) + 1 < HEADER_MAX:
            signature = "RSDP" if line.startswith("RSD ") else line[:4]
            if blocks and not blocks[-1][1]:
                blocks.pop()  # a header without data: acpixtract drops it too
            if len(blocks) == inputs.ACPI_DUMP.max_entries:
                raise UnusableInput(f"{path} holds more than {len(blocks)} tables, more than a dump may: "
                                    f"{inputs.ACPI_DUMP.too_big}; {inputs.ACPI_HINT}")
            blocks.append((signature, bytearray()))
            expected = 0
        elif blocks and (m := DATA_LINE.match(line)):
            offset = int(m.group(1), 16)
            if offset != expected:
                raise UnusableInput(f"{path} line {number}: {blocks[-1][0]} data at offset {offset:#x} where "
                                    f"{expected:#x} was due: the dump is cut or edited; take acpidump's output again")
            chunk = bytes.fromhex(m.group(2))
            blocks[-1][1].extend(chunk)
            expected += len(chunk)
    if blocks and not blocks[-1][1]:
        blocks.pop()
    if not blocks:
        raise UnusableInput(f"{path} is text without an acpidump table in it (a line such as 'FACP @ 0x…' followed "
                            f"by lines of hex bytes): {inputs.ACPI_HINT}")
    count: dict[str, int] = {}
    for sig, _ in blocks:
        count[sig] = count.get(sig, 0) + 1
    seen: dict[str, int] = {}
    tables: dict[str, bytes] = {}
    rsdp: bytes | None = None
    for sig, data in blocks:
        seen[sig] = seen.get(sig, 0) + 1
        name = f"{sig}{seen[sig]}" if count[sig] > 1 else sig  # SSDT1, SSDT2, as acpixtract and sysfs name them
        if sig == "RSDP":
            rsdp = bytes(data)  # a second RSDP would be odd: the last one wins, and is listed as read
        else:
            tables[name] = bytes(data)
    names = tuple(sorted({*tables, *(["RSDP"] if rsdp is not None else [])}))
    return Tables(tables, rsdp, whole=True, reading=inputs.Reading(str(path), ACPIDUMP_TEXT, names))
