"""Symbols read from the images that boot (harness/symbols.py), checked against what Xen and Linux print.

The images are the pinned Debian ones, from the harness cache (fetched when missing). Ground truth:
Xen's own symbolized PCs and call traces in captured 'd' dumps (arm64 and arm32), dom0's
/proc/kallsyms read on nokaslr boots (Linux 6.1 and 6.12 on arm64, 6.12 on arm32: some of its lines and
the whole file's digest), and a captured '0' dump of an arm32 dom0 whose registers say where its idle
function starts and who called it. Linux 6.1 and 6.12 lay their tables out in different orders.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import struct
import time
from pathlib import Path

import pytest
from captured import DATA

from harness import symbols
from harness.cache import Cache
from harness.errors import UnusableInput
from harness.images import Images
from harness.symbols import SymbolTable, table_for

DEBUGKEYS = DATA / "debugkeys"
# (profile, artifact, kind)
IMAGES = {
    "xen-arm64": ("debian12-arm64", "xen", "xen"),
    "xen-arm32": ("debian12-armhf", "xen", "xen"),
    "xen4.20-arm64": ("debian13-arm64", "xen", "xen"),
    "linux-arm64": ("debian12-arm64", "kernel", "linux"),
    "linux-arm32": ("debian12-armhf", "kernel", "linux"),
    "linux6.12-arm64": ("debian13-arm64", "kernel", "linux"),
    "linux6.12-arm32": ("debian13-armhf", "kernel", "linux"),
}
# dom0's /proc/kallsyms of an image's kernel, read on a nokaslr boot: the whole file's digest (WHOLE_KALLSYMS),
# then some of its lines
KALLSYMS = {
    "linux-arm64": DATA / "symbols" / "qemu-virt-dom0-kallsyms-nokaslr.txt",
    "linux6.12-arm64": DATA / "symbols" / "qemu-virt-linux612-dom0-kallsyms-nokaslr.txt",
    "linux6.12-arm32": DATA / "symbols" / "qemu-a15-linux612-dom0-kallsyms.txt",
}
WHOLE_KALLSYMS = re.compile(r"^# md5sum /proc/kallsyms: ([0-9a-f]{32}) \((\d+) lines\)$", re.MULTILINE)
XEN_SYMBOL = re.compile(r"(?:PC:\s+|\[<)([0-9a-f]{8,16})>?\]?\s+(\S+\+0x[0-9a-f]+/0x[0-9a-f]+)")


@pytest.fixture(scope="module")
def image_paths() -> dict[str, Path]:
    images = Images()
    return {key: images.artifact(profile, name).path for key, (profile, name, _) in IMAGES.items()}


@pytest.fixture(scope="module")
def tables(image_paths) -> dict[str, SymbolTable]:
    return {key: SymbolTable.from_image(image_paths[key].read_bytes(), IMAGES[key][2]) for key in IMAGES}


def xen_printed(log: str) -> list[tuple[int, str]]:
    """(PC, symbol) of every symbolized address in a captured console log."""
    text = gzip.decompress((DEBUGKEYS / log).read_bytes()).decode()
    return [(int(pc, 16), sym) for pc, sym in XEN_SYMBOL.findall(text)]


@pytest.mark.parametrize(("key", "log"), [("xen-arm64", "qemu-virt-d0qreg.log.gz"),
                                          ("xen-arm32", "qemu-a15-hd0qreg.log.gz")])
def test_xen_names_pcs_as_xen_printed_them(tables, key, log):
    printed = xen_printed(log)
    assert len({pc for pc, _ in printed}) >= 2, "the captured dump should hold PCs and LRs"
    for pc, symbol in printed:
        assert tables[key].lookup(pc) == symbol


def kallsyms_rows(key: str) -> list[list[str]]:
    """(address, type, name) of each of dom0's /proc/kallsyms lines captured for image `key`."""
    return [line.split() for line in KALLSYMS[key].read_text().splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("key", list(KALLSYMS))
def test_linux_matches_dom0s_own_kallsyms(tables, key):
    table, rows = tables[key], kallsyms_rows(key)
    assert len(rows) >= 10
    for address, _, name in rows:
        addr = int(address, 16)
        if name in symbols.TEXT_ENDS:
            assert table.function(addr) is None  # the end of a text range names nothing
            continue
        found_name, start, size = table.function(addr + 4)
        assert start == addr and size > 4
        aliases = [n for a, _, n in rows if int(a, 16) == addr]
        assert found_name == aliases[0], "the first alias, as /proc/kallsyms lists them"


@pytest.mark.parametrize("key", list(KALLSYMS))
def test_the_whole_table_is_dom0s_kallsyms(tables, key):
    """/proc/kallsyms prints a line per symbol of this table, in its order: every address, type and name."""
    table, width = tables[key], len(kallsyms_rows(key)[0][0])
    digest, lines = WHOLE_KALLSYMS.search(KALLSYMS[key].read_text()).groups()
    printed = "".join(f"{table.address(i):0{width}x} {table.type(i)} {table.name(i)}\n" for i in range(len(table)))
    assert (len(table), hashlib.md5(printed.encode()).hexdigest()) == (int(lines), digest)


@pytest.mark.parametrize(("key", "pc", "printed"), [("linux-arm64", 0xFFFF800008BAF4F8, "cpu_do_idle+0x8/0x14"),
                                                    ("linux6.12-arm64", 0xFFFF800080D9A4B8, "clear_page+0x18/0x50")])
def test_a_kaslr_offset_moves_every_pc_alike(tables, key, pc, printed):
    assert tables[key].lookup(pc) == printed
    assert tables[key].lookup(pc + 0x1230000, offset=0x1230000) == printed


# qemu-a15's '0' dumps: dom0 vCPU0 at PC, R3 the idle function it was called through (cpu_do_idle is a
# pointer to it), SVC LR its caller: Linux 6.1 (debian12-armhf) and 6.12 (qemu-a15-linux612, debian13-armhf).
@pytest.mark.parametrize(("key", "pc", "r3", "lr", "caller"), [
    ("linux-arm32", 0xC041FCC8, 0xC041FCC0, 0xC04098C8, "arch_cpu_idle+"),
    ("linux6.12-arm32", 0xC041D548, 0xC041D540, 0xC10028DC, "default_idle_call+"),
])
def test_linux_arm32_names_a_real_dom0s_idle_pc(tables, key, pc, r3, lr, caller):
    table = tables[key]
    assert table.lookup(pc) == f"cpu_ca15_do_idle+{pc - r3:#x}/0xc"
    assert table.function(r3) == ("cpu_ca15_do_idle", r3, 0xC)
    assert table.lookup(lr).startswith(caller)


@pytest.mark.parametrize("key", list(IMAGES))
def test_a_table_is_whole_and_only_text_names_pcs(tables, key):
    table = tables[key]
    assert len(table) > 2000
    addresses = [table.address(i) for i in range(len(table))]
    assert addresses == sorted(addresses)
    assert all(table.type(i) in "tTwWdDrRbBaAvV" for i in range(0, len(table), 97))
    assert table.lookup(addresses[0] - 1) is None
    assert table.lookup(addresses[-1] + 0x1000) is None
    etext = next(i for i in range(len(table)) if table.name(i) == "_etext")
    assert table.lookup(table.address(etext) + 4) is None, "past the end of text"


def test_static_functions_carry_their_file_in_xen(tables):
    names = [tables["xen-arm64"].name(i) for i in range(len(tables["xen-arm64"]))]
    assert "domain.c#idle_loop" in names and "start_xen" in names


def test_parsing_is_quick(image_paths):
    for key in ("xen-arm64", "linux-arm64", "linux6.12-arm64"):
        data = image_paths[key].read_bytes()
        t0 = time.perf_counter()
        SymbolTable.from_image(data, IMAGES[key][2])
        assert time.perf_counter() - t0 < 2.0, f"{key}: parsing took {time.perf_counter() - t0:.2f} s"


# --- the cache ----------------------------------------------------------------------------------


def test_a_table_is_cached_by_the_images_sha256(image_paths, tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    first = table_for(image_paths["xen-arm64"], "xen", cache)
    entries = list((tmp_path / symbols.CACHE_KIND).iterdir())
    assert len(entries) == 2 and any(p.name.endswith(".sha256") for p in entries)

    def no_parse(*_):
        raise AssertionError("a cached table was parsed again")

    monkeypatch.setattr(SymbolTable, "from_image", no_parse)
    t0 = time.perf_counter()
    again = table_for(image_paths["xen-arm64"], "xen", cache)
    assert time.perf_counter() - t0 < 0.5
    assert len(again) == len(first)
    assert again.lookup(0x25B0C8) == first.lookup(0x25B0C8) == "domain.c#idle_loop+0x128/0x140"


def test_a_damaged_cache_entry_is_parsed_again(image_paths, tmp_path):
    cache = Cache(tmp_path)
    table_for(image_paths["xen-arm32"], "xen", cache)
    entry = next(p for p in (tmp_path / symbols.CACHE_KIND).iterdir() if not p.name.endswith(".sha256"))
    entry.write_bytes(entry.read_bytes()[:-10])
    assert table_for(image_paths["xen-arm32"], "xen", cache).lookup(0x258BBC) == "domain.c#idle_loop+0x138/0x150"


def test_an_image_that_is_not_what_its_sha256_says(image_paths, tmp_path):
    with pytest.raises(UnusableInput) as exc:
        table_for(image_paths["xen-arm32"], "xen", Cache(tmp_path), sha256="0" * 64)
    assert "SHA256" in one_sentence(exc)
    with pytest.raises(UnusableInput) as exc:
        table_for(tmp_path / "no-such-image", "xen", Cache(tmp_path))
    assert "cannot be read" in one_sentence(exc)


def test_the_cached_form_reads_back_or_not_at_all(tables):
    table = tables["xen-arm64"]
    data = table.to_bytes()
    again = SymbolTable.from_bytes(data)
    assert [again.name(i) for i in range(len(again))] == [table.name(i) for i in range(len(table))]
    for broken in (b"", b"junk", data[:-1], data + b"x", data.replace(b'"format": 1', b'"format": 0', 1)):
        assert SymbolTable.from_bytes(broken) is None


# --- what is not an image with a table ----------------------------------------------------------


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
    return message


def test_random_bytes(tmp_path):
    noise = random.Random(4).randbytes(1 << 20)
    for kind in ("xen", "linux"):
        with pytest.raises(UnusableInput) as exc:
            SymbolTable.from_image(noise, kind)
        assert "no " in one_sentence(exc)
    with pytest.raises(UnusableInput):
        SymbolTable.from_image(b"", "xen")


@pytest.mark.parametrize("key", list(IMAGES))
def test_a_truncated_image(image_paths, key):
    data = image_paths[key].read_bytes()
    with pytest.raises(UnusableInput) as exc:
        SymbolTable.from_image(data[: len(data) // 2], IMAGES[key][2])
    one_sentence(exc)


@pytest.mark.parametrize("key", ["xen-arm64", "linux-arm64"])
def test_a_corrupted_token_table(image_paths, key):
    data = bytearray(image_paths[key].read_bytes())
    anchor = data.find(b"\x000\x001\x002\x00")
    while anchor >= 0:  # the token table's digits, and whatever else looks like them
        data[anchor - 40 : anchor + 40] = b"\xff" * 80  # tokens run into each other
        anchor = data.find(b"\x000\x001\x002\x00", anchor)
    with pytest.raises(UnusableInput) as exc:
        SymbolTable.from_image(bytes(data), IMAGES[key][2])
    assert "no " in one_sentence(exc)


def test_a_corrupted_token_index(image_paths):
    data = bytearray(image_paths["xen-arm32"].read_bytes())
    end = data.find(b"\x000\x001\x002\x00") + 1
    for _ in range(ord("0"), 256):  # over tokens '0'..255: token_index follows, after alignment zeros
        end = data.index(b"\0", end) + 1
    index_at = end + 2 * next(i for i in range(64) if data[end + 2 * i + 2 : end + 2 * i + 4] != b"\0\0")
    assert data[index_at : index_at + 2] == b"\0\0"
    swapped = index_at + 2 * 50  # token_index[50] and [51] change places
    data[swapped : swapped + 4] = data[swapped + 2 : swapped + 4] + data[swapped : swapped + 2]
    with pytest.raises(UnusableInput):
        SymbolTable.from_image(bytes(data), "xen")


def test_linux_6_12s_addresses_garbled_or_cut(tables, image_paths):
    """Linux from 6.4 keeps its offsets after token_index: offsets that fall, or an image that ends in
    them, are no table, said in one sentence."""
    table, data = tables["linux6.12-arm64"], image_paths["linux6.12-arm64"].read_bytes()
    offsets = [table.address(i) - table.address(0) for i in range(len(table))]
    at = data.find(struct.pack("<256I", *offsets[:256]))
    assert at > 0, "the 6.12 arm64 Image (not compressed) holds its offsets as they are"
    middle = at + 4 * (len(offsets) // 2)
    falling = data[:middle] + b"\xff" * 4 + data[middle + 4 :]  # one offset past all that follow it
    for broken in (falling, data[:middle]):
        with pytest.raises(UnusableInput) as exc:
            SymbolTable.from_image(broken, "linux")
        assert "no Linux symbol table (kallsyms_*)" in one_sentence(exc)


def test_a_zimage_without_a_kernel_inside(image_paths):
    zimage = bytearray(image_paths["linux-arm32"].read_bytes())
    zimage[0x40:] = bytes(len(zimage) - 0x40)
    with pytest.raises(UnusableInput) as exc:
        SymbolTable.from_image(bytes(zimage), "linux")
    assert "xz" in one_sentence(exc)


def test_a_gzipd_image_is_read(image_paths):
    data = image_paths["xen-arm64"].read_bytes()
    table = SymbolTable.from_image(gzip.compress(data, 1), "xen")
    assert table.lookup(0x25B0C8) == "domain.c#idle_loop+0x128/0x140"
