"""Validate the ``/hypervisor`` node Xen writes into an Arm guest's device tree.

The node is how a DT-booted guest finds Xen: Linux (arch/arm/xen/enlighten.c) looks for a
depth-1 node named exactly ``hypervisor``, reads the Xen version from the first
``compatible`` string, takes ``reg[0]`` as the grant-table frames, ``reg[1..]`` as extended
regions for foreign mappings, and ``interrupts[0]`` as the event-channel PPI. The binding is
Xen's docs/misc/arm/device-tree/guest.txt; the domU constants are from
xen/include/public/arch-arm.h; the ACPI dom0 layout from xen/arch/arm/acpi/domain_build.c.

Parsing is libfdt's (pylibfdt): a blob must pass ``fdt_check_full`` before any node is read,
so a corrupt input becomes :class:`UnusableInput` and never a crash. Everything wrong *inside*
a readable tree is a :class:`Finding` with a stable rule id listed in :data:`RULES`.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import libfdt

from harness import inputs
from harness.errors import UnusableInput
from harness.findings import MAX_PER_RULE, Finding, Severity, capped

PROFILES = ("dom0", "domU", "acpi-dom0")

RULES: dict[str, str] = {
    "dt.tree.depth": "the tree nests deeper than the walker's limit; nodes below it were not checked",
    "dt.node.count": "exactly one depth-1 node named 'hypervisor' (none: the guest will not detect Xen)",
    "dt.node.unit-address": "the node is named bare 'hypervisor'; Linux ignores 'hypervisor@...'",
    "dt.node.stray": "no other node is compatible with 'xen,xen' (Linux may read it instead)",
    "dt.compatible.missing": "the node has a compatible property made of NUL-terminated strings",
    "dt.compatible.order": 'compatible is exactly "xen,xen-<major>.<minor>" then "xen,xen"',
    "dt.compatible.version": "the version in compatible matches the Xen that booted",
    "dt.reg.missing": "the node has a non-empty reg (dom0/domU: the grant table is reg[0])",
    "dt.reg.cells": "the root's #address-cells/#size-cells are single cells in 1..4 (defaults 2/1)",
    "dt.reg.length": "reg is a whole number of (#address-cells + #size-cells) entries",
    "dt.reg.grant.empty": "the grant table region reg[0] has a non-zero size",
    "dt.reg.grant.align": "the grant table region reg[0] starts and ends on a 4 KiB page boundary",
    "dt.ext.align": "each extended region reg[1..] starts and ends on a 2 MiB boundary",
    "dt.ext.min-size": "each extended region is at least 64 MiB (Xen drops smaller holes)",
    "dt.ext.overlap": "extended regions overlap neither each other nor the grant table",
    "dt.ext.ram": "extended regions overlap no /memory bank (the guest's own RAM)",
    "dt.ext.reserved": "extended regions overlap no /reserved-memory region",
    "dt.ext.device": "extended regions overlap no device's reg (translated through bus ranges)",
    "dt.ext.bus-window": "extended regions overlap no bus ranges window (e.g. PCI MMIO, where BARs go)",
    "dt.ext.32bit": "a 32-bit domain (--arch, else its CPUs' compatible) gets no extended regions, in every profile",
    "dt.irq.missing": "the node has an interrupts property (the event-channel PPI)",
    "dt.irq.cells": "interrupts is exactly three cells <type number flags>",
    "dt.irq.type": "interrupts cell 0 is 1: the event channel is a PPI",
    "dt.irq.ppi-range": "interrupts cell 1 is a PPI number 0..15 (INTID 16..31)",
    "dt.irq.trigger": "interrupts flags & 0xf is 8 (IRQ_TYPE_LEVEL_LOW), usually 0xf08",
    "dt.irq.parent": "interrupt-parent (own, else inherited) is a phandle of an existing node",
    "dt.irq.parent.gic": "the node interrupt-parent names is a GIC (interrupt-controller, GIC compatible, 3 cells); "
    "a node that is not is named, even when Linux would walk on past it",
    "dt.dom0.grant": "dom0: reg[0] equals the grant table range Xen logged",
    "dt.dom0.ext": "dom0: reg[1..] equal the extended regions Xen logged, in order",
    "dt.dom0.irq": "dom0: the event-channel INTID equals the PPI Xen logged",
    "dt.domU.grant": "domU: reg[0] is GUEST_GNTTAB_BASE 0x38000000 size 0x01000000 (and what Xen logged)",
    "dt.domU.ext": "domU: reg[1..] equal the extended regions Xen logged, in order",
    "dt.domU.irq": "domU: interrupts is <1 15 0xf08>, GUEST_EVTCHN_PPI INTID 31 (and what Xen logged)",
    "dt.acpi.reg": "acpi-dom0: the node has no reg (the grant table comes from a hypercall)",
    "dt.acpi.irq": "acpi-dom0: the node has no interrupts (the event channel is in ACPI)",
    "dt.acpi.uefi": "acpi-dom0: a 'uefi' child carries the five xen,uefi-* properties, well formed",
}

KiB = 1 << 10
MiB = 1 << 20
PAGE_SIZE = 4 * KiB
EXT_ALIGN = 2 * MiB  # Xen rounds extended regions to 2 MiB (domain_build.c add_ext_regions)
EXT_MIN_SIZE = 64 * MiB  # Xen skips holes smaller than this
PPI_BASE = 16
IRQ_TYPE_LEVEL_LOW = 0x8
IRQ_TYPE_NAMES = {
    0: "none",
    1: "edge-rising",
    2: "edge-falling",
    3: "edge-both",
    4: "level-high",
    8: "level-low",
}
GUEST_EVTCHN_PPI = 31  # xen/include/public/arch-arm.h
GUEST_IRQ_CELLS = (1, GUEST_EVTCHN_PPI - PPI_BASE, 0xF08)
GIC_COMPATIBLES = (  # what Linux's GIC drivers match (irq-gic.c, irq-gic-v3.c): the GICs a guest may be given
    "arm,gic-v3",
    "arm,cortex-a15-gic",
    "arm,gic-400",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
    "arm,arm11mp-gic",
    "arm,arm1176jzf-devchip-gic",
    "arm,pl390",
    "qcom,msm-8660-qgic",
    "qcom,msm-qgic2",
)
UEFI_PROPS = (
    "xen,uefi-system-table",
    "xen,uefi-mmap-start",
    "xen,uefi-mmap-size",
    "xen,uefi-mmap-desc-size",
    "xen,uefi-mmap-desc-ver",
)
EFI_MEMORY_DESCRIPTOR_SIZE = 40  # sizeof(EFI_MEMORY_DESCRIPTOR); Xen passes exactly this
MAX_DEPTH = 64  # real trees nest < 10 deep; a deeper one is hostile or corrupt
MAX_LISTED = 3  # overlaps named per finding; the rest are counted
MAX_SHOWN = 8  # regions shown in a finding's text; a longer list is counted
# CPUs that implement only AArch32 (ARMv7 and older): a domain on them is 32-bit. An ARMv8 CPU (Xen and libxl
# write "arm,armv8" into a guest's tree) runs 32-bit domains too, so a tree with one cannot tell: --arch can.
ARM32_ONLY_CPUS = frozenset({
    "arm,cortex-a5", "arm,cortex-a7", "arm,cortex-a8", "arm,cortex-a9", "arm,cortex-a12", "arm,cortex-a15",
    "arm,cortex-a17", "arm,arm1176jzf-s", "arm,arm11mpcore", "arm,arm926ej-s", "brcm,brahma-b15", "marvell,pj4b",
    "qcom,krait", "qcom,scorpion",
})
_VERSION_RE = re.compile(r"xen,xen-(\d+)\.(\d+)")
_EXPECT_VERSION_RE = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class Region:
    """One reg entry; ``end`` is exclusive, like Xen's "start->end" log lines."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: Region) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end:#x}"


@dataclass(frozen=True)
class HypervisorNode:
    """What the node says, decoded; for reports."""

    path: str
    compatible: tuple[str, ...]
    regions: tuple[Region, ...]  # reg decoded with the root's cells; [0] = grant table
    interrupts: tuple[int, ...] | None  # raw cells, None when absent
    event_intid: int | None  # 16 + cells[1] for a PPI (cells[0] == 1), else None

    @property
    def grant(self) -> Region | None:
        return self.regions[0] if self.regions else None

    @property
    def extended(self) -> tuple[Region, ...]:
        return self.regions[1:]

    def summary(self) -> dict:
        """What result.json keeps of the node: every reg region in order ([0] the grant table, then the
        extended regions), the interrupts' raw cells and the event INTID they name."""
        return {"path": self.path, "compatible": list(self.compatible), "reg": [str(r) for r in self.regions],
                "interrupts": None if self.interrupts is None else list(self.interrupts),
                "event_intid": self.event_intid}


@dataclass(frozen=True)
class Expectation:
    """What the booted Xen said it gave this guest; None = unknown, not checked."""

    xen_version: str | None = None  # "4.17"
    grant: Region | None = None
    extended: tuple[Region, ...] | None = None  # () means "none expected"
    event_intid: int | None = None
    is_32bit: bool | None = None  # a 32-bit domain gets no extended regions; None = as the tree says (domain_arch)


@dataclass(frozen=True)
class Arch:
    """Whether a domain is 32-bit, and what says so."""

    name: str  # "arm32" or "arm64"
    why: str  # "from /cpus: arm,cortex-a15", "given (--arch)"...

    @property
    def is_32bit(self) -> bool:
        return self.name == "arm32"


GUEST_GNTTAB = Region(0x38000000, 0x01000000)  # GUEST_GNTTAB_BASE, GUEST_GNTTAB_SIZE in arch-arm.h


# --- the tree, read once through libfdt -------------------------------------------------


@dataclass(eq=False)
class _Node:
    name: str
    path: str
    depth: int
    offset: int
    parent: _Node | None
    props: dict[str, bytes] = field(default_factory=dict)
    children: list[_Node] = field(default_factory=list)

    def u32(self, prop: str) -> int | None:
        raw = self.props.get(prop)
        return int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else None

    def strings(self, prop: str) -> list[str] | None:
        return _strings(self.props.get(prop))

    def ancestors(self) -> Iterator[_Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


@dataclass
class _Tree:
    fdt: libfdt.FdtRo
    root: _Node
    by_offset: dict[int, _Node]
    too_deep: list[str]

    def nodes(self) -> Iterator[_Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def by_phandle(self, phandle: int) -> _Node | None:
        off = self.fdt.node_offset_by_phandle(phandle, quiet=(libfdt.NOTFOUND, libfdt.BADPHANDLE))
        return self.by_offset.get(off) if off >= 0 else None


def _load(dtb: bytes, label: str = "the input") -> _Tree:
    """Check the blob with libfdt, then mirror it as Python nodes; UnusableInput if unreadable."""
    hint = inputs.DTB.hint
    if not isinstance(dtb, bytes | bytearray | memoryview):
        raise UnusableInput(f"{label} is a {type(dtb).__name__}, not bytes: {hint}")
    buf = bytearray(dtb)
    if not buf:
        raise UnusableInput(f"{label} is empty: {hint}")
    magic = int.from_bytes(buf[:4], "big")
    if len(buf) < 4 or magic != libfdt.FDT_MAGIC & 0xFFFFFFFF:  # the binding gives it as a signed int
        raise UnusableInput(f"{label} is not a flattened device tree (bad magic {magic:#x}): {hint}")
    err = libfdt.fdt_check_full(buf, len(buf))
    if err == -libfdt.TRUNCATED and (len(buf) < 8 or libfdt.fdt_totalsize(buf) > len(buf)):
        raise UnusableInput(
            f"{label} is truncated ({len(buf)} bytes, header says {_header_size(buf)}): copy the whole blob again"
        )
    if err:
        raise UnusableInput(f"{label} fails libfdt's check ({libfdt.fdt_strerror(err)}): it is corrupt; {hint}")
    try:
        return _mirror(libfdt.FdtRo(buf))
    except libfdt.FdtException as exc:  # check_full passed, so this is libfdt refusing a corner case
        raise UnusableInput(f"{label} cannot be walked by libfdt ({exc}): {hint}") from exc


def _header_size(buf: bytearray) -> str:
    return str(libfdt.fdt_totalsize(buf)) if len(buf) >= 8 else "more"


def _mirror(fdt: libfdt.FdtRo) -> _Tree:
    quiet = (libfdt.NOTFOUND,)
    root_offset, _ = fdt.next_node(-1, 0)  # 0 unless the struct block starts with NOPs
    root = _Node(name="", path="/", depth=0, offset=root_offset, parent=None)
    by_offset = {root_offset: root}
    too_deep: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        prop_off = fdt.first_property_offset(node.offset, quiet)
        while prop_off >= 0:
            try:
                prop = fdt.get_property_by_offset(prop_off)
            except (SystemError, UnicodeError):
                prop = None  # a name that is not UTF-8 (SWIG cannot decode it): no binding uses it
            if prop is not None:
                node.props.setdefault(prop.name, bytes(prop))  # libfdt's getprop sees the first one too
            prop_off = fdt.next_property_offset(prop_off, quiet)
        sub = fdt.first_subnode(node.offset, quiet)
        if sub >= 0 and node.depth >= MAX_DEPTH:
            too_deep.append(node.path)
            continue
        while sub >= 0:
            # SWIG hands non-UTF-8 names over as surrogates; make them printable
            name = fdt.get_name(sub).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            path = f"{node.path.rstrip('/')}/{name}"
            child = _Node(name=name, path=path, depth=node.depth + 1, offset=sub, parent=node)
            node.children.append(child)
            by_offset[sub] = child
            sub = fdt.next_subnode(sub, quiet)
        stack.extend(reversed(node.children))
    return _Tree(fdt=fdt, root=root, by_offset=by_offset, too_deep=too_deep)


# --- decoding helpers -------------------------------------------------------------------


def _strings(raw: bytes | None) -> list[str] | None:
    if not raw or raw[-1] != 0:
        return None
    return [s.decode("utf-8", "backslashreplace") for s in raw[:-1].split(b"\0")]


def _cells(raw: bytes) -> tuple[int, ...]:
    whole = len(raw) - len(raw) % 4
    return tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, whole, 4))


def _number(cells: Iterable[int]) -> int:
    value = 0
    for cell in cells:
        value = (value << 32) | cell
    return value


def _show_cells(cells: Iterable[int]) -> str:
    return "<" + " ".join(f"{c:#x}" for c in cells) + ">"


def _show_raw(raw: bytes) -> str:
    if len(raw) % 4 == 0:
        return f"{len(raw)} bytes {_show_cells(_cells(raw))}"
    return f"{len(raw)} bytes {raw[:32].hex()}{'...' if len(raw) > 32 else ''}"


def _show_regions(regions: tuple[Region, ...] | list[Region]) -> str:
    text = ", ".join(str(r) for r in regions[:MAX_SHOWN])
    if len(regions) > MAX_SHOWN:
        text += f", ... ({len(regions)} regions)"
    return text or "none"


def _bus_cells(node: _Node) -> tuple[int | None, int | None]:
    """#address-cells/#size-cells a node gives its children (DT spec defaults 2/1); None = malformed."""
    ac = node.u32("#address-cells") if "#address-cells" in node.props else 2
    sc = node.u32("#size-cells") if "#size-cells" in node.props else 1
    return ac, sc


def _sane(ac: int | None, sc: int | None) -> bool:
    return ac is not None and sc is not None and 1 <= ac <= 4 and 1 <= sc <= 4


def _decode_reg(raw: bytes, ac: int, sc: int) -> list[Region] | None:
    step = 4 * (ac + sc)
    if step == 0 or len(raw) % step:
        return None
    cells = _cells(raw)
    n = ac + sc
    return [Region(_number(cells[i : i + ac]), _number(cells[i + ac : i + n])) for i in range(0, len(cells), n)]


def _intid(cells: tuple[int, ...] | None) -> int | None:
    if cells and len(cells) >= 2 and cells[0] == 1:
        return PPI_BASE + cells[1]
    return None


# --- finding the node ---------------------------------------------------------------------


def _candidates(tree: _Tree) -> tuple[list[_Node], list[_Node]]:
    bare = [n for n in tree.root.children if n.name == "hypervisor"]
    with_unit = [n for n in tree.root.children if n.name.startswith("hypervisor@")]
    return bare, with_unit


def _pick(tree: _Tree) -> _Node | None:
    bare, with_unit = _candidates(tree)
    return (bare or with_unit or [None])[0]


def _describe(tree: _Tree, node: _Node) -> HypervisorNode:
    ac, sc = _bus_cells(tree.root)
    regions: list[Region] = []
    if "reg" in node.props and _sane(ac, sc):
        assert ac is not None and sc is not None
        regions = _decode_reg(node.props["reg"], ac, sc) or []
    raw_irq = node.props.get("interrupts")
    cells = _cells(raw_irq) if raw_irq is not None else None
    return HypervisorNode(
        path=node.path,
        compatible=tuple(node.strings("compatible") or ()),
        regions=tuple(regions),
        interrupts=cells,
        event_intid=_intid(cells),
    )


def read_hypervisor_node(dtb: bytes) -> HypervisorNode | None:
    """Decode the node Linux would use (else a misnamed ``hypervisor@...`` one); None if there is none."""
    tree = _load(dtb)
    node = _pick(tree)
    return _describe(tree, node) if node is not None else None


def domain_arch(dtb: bytes) -> Arch:
    """Whether the tree's domain is 32-bit, from its CPUs' compatible (ARM32_ONLY_CPUS)."""
    return _domain_arch(_load(dtb))


def _domain_arch(tree: _Tree) -> Arch:
    cpus = [n for n in tree.nodes() if n.depth == 2 and n.parent is not None and n.parent.name == "cpus"
            and n.name.split("@", 1)[0] == "cpu"]
    models = sorted({(n.strings("compatible") or ["no compatible"])[0] for n in cpus})
    shown = ", ".join(models[:MAX_LISTED]) + (", ..." if len(models) > MAX_LISTED else "")
    if cpus and all(m in ARM32_ONLY_CPUS for m in models):
        return Arch("arm32", f"from /cpus: {shown}, 32-bit only")
    if not cpus:
        return Arch("arm64", "assumed: the tree has no /cpus/cpu nodes; give --arch arm32 for a 32-bit domain")
    return Arch("arm64", f"from /cpus: {shown}, which a 32-bit domain may run on too; give --arch arm32 for one")


def memory_regions(dtb: bytes) -> list[Region]:
    """The RAM banks the tree gives its guest (/memory nodes), in CPU addresses."""
    return [o.region for o in _occupied(_load(dtb), set()) if o.kind == "ram"]


def reserved_regions(dtb: bytes) -> list[Region]:
    """What the tree keeps out of everyone's RAM: its /memreserve/ entries and /reserved-memory regions."""
    tree = _load(dtb)
    kept = [Region(*tree.fdt.get_mem_rsv(i)) for i in range(tree.fdt.num_mem_rsv())]
    return [r for r in kept if r.size] + [o.region for o in _occupied(tree, set()) if o.kind == "reserved"]


# --- the checks ---------------------------------------------------------------------------


def _err(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule=rule, severity=Severity.ERROR, where=where, expected=expected, found=found, note=note)


def _check_node_choice(tree: _Tree, chosen: _Node | None) -> Iterator[Finding]:
    bare, with_unit = _candidates(tree)
    if tree.too_deep:
        yield Finding(
            rule="dt.tree.depth",
            severity=Severity.WARNING,
            where=tree.too_deep[0],
            expected=f"at most {MAX_DEPTH} levels of nodes",
            found=f"deeper nesting under {len(tree.too_deep)} node(s); their subnodes were not checked",
        )
    everyone = bare + with_unit
    if len(everyone) != 1:
        yield _err(
            "dt.node.count",
            "/",
            "exactly one node named 'hypervisor' directly under /",
            ", ".join(n.path for n in everyone) if everyone else "none",
            "without it Linux does not detect Xen" if not everyone else "Linux reads only one of them",
        )
    for node in with_unit:
        yield _err(
            "dt.node.unit-address",
            node.path,
            "node name exactly 'hypervisor' (no unit address)",
            f"'{node.name}'",
            "Linux matches the bare name only: " + ("it ignores this node" if bare else "the guest would not find Xen"),
        )
    for node in tree.nodes():
        if node in everyone:
            continue
        compat = node.strings("compatible") or []
        if "xen,xen" in compat:
            yield _err(
                "dt.node.stray",
                node.path,
                f"'xen,xen' only on {chosen.path if chosen else '/hypervisor'}",
                f"compatible = {', '.join(repr(c) for c in compat)}",
                "Linux finds the Xen node by compatible and may read this one instead",
            )


def _check_compatible(node: _Node, expect: Expectation) -> Iterator[Finding]:
    where = f"{node.path} compatible"
    shape = '"xen,xen-<major>.<minor>", "xen,xen"'
    if "compatible" not in node.props:
        yield _err("dt.compatible.missing", where, shape, "absent", "Linux detects Xen by this property")
        return
    compat = node.strings("compatible")
    if compat is None:
        raw = node.props["compatible"]
        yield _err("dt.compatible.missing", where, f"NUL-terminated strings {shape}", _show_raw(raw))
        return
    shown = ", ".join(f'"{c}"' for c in compat)
    if not (len(compat) == 2 and _VERSION_RE.fullmatch(compat[0]) and compat[1] == "xen,xen"):
        note = "Linux takes the Xen version from the first string"
        if "xen,xen" not in compat:
            note = "without 'xen,xen' Linux does not detect Xen"
        yield _err("dt.compatible.order", where, f"{shape} (specific first, exactly two)", shown, note)
    if expect.xen_version is None:
        return
    want = _EXPECT_VERSION_RE.match(expect.xen_version)
    want_text = f"{want.group(1)}.{want.group(2)}" if want else expect.xen_version
    versions = [m for c in compat if (m := _VERSION_RE.fullmatch(c))]
    got = f"{versions[0].group(1)}.{versions[0].group(2)}" if versions else None
    if got != want_text:
        yield _err(
            "dt.compatible.version",
            where,
            f'"xen,xen-{want_text}" (the Xen that booted: {expect.xen_version})',
            f'"xen,xen-{got}"' if got else f"no xen,xen-<version> string in {shown}",
        )


def _check_acpi(node: _Node) -> Iterator[Finding]:
    if "reg" in node.props:
        yield _err(
            "dt.acpi.reg",
            f"{node.path} reg",
            "no reg (an ACPI dom0 gets the grant table by hypercall)",
            _show_raw(node.props["reg"]),
        )
    if "interrupts" in node.props:
        yield _err(
            "dt.acpi.irq",
            f"{node.path} interrupts",
            "no interrupts (an ACPI dom0 gets the event channel IRQ via HVM_PARAM_CALLBACK_IRQ)",
            _show_raw(node.props["interrupts"]),
        )
    uefi = [c for c in node.children if c.name == "uefi"]
    if not uefi:
        yield _err(
            "dt.acpi.uefi",
            f"{node.path}/uefi",
            f"a 'uefi' child with {', '.join(UEFI_PROPS)}",
            "no 'uefi' child",
            "Linux needs it to find the EFI system table and memory map",
        )
        return
    child = uefi[0]
    values: dict[str, int] = {}
    for prop in UEFI_PROPS:
        raw = child.props.get(prop)
        where = f"{child.path} {prop}"
        if raw is None:
            yield _err("dt.acpi.uefi", where, "present (one or two cells)", "absent")
        elif len(raw) not in (4, 8):
            yield _err("dt.acpi.uefi", where, "one or two cells (4 or 8 bytes)", _show_raw(raw))
        else:
            values[prop] = int.from_bytes(raw, "big")
    desc_size = values.get("xen,uefi-mmap-desc-size")
    if desc_size is not None and desc_size < EFI_MEMORY_DESCRIPTOR_SIZE:
        yield _err(
            "dt.acpi.uefi",
            f"{child.path} xen,uefi-mmap-desc-size",
            f">= {EFI_MEMORY_DESCRIPTOR_SIZE} (sizeof(EFI_MEMORY_DESCRIPTOR))",
            str(desc_size),
        )
    elif desc_size and values.get("xen,uefi-mmap-size", 0) % desc_size:
        yield _err(
            "dt.acpi.uefi",
            f"{child.path} xen,uefi-mmap-size",
            f"a multiple of xen,uefi-mmap-desc-size ({desc_size})",
            str(values["xen,uefi-mmap-size"]),
        )
    if values.get("xen,uefi-mmap-desc-ver", 1) != 1:
        yield _err(
            "dt.acpi.uefi",
            f"{child.path} xen,uefi-mmap-desc-ver",
            "1 (EFI_MEMORY_DESCRIPTOR_VERSION)",
            str(values["xen,uefi-mmap-desc-ver"]),
        )


def _root_regions(tree: _Tree, node: _Node) -> tuple[list[Region] | None, list[Finding]]:
    """Decode reg with the root's cells; None when it cannot be decoded (findings say why)."""
    findings: list[Finding] = []
    ac, sc = _bus_cells(tree.root)
    if not _sane(ac, sc):
        props = [p for p in ("#address-cells", "#size-cells") if p in tree.root.props]
        shown = ", ".join(f"{p} = {_show_raw(tree.root.props[p])}" for p in props)
        findings.append(
            _err(
                "dt.reg.cells",
                "/ #address-cells, #size-cells",
                "one cell each, values 1..4 (absent = 2 and 1)",
                shown,
                "reg of /hypervisor cannot be decoded",
            )
        )
        return None, findings
    assert ac is not None and sc is not None
    raw = node.props.get("reg")
    if not raw:
        findings.append(
            _err(
                "dt.reg.missing",
                f"{node.path} reg",
                "reg with the grant table as entry 0",
                "absent" if raw is None else "empty",
                "Linux cannot find the grant table",
            )
        )
        return None, findings
    regions = _decode_reg(raw, ac, sc)
    if regions is None:
        findings.append(
            _err(
                "dt.reg.length",
                f"{node.path} reg",
                f"a multiple of {4 * (ac + sc)} bytes (#address-cells {ac} + #size-cells {sc})",
                _show_raw(raw),
            )
        )
    return regions, findings


def _check_grant(path: str, grant: Region) -> Iterator[Finding]:
    where = f"{path} reg[0]"
    if grant.size == 0:
        found = f"size 0 at {grant.start:#x}"
        yield _err("dt.reg.grant.empty", where, "a non-empty grant table region", found)
    if grant.start % PAGE_SIZE or grant.size % PAGE_SIZE:
        yield _err(
            "dt.reg.grant.align",
            where,
            "start and size multiples of 4 KiB (0x1000)",
            f"{grant} (start {grant.start:#x}, size {grant.size:#x})",
            "grant frames are mapped as whole pages",
        )


def _check_ext_shape(path: str, regions: list[Region]) -> Iterator[Finding]:
    for i, ext in enumerate(regions[1:], start=1):
        where = f"{path} reg[{i}]"
        if ext.start % EXT_ALIGN or ext.size % EXT_ALIGN:
            yield _err(
                "dt.ext.align",
                where,
                "start and size multiples of 2 MiB (0x200000)",
                f"{ext} (start {ext.start:#x}, size {ext.size:#x})",
            )
        if ext.size < EXT_MIN_SIZE:
            yield _err(
                "dt.ext.min-size",
                where,
                f">= 64 MiB ({EXT_MIN_SIZE:#x})",
                f"{ext} (size {ext.size:#x}, {ext.size / MiB:g} MiB)",
            )
        if ext.overlaps(regions[0]):
            grant = regions[0]
            yield _err("dt.ext.overlap", where, f"clear of the grant table reg[0] {grant}",
                       f"{ext} overlaps reg[0] {grant}")
    yield from _check_ext_each_other(path, regions)


def _check_ext_each_other(path: str, regions: list[Region]) -> Iterator[Finding]:
    """Extended regions overlapping one another, in n log n: swept in order of start, a region that begins
    before the furthest end so far overlaps the region that reaches there. Each such pair is one finding at
    its later reg index (reported in index order), so every cluster of overlapping regions is reported."""
    pairs: list[tuple[int, int]] = []
    reach: int | None = None  # the index of the region reaching furthest so far
    for i in sorted(range(1, len(regions)), key=lambda k: (regions[k].start, k)):
        if reach is not None and regions[reach].overlaps(regions[i]):
            pairs.append((max(i, reach), min(i, reach)))
        if reach is None or regions[i].end > regions[reach].end:
            reach = i
    for later, earlier in sorted(pairs):
        yield _err(
            "dt.ext.overlap",
            f"{path} reg[{later}]",
            f"clear of extended region reg[{earlier}] {regions[earlier]}",
            f"{regions[later]} overlaps reg[{earlier}] {regions[earlier]}",
        )


@dataclass(frozen=True)
class _Occupied:
    kind: str  # "ram", "reserved", "device", "window"
    label: str  # e.g. "/pl061@9030000 reg[0]"
    region: Region


_Ranges = list[tuple[int, int, int]]  # (child base, parent base, size)


def _decode_ranges(node: _Node, parent_ac: int) -> _Ranges | None:
    """A bus's ranges as (child, parent, size) triples; None when they cannot be decoded."""
    ac, sc = _bus_cells(node)
    if ac is None or sc is None or not (1 <= ac <= 4 and 1 <= sc <= 4 and 1 <= parent_ac <= 4):
        return None
    raw = node.props["ranges"]
    step = ac + parent_ac + sc
    if len(raw) % (4 * step):
        return None
    cells = _cells(raw)
    return [
        (
            _number(cells[i : i + ac]),
            _number(cells[i + ac : i + ac + parent_ac]),
            _number(cells[i + ac + parent_ac : i + step]),
        )
        for i in range(0, len(cells), step)
    ]


class _RangeMap:
    """A bus's ranges as a lookup in log n. As Linux translates (of_translate_one), the first entry in property
    order that holds an address wins: overlaps are resolved once here, by cutting the child address space at
    every entry's start and end and giving each piece to the lowest-index entry that covers it."""

    def __init__(self, table: _Ranges) -> None:
        self.table = table
        entries = sorted((child, child + size, i) for i, (child, _, size) in enumerate(table) if size)
        self.bounds = sorted({b for start, end, _ in entries for b in (start, end)})
        self.winner: list[int | None] = []  # piece j, [bounds[j], bounds[j + 1]): the entry that translates it
        begun: list[tuple[int, int]] = []  # heap of (index, end) of the entries started so far
        k = 0
        for bound in self.bounds[:-1]:
            while k < len(entries) and entries[k][0] == bound:
                heapq.heappush(begun, (entries[k][2], entries[k][1]))
                k += 1
            while begun and begun[0][1] <= bound:  # the lowest index has ended: the next one may cover
                heapq.heappop(begun)
            self.winner.append(begun[0][0] if begun else None)

    def translate(self, addr: int) -> int | None:
        j = bisect.bisect_right(self.bounds, addr) - 1
        index = self.winner[j] if 0 <= j < len(self.winner) else None
        if index is None:
            return None
        child, parent, _ = self.table[index]
        return parent + (addr - child)


def _translate(addr: int, steps: list[_RangeMap]) -> int | None:
    """Map a bus address to a CPU address through each enclosing ranges; None if it is not mapped."""
    for ranges in steps:
        mapped = ranges.translate(addr)
        if mapped is None:
            return None
        addr = mapped
    return addr


def _occupied(tree: _Tree, skip: set[_Node]) -> list[_Occupied]:
    """Every address range the tree says is RAM, reserved or a device, in CPU addresses."""
    out: list[_Occupied] = []
    # (node, steps mapping the node's child address space to the root's; None = not memory-mapped)
    stack: list[tuple[_Node, list[_RangeMap] | None]] = [(tree.root, [])]
    while stack:
        node, steps = stack.pop()
        if steps is None:
            continue
        ac, sc = _bus_cells(node)
        for child in node.children:
            if child in skip:
                continue
            if child.depth == 1 and child.name in ("chosen", "cpus"):
                continue  # not address space: /chosen carries boot parameters, /cpus MPIDRs
            is_ram = child.depth == 1 and (
                child.name.split("@", 1)[0] == "memory" or child.props.get("device_type") == b"memory\0"
            )
            in_reserved = node.depth == 1 and node.name == "reserved-memory"
            kind = "ram" if is_ram else "reserved" if in_reserved else "device"
            if "reg" in child.props and _sane(ac, sc):
                assert ac is not None and sc is not None
                for i, reg in enumerate(_decode_reg(child.props["reg"], ac, sc) or []):
                    # Linux reads reserved-memory children as CPU addresses whatever /reserved-memory says
                    start = reg.start if in_reserved else _translate(reg.start, steps)
                    if start is not None and reg.size:
                        out.append(_Occupied(kind, f"{child.path} reg[{i}]", Region(start, reg.size)))
            stack.append((child, _child_steps(child, steps, ac, out)))
    return out


def _child_steps(
    child: _Node, steps: list[_RangeMap], parent_ac: int | None, out: list[_Occupied]
) -> list[_RangeMap] | None:
    """How the child's own children translate; records non-identity ranges windows as occupied."""
    if child.depth == 1 and child.name == "reserved-memory":
        return steps
    if "ranges" not in child.props:
        return None  # no ranges: the children are not memory-mapped
    if not child.props["ranges"]:
        return steps  # empty ranges: identity
    table = _decode_ranges(child, parent_ac or 0)
    if table is None:
        return None
    for i, (_, parent, size) in enumerate(table):
        start = _translate(parent, steps)
        if start is not None and size:
            out.append(_Occupied("window", f"{child.path} ranges[{i}]", Region(start, size)))
    if child.props.get("device_type") == b"pci\0":
        return None  # a PCI child's reg is a config-space address, not a CPU one
    return [_RangeMap(table), *steps]


_EXT_CLASH = {
    "ram": ("dt.ext.ram", "RAM bank", "the guest would map foreign pages over its own RAM"),
    "reserved": ("dt.ext.reserved", "reserved-memory region", "the range is reserved for something else"),
    "device": ("dt.ext.device", "device region", "foreign mappings would shadow a device's MMIO"),
    "window": ("dt.ext.bus-window", "bus ranges window", "the guest may place device BARs there"),
}


class _Occupancy:
    """The occupied ranges of one kind, sorted once: how many overlap a region in log n, and which ones."""

    def __init__(self, occupied: Iterable[_Occupied]) -> None:
        self.items = sorted(occupied, key=lambda o: (o.region.start, o.label))
        self.starts = [o.region.start for o in self.items]
        self.ends = sorted(o.region.end for o in self.items)

    def count(self, region: Region) -> int:
        # Every range (non-empty) that ends by the region's start also starts before its end: those that
        # start before its end, less those that end by its start, are exactly the overlapping ones.
        return bisect.bisect_left(self.starts, region.end) - bisect.bisect_right(self.ends, region.start)

    def hits(self, region: Region, limit: int) -> list[_Occupied]:
        """The first `limit` overlapping ranges by start (a scan: called for the few findings listed in full)."""
        out: list[_Occupied] = []
        for o in self.items[: bisect.bisect_left(self.starts, region.end)]:
            if o.region.end > region.start:
                out.append(o)
                if len(out) == limit:
                    break
        return out


def _check_ext_clashes(path: str, regions: list[Region], occupied: list[_Occupied]) -> Iterator[Finding]:
    """Extended regions over RAM, reserved memory, devices or bus windows: n log n for any number of each.
    The first MAX_PER_RULE findings of a rule name what they overlap; later ones (capped away) only count."""
    by_kind = {kind: _Occupancy(o for o in occupied if o.kind == kind) for kind in _EXT_CLASH}
    listed = dict.fromkeys(_EXT_CLASH, 0)
    for i, ext in enumerate(regions[1:], start=1):
        for kind, (rule, what, note) in _EXT_CLASH.items():
            count = by_kind[kind].count(ext)
            if not count:
                continue
            severity = Severity.WARNING if kind == "window" else Severity.ERROR
            where = f"{path} reg[{i}]"
            if listed[kind] >= MAX_PER_RULE:
                yield Finding(rule, severity, where, f"clear of every {what}", f"{ext} overlaps {count}", note)
                continue
            listed[kind] += 1
            hits = by_kind[kind].hits(ext, MAX_LISTED)
            shown = ", ".join(f"{h.label} {h.region}" for h in hits)
            more = f" (+{count - MAX_LISTED} more)" if count > MAX_LISTED else ""
            yield Finding(
                rule=rule,
                severity=severity,
                where=where,
                expected=f"clear of every {what}, e.g. {hits[0].label} {hits[0].region}",
                found=f"{ext} overlaps {shown}{more}",
                note=note,
            )


def _resolve_irq_parent(tree: _Tree, node: _Node) -> tuple[_Node | None, str, Finding | None]:
    """The node's interrupt parent, where it was named, and the finding when there is none: the target of its
    own interrupt-parent, else of the nearest ancestor's (or that ancestor itself when it is an interrupt
    controller, as Linux's of_irq_find_parent takes it). Unlike Linux, a target that is no interrupt controller
    is not walked past: the event channel's parent must be the GIC itself, so the target is returned and judged."""
    for holder in (node, *node.ancestors()):
        if holder is not node and "#interrupt-cells" in holder.props:
            return holder, f"{holder.path}, itself an interrupt controller", None
        raw = holder.props.get("interrupt-parent")
        if raw is None:
            continue
        named = f"{holder.path} interrupt-parent"
        phandle = int.from_bytes(raw, "big") if len(raw) == 4 else None
        target = tree.by_phandle(phandle) if phandle is not None else None
        if target is None:
            shown = f"phandle {phandle:#x}" if phandle is not None else _show_raw(raw)
            return None, named, _err(
                "dt.irq.parent",
                named,
                "a phandle of an existing node (the GIC)",
                f"{shown} matches no node",
                "Linux cannot map the event-channel interrupt",
            )
        return target, named, None
    return None, "", _err(
        "dt.irq.parent",
        f"{node.path} interrupt-parent",
        "an interrupt-parent on the node or an ancestor, pointing at the GIC",
        "none on the node, its ancestors or /",
    )


def _check_irq(tree: _Tree, node: _Node) -> Iterator[Finding]:
    where = f"{node.path} interrupts"
    raw = node.props.get("interrupts")
    if raw is None:
        yield _err(
            "dt.irq.missing",
            where,
            "interrupts = <1 PPI 0xf08> (the event-channel PPI)",
            "absent",
            "Linux cannot receive event channels",
        )
        return
    cells = _cells(raw)
    if len(raw) != 12:
        yield _err("dt.irq.cells", where, "3 cells <type number flags>", _show_raw(raw))
    if len(cells) >= 1 and cells[0] != 1:
        kind = {0: "SPI", 2: "extended SPI", 3: "extended PPI"}.get(cells[0], "unknown type")
        found = f"cell 0 = {cells[0]:#x} ({kind}) in {_show_cells(cells)}"
        yield _err("dt.irq.type", where, "cell 0 = 1 (PPI)", found)
    if len(cells) >= 2 and cells[0] == 1 and cells[1] > 15:
        yield _err(
            "dt.irq.ppi-range",
            where,
            "cell 1 in 0..15 (PPI INTID 16..31)",
            f"cell 1 = {cells[1]:#x} (INTID {PPI_BASE + cells[1]})",
        )
    if len(cells) >= 3 and cells[2] & 0xF != IRQ_TYPE_LEVEL_LOW:
        trig = cells[2] & 0xF
        yield _err(
            "dt.irq.trigger",
            where,
            "flags & 0xf = 0x8 (level-low), e.g. 0xf08",
            f"flags {cells[2]:#x} ({IRQ_TYPE_NAMES.get(trig, 'invalid')})",
            "Xen injects the event-channel PPI as level-triggered, active low",
        )
    parent, named, problem = _resolve_irq_parent(tree, node)
    if problem is not None:
        yield problem
    if parent is None:
        return
    inherited = "" if named.startswith(f"{node.path} ") else f" (inherited from {named})"
    gic_where = f"{node.path} interrupt-parent -> {parent.path}{inherited}"
    compat = parent.strings("compatible") or []
    icells = parent.u32("#interrupt-cells")
    missing = []
    if "interrupt-controller" not in parent.props:
        missing.append("no interrupt-controller property")
    if not any(c in GIC_COMPATIBLES for c in compat):
        missing.append(f"compatible {', '.join(repr(c) for c in compat) or 'absent'}")
    if icells != 3:
        shown = icells if icells is not None else _show_raw(parent.props.get("#interrupt-cells", b""))
        missing.append(f"#interrupt-cells = {shown}")
    if missing:
        yield _err(
            "dt.irq.parent.gic",
            gic_where,
            f"a GIC: interrupt-controller, compatible in {', '.join(GIC_COMPATIBLES)}, #interrupt-cells = 3",
            f"{parent.path}: " + "; ".join(missing),
            "the event channel is a GIC PPI; another controller would misread the cells",
        )


def _check_expected_regions(
    prefix: str, path: str, regions: list[Region] | None, expect: Expectation
) -> Iterator[Finding]:
    if not regions:
        return  # reg is missing or undecodable: already a finding
    if expect.grant is not None and regions[0] != expect.grant:
        yield _err(
            f"{prefix}.grant",
            f"{path} reg[0]",
            f"{expect.grant} (Xen's grant table range)",
            str(regions[0]),
        )
    if expect.extended is not None:
        got_ext = tuple(regions[1:])
        if got_ext != tuple(expect.extended):
            yield _err(
                f"{prefix}.ext",
                f"{path} reg[1..]",
                f"{_show_regions(expect.extended)} (Xen's extended regions for this domain, in order)",
                _show_regions(got_ext),
            )


def _check_expected_irq(prefix: str, node: _Node, intid: int | None, expect: Expectation) -> Iterator[Finding]:
    want = expect.event_intid
    if want is None or intid == want:
        return
    raw = node.props.get("interrupts")
    if raw is None:
        found = "no interrupts property"
    elif intid is None:
        found = f"no PPI in {_show_raw(raw)}"
    else:
        found = f"INTID {intid} from {_show_cells(_cells(raw))}"
    yield _err(
        f"{prefix}.irq",
        f"{node.path} interrupts",
        f"INTID {want} (Xen: 'Allocating PPI {want} for event channel interrupt')",
        found,
    )


def _check_domu(node: _Node, regions: list[Region] | None, expect: Expectation) -> Iterator[Finding]:
    if regions and regions[0] != GUEST_GNTTAB:
        yield _err(
            "dt.domU.grant",
            f"{node.path} reg[0]",
            f"{GUEST_GNTTAB} (GUEST_GNTTAB_BASE/SIZE, xen/include/public/arch-arm.h)",
            str(regions[0]),
        )
    if expect.grant is not None and expect.grant != GUEST_GNTTAB:
        yield from _check_expected_regions("dt.domU", node.path, regions, Expectation(grant=expect.grant))
    yield from _check_expected_regions("dt.domU", node.path, regions, Expectation(extended=expect.extended))
    raw = node.props.get("interrupts")
    cells = _cells(raw) if raw is not None else None
    if cells != GUEST_IRQ_CELLS or (raw is not None and len(raw) % 4):
        yield _err(
            "dt.domU.irq",
            f"{node.path} interrupts",
            f"{_show_cells(GUEST_IRQ_CELLS)} (GUEST_EVTCHN_PPI, INTID {GUEST_EVTCHN_PPI}, level-low)",
            _show_raw(raw) if raw is not None else "absent",
        )
    if expect.event_intid not in (None, GUEST_EVTCHN_PPI):
        yield from _check_expected_irq("dt.domU", node, _intid(cells), expect)


def _validate(tree: _Tree, profile: str, expect: Expectation) -> list[Finding]:
    return capped(_findings(tree, profile, expect))


def _findings(tree: _Tree, profile: str, expect: Expectation) -> list[Finding]:
    findings: list[Finding] = []
    node = _pick(tree)
    findings.extend(_check_node_choice(tree, node))
    if node is None:
        return findings
    findings.extend(_check_compatible(node, expect))
    if profile == "acpi-dom0":
        findings.extend(_check_acpi(node))
        return findings
    regions, reg_findings = _root_regions(tree, node)
    findings.extend(reg_findings)
    if regions:
        findings.extend(_check_grant(node.path, regions[0]))
        findings.extend(_check_ext_shape(node.path, regions))
        if len(regions) > 1:
            bare, with_unit = _candidates(tree)
            findings.extend(_check_ext_clashes(node.path, regions, _occupied(tree, set(bare + with_unit))))
            given = Arch("arm32" if expect.is_32bit else "arm64", "as given: --arch or the target's arch")
            arch = given if expect.is_32bit is not None else _domain_arch(tree)
            if arch.is_32bit:
                findings.append(
                    _err(
                        "dt.ext.32bit",
                        f"{node.path} reg[1..]",
                        f"no extended regions, only the grant table: a 32-bit domain ({arch.why})",
                        _show_regions(regions[1:]),
                        "Xen gives no extended regions to 32-bit guests",
                    )
                )
    findings.extend(_check_irq(tree, node))
    intid = _intid(_cells(node.props["interrupts"])) if "interrupts" in node.props else None
    if profile == "dom0":
        findings.extend(_check_expected_regions("dt.dom0", node.path, regions, expect))
        findings.extend(_check_expected_irq("dt.dom0", node, intid, expect))
    else:
        findings.extend(_check_domu(node, regions, expect))
    return findings


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise UnusableInput(f"unknown DT profile {profile!r}: use one of {', '.join(PROFILES)}")


def validate_dtb(
    dtb: bytes, profile: str = "dom0", expect: Expectation | None = None, label: str = "the input"
) -> list[Finding]:
    """Findings about the /hypervisor node of a DTB; UnusableInput if it is not a readable DT.

    ``dom0`` and ``domU`` check the whole node and compare it with ``expect`` where given (domU
    also with Xen's fixed guest layout); ``acpi-dom0`` checks only the compatible and the
    ``uefi`` child, as that node carries nothing else (``expect.xen_version`` still applies).
    """
    check_profile(profile)
    return _validate(_load(dtb, label), profile, expect or Expectation())
