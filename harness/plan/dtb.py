"""The boot device tree: the machine's own DT plus Xen's boot modules under /chosen.

Xen finds its dom0 kernel and ramdisk (and, for dom0less, each domU's) through `multiboot,module`
nodes (Xen's docs/misc/arm/device-tree/booting.txt). The blobs themselves are loaded by QEMU's
generic loader at addresses computed here from their sizes: 2 MiB aligned, inside RAM, clear of
Xen's own image and of the window where QEMU puts the DTB it hands to Xen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import libfdt

from ..errors import UnusableInput, UsageError
from ..images import Artifact
from ..targets import GuestSpec, TargetSpec
from ..validate.dt import memory_regions

MiB = 1 << 20
ALIGN = 2 * MiB
QEMU_DTB_WINDOW = 2 * MiB  # room for QEMU's copy of our DTB, which it may grow a little

ARM64_IMAGE_MAGIC = b"ARM\x64"
ARM64_DEFAULT_OFFSET = 0x80000
QEMU_BOOTLOADER_MAX = 0x1000
ZIMAGE_MAGIC = 0x016F2818
ZIMAGE_LOAD_OFFSET = 0x10000  # where QEMU puts a 32-bit kernel above the RAM base (hw/arm/boot.c)


@dataclass(frozen=True)
class Module:
    """One blob Xen boots: a kernel (with its command line) or a ramdisk."""

    kind: str  # "kernel" or "ramdisk"
    path: str
    size: int
    bootargs: str | None = None
    parent: str = "/chosen"  # /chosen for dom0; /chosen/domU1 … for a dom0less guest
    addr: int = 0

    @property
    def compatible(self) -> list[str]:
        return [f"multiboot,{self.kind}", "multiboot,module"]


@dataclass(frozen=True)
class Domain:
    """A dom0less guest node under /chosen (xen,domain)."""

    name: str  # "domU1"
    properties: dict[str, int | str | bool | list[int]] = field(default_factory=dict)


def align_up(value: int, align: int = ALIGN) -> int:
    return (value + align - 1) // align * align


def packed(dtb: bytes) -> bytes:
    """The same tree without free space (QEMU pads the DTBs it dumps to 1 MiB)."""
    fdt = libfdt.Fdt(bytearray(dtb))
    fdt.pack()
    return bytes(fdt.as_bytearray())


def memory_bank(machine_dtb: bytes) -> tuple[int, int]:
    """(base, size) of the first RAM bank of the machine's DT, read with its root's #address-cells and
    #size-cells (a 32-bit board's are often 1 and 1)."""
    banks = memory_regions(machine_dtb)
    if not banks:
        raise UsageError("the machine's device tree has no /memory node: give the board's own DTB, "
                         "or check the target's QEMU options.")
    return banks[0].start, banks[0].size


def xen_image(xen: bytes) -> tuple[str, int]:
    """("arm64", bytes it occupies once loaded) for an arm64 Image, ("arm32", …) for a zImage, from its
    header; anything else cannot be booted."""
    if xen[56:60] == ARM64_IMAGE_MAGIC:
        image_size = struct.unpack_from("<Q", xen, 16)[0]
        return "arm64", max(image_size, len(xen))
    if len(xen) >= 0x30 and struct.unpack_from("<I", xen, 0x24)[0] == ZIMAGE_MAGIC:
        zstart, zend = struct.unpack_from("<II", xen, 0x28)
        return "arm32", max(zend - zstart, len(xen))
    raise UnusableInput(
        "the Xen image is neither an arm64 Image nor an arm32 zImage (no header magic): "
        "pass the `xen` file from your build, not xen-syms."
    )


def xen_footprint(xen: bytes, ram_base: int) -> tuple[int, int]:
    """[start, end) QEMU's direct kernel boot loads Xen into, from the image header."""
    kind, size = xen_image(xen)
    if kind == "arm64":
        # hw/arm/boot.c load_aarch64_image: text_offset counts only when image_size is set, and an
        # offset inside QEMU's own boot stub at the bottom of RAM is moved up by 2 MiB.
        text_offset, image_size = struct.unpack_from("<QQ", xen, 8)
        offset = ARM64_DEFAULT_OFFSET if image_size == 0 else text_offset
        if image_size and offset < QEMU_BOOTLOADER_MAX:
            offset += 2 * MiB
        return ram_base + offset, ram_base + offset + size
    return ram_base + ZIMAGE_LOAD_OFFSET, ram_base + ZIMAGE_LOAD_OFFSET + size


def place(modules: list[Module], ram: tuple[int, int], reserved: list[tuple[int, int]]) -> list[Module]:
    """Give every module a 2 MiB-aligned address in RAM outside `reserved`, lowest first."""
    base, size = ram
    taken = sorted(reserved)
    placed = []
    for module in modules:
        if module.size <= 0:
            raise UnusableInput(f"{module.path} is empty: a {module.kind} must be a non-empty file.")
        addr = align_up(base)
        for start, end in taken:
            if addr + module.size <= start:
                break
            addr = max(addr, align_up(end))
        if addr + module.size > base + size:
            raise UsageError(
                f"{module.path} ({module.size} bytes) does not fit in the RAM {base:#x}+{size:#x} beside the "
                "other blobs and what the firmware keeps: give the target more memory."
            )
        taken = sorted([*taken, (addr, addr + module.size)])
        placed.append(Module(module.kind, module.path, module.size, module.bootargs, module.parent, addr))
    return placed


def qemu_dtb_window(ram: tuple[int, int]) -> tuple[int, int]:
    # hw/arm/boot.c puts the DTB at RAM base + min(RAM/2, 128 MiB) when no -initrd is given.
    start = ram[0] + min(ram[1] // 2, 128 * MiB)
    return start, start + QEMU_DTB_WINDOW


def layout(machine_dtb: bytes, xen: bytes, modules: list[Module]) -> list[Module]:
    """Modules with addresses that overlap neither Xen, nor QEMU's DTB, nor each other."""
    ram = memory_bank(machine_dtb)
    xen_start, xen_end = xen_footprint(xen, ram[0])
    return place(modules, ram, [(ram[0], xen_end), qemu_dtb_window(ram)])


def build_boot_dtb(
    machine_dtb: bytes, xen_bootargs: str, modules: list[Module], domains: list[Domain] = ()
) -> bytes:
    """The machine DT with /chosen describing Xen's command line, its domains and their modules."""
    fdt = libfdt.Fdt(bytearray(machine_dtb))
    fdt.resize(fdt.totalsize() + 16384 + sum(len(m.bootargs or "") + 256 for m in modules))
    chosen = _node(fdt, 0, "chosen")
    fdt.setprop_u32(chosen, "#address-cells", 2)
    fdt.setprop_u32(chosen, "#size-cells", 2)
    fdt.setprop_str(chosen, "xen,xen-bootargs", xen_bootargs)
    for domain in domains:
        node = _node(fdt, chosen, domain.name)
        for name, value in domain.properties.items():
            _setprop(fdt, node, name, value)
    for module in modules:
        parent = fdt.path_offset(module.parent)
        node = _node(fdt, parent, f"module@{module.addr:x}")
        fdt.setprop(node, "compatible", b"".join(s.encode() + b"\0" for s in module.compatible))
        fdt.setprop(node, "reg", struct.pack(">QQ", module.addr, module.size))
        if module.bootargs is not None:
            fdt.setprop_str(node, "bootargs", module.bootargs)
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _node(fdt: libfdt.Fdt, parent: int, name: str) -> int:
    offset = fdt.subnode_offset(parent, name, [libfdt.NOTFOUND])
    return offset if offset >= 0 else fdt.add_subnode(parent, name)


def _setprop(fdt: libfdt.Fdt, node: int, name: str, value: int | str | bool | list[int]) -> None:
    if value is False:  # a DT boolean is true by being present: false means absent
        return
    if value is True:
        fdt.setprop(node, name, b"")
    elif isinstance(value, str):
        fdt.setprop_str(node, name, value)
    elif isinstance(value, int):
        fdt.setprop_u32(node, name, value)
    else:
        fdt.setprop(node, name, struct.pack(f">{len(value)}I", *value))


def xen_modules(spec: TargetSpec, images: dict[str, Artifact],
                omit: frozenset[str] = frozenset()) -> tuple[list[Module], list[Domain]]:
    """Every guest's kernel and ramdisk as Xen boot modules (dom0's under /chosen, a dom0less domU's
    under /chosen/<name>), without addresses yet; and the dom0less domains' own nodes."""
    kernel, initrd = images["kernel"].path, images["initrd"].path
    modules, domains = [], []
    for g in spec.guests:
        parent = "/chosen" if g.domid == 0 else f"/chosen/{g.name}"
        guest = [Module("kernel", str(kernel), kernel.stat().st_size, g.cmdline, parent),
                 Module("ramdisk", str(initrd), initrd.stat().st_size, None, parent)]
        if g.domid == 0:
            guest = [m for m in guest if m.kind not in omit]
        else:
            domains.append(Domain(g.name, dom0less_properties(g)))
        modules += guest
    return modules, domains


def dom0less_properties(g: GuestSpec) -> dict:
    """A dom0less domU's /chosen node (Xen's docs/misc/arm/device-tree/booting.txt)."""
    props: dict = {
        "compatible": "xen,domain",
        "#address-cells": 2,
        "#size-cells": 2,
        "memory": [0, g.memory_kb],
        "cpus": g.cpus,
        "vpl011": g.vpl011,
    }
    if g.enhanced is not None:
        props["xen,enhanced"] = g.enhanced
    return props
