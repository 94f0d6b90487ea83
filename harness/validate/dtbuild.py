"""Rules over what Xen's domain builder writes into a guest's device tree besides ``/hypervisor``.

Xen 4.17 (xen/arch/arm/domain_build.c) builds dom0's tree from the host's: it copies every node
except those it skips (``handle_node``: multiboot modules, PSCI, PMUs, ``/cpus``, memory nodes, the
memory-mapped timer, nodes used by Xen such as its console UART, IOMMUs, nodes wired to PPIs), drops
some ``/chosen`` properties (``write_properties``), then writes its own ``/hypervisor``, ``/psci``,
``/cpus``, memory node, GIC node and timer node, and ``/chosen`` ``bootargs`` and
``linux,initrd-start/end``. A dom0less domU's tree is written whole by Xen (``prepare_dtb_domU``).

`read_guest_tree` decodes those nodes; `check_build` judges them alone (what any such tree must
say) and against a `BuildExpectation` (what Xen's log and the boot plan say the guest was given);
`diff_host` compares dom0's tree with the host tree it was made from, node by node and property by
property, and names the rule that allows each difference: anything no rule explains is a finding.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from harness import inputs
from harness.findings import Finding, Severity, capped

from .dt import (
    GIC_COMPATIBLES,
    PPI_BASE,
    Region,
    _bus_cells,
    _cells,
    _decode_reg,
    _load,
    _Node,
    _sane,
    _show_regions,
    _Tree,
)

RULES: dict[str, str] = {
    "dt.memory.missing": "the guest's tree has a /memory node with at least one bank",
    "dt.memory.overlap": "the guest's RAM banks overlap neither each other, nor the grant table region, nor Xen's "
                         "own image (Xen's MODULE line)",
    "dt.cpus.missing": "the guest's tree has /cpus with at least one cpu node",
    "dt.cpus.enable-method": "a 64-bit guest's cpu nodes say enable-method = \"psci\"; /psci says method = \"hvc\"",
    "dt.gic.missing": "the guest's tree has one GIC node (interrupt-controller, a GIC compatible, reg)",
    "dt.timer.irqs": "the timer node lists PPIs (secure phys, non-secure phys, virt[, hyp])",
    "dt.chosen.initrd": "/chosen linux,initrd-start and -end come together, start below end",
    "dt.build.memory": "the guest's /memory banks are exactly the banks Xen's log says it allocated",
    "dt.build.cpus": "the guest has one cpu node per vCPU Xen gave it (dom0_max_vcpus, else every pCPU)",
    "dt.build.gic": "the guest's GIC is the host's kind, its distributor (and GICv2 CPU interface, GICv3 "
                    "redistributors) where Xen's log says",
    "dt.build.timer": "the timer's non-secure physical and virtual PPIs are the ones Xen's log names",
    "dt.build.bootargs": "/chosen bootargs is the command line the boot plan gave the guest",
    "dt.build.initrd": "/chosen linux,initrd-start/end is where Xen's log says it loaded the initrd",
    "dt.host.uart": "Xen's console UART (dtuart=, else stdout-path) is not in dom0's tree",
    "dt.host.multiboot": "no multiboot,module node is left in dom0's tree",
    "dt.host.removed": "every host node missing from dom0's tree is one Xen documents skipping",
    "dt.host.added": "every node dom0 has and the host does not is one Xen writes",
    "dt.host.changed": "every property that differs from the host's is one Xen (or Linux at boot) rewrites",
}

MULTIBOOT = ("multiboot,module", "xen,multiboot-module")
PSCI = ("arm,psci", "arm,psci-0.2", "arm,psci-1.0")
PMU = ("arm,cortex-a7-pmu", "arm,cortex-a15-pmu", "arm,cortex-a53-edac", "arm,armv8-pmuv3")
TIMERS = ("arm,armv7-timer", "arm,armv8-timer")
IOMMUS = ("arm,smmu-v3", "arm,mmu-500", "arm,mmu-400", "arm,smmu-v1", "arm,smmu-v2", "arm,mmu-401",
          "iommu-v1")
# /chosen properties Xen drops (write_properties) and those it writes itself.
CHOSEN_DROPPED = ("xen,xen-bootargs", "xen,dom0-bootargs", "stdout-path", "linux,uefi-system-table",
                  "linux,uefi-mmap-start", "linux,uefi-mmap-size", "linux,uefi-mmap-desc-size",
                  "linux,uefi-mmap-desc-ver")
CHOSEN_WRITTEN = ("bootargs", "linux,initrd-start", "linux,initrd-end")
# Linux wipes its boot seeds in the tree it was given (early_init_dt_scan_chosen): seen in /sys/firmware/fdt.
CHOSEN_WIPED_BY_LINUX = ("rng-seed", "kaslr-seed")
# Properties Xen leaves out of any node it copies, or adds (write_properties, handle_linux_pci_domain).
DROPPED_ANYWHERE = ("xen,passthrough", "iommus", "iommu-map", "iommu-map-mask")
ADDED_ANYWHERE = ("linux,pci-domain",)


@dataclass(frozen=True)
class Cpu:
    path: str
    reg: int | None
    enable_method: str | None


@dataclass(frozen=True)
class Gic:
    path: str
    compatible: tuple[str, ...]
    regions: tuple[Region, ...]

    @property
    def v3(self) -> bool:
        return "arm,gic-v3" in self.compatible


@dataclass(frozen=True)
class Timer:
    path: str
    compatible: tuple[str, ...]
    cells: tuple[int, ...]  # raw interrupts cells

    @property
    def intids(self) -> tuple[int, ...] | None:
        """INTIDs in binding order (secure phys, non-secure phys, virt, hyp); None unless all are 3-cell PPIs."""
        c = self.cells
        if not c or len(c) % 3 or any(c[i] != 1 for i in range(0, len(c), 3)):
            return None
        return tuple(PPI_BASE + c[i + 1] for i in range(0, len(c), 3))


@dataclass(frozen=True)
class GuestTree:
    """The nodes Xen's domain builder writes, decoded (None / () where absent)."""

    banks: tuple[Region, ...]
    cpus: tuple[Cpu, ...] | None  # None: no /cpus node
    psci_method: str | None
    gic: Gic | None
    timer: Timer | None
    bootargs: str | None
    initrd_start: int | None
    initrd_end: int | None
    grant: Region | None  # /hypervisor reg[0]

    @property
    def initrd(self) -> Region | None:
        if self.initrd_start is None or self.initrd_end is None:
            return None
        return Region(self.initrd_start, self.initrd_end - self.initrd_start)

    def summary(self) -> dict:
        """What result.json keeps of it."""
        return {
            "memory": [str(b) for b in self.banks],
            "cpus": len(self.cpus or ()),
            "gic": None if self.gic is None else {"compatible": list(self.gic.compatible),
                                                  "reg": [str(r) for r in self.gic.regions]},
            "timer_intids": list(self.timer.intids or ()) if self.timer else None,
            "bootargs": self.bootargs,
            "initrd": str(self.initrd) if self.initrd else None,
        }


@dataclass(frozen=True)
class BuildExpectation:
    """What Xen's log and the boot plan say the guest was given; None = unknown, not checked."""

    banks: tuple[Region, ...] | None = None
    vcpus: int | None = None
    gic_v3: bool | None = None  # the host's GIC is a GICv3
    gic_compatible: tuple[str, ...] | None = None  # the host GIC node's compatible
    gic_dist: int | None = None
    gic_cpu: int | None = None  # GICv2: where the guest's CPU interface must be (Xen maps GICV there)
    gic_redist: tuple[int, ...] | None = None  # GICv3: redistributor region starts
    timer_phys: int | None = None  # non-secure physical timer INTID
    timer_virt: int | None = None
    bootargs: str | None = None
    initrd: Region | None = None
    is_32bit: bool | None = None  # None: unknown (then a cpu node without enable-method is not judged)
    not_ram: tuple[tuple[str, Region], ...] = ()  # what no bank may cover, named: Xen's own image


def _strs(node: _Node | None, prop: str) -> tuple[str, ...]:
    return tuple((node.strings(prop) or []) if node is not None else [])


def _text(node: _Node | None, prop: str) -> str | None:
    values = node.strings(prop) if node is not None else None
    return values[0] if values else None


def _cells_number(raw: bytes | None) -> int | None:
    if raw is None or len(raw) not in (4, 8):
        return None
    return int.from_bytes(raw, "big")


def _regions(tree: _Tree, node: _Node) -> tuple[Region, ...]:
    """The node's reg in its parent's cells (as written: the trees here map their GIC 1:1)."""
    ac, sc = _bus_cells(node.parent) if node.parent is not None else (2, 1)
    if "reg" not in node.props or not _sane(ac, sc):
        return ()
    assert ac is not None and sc is not None
    return tuple(_decode_reg(node.props["reg"], ac, sc) or ())


def _child(tree: _Tree, name: str) -> _Node | None:
    return next((c for c in tree.root.children if c.name == name), None)


def _gic_node(tree: _Tree) -> _Node | None:
    """The root interrupt controller: a depth-1 node with a GIC compatible."""
    return next((n for n in tree.root.children if "interrupt-controller" in n.props
                 and set(_strs(n, "compatible")) & set(GIC_COMPATIBLES)), None)


def _is_memory(node: _Node) -> bool:
    return node.depth == 1 and (node.props.get("device_type") == b"memory\0" or node.name.split("@")[0] == "memory")


def uefi_memory_map(dtb: bytes) -> tuple[int, int, int] | None:
    """Where an ACPI dom0's EFI memory map is, per its /hypervisor/uefi node: (address, size, descriptor size)."""
    tree = _load(dtb)
    hyp = _child(tree, "hypervisor")
    uefi = next((c for c in hyp.children if c.name == "uefi"), None) if hyp is not None else None
    if uefi is None:
        return None
    values = [_cells_number(uefi.props.get(f"xen,uefi-mmap-{p}")) for p in ("start", "size", "desc-size")]
    return None if None in values or not values[1] or not values[2] else (values[0], values[1], values[2])


def read_guest_tree(dtb: bytes) -> GuestTree:
    """Decode the nodes Xen's domain builder writes; UnusableInput if the blob is not a readable DT."""
    return _read(_load(dtb))


def _read(tree: _Tree) -> GuestTree:
    ac, sc = _bus_cells(tree.root)
    banks: list[Region] = []
    for node in tree.root.children:
        if _is_memory(node) and "reg" in node.props and _sane(ac, sc):
            banks += [r for r in _decode_reg(node.props["reg"], ac, sc) or [] if r.size]
    cpus_node = _child(tree, "cpus")
    cpus = None if cpus_node is None else tuple(
        Cpu(c.path, _cells_number(c.props.get("reg")), _text(c, "enable-method"))
        for c in cpus_node.children if c.props.get("device_type") == b"cpu\0")
    gic = _gic_node(tree)
    timer = next((n for n in tree.root.children if set(_strs(n, "compatible")) & set(TIMERS)), None)
    chosen = _child(tree, "chosen")
    hyp = _child(tree, "hypervisor")
    hyp_regions = _regions(tree, hyp) if hyp is not None else ()
    return GuestTree(
        banks=tuple(banks),
        cpus=cpus,
        psci_method=_text(_child(tree, "psci"), "method"),
        gic=None if gic is None else Gic(gic.path, _strs(gic, "compatible"), _regions(tree, gic)),
        timer=None if timer is None else Timer(timer.path, _strs(timer, "compatible"),
                                               _cells(timer.props.get("interrupts", b""))),
        bootargs=_text(chosen, "bootargs"),
        initrd_start=_cells_number(chosen.props.get("linux,initrd-start")) if chosen else None,
        initrd_end=_cells_number(chosen.props.get("linux,initrd-end")) if chosen else None,
        grant=hyp_regions[0] if hyp_regions else None,
    )


# --- the rules ------------------------------------------------------------------------------


def _err(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule, Severity.ERROR, where, expected, found, note)


def check_build(dtb: bytes, expect: BuildExpectation | None = None, label: str = "") -> list[Finding]:
    """Findings about the nodes Xen's domain builder wrote, alone and against `expect`."""
    return capped(_check_tree(read_guest_tree(dtb), expect or BuildExpectation(), label))


def check_chosen(dtb: bytes, expect: BuildExpectation | None = None, label: str = "") -> list[Finding]:
    """Only /chosen: what an ACPI dom0's minimal tree carries besides /hypervisor."""
    return capped(_check_chosen(read_guest_tree(dtb), expect or BuildExpectation(), f"{label} " if label else ""))


def _check_tree(tree: GuestTree, expect: BuildExpectation, label: str) -> Iterator[Finding]:
    at = f"{label} " if label else ""
    yield from _check_memory(tree, expect, at)
    yield from _check_cpus(tree, expect, at)
    yield from _check_gic(tree, expect, at)
    yield from _check_timer(tree, expect, at)
    yield from _check_chosen(tree, expect, at)


def _check_memory(tree: GuestTree, expect: BuildExpectation, at: str) -> Iterator[Finding]:
    where = f"{at}/memory reg"
    if not tree.banks:
        yield _err("dt.memory.missing", where, "at least one RAM bank", "none")
    ordered = sorted(tree.banks, key=lambda r: r.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.overlaps(b):
            yield _err("dt.memory.overlap", where, "banks that do not overlap", f"{a} and {b}")
    taken = [("the grant table region", tree.grant)] if tree.grant is not None else []
    for (what, region), bank in ((t, b) for t in [*taken, *expect.not_ram] for b in tree.banks):
        if bank.overlaps(region):
            yield _err("dt.memory.overlap", where, f"no bank over {what} {region}", f"bank {bank}",
                       "the guest would use as its own RAM what is not its own")
    if expect.banks is not None and sorted(expect.banks, key=lambda r: r.start) != ordered:
        yield _err("dt.build.memory", where, f"{_show_regions(expect.banks)} (Xen's BANK lines)",
                   _show_regions(tree.banks), _size_note(expect.banks, tree.banks))


def _size_note(expected: tuple[Region, ...], found: tuple[Region, ...]) -> str:
    delta = sum(r.size for r in found) - sum(r.size for r in expected)
    if not delta:
        return "the same total, laid out differently"
    more = "more" if delta > 0 else "less"
    return f"the tree gives the guest {abs(delta) / (1 << 20):g} MiB {more} than Xen allocated"


def _check_cpus(tree: GuestTree, expect: BuildExpectation, at: str) -> Iterator[Finding]:
    where = f"{at}/cpus"
    if not tree.cpus:
        yield _err("dt.cpus.missing", where, "at least one cpu node", "no /cpus" if tree.cpus is None else "none")
        return
    if expect.vcpus is not None and len(tree.cpus) != expect.vcpus:
        yield _err("dt.build.cpus", where, f"{expect.vcpus} cpu nodes (one per vCPU Xen gave)",
                   f"{len(tree.cpus)}: {', '.join(c.path.rsplit('/', 1)[-1] for c in tree.cpus)}")
    # Xen writes enable-method only for 64-bit guests (make_cpus_node); 32-bit Linux finds PSCI in /psci.
    for cpu in tree.cpus:
        if cpu.enable_method != "psci" and (expect.is_32bit is False or cpu.enable_method is not None):
            yield _err("dt.cpus.enable-method", f"{at}{cpu.path} enable-method", '"psci"',
                       repr(cpu.enable_method) if cpu.enable_method else "absent",
                       "the guest cannot bring this vCPU up through Xen's PSCI")
    if tree.psci_method != "hvc":
        yield _err("dt.cpus.enable-method", f"{at}/psci method", '"hvc" (Xen\'s virtual PSCI)',
                   repr(tree.psci_method) if tree.psci_method else "no /psci node")


def _check_gic(tree: GuestTree, expect: BuildExpectation, at: str) -> Iterator[Finding]:
    gic = tree.gic
    if gic is None or not gic.regions:
        yield _err("dt.gic.missing", f"{at}/ (root interrupt controller)", "a GIC node with reg",
                   "none" if gic is None else f"{gic.path} without reg")
        return
    where = f"{at}{gic.path}"
    if expect.gic_compatible is not None and gic.compatible != expect.gic_compatible:
        yield _err("dt.build.gic", f"{where} compatible", f"{', '.join(expect.gic_compatible)} (the host's GIC)",
                   ", ".join(gic.compatible) or "none")
    elif expect.gic_v3 is not None and gic.v3 != expect.gic_v3:
        yield _err("dt.build.gic", f"{where} compatible", "arm,gic-v3" if expect.gic_v3 else "a GICv2 compatible",
                   ", ".join(gic.compatible) or "none")
    if expect.gic_dist is not None and gic.regions[0].start != expect.gic_dist:
        yield _err("dt.build.gic", f"{where} reg[0]", f"the distributor at {expect.gic_dist:#x} (Xen's gic_dist_addr)",
                   str(gic.regions[0]))
    if expect.gic_cpu is not None and not gic.v3:
        found = str(gic.regions[1]) if len(gic.regions) > 1 else "no reg[1]"
        if len(gic.regions) < 2 or gic.regions[1].start != expect.gic_cpu:
            yield _err("dt.build.gic", f"{where} reg[1]",
                       f"the CPU interface at {expect.gic_cpu:#x} (Xen maps its virtual one there)", found)
    if expect.gic_redist is not None and gic.v3:
        starts = tuple(r.start for r in gic.regions[1:1 + len(expect.gic_redist)])
        if starts != expect.gic_redist:
            yield _err("dt.build.gic", f"{where} reg[1..]",
                       f"redistributors at {', '.join(f'{a:#x}' for a in expect.gic_redist)} (Xen's log)",
                       _show_regions(gic.regions[1:]))


def _check_timer(tree: GuestTree, expect: BuildExpectation, at: str) -> Iterator[Finding]:
    timer = tree.timer
    if timer is None or timer.intids is None or len(timer.intids) < 3:
        yield _err("dt.timer.irqs", f"{at}{timer.path if timer else '/timer'} interrupts",
                   "3 or 4 PPIs <1 N flags> (secure phys, non-secure phys, virt[, hyp])",
                   "no timer node" if timer is None else f"{len(timer.cells)} cells {list(timer.cells)}")
        return
    for name, index, intid in (("non-secure physical", 1, expect.timer_phys), ("virtual", 2, expect.timer_virt)):
        if intid is not None and timer.intids[index] != intid:
            yield _err("dt.build.timer", f"{at}{timer.path} interrupts[{index}]",
                       f"the {name} timer at INTID {intid} (Xen's 'Generic Timer IRQ' line)",
                       f"INTID {timer.intids[index]}")


def _check_chosen(tree: GuestTree, expect: BuildExpectation, at: str) -> Iterator[Finding]:
    where = f"{at}/chosen"
    if (tree.initrd_start is None) != (tree.initrd_end is None) or (
            tree.initrd is not None and tree.initrd.size <= 0):
        yield _err("dt.chosen.initrd", f"{where} linux,initrd-start/end", "both, start below end",
                   f"start {_hex(tree.initrd_start)}, end {_hex(tree.initrd_end)}")
    if expect.bootargs is not None and tree.bootargs != expect.bootargs:
        yield _err("dt.build.bootargs", f"{where} bootargs", repr(expect.bootargs) + " (the boot plan's)",
                   repr(tree.bootargs) if tree.bootargs is not None else "absent")
    if expect.initrd is not None and tree.initrd != expect.initrd:
        yield _err("dt.build.initrd", f"{where} linux,initrd-start/end",
                   f"{expect.initrd} (where Xen's log says it loaded the initrd)",
                   str(tree.initrd) if tree.initrd else f"start {_hex(tree.initrd_start)}, end {_hex(tree.initrd_end)}")


def _hex(value: int | None) -> str:
    return "absent" if value is None else f"{value:#x}"


# --- dom0's tree vs the host's ----------------------------------------------------------------


def expectation_from_host(host_dtb: bytes) -> BuildExpectation:
    """What the host tree alone says dom0's GIC must be (its kind and compatible)."""
    gic = _read(_load(host_dtb, "the host DTB")).gic
    return BuildExpectation() if gic is None else BuildExpectation(gic_v3=gic.v3, gic_compatible=gic.compatible)


def console_uart(host_dtb: bytes, xen_cmdline: str | None = None) -> str | None:
    """The path of the UART Xen keeps for its console: dtuart= (a path or an alias) on Xen's command line
    (given, else the host tree's /chosen xen,xen-bootargs), else the host's stdout-path; None if none."""
    tree = _load(host_dtb, "the host DTB")
    chosen = _child(tree, "chosen")
    cmdline = xen_cmdline if xen_cmdline is not None else (_text(chosen, "xen,xen-bootargs") or "")
    found = re.findall(r"(?:^|\s)dtuart=(\S+)", cmdline)
    name = found[-1] if found else _text(chosen, "stdout-path") or _text(chosen, "linux,stdout-path")
    if not name:
        return None
    name = name.split(":", 1)[0]
    if not name.startswith("/"):
        name = _text(_child(tree, "aliases"), name) or ""
    return name or None


def console_uart_region(host_dtb: bytes, xen_cmdline: str | None = None) -> Region | None:
    """Where Xen's console UART is (reg[0] of the node `console_uart` names; its parent bus maps it 1:1)."""
    path = console_uart(host_dtb, xen_cmdline)
    tree = _load(host_dtb, "the host DTB")
    node = next((n for n in tree.nodes() if n.path == path), None) if path else None
    regions = _regions(tree, node) if node is not None else ()
    return regions[0] if regions else None


@dataclass(frozen=True)
class Difference:
    """One difference between the host tree and dom0's: `sign` '-' removed, '+' added, '~' changed."""

    sign: str
    path: str
    what: str  # the property, or "" for a node
    reason: str  # the rule that allows it, or "" when none does

    def line(self) -> str:
        target = f"{self.path} {self.what}".strip()
        return f"{self.sign} {target:60} {self.reason or 'UNEXPLAINED'}"


def diff_host(host_dtb: bytes, guest_dtb: bytes, xen_cmdline: str | None = None,
              xen_version: str | None = None) -> tuple[list[Finding], str]:
    """dom0's tree vs the host tree it was made from: findings for what no rule of Xen's explains (and for
    Xen's UART or a multiboot module left visible), and the whole difference as text a person reads. The rules
    that changed between releases follow `xen_version` ("4.20"; None: either release's)."""
    host, guest = _load(host_dtb, "the host DTB"), _load(guest_dtb, "dom0's DTB")
    uart = console_uart(host_dtb, xen_cmdline)
    diffs = list(_differences(host, guest, uart, xen_version))
    findings: list[Finding] = []
    guest_paths = {n.path for n in guest.nodes()}
    if uart and uart in guest_paths:
        findings.append(_err("dt.host.uart", uart, "absent: Xen keeps its console UART for itself",
                             "present in dom0's tree", "dom0 may drive the UART Xen's console writes to"))
    for node in guest.nodes():
        if set(_strs(node, "compatible")) & set(MULTIBOOT):
            findings.append(_err("dt.host.multiboot", node.path, "absent: Xen consumes its boot modules",
                                 "present in dom0's tree"))
    rules = {"-": ("dt.host.removed", "present, as in the host's tree", "absent from dom0's"),
             "+": ("dt.host.added", "absent, as in the host's tree", "added in dom0's"),
             "~": ("dt.host.changed", "the host's value", "a different value in dom0's")}
    for d in diffs:
        if not d.reason:
            rule, expected, found = rules[d.sign]
            findings.append(_err(rule, f"{d.path} {d.what}".strip(), expected, found,
                                 "no documented edit of Xen's explains it"))
    text = ["# dom0's device tree vs the host's it was built from (- removed, + added, ~ changed),",
            "# each difference with the edit of Xen's (xen/arch/arm/domain_build.c) or Linux's that explains it",
            f"# Xen's console UART: {uart or 'unknown'}"]
    text += [d.line() for d in diffs] or ["(no differences)"]
    return capped(findings), "\n".join(text) + "\n"


def _subtree_paths(node: _Node) -> Iterator[str]:
    yield node.path
    for child in node.children:
        yield from _subtree_paths(child)


# Xen 4.20 hides a dom0less domain's node (/chosen/domU1, compatible "xen,domain") from dom0; 4.17 leaves it
# there, emptied of its boot modules (seen on Debian's 4.17.7 and 4.20.4; 4.18 and 4.19 were not booted).
HIDES_DOMAIN_NODES = (4, 20)


def _release(version: str | None) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _removal_reason(node: _Node, uart: str | None, xen_version: str | None = None) -> str:
    compatible = set(_strs(node, "compatible"))
    if "xen,domain" in compatible and (_release(xen_version) or HIDES_DOMAIN_NODES) >= HIDES_DOMAIN_NODES:
        return "a dom0less domain's node: Xen 4.20 hides it from dom0 (4.17 leaves it)"
    if compatible & set(MULTIBOOT):
        return "a multiboot module: Xen's own boot input"
    if node.path == uart:
        return "Xen's console UART: Xen keeps it"
    if compatible & set(PSCI) or node.path == "/psci":
        return "PSCI: Xen writes its own /psci"
    if compatible & set(PMU):
        return "a PMU: Xen skips it"
    if node.path.startswith("/cpus"):
        return "/cpus: Xen writes one cpu node per vCPU"
    if _is_memory(node):
        return "a memory node: Xen writes dom0's banks"
    if "arm,armv7-timer-mem" in compatible:
        return "the memory-mapped timer: Xen does not support it"
    if compatible & set(IOMMUS):
        return "an IOMMU: Xen keeps it"
    if node.path == "/hypervisor" or "xen,xen" in compatible:
        return "a hypervisor node: Xen writes its own"
    if _uses_ppi(node):
        return "a device wired to a PPI: the vGIC cannot route it"
    return ""


def _uses_ppi(node: _Node) -> bool:
    cells = _cells(node.props.get("interrupts", b""))
    return len(cells) >= 3 and len(cells) % 3 == 0 and any(cells[i] == 1 for i in range(0, len(cells), 3))


def _differences(host: _Tree, guest: _Tree, uart: str | None, xen_version: str | None = None) -> Iterator[Difference]:
    host_gic, guest_gic = _gic_node(host), _gic_node(guest)
    # Xen writes dom0's GIC node itself (make_gic_node): both subtrees are judged by dt.build.gic instead.
    host_nodes = {n.path: n for n in host.nodes()}
    guest_nodes = {n.path: n for n in guest.nodes()}
    rewritten = {p for gic in (host_gic, guest_gic) if gic is not None for p in _subtree_paths(gic)}
    if host_gic is not None and guest_gic is not None:
        yield Difference("~", f"{host_gic.path} -> {guest_gic.path}", "", "the GIC: Xen writes dom0's (dt.build.gic)")
    skipped: set[str] = set()
    for path, node in host_nodes.items():
        if path in rewritten or path in guest_nodes or any(path.startswith(s + "/") for s in skipped):
            continue
        skipped.add(path)
        yield Difference("-", path, "", _removal_reason(node, uart, xen_version))
    added: set[str] = set()
    for path, node in guest_nodes.items():
        if path in rewritten or path in host_nodes or any(path.startswith(a + "/") for a in added):
            continue
        added.add(path)
        yield Difference("+", path, "", _addition_reason(node))
    for path, gnode in guest_nodes.items():
        hnode = host_nodes.get(path)
        if hnode is None or path in rewritten:
            continue
        for prop in sorted(set(hnode.props) | set(gnode.props)):
            before, after = hnode.props.get(prop), gnode.props.get(prop)
            if before != after:
                sign = "-" if after is None else "+" if before is None else "~"
                yield Difference(sign, path, prop, _property_reason(hnode, prop, before, after))


def _addition_reason(node: _Node) -> str:
    if node.path == "/hypervisor":
        return "Xen's hypervisor node (checked by the dt.* rules)"
    if node.path == "/psci":
        return "Xen's virtual PSCI (method hvc)"
    if node.path.startswith("/cpus"):
        return "Xen's vCPUs (dt.build.cpus)"
    if _is_memory(node):
        return "dom0's banks (dt.build.memory)"
    return ""


def _property_reason(node: _Node, prop: str, before: bytes | None, after: bytes | None) -> str:
    if rewritten := _addition_reason(node):  # a node Xen writes itself, whatever the host's said
        return rewritten
    if node.path == "/chosen":
        if prop in CHOSEN_DROPPED and after is None:
            return "a /chosen property Xen drops"
        if prop in CHOSEN_WRITTEN:
            return "Xen writes dom0's (dt.build.bootargs, dt.build.initrd)"
        if prop == "rng-seed" and after is None:
            return "Linux wipes the seed it used"
        if prop == "kaslr-seed" and after is not None and not any(after):
            return "Linux wipes the seed it used"
        if prop.startswith("u-boot,") and before is None:
            return "U-Boot's, added when it started Xen"
    if set(_strs(node, "compatible")) & set(TIMERS) and node.depth == 1:
        return "the timer: Xen writes dom0's (dt.build.timer)"
    if prop in DROPPED_ANYWHERE and after is None:
        return "a property Xen does not expose to dom0"
    if prop in ADDED_ANYWHERE and before is None:
        return "Xen numbers the PCI host bridges it gives dom0"
    if prop == "status" and after == b"disabled\0" and "xen,passthrough" in node.props:
        return "a device Xen keeps for passthrough"
    return ""


def check_data(data: bytes, host: pathlib.Path | None = None,
               xen_version: str | None = None) -> tuple[list[Finding], str | None]:
    """`harness check dtb`'s part here: a guest tree (as dt_input read it) judged alone and, given the host's DTB,
    against it (GIC kind, and the difference judged edit by edit: returned as text too)."""
    if host is None:
        return check_build(data), None
    host_data = inputs.read_file(pathlib.Path(host), inputs.DTB)
    _load(host_data, f"the host DTB {host}")  # unreadable: one sentence naming the file
    findings, text = diff_host(host_data, data, xen_version=xen_version)
    return check_build(data, expectation_from_host(host_data)) + findings, text
