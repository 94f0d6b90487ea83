"""Files users bring are examined before they are read: a FIFO, a device or an oversized file is refused with
one sentence, never read (a FIFO would hang, /dev/zero would fill memory); directory walks are bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import inputs
from harness.errors import UnusableInput
from harness.validate import acpi_input, dt_input

DATA = Path(__file__).parent / "data"
DOM0_DTB = DATA / "qemu-virt-gicv3-dom0.dtb"
ACPI_DOM0 = DATA / "acpi" / "dom0"


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space."""
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def copy_dir(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


# --- one file -------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    # no writer ever opens it: reading it would block forever
    path = fifo(tmp_path / "dump.dtb")
    with pytest.raises(UnusableInput, match=r"dump\.dtb is a FIFO, not a file: pass a \.dtb"):
        dt_input.check_path(path)
    with pytest.raises(UnusableInput, match="is a FIFO, not a file: give the path of a saved console log"):
        inputs.open_file(path, inputs.CONSOLE_LOG)


def test_a_character_device_is_refused():
    with pytest.raises(UnusableInput, match="/dev/zero is a character device, not a file"):
        dt_input.check_path(Path("/dev/zero"))
    with pytest.raises(UnusableInput, match="/dev/null is a character device, not a file"):
        inputs.read_file(Path("/dev/null"), inputs.CONSOLE_LOG)


def test_an_oversized_dtb_is_refused_with_its_size_and_the_limit(tmp_path):
    path = sparse(tmp_path / "x.dtb", 300 * inputs.MiB)
    with pytest.raises(UnusableInput) as caught:
        dt_input.check_path(path)
    assert str(caught.value).startswith(f"{path} is 300 MiB, over the 16 MiB a DTB may be: a real one is under 2 MiB")
    just_over = sparse(tmp_path / "y.dtb", 16 * inputs.MiB + 1)
    with pytest.raises(UnusableInput, match=f"is {16 * inputs.MiB + 1} bytes, over the 16 MiB"):
        dt_input.check_path(just_over)


def test_a_log_over_the_limit_is_refused_before_it_is_read(tmp_path):
    path = sparse(tmp_path / "huge.log", inputs.CONSOLE_LOG.limit + 1)
    with pytest.raises(UnusableInput, match="over the 8 GiB a console log may be: cut it"):
        inputs.open_file(path, inputs.CONSOLE_LOG)


def test_a_missing_path_says_so(tmp_path):
    with pytest.raises(UnusableInput, match="nope.log does not exist: give the path of a saved console log"):
        inputs.open_file(tmp_path / "nope.log", inputs.CONSOLE_LOG)


def test_a_directory_where_a_file_is_expected(tmp_path):
    with pytest.raises(UnusableInput, match="is a directory, not a file: give the path of a saved console log"):
        inputs.open_file(tmp_path, inputs.CONSOLE_LOG)


def test_human_sizes():
    assert [inputs.human(n) for n in (0, 1023, 1024, 1536, 16 * inputs.MiB, 300 * inputs.MiB + inputs.MiB // 2,
                                     8 * inputs.GiB)] == [
        "0 bytes", "1023 bytes", "1 KiB", "1.5 KiB", "16 MiB", "300.5 MiB", "8 GiB"]


# --- directories ----------------------------------------------------------------------------


def test_an_acpi_table_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    dump = copy_dir(ACPI_DOM0, tmp_path / "tables")
    (dump / "GTDT").unlink()
    fifo(dump / "GTDT")
    with pytest.raises(UnusableInput, match=r"tables/GTDT is a FIFO, not a file: give a copy of /sys/firmware/acpi"):
        acpi_input.check_path(dump)
    (dump / "GTDT").unlink()
    (dump / "GTDT").symlink_to("/dev/zero")  # a link is followed to a regular file only
    with pytest.raises(UnusableInput, match="GTDT is a character device, not a file"):
        acpi_input.read(dump)


def test_an_oversized_acpi_table_is_refused(tmp_path):
    dump = copy_dir(ACPI_DOM0, tmp_path / "tables")
    sparse(dump / "SSDT", 9 * inputs.MiB)
    with pytest.raises(UnusableInput, match="SSDT is 9 MiB, over the 8 MiB an ACPI table may be"):
        acpi_input.read(dump)


def test_what_is_not_a_table_name_is_not_opened(tmp_path):
    dump = copy_dir(ACPI_DOM0, tmp_path / "tables")
    fifo(dump / "notes.fifo")  # not a signature: never looked into
    assert set(acpi_input.read(dump).tables) == {p.name for p in ACPI_DOM0.iterdir()} - {"RSDP"}


def test_a_procfs_copy_with_a_fifo_is_refused(tmp_path):
    root = tmp_path / "device-tree"
    (root / "hypervisor").mkdir(parents=True)
    (root / "compatible").write_bytes(b"linux,dummy-virt\0")
    fifo(root / "hypervisor" / "reg")
    with pytest.raises(UnusableInput, match=r"hypervisor/reg is a FIFO, not a property file: pass a copy of /proc"):
        dt_input.check_path(root)


def test_a_walk_is_bounded_in_entries_and_bytes(tmp_path):
    for name in "abcd":
        (tmp_path / name).write_bytes(b"x" * 100)
    few = inputs.Kind("a small thing", 250, "give a smaller one", "it is made up", max_entries=3)
    with pytest.raises(UnusableInput, match="holds more than 3 entries, more than a small thing may"):
        inputs.list_dir(tmp_path, inputs.Budget(tmp_path, few))
    budget = inputs.Budget(tmp_path, inputs.Kind("a small thing", 250, "give a smaller one", "made up", 10))
    entries = inputs.list_dir(tmp_path, budget)
    assert [e.name for e in entries] == ["a", "b", "c", "d"] and budget.entries == 6
    inputs.read_file(entries[0].path, inputs.DTB, budget)
    inputs.read_file(entries[1].path, inputs.DTB, budget)
    with pytest.raises(UnusableInput, match=f"{tmp_path} is over the 250 bytes a small thing may be"):
        inputs.read_file(entries[2].path, inputs.DTB, budget)


def test_a_walk_types_entries_without_following_links(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path)
    fifo(tmp_path / "pipe")
    whats = {e.name: e.what for e in inputs.list_dir(tmp_path, inputs.Budget(tmp_path, inputs.DT_COPY))}
    assert whats == {"dir": inputs.DIRECTORY, "file": inputs.FILE, "loop": inputs.SYMLINK, "pipe": "a FIFO"}
