"""Files a user brings (DTBs, /proc/device-tree copies, ACPI table dumps, console logs), examined before read.

A path must be what it claims to be, a regular file or a directory, and no bigger than such a thing can be.
Anything else is refused before a byte is read, with one sentence that says what was seen and what to do:
a FIFO would hang the reader, /dev/zero would fill memory. Directory walks are bounded as well: a number of
entries and of bytes for the whole walk, and no symbolic link is followed into a directory (no loops).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import UnusableInput

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Kind:
    """What a path should hold, the most it may be, and what to tell a user who gave something else."""

    noun: str  # "a DTB"
    limit: int  # bytes: of one file, or of every file a directory walk reads
    hint: str  # what to give instead: "pass a .dtb ..."
    too_big: str  # why the limit is generous: "a real one is under 2 MiB"
    max_entries: int = 0  # directories only: every entry the walk lists, in all its sub-directories


DTB = Kind(
    "a DTB", 16 * MiB,
    "pass a .dtb (e.g. a copy of /sys/firmware/fdt), a .dts, or a copy of /proc/device-tree",
    "a real one is under 2 MiB (the FDT header's totalsize)",
)
DT_COPY = Kind(
    "a copy of /proc/device-tree", 16 * MiB,
    "pass a copy of /proc/device-tree (e.g. cp -r /proc/device-tree DIR) or a .dtb",
    "a real tree holds a few thousand entries and well under 2 MiB of properties",
    max_entries=100_000,
)
ACPI_HINT = ("give a copy of /sys/firmware/acpi/tables, acpixtract -a's .dat files (a directory), acpidump's text "
             "output, or one binary table")
ACPI_TABLE = Kind(
    "an ACPI table", 8 * MiB, ACPI_HINT,
    "a real table, even a big server's DSDT, is under a few MiB",
)
ACPI_DUMP = Kind(
    "a directory of ACPI tables", 64 * MiB, ACPI_HINT,
    "a real dump holds tens of tables and a few MiB",
    max_entries=4096,
)
ACPI_TEXT = Kind(
    "acpidump's text", 64 * MiB, ACPI_HINT,
    "a real dump's text is a few MiB (a big server's, 20 MiB)",
)
CONSOLE_LOG = Kind(
    "a console log", 8 * GiB,
    "give the path of a saved console log",
    "cut it to the boots you want judged (e.g. with tail -c or split)",
)
RESULT_JSON = Kind(
    "a result.json", 64 * MiB,
    "give a result.json a boot wrote, or the artifacts directory holding one",
    "a real one is tens of KiB",
)

FILE, DIRECTORY, SYMLINK = "a regular file", "a directory", "a symbolic link"


def describe(mode: int) -> str:
    """What an st_mode is, as a sentence says it: 'a FIFO', 'a character device'…"""
    for test, what in (
        (stat.S_ISREG, FILE), (stat.S_ISDIR, DIRECTORY), (stat.S_ISLNK, SYMLINK), (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a file"


def human(size: int) -> str:
    """Bytes as a person reads them: '512 bytes', '12 KiB', '300.5 MiB', '8 GiB'."""
    if size < KiB:
        return f"{size} bytes"
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + f" {name}"
    raise AssertionError("unreachable")


def _over(path: Path, kind: Kind, size: int | None = None) -> UnusableInput:
    """'x.dtb is 300 MiB, over the 16 MiB a DTB may be: …'; without a size (a read that went on), 'is over'."""
    if size is None:
        shown = "over"
    else:
        shown = human(size) if human(size) != human(kind.limit) else f"{size} bytes"  # rounding would hide it
        shown += ", over"
    return UnusableInput(f"{path} is {shown} the {human(kind.limit)} {kind.noun} may be: {kind.too_big}; {kind.hint}")


def examine(path: Path, kind: Kind) -> os.stat_result:
    """The path's status (following symbolic links); UnusableInput if it does not exist or cannot be looked at."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UnusableInput(f"{path} does not exist: {kind.hint}") from None
    except OSError as exc:
        raise UnusableInput(f"{path} cannot be examined ({exc.strerror}): {kind.hint}") from None


def _regular(path: Path, st: os.stat_result, kind: Kind) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnusableInput(f"{path} is {describe(st.st_mode)}, not a file: {kind.hint}")
    if st.st_size > kind.limit:
        raise _over(path, kind, st.st_size)


def open_file(path: Path, kind: Kind) -> BinaryIO:
    """Open a regular file no bigger than the kind allows; refuse anything else before reading."""
    path = Path(path)
    _regular(path, examine(path, kind), kind)
    try:
        # Non-blocking and re-checked on the open file: a FIFO swapped in after the check cannot hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnusableInput(f"{path} cannot be read ({exc.strerror}): check its permissions") from None
    try:
        _regular(path, os.fstat(fd), kind)
    except UnusableInput:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


@dataclass
class Budget:
    """What one directory walk may still list and read, shared by all of its steps."""

    root: Path
    kind: Kind  # a directory kind: its max_entries and limit bound the whole walk
    entries: int = field(init=False)
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.entries, self.bytes = self.kind.max_entries, self.kind.limit


def read_file(path: Path, kind: Kind, budget: Budget | None = None) -> bytes:
    """All of a regular file, refused if it is (or grows) over the kind's limit or the walk's budget."""
    limit = kind.limit if budget is None else min(kind.limit, budget.bytes)
    with open_file(path, kind) as fh:
        try:
            data = fh.read(limit + 1)  # files in /proc and /sys may say size 0: read, bounded
        except OSError as exc:
            raise UnusableInput(f"{path} cannot be read ({exc.strerror}): check its permissions") from None
    if len(data) > limit:
        if budget is not None and limit < kind.limit:
            raise _over(budget.root, budget.kind)
        raise _over(path, kind)
    if budget is not None:
        budget.bytes -= len(data)
    return data


@dataclass(frozen=True)
class Entry:
    path: Path
    what: str  # FILE, DIRECTORY, SYMLINK, or describe()'s words for anything else; links are not followed

    @property
    def name(self) -> str:
        return self.path.name


def list_dir(path: Path, budget: Budget) -> list[Entry]:
    """A directory's entries sorted by name, each typed without following links; bounded by the budget."""
    path = Path(path)
    kind = budget.kind
    st = examine(path, kind)
    if not stat.S_ISDIR(st.st_mode):
        raise UnusableInput(f"{path} is {describe(st.st_mode)}, not a directory: {kind.hint}")
    entries: list[Entry] = []
    try:
        with os.scandir(path) as listing:
            for item in listing:
                if budget.entries <= 0:
                    raise UnusableInput(f"{budget.root} holds more than {kind.max_entries} entries, more than "
                                        f"{kind.noun} may: {kind.too_big}; {kind.hint}")
                budget.entries -= 1
                entries.append(Entry(Path(item.path), _what(item)))
    except OSError as exc:
        raise UnusableInput(f"{path} cannot be listed ({exc.strerror}): check its permissions") from None
    return sorted(entries, key=lambda e: e.name)


def _what(item: os.DirEntry) -> str:
    if item.is_symlink():
        return SYMLINK
    if item.is_dir(follow_symlinks=False):
        return DIRECTORY
    if item.is_file(follow_symlinks=False):
        return FILE
    return describe(item.stat(follow_symlinks=False).st_mode)


MAX_NAMED = 40  # parts or left-aside entries a reading names in its sentence; JSON carries them all


@dataclass(frozen=True)
class Reading:
    """What a reader made of a path a user gave: the layout it recognised, what it read, what it left aside."""

    path: str
    layout: str  # "a DTB", "a copy of /proc/device-tree", "acpidump's text output"...
    parts: tuple[str, ...] = ()  # what it read there, e.g. the tables
    ignored: tuple[str, ...] = ()  # entries left aside, each with why: "data/ (table data, not tables)"

    def __str__(self) -> str:
        text = f"read {self.path} as {self.layout}"
        if self.parts:
            text += f": {_named(self.parts)}"
        if self.ignored:
            text += f"; left aside: {_named(self.ignored)}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "layout": self.layout, "parts": list(self.parts), "ignored": list(self.ignored)}


def _named(items: tuple[str, ...]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_NAMED else "")
