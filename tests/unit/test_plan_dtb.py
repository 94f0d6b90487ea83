"""The boot DTB and its blob layout, against the real Xen image, real QEMU and real libfdt/dtc.

Where QEMU puts Xen and its own DTB is measured, not assumed: QEMU is started stopped (`-S`) with the
image as `-kernel`, and its monitor's `info roms` says where every blob landed.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import libfdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import UnusableInput, UsageError
from harness.images import Images, load_lock
from harness.plan.dtb import (
    ALIGN,
    Domain,
    MiB,
    Module,
    build_boot_dtb,
    layout,
    memory_bank,
    packed,
    place,
    qemu_dtb_window,
    xen_footprint,
)

DATA = Path(__file__).parent / "data"
HOST_DTB = DATA / "qemu-virt-gicv3-host.dtb"
QEMU = "qemu-system-aarch64"
ROM = re.compile(r'addr=([0-9a-f]+) size=0x([0-9a-f]+) mem=ram name="([^"]*)"')


# --- helpers ------------------------------------------------------------------------------------


def qemu_roms(kernel: Path, cpu: str = "cortex-a57", memory: str = "2048M") -> dict[str, tuple[int, int]]:
    """name -> (address, size) of every blob QEMU's direct kernel boot put in RAM, from `info roms`."""
    cmd = [QEMU, "-S", "-machine", "virt", "-cpu", cpu, "-m", memory, "-display", "none", "-nic", "none",
           "-serial", "none", "-monitor", "stdio", "-kernel", str(kernel)]
    proc = subprocess.run(cmd, input="info roms\nquit\n", capture_output=True, text=True, timeout=60)
    roms = {name: (int(addr, 16), int(size, 16)) for addr, size, name in ROM.findall(proc.stdout)}
    assert str(kernel) in roms, f"QEMU did not load {kernel}: stdout {proc.stdout[-500:]!r} stderr {proc.stderr!r}"
    return roms


def arm64_image(text_offset: int, image_size: int, length: int = 4096) -> bytes:
    """An arm64 Image header (Linux's Documentation/arch/arm64/booting.rst) padded to `length`."""
    header = struct.pack("<IIQQQQQQ4sI", 0x14000010, 0, text_offset, image_size, 0xA, 0, 0, 0, b"ARM\x64", 0)
    return header + bytes(length - len(header))


def zimage(length: int = 8192) -> bytes:
    """An arm32 zImage: magic 0x016f2818 at 0x24, then the start and end of the image."""
    data = bytearray(length)
    struct.pack_into("<III", data, 0x24, 0x016F2818, 0, length)
    return bytes(data)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def span(module: Module) -> tuple[int, int]:
    return module.addr, module.addr + module.size


@pytest.fixture(scope="session")
def xen() -> bytes:
    """The pinned Debian Xen image, from the harness's own verified cache (fetched when missing)."""
    return Images().fetch(load_lock()["debian12-arm64"]["xen"]).read_bytes()


@pytest.fixture(scope="session")
def xen_path(xen, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xen") / "xen"
    path.write_bytes(xen)
    return path


@pytest.fixture(scope="session")
def machine() -> bytes:
    return HOST_DTB.read_bytes()


# --- where Xen lands ----------------------------------------------------------------------------


def test_real_xen_footprint_is_where_qemu_loads_it(xen, xen_path, machine):
    base, _ = memory_bank(machine)
    start, end = xen_footprint(xen, base)
    loaded, size = qemu_roms(xen_path)[str(xen_path)]
    assert start == loaded, f"expected Xen at QEMU's load address {loaded:#x}, found {start:#x}"
    assert start == base + 2 * MiB, f"expected {base + 2 * MiB:#x} (text_offset 0 moves up 2 MiB), found {start:#x}"
    image_size = struct.unpack_from("<Q", xen, 16)[0]
    expected_end = start + max(image_size, len(xen))
    assert end == expected_end, f"expected end {expected_end:#x} (header image_size {image_size:#x}), found {end:#x}"
    assert end >= loaded + size, f"expected the footprint to cover QEMU's {size:#x} bytes, found end {end:#x}"


@pytest.mark.parametrize(
    ("text_offset", "image_size"),
    [(0, 0), (0x80000, 0), (0x80000, 0x300000), (0, 0x300000), (0x800, 0x300000), (0x1000, 0x300000)],
    ids=["no-size", "offset-without-size", "offset-and-size", "zero-offset", "inside-boot-stub", "above-stub"],
)
def test_arm64_header_footprint_matches_qemu(tmp_path, text_offset, image_size):
    image = arm64_image(text_offset, image_size)
    path = tmp_path / "Image"
    path.write_bytes(image)
    loaded, size = qemu_roms(path)[str(path)]
    start, end = xen_footprint(image, 0x40000000)
    assert start == loaded, f"expected QEMU's load address {loaded:#x}, found {start:#x}"
    expected_end = start + max(image_size, len(image))
    assert end == expected_end, f"expected end {expected_end:#x}, found {end:#x}"
    assert end >= loaded + size


def test_zimage_footprint_matches_qemu(tmp_path):
    image = zimage()
    path = tmp_path / "zImage"
    path.write_bytes(image)
    loaded, size = qemu_roms(path, cpu="cortex-a15")[str(path)]
    start, end = xen_footprint(image, 0x40000000)
    assert start == loaded, f"expected QEMU's 32-bit load address {loaded:#x}, found {start:#x}"
    assert end == loaded + size == start + len(image)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x7fELF" + bytes(200), bytes(64), b"ARM\x64" * 8, bytes(0x24)],
    ids=["empty", "elf-xen-syms", "zeros", "magic-misplaced", "short-for-zimage"],
)
def test_footprint_rejects_what_is_not_an_image(data):
    with pytest.raises(UnusableInput, match=r"neither an arm64 Image nor an arm32 zImage.*xen-syms"):
        xen_footprint(data, 0x40000000)


# --- the RAM bank and QEMU's DTB window ---------------------------------------------------------


def test_memory_bank_of_the_real_machine_dt(machine, tmp_path):
    path = tmp_path / "machine.dtb"
    path.write_bytes(machine)
    out = subprocess.run(["fdtget", "-t", "x", str(path), "/memory@40000000", "reg"],
                         capture_output=True, text=True, check=True).stdout.split()
    cells = [int(c, 16) for c in out]
    expected = ((cells[0] << 32) | cells[1], (cells[2] << 32) | cells[3])
    assert memory_bank(machine) == expected, f"expected {expected}, found {memory_bank(machine)}"


def test_memory_bank_missing_is_a_usage_error(machine):
    fdt = libfdt.Fdt(bytearray(machine))
    fdt.del_node(fdt.path_offset("/memory@40000000"))
    with pytest.raises(UsageError, match=r"no /memory node: give the board's own DTB, or check the target's QEMU"):
        memory_bank(bytes(fdt.as_bytearray()))


@pytest.mark.parametrize("memory", ["2048M", "128M"])
def test_qemu_dtb_window_holds_the_dtb_qemu_places(xen_path, memory):
    roms = qemu_roms(xen_path, memory=memory)
    ram = (0x40000000, int(memory.removesuffix("M")) * MiB)
    window = qemu_dtb_window(ram)
    addr, size = roms["dtb"]
    assert window[0] <= addr and addr + size <= window[1], (
        f"expected QEMU's DTB inside {window[0]:#x}-{window[1]:#x}, found {addr:#x}+{size:#x}"
    )


# --- placement ----------------------------------------------------------------------------------


def test_layout_real_xen_places_modules_clear_of_everything(machine, xen):
    ram = memory_bank(machine)
    window = qemu_dtb_window(ram)
    _, xen_end = xen_footprint(xen, ram[0])
    # A kernel that ends 1 MiB below the DTB window: the next 2 MiB slot for the ramdisk is the window itself.
    first_slot = (xen_end + ALIGN - 1) // ALIGN * ALIGN
    wanted = [Module("kernel", "k", window[0] - first_slot - 1 * MiB, "console=hvc0"), Module("ramdisk", "r", 5 * MiB)]
    kern, rd = layout(machine, xen, wanted)
    assert kern.addr == first_slot, f"expected the kernel at {first_slot:#x}, found {kern.addr:#x}"
    assert rd.addr == window[1], f"expected the ramdisk past the DTB window, at {window[1]:#x}, found {rd.addr:#x}"
    assert not overlaps(span(rd), window) and not overlaps(span(kern), window)
    assert (kern.bootargs, rd.bootargs) == ("console=hvc0", None)


def layout_problems(modules: list[Module], ram, xen_span, window) -> list[str]:
    """Every way `modules` break the layout rules (empty when the layout is sound)."""
    problems = []
    for i, m in enumerate(modules):
        if m.addr % ALIGN:
            problems.append(f"{m.path} at {m.addr:#x}: expected 2 MiB alignment")
        if not (ram[0] <= m.addr and m.addr + m.size <= ram[0] + ram[1]):
            problems.append(f"{m.path} at {m.addr:#x}+{m.size:#x}: expected inside RAM {ram[0]:#x}+{ram[1]:#x}")
        if overlaps(span(m), (ram[0], xen_span[1])):
            problems.append(f"{m.path} at {m.addr:#x}: expected clear of QEMU's stub and Xen, up to {xen_span[1]:#x}")
        if overlaps(span(m), window):
            problems.append(f"{m.path} at {m.addr:#x}: expected clear of QEMU's DTB window {window[0]:#x}")
        problems += [f"{m.path} overlaps {o.path}" for o in modules[i + 1 :] if overlaps(span(m), span(o))]
    return problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=900 * MiB), min_size=1, max_size=5))
def test_layout_invariants(machine, xen, sizes):
    ram = memory_bank(machine)
    xen_span = xen_footprint(xen, ram[0])
    window = qemu_dtb_window(ram)
    wanted = [Module("kernel" if i == 0 else "ramdisk", f"blob{i}", size) for i, size in enumerate(sizes)]
    try:
        modules = layout(machine, xen, wanted)
    except UsageError as exc:
        # Refused only when the set would not fit even in the RAM above the DTB window alone.
        room = ram[0] + ram[1] - window[1]
        assert sum(sizes) + ALIGN * len(sizes) > room, f"refused {sizes} with {room:#x} bytes free: {exc}"
        return
    assert [m.size for m in modules] == sizes
    assert layout_problems(modules, ram, xen_span, window) == []


def test_layout_problems_are_seen_when_nothing_is_reserved(machine, xen):
    ram = memory_bank(machine)
    window = qemu_dtb_window(ram)
    first = window[0] - ram[0] - 1 * MiB  # the second module's first slot is QEMU's DTB window
    careless = place([Module("kernel", "k", first), Module("ramdisk", "r", 1 * MiB)], ram, [])
    problems = layout_problems(careless, ram, xen_footprint(xen, ram[0]), window)
    assert any("clear of QEMU's stub and Xen" in p for p in problems), problems
    assert any("DTB window" in p for p in problems), problems
    misaligned = [Module("kernel", "k", 4 * MiB, addr=ram[0] + ram[1] - 3 * MiB)]
    assert len(layout_problems(misaligned, ram, (ram[0], ram[0]), (0, 0))) == 2  # unaligned and past RAM


def test_place_refuses_a_module_too_big_with_a_sentence():
    ram = (0x40000000, 256 * MiB)
    with pytest.raises(UsageError) as info:
        place([Module("kernel", "/images/vmlinuz", 255 * MiB)], ram, [(ram[0], ram[0] + 4 * MiB)])
    message = str(info.value)
    assert "/images/vmlinuz" in message and str(255 * MiB) in message, message
    assert message.endswith("give the target more memory.") and "\n" not in message, message


def test_place_second_module_refused_when_the_first_took_the_room():
    ram = (0x40000000, 64 * MiB)
    fits = place([Module("kernel", "k", 40 * MiB)], ram, [])
    assert fits[0].addr == ram[0]
    with pytest.raises(UsageError, match=r"^r \(41943040 bytes\) does not fit"):
        place([Module("kernel", "k", 40 * MiB), Module("ramdisk", "r", 40 * MiB)], ram, [])


# --- the boot DTB -------------------------------------------------------------------------------


def strings(fdt: libfdt.Fdt, node: int, prop: str) -> list[str]:
    return fdt.getprop(node, prop).as_stringlist()


def subnodes(fdt: libfdt.Fdt, parent: int) -> dict[str, int]:
    found = {}
    node = fdt.first_subnode(parent, [libfdt.NOTFOUND])
    while node >= 0:
        found[fdt.get_name(node)] = node
        node = fdt.next_subnode(node, [libfdt.NOTFOUND])
    return found


@pytest.fixture
def boot(machine, xen) -> tuple[bytes, list[Module]]:
    modules = layout(machine, xen, [Module("kernel", "/k", 30 * MiB, "console=hvc0 guest=dom0"),
                                    Module("ramdisk", "/r", 3 * MiB + 5)])
    return build_boot_dtb(machine, "dom0_mem=512M loglvl=all", modules), modules


def test_boot_dtb_chosen_and_modules(boot):
    blob, modules = boot
    fdt = libfdt.Fdt(blob)
    chosen = fdt.path_offset("/chosen")
    assert fdt.getprop(chosen, "#address-cells").as_uint32() == 2
    assert fdt.getprop(chosen, "#size-cells").as_uint32() == 2
    assert fdt.getprop(chosen, "xen,xen-bootargs").as_str() == "dom0_mem=512M loglvl=all"
    assert fdt.getprop(chosen, "stdout-path").as_str() == "/pl011@9000000", "the machine's /chosen was lost"
    nodes = {name: node for name, node in subnodes(fdt, chosen).items() if name.startswith("module@")}
    assert sorted(nodes) == sorted(f"module@{m.addr:x}" for m in modules)
    for m in modules:
        node = nodes[f"module@{m.addr:x}"]
        compatible = bytes(fdt.getprop(node, "compatible"))
        assert compatible == f"multiboot,{m.kind}\0multiboot,module\0".encode(), f"found {compatible!r}"
        assert struct.unpack(">QQ", bytes(fdt.getprop(node, "reg"))) == (m.addr, m.size)
        has_args = fdt.getprop(node, "bootargs", [libfdt.NOTFOUND])
        if m.kind == "kernel":
            assert has_args.as_str() == "console=hvc0 guest=dom0"
        else:
            assert has_args == -libfdt.NOTFOUND, "the ramdisk must not carry bootargs"


def test_boot_dtb_domains_and_their_modules(machine):
    domain = Domain("domU1", {"direct-map": True, "cpus": 2, "memory": [0, 0x40000], "vpl011": True,
                              "xen,enhanced": "enabled"})
    modules = [
        Module("kernel", "/k", 4 * MiB, "console=ttyAMA0", "/chosen/domU1", 0x50000000),
        Module("ramdisk", "/r", 1 * MiB, None, "/chosen/domU1", 0x50400000),
    ]
    fdt = libfdt.Fdt(build_boot_dtb(machine, "x", modules, [domain]))
    node = fdt.path_offset("/chosen/domU1")
    assert bytes(fdt.getprop(node, "direct-map")) == b"" and bytes(fdt.getprop(node, "vpl011")) == b""
    assert fdt.getprop(node, "cpus").as_uint32() == 2
    assert fdt.getprop(node, "memory").as_uint32_list() == [0, 0x40000]
    assert fdt.getprop(node, "xen,enhanced").as_str() == "enabled"
    kernel = fdt.path_offset("/chosen/domU1/module@50000000")
    assert strings(fdt, kernel, "compatible") == ["multiboot,kernel", "multiboot,module"]
    assert fdt.getprop(kernel, "bootargs").as_str() == "console=ttyAMA0"
    assert struct.unpack(">QQ", bytes(fdt.getprop(fdt.path_offset("/chosen/domU1/module@50400000"), "reg"))) == (
        0x50400000, 1 * MiB)
    dom0_nodes = subnodes(fdt, fdt.path_offset("/chosen"))
    assert not any(n.startswith("module@") for n in dom0_nodes), f"dom0 got domU's modules: {sorted(dom0_nodes)}"


def dtc_warnings(blob: bytes, path: Path) -> list[str]:
    path.write_bytes(blob)
    cmd = ["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"dtc rejected {path.name}: {proc.stderr}"
    return [ln for ln in proc.stderr.splitlines() if "Warning" in ln]


def test_dtc_accepts_the_boot_dtb_without_new_warnings(boot, machine, tmp_path):
    before = dtc_warnings(machine, tmp_path / "machine.dtb")
    after = dtc_warnings(boot[0], tmp_path / "boot.dtb")
    assert set(after) <= set(before), f"expected no new dtc warnings, found {sorted(set(after) - set(before))}"


def test_dtc_rejects_a_broken_blob(boot, tmp_path):
    path = tmp_path / "broken.dtb"
    path.write_bytes(boot[0][: len(boot[0]) // 2])
    proc = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null", str(path)], capture_output=True)
    assert proc.returncode != 0, "the dtc check would not notice a bad blob"


def test_packed_shrinks_a_padded_blob_and_keeps_it_valid(machine):
    fdt = libfdt.Fdt(bytearray(machine))
    fdt.resize(1 * MiB)  # as QEMU's dumpdtb pads it
    padded = bytes(fdt.as_bytearray())
    assert len(padded) == 1 * MiB
    small = packed(padded)
    assert len(small) < 16384, f"expected the free space gone, found {len(small)} bytes"
    assert libfdt.Fdt(small).totalsize() == len(small)
    assert memory_bank(small) == memory_bank(machine)
    assert packed(small) == small, "packing a packed blob changed it"
