"""Everything Xen's domain builder gives a guest, from three sides: memory, vCPUs, GIC, timer, /chosen.

1. Xen's log: `Allocating … mappings totalling N MB` and its `BANK[n]` lines, `Loading dN initrd … to
   A-B`, `Brought up N CPUs` (with dom0_max_vcpus), `*** LOADING DOMU cpus=N`, its GIC initialization
   lines and `Generic Timer IRQ: phys=… virt=…` (xen/arch/arm/domain_build.c, gic-v2.c, gic-v3.c, time.c);
2. the guest's device tree: /memory, /cpus, the GIC, the timer, /chosen (harness.validate.dtbuild);
3. the guest's kernel: its `Memory: …/NK available` line, /proc/iomem's System RAM, MemTotal, `smp:
   Brought up … N CPUs` and the online CPUs, `arch_timer: … (virt)` and the arch_timer row of
   /proc/interrupts, GICv3's redistributor lines, /proc/cmdline, `Trying to unpack rootfs image as
   initramfs` and `Freeing initrd memory: NK`.

Pure functions over text and bytes, like harness.checks: each disagreement is a finding that says
expected vs found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .findings import Finding, Severity
from .guest import parse_interrupts
from .validate import dtbuild
from .validate.dt import Region

RULES: dict[str, str] = {
    "xen.memory.total": "Xen's BANK lines add up to its 'totalling N MB' and to the memory asked for (dom0_mem=, "
                        "a domU's memory)",
    "xen.vcpus": "Xen built a dom0less domU with the vCPUs its /chosen node asked for",
    "kernel.memory.total": "the kernel's 'Memory: …/NK available' total is the guest tree's banks",
    "kernel.memory.iomem": "/proc/iomem's System RAM (and reserved holes in it) is exactly the tree's banks",
    "kernel.memory.memtotal": "MemTotal is within the banks, less no more than the kernel said it reserved",
    "kernel.cpus": "the kernel brought up, and has online, one CPU per cpu node of its tree",
    "kernel.timer": "the kernel uses the virtual timer, on the tree's virtual timer PPI",
    "kernel.gic": "GICv3: the kernel's GICD and GICR (/proc/iomem) are the tree's GIC reg, and each redistributor it "
                  "found lies in the tree's redistributor regions",
    "kernel.cmdline": "/proc/cmdline is the tree's /chosen bootargs",
    "kernel.initrd": "the kernel unpacked the initramfs and freed the pages of the tree's initrd range",
    "efi.memory": "an ACPI dom0's EFI memory map gives it as conventional memory exactly Xen's banks, and "
                  "nothing else but ACPI tables",
    "kernel.uart": "the guest kernel claimed no MMIO of Xen's console UART (/proc/iomem): Xen hid it",
}

_HEX = r"(?:0x)?([0-9a-fA-F]+)"
ALLOCATING = re.compile(r"^Allocating (?:1:1 )?mappings totalling (\d+)MB for (?:dom0|d(\d+)):")
BANK = re.compile(rf"^(?:d(\d+) )?BANK\[(\d+)\] {_HEX}-{_HEX} \(")
INITRD = re.compile(rf"^Loading d(\d+) initrd from \S+ to {_HEX}-{_HEX}")
DOMU_CPUS = re.compile(r"^\*\*\* LOADING DOMU cpus=(\d+)")
DOMAIN_KERNEL = re.compile(r"^Loading d(\d+) kernel from")
PCPUS = re.compile(r"^Brought up (\d+) CPUs?")
TIMER = re.compile(r"^Generic Timer IRQ: phys=(\d+) hyp=(\d+) virt=(\d+)")
GIC_INIT = re.compile(r"^GICv([23]) initialization:")
GIC_DIST = re.compile(rf"^\s*gic_dist_addr={_HEX}")
GIC_CPU = re.compile(rf"^\s*gic_cpu_addr={_HEX}")
GIC_RDIST = re.compile(rf"^\s*- region \d+: {_HEX} - {_HEX}")
# Xen's boot modules (xen/arch/arm/bootfdt.c early_print_info, in its console ring): MODULE[n]: START - END Name
XEN_IMAGE = re.compile(rf"^MODULE\[\d+\]: {_HEX} - {_HEX} Xen\s*$")

K_MEMORY = re.compile(r"Memory: (\d+)K/(\d+)K available.*?(\d+)K reserved(?:, (\d+)K cma-reserved)?")
K_SMP = re.compile(r"smp: Brought up \d+ nodes?, (\d+) CPUs?")
K_TIMER = re.compile(r"arch_timer: cp15 timer\(s\) running at .*\((virt|phys)\)")
K_RDIST = re.compile(r"GICv3: CPU(\d+): found redistributor \S+ region \d+:(0x[0-9a-fA-F]+)")
K_UNPACK = re.compile(r"Trying to unpack rootfs image as initramfs")
K_UNPACK_FAILED = re.compile(r"Initramfs unpacking failed|initrd overlaps in-use memory region|"
                             r"INITRD: .* is not a valid|disabling initrd")
K_INITRD_FREED = re.compile(r"Freeing initrd memory: (\d+)K")
IOMEM = re.compile(r"^([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")
IOMEM_ANY = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")  # nested entries too
# /proc/iomem entries the kernel names after Xen: 'Xen unused space' (the extended regions it took,
# arch/arm/xen/enlighten.c) and the 'Xen scratch' pages unpopulated-alloc maps grants and foreign pages into.
XEN_NAMED = re.compile(r"xen", re.IGNORECASE)
PAGE = 4096
MiB = 1 << 20
# A dom0less domU's GIC is at Xen's fixed guest layout (xen/include/public/arch-arm.h), of the host's version.
GUEST_GICD = 0x03001000
GUEST_GICC = 0x03002000
GUEST_GICR0 = 0x03020000


@dataclass
class DomainClaims:
    """What Xen's log says it built for one domain."""

    banks: dict[int, Region] = field(default_factory=dict)  # BANK[n] -> region (end exclusive)
    total_mb: int | None = None
    initrd: Region | None = None
    vcpus: int | None = None  # a dom0less domU's (its LOADING DOMU line)


@dataclass
class BuildClaims:
    """Xen's log about the host it runs on and every domain it built."""

    pcpus: int | None = None
    gic: str | None = None  # "2" or "3"
    gic_dist: int | None = None
    gic_cpu: int | None = None
    gic_redist: tuple[int, ...] = ()
    timer_phys: int | None = None
    timer_virt: int | None = None
    xen_image: Region | None = None  # where Xen itself lies (its console ring's MODULE line)
    domains: dict[int, DomainClaims] = field(default_factory=dict)

    def domain(self, domid: int) -> DomainClaims:
        return self.domains.setdefault(domid, DomainClaims())


def parse_xen(lines: Iterable[str]) -> BuildClaims:
    """Xen's lines (without "(XEN) "), its console ring's too (where its boot modules are listed): a line the
    ring repeats says the same thing again."""
    claims = BuildClaims()
    current: int | None = None  # the domain whose allocation the BANK lines belong to
    domu_cpus: int | None = None  # announced before the domain's id is printed
    for text in lines:
        if m := ALLOCATING.match(text):
            current = int(m.group(2) or 0)
            claims.domain(current).total_mb = int(m.group(1))
        elif (m := BANK.match(text)) and (m.group(1) is not None or current is not None):
            domid = int(m.group(1)) if m.group(1) is not None else current
            start, end = int(m.group(3), 16), int(m.group(4), 16)
            claims.domain(domid).banks[int(m.group(2))] = Region(start, end - start)
        elif m := INITRD.match(text):
            start, end = int(m.group(2), 16), int(m.group(3), 16)
            claims.domain(int(m.group(1))).initrd = Region(start, end - start)
        elif m := DOMU_CPUS.match(text):
            domu_cpus = int(m.group(1))
        elif (m := DOMAIN_KERNEL.match(text)) and domu_cpus is not None and int(m.group(1)) != 0:
            claims.domain(int(m.group(1))).vcpus, domu_cpus = domu_cpus, None
        elif m := PCPUS.match(text):
            claims.pcpus = int(m.group(1))
        elif m := TIMER.match(text):
            claims.timer_phys, claims.timer_virt = int(m.group(1)), int(m.group(3))
        elif m := GIC_INIT.match(text):
            claims.gic, claims.gic_redist = m.group(1), ()
        elif m := GIC_DIST.match(text):
            claims.gic_dist = int(m.group(1), 16)
        elif m := GIC_CPU.match(text):
            claims.gic_cpu = int(m.group(1), 16)
        elif m := GIC_RDIST.match(text):
            claims.gic_redist += (int(m.group(1), 16),)
        elif m := XEN_IMAGE.match(text):
            start = int(m.group(1), 16)
            claims.xen_image = Region(start, int(m.group(2), 16) - start)
    return claims


@dataclass
class KernelFacts:
    """What a guest's kernel says of its memory, CPUs, timer, GIC, command line and initramfs."""

    memory_kb: int | None = None  # total in 'Memory: …/NK available'
    reserved_kb: int = 0
    cma_kb: int = 0
    iomem_ram: list[Region] = field(default_factory=list)  # top-level System RAM
    iomem_reserved: list[Region] = field(default_factory=list)  # top-level reserved (arm64's nomap)
    memtotal_kb: int | None = None
    cpus_up: int | None = None
    cpus_online: int | None = None
    timer: str | None = None  # "virt" or "phys"
    timer_hwirq: int | None = None  # the arch_timer row of /proc/interrupts
    redistributors: list[int] = field(default_factory=list)
    iomem_gic: dict[str, Region] = field(default_factory=dict)  # GICv3's "GICD", "GICR" in /proc/iomem
    iomem: list[tuple[Region, str]] = field(default_factory=list)  # every top-level /proc/iomem entry
    iomem_xen: list[str] = field(default_factory=list)  # /proc/iomem's lines naming Xen, at any depth, as printed
    cmdline: str | None = None  # /proc/cmdline
    initrd_unpacked: bool = False
    initrd_failed: str | None = None
    initrd_freed_kb: int | None = None

    def summary(self) -> dict:
        return {
            "memory_kb": self.memory_kb, "memtotal_kb": self.memtotal_kb,
            "system_ram": [str(r) for r in self.iomem_ram], "cpus_up": self.cpus_up,
            "cpus_online": self.cpus_online, "timer": self.timer, "timer_hwirq": self.timer_hwirq,
            "cmdline": self.cmdline, "initrd_unpacked": self.initrd_unpacked, "initrd_freed_kb": self.initrd_freed_kb,
            "iomem_xen": self.iomem_xen,
        }


# The guest's half of the probe: sections a host can split, each from a file every kernel has.
PROBE = ("echo @iomem; cat /proc/iomem; echo @meminfo; grep MemTotal /proc/meminfo; echo @online; "
         "cat /sys/devices/system/cpu/online; echo @cmdline; cat /proc/cmdline")


def kernel_facts(dmesg: Iterable[str], interrupts: str, probed: Iterable[str]) -> KernelFacts:
    """The kernel's side, from its log, /proc/interrupts and the PROBE command's output."""
    facts = KernelFacts()
    for line in dmesg:
        if m := K_MEMORY.search(line):
            facts.memory_kb, facts.reserved_kb, facts.cma_kb = int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)
        elif m := K_SMP.search(line):
            facts.cpus_up = int(m.group(1))
        elif m := K_TIMER.search(line):
            facts.timer = m.group(1)
        elif m := K_RDIST.search(line):
            facts.redistributors.append(int(m.group(2), 16))
        elif K_UNPACK.search(line):
            facts.initrd_unpacked = True
        elif m := K_INITRD_FREED.search(line):
            facts.initrd_freed_kb = int(m.group(1))
        elif K_UNPACK_FAILED.search(line) and facts.initrd_failed is None:
            facts.initrd_failed = line.strip()
    row = parse_interrupts(interrupts).get("arch_timer")
    if row is not None and len(row[2]) > 1 and row[2][1].isdigit():  # columns: chip, hwirq, trigger, name
        facts.timer_hwirq = int(row[2][1])
    sections: dict[str, list[str]] = {}
    name = ""
    for line in probed:
        if line.startswith("@"):
            name = line[1:].strip()
            sections[name] = []
        elif name:
            sections[name].append(line)
    for line in sections.get("iomem", []):
        if (m := IOMEM_ANY.match(line)) and XEN_NAMED.search(m.group(4)):
            facts.iomem_xen.append(line.rstrip())
        if not (m := IOMEM.match(line)):  # top-level lines only from here: nested ones are indented
            continue
        name, start = m.group(3).strip(), int(m.group(1), 16)
        region = Region(start, int(m.group(2), 16) + 1 - start)  # /proc/iomem's ends are inclusive
        facts.iomem.append((region, name))
        if name in ("GICD", "GICR"):
            facts.iomem_gic[name] = region
        elif name in ("System RAM", "reserved"):
            (facts.iomem_ram if name == "System RAM" else facts.iomem_reserved).append(region)
    if memtotal := re.search(r"MemTotal:\s+(\d+) kB", " ".join(sections.get("meminfo", []))):
        facts.memtotal_kb = int(memtotal.group(1))
    facts.cpus_online = _count_cpu_list(" ".join(sections.get("online", [])))
    if sections.get("cmdline"):
        facts.cmdline = " ".join(sections["cmdline"]).strip()
    return facts


def _count_cpu_list(text: str) -> int | None:
    """'0-1,3' -> 3; None when it is not a CPU list."""
    count = 0
    for part in filter(None, text.strip().split(",")):
        if not (m := re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())):
            return None
        count += int(m.group(2) or m.group(1)) - int(m.group(1)) + 1
    return count or None


def parse_size(text: str) -> int | None:
    """Xen's size syntax (xen/common/lib.c parse_size_and_unit): '512M' -> bytes; a bare number is KiB."""
    m = re.fullmatch(r"(\d+)([BKMGT]?)", text.strip(), re.IGNORECASE)
    if not m:
        return None
    shift = {"B": 0, "": 10, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    return int(m.group(1)) << shift


def dom0_mem(xen_cmdline: str) -> int | None:
    """dom0's memory asked for on Xen's command line, in bytes (dom0_mem=SIZE, the last one wins); None if unset
    or given as a range Xen resolves itself (min:/max:)."""
    found = re.findall(r"(?:^|\s)dom0_mem=(\S+)", xen_cmdline)
    return parse_size(found[-1].split(",")[0]) if found else None


def _merged(regions: Iterable[Region]) -> list[Region]:
    out: list[Region] = []
    for r in sorted((r for r in regions if r.size), key=lambda r: r.start):
        if out and r.start <= out[-1].end:
            last = out.pop()
            r = Region(last.start, max(last.end, r.end) - last.start)
        out.append(r)
    return out


def _show(regions: Iterable[Region]) -> str:
    return ", ".join(str(r) for r in regions) or "none"


def _err(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule, Severity.ERROR, where, expected, found, note)


@dataclass(frozen=True)
class Asked:
    """What the boot plan asked Xen to build for a guest."""

    cmdline: str
    memory: int | None = None  # bytes: dom0_mem=, or a domU's memory
    vcpus: int | None = None  # dom0: dom0_max_vcpus, else one per pCPU Xen brought up; a domU's cpus
    is_32bit: bool = False


def expectation(claims: BuildClaims, domid: int, asked: Asked, host_dtb: bytes | None) -> dtbuild.BuildExpectation:
    """What the guest's tree must say, per Xen's log (dom0: also per the host tree Xen made it from)."""
    domain = claims.domains.get(domid, DomainClaims())
    banks = tuple(domain.banks[i] for i in sorted(domain.banks)) or None
    host = dtbuild.expectation_from_host(host_dtb) if host_dtb is not None and domid == 0 else None
    is_dom0, v3 = domid == 0, claims.gic == "3"
    return dtbuild.BuildExpectation(
        banks=banks,
        vcpus=asked.vcpus,
        gic_v3=v3 if claims.gic else None,
        gic_compatible=host.gic_compatible if host else None,
        gic_dist=claims.gic_dist if is_dom0 else GUEST_GICD,
        gic_cpu=None if v3 else claims.gic_cpu if is_dom0 else GUEST_GICC,
        gic_redist=(claims.gic_redist or None if is_dom0 else (GUEST_GICR0,)) if v3 else None,
        timer_phys=claims.timer_phys,  # a domU's vtimer has the same PPIs (GUEST_TIMER_PHYS_NS_PPI 30, VIRT 27)
        timer_virt=claims.timer_virt,
        bootargs=asked.cmdline,
        initrd=domain.initrd,
        is_32bit=asked.is_32bit,
        not_ram=(("Xen's own image", claims.xen_image),) if is_dom0 and claims.xen_image else (),
    )


def check_xen_build(claims: BuildClaims, domid: int, asked: Asked, guest: str) -> list[Finding]:
    """Xen's own lines agree with each other and with what was asked."""
    domain = claims.domains.get(domid)
    where = f"Xen console ({guest})"
    out = []
    if domain is None or not domain.banks:
        return [_err("xen.memory.total", where, f"'BANK[n]' lines for {guest}'s memory", "none")]
    total = sum(b.size for b in domain.banks.values())
    if domain.total_mb is not None and total != domain.total_mb * MiB:
        out.append(_err("xen.memory.total", where, f"BANK lines adding up to {domain.total_mb} MB (Xen's 'totalling')",
                        f"{total // MiB} MiB: {_show(domain.banks.values())}"))
    if asked.memory is not None and total != asked.memory:
        out.append(_err("xen.memory.total", where, f"{asked.memory // MiB} MiB (the memory asked for)",
                        f"{total // MiB} MiB in Xen's BANK lines"))
    if domid != 0 and asked.vcpus is not None and domain.vcpus is not None and domain.vcpus != asked.vcpus:
        out.append(_err("xen.vcpus", where, f"cpus={asked.vcpus} (the domU's /chosen node)",
                        f"cpus={domain.vcpus} (Xen's LOADING DOMU line)"))
    return out


def check_kernel(tree: dtbuild.GuestTree, kernel: KernelFacts, guest: str, uart: Region | None = None) -> list[Finding]:
    """The guest kernel's view against the tree it booted from (and `uart`, Xen's console UART, not claimed)."""
    return [*_kernel_findings(tree, kernel, guest), *check_uart_hidden(kernel, guest, uart)]


def check_uart_hidden(kernel: KernelFacts, guest: str, uart: Region | None) -> list[Finding]:
    """No /proc/iomem entry of the guest's over Xen's console UART: a driver bound there would fight Xen's console."""
    if uart is None or not kernel.iomem:
        return []
    return [_err("kernel.uart", f"{guest} /proc/iomem", f"nothing at Xen's console UART {uart}", f"{region}: {name}",
                 "the guest drives the UART Xen writes its console to")
            for region, name in kernel.iomem if region.overlaps(uart)]


def _kernel_findings(tree: dtbuild.GuestTree, k: KernelFacts, guest: str) -> Iterator[Finding]:
    total = sum(b.size for b in tree.banks)
    where = f"{guest} kernel"
    if total and k.memory_kb is not None and k.memory_kb * 1024 != total:
        yield _err("kernel.memory.total", f"{where} log 'Memory:'", f"{total // 1024}K (the tree's banks)",
                   f"{k.memory_kb}K")
    if tree.banks and k.iomem_ram:
        seen = _merged([*k.iomem_ram, *k.iomem_reserved])
        if seen != _merged(tree.banks):
            yield _err("kernel.memory.iomem", f"{guest} /proc/iomem", f"System RAM {_show(_merged(tree.banks))} "
                       "(the tree's banks)", f"{_show(k.iomem_ram)}" + (
                           f" (reserved: {_show(k.iomem_reserved)})" if k.iomem_reserved else ""))
    if total and k.memtotal_kb is not None:
        low = total // 1024 - k.reserved_kb - k.cma_kb
        if not low <= k.memtotal_kb <= total // 1024:
            yield _err("kernel.memory.memtotal", f"{guest} /proc/meminfo MemTotal",
                       f"{low}..{total // 1024} kB (the banks, less what the kernel reserved)", f"{k.memtotal_kb} kB")
    virt = tree.timer.intids[2] if tree.timer and tree.timer.intids and len(tree.timer.intids) > 2 else None
    yield from _cpus_findings(k, len(tree.cpus or ()) or None, "the tree's cpu nodes", guest)
    yield from _timer_findings(k, virt, "the tree's virtual timer PPI", guest)
    if tree.gic is not None and tree.gic.v3:
        redist = tree.gic.regions[1:]
        for name, region in (("GICD", tree.gic.regions[0]), ("GICR", redist[0] if redist else None)):
            seen = k.iomem_gic.get(name)
            if seen is not None and seen != region:
                yield _err("kernel.gic", f"{guest} /proc/iomem {name}", f"{region} (the tree's GIC reg)", str(seen))
        for addr in k.redistributors:
            if not any(r.start <= addr < r.end for r in redist):
                yield _err("kernel.gic", f"{where} log 'found redistributor'",
                           f"an address in {_show(redist)} (the tree's redistributor regions)", f"{addr:#x}")
    yield from _chosen_findings(tree, k, guest)


def _cpus_findings(k: KernelFacts, cpus: int | None, source: str, guest: str) -> Iterator[Finding]:
    for where, seen in (("kernel log 'smp: Brought up'", k.cpus_up), ("/sys/devices/system/cpu/online", k.cpus_online)):
        if cpus is not None and seen is not None and seen != cpus:
            yield _err("kernel.cpus", f"{guest} {where}", f"{cpus} CPUs ({source})", str(seen))


def _timer_findings(k: KernelFacts, virt: int | None, source: str, guest: str) -> Iterator[Finding]:
    if k.timer != "virt":
        yield _err("kernel.timer", f"{guest} kernel log 'arch_timer:'", "the virtual timer '(virt)'",
                   f"({k.timer})" if k.timer else "no such line")
    if virt is not None and k.timer_hwirq is not None and k.timer_hwirq != virt:
        yield _err("kernel.timer", f"{guest} /proc/interrupts arch_timer", f"hwirq {virt} ({source})",
                   f"hwirq {k.timer_hwirq}")


def _chosen_findings(tree: dtbuild.GuestTree, k: KernelFacts, guest: str) -> Iterator[Finding]:
    if tree.bootargs is not None and k.cmdline is not None and k.cmdline != tree.bootargs:
        yield _err("kernel.cmdline", f"{guest} /proc/cmdline", repr(tree.bootargs) + " (the tree's bootargs)",
                   repr(k.cmdline))
    yield from _initrd_findings(tree.initrd, k, guest)


def _initrd_findings(initrd: Region | None, k: KernelFacts, guest: str) -> Iterator[Finding]:
    where = f"{guest} kernel log"
    if initrd is None:
        return
    if not k.initrd_unpacked or k.initrd_failed:
        yield _err("kernel.initrd", where, "'Trying to unpack rootfs image as initramfs' and no failure",
                   k.initrd_failed or "no such line")
    # free_initrd_mem() frees the pages wholly inside [start, end) (arm64), or every page it touches (arm32)
    inside = max(0, initrd.end // PAGE - -(-initrd.start // PAGE)) * PAGE // 1024
    touched = (-(-initrd.end // PAGE) - initrd.start // PAGE) * PAGE // 1024
    if k.initrd_freed_kb is not None and k.initrd_freed_kb not in (inside, touched):
        expected = f"{inside}K" if inside == touched else f"{inside}K or {touched}K"
        yield _err("kernel.initrd", f"{where} 'Freeing initrd memory:'",
                   f"{expected} (the pages of the tree's initrd {initrd})", f"{k.initrd_freed_kb}K")


@dataclass
class Witness:
    """One guest's build, from the three sides, for result.json and the report."""

    guest: str
    domid: int
    claims: BuildClaims  # Xen's log
    xen: DomainClaims  # … about this guest
    tree: dtbuild.GuestTree | None
    kernel: KernelFacts
    expected_vcpus: int | None = None
    diff: str | None = None  # the artifact file of dom0's tree vs the host's, when made
    efi_memory: list[str] | None = None  # an ACPI dom0's EFI memory map, "type start-end"
    differences: int = 0

    def to_dict(self) -> dict:
        return {
            "xen": {"memory": [str(self.xen.banks[i]) for i in sorted(self.xen.banks)], "total_mb": self.xen.total_mb,
                    "initrd": str(self.xen.initrd) if self.xen.initrd else None, "vcpus": self.expected_vcpus,
                    "gic": f"GICv{self.claims.gic}" if self.claims.gic else None,
                    "timer": {"phys": self.claims.timer_phys, "virt": self.claims.timer_virt}},
            "dt": self.tree.summary() if self.tree else None,
            "kernel": self.kernel.summary(),
            "host_diff": self.diff,
            "efi_memory": self.efi_memory,
        }

    def report(self) -> list[str]:
        """Lines of `harness boot`'s table: what each witness said of each item."""
        t, k, g, claims = self.tree, self.kernel, self.guest, self.claims
        xen_banks = _show(self.xen.banks[i] for i in sorted(self.xen.banks))
        dt_banks = _show(t.banks) if t and t.banks else None  # None: an ACPI dom0 (its RAM is in the EFI map)
        dt_memory = "" if dt_banks is None else f"DT: {'(the same)' if dt_banks == xen_banks else dt_banks}   "
        if self.efi_memory is not None:
            dt_memory = f"EFI map: {', '.join(self.efi_memory)}   "
        mem_kernel = f"{k.memory_kb}K, System RAM {_show(_merged(k.iomem_ram))}" if k.memory_kb else "-"
        lines = [f"{g + ' memory':34} Xen: {xen_banks}   {dt_memory}kernel: {mem_kernel}, MemTotal {k.memtotal_kb} kB"]
        dt_cpus = f"DT: {len(t.cpus)} cpu nodes   " if t and t.cpus else ""
        lines.append(f"{g + ' vCPUs':34} Xen: {self.expected_vcpus or '?'}   {dt_cpus}"
                     f"kernel: {k.cpus_up} brought up, {k.cpus_online} online")
        if t and t.gic:
            dist = _hex(claims.gic_dist) if self.domid == 0 else f"{GUEST_GICD:#x} (guest layout)"
            lines.append(f"{g + ' GIC':34} Xen: GICv{claims.gic or '?'} dist {dist}   DT: "
                         f"{t.gic.compatible[0] if t.gic.compatible else '?'} {_show(t.gic.regions)}")
        if t and t.timer:
            lines.append(f"{g + ' timer':34} Xen: phys {claims.timer_phys} virt {claims.timer_virt}   DT: PPIs "
                         f"{', '.join(map(str, t.timer.intids or ()))}   kernel: ({k.timer}) hwirq {k.timer_hwirq}")
        if t:
            lines.append(f"{g + ' initrd':34} Xen: {self.xen.initrd or '-'}   DT: {t.initrd or '-'}   kernel: "
                         f"{'unpacked' if k.initrd_unpacked else 'not unpacked'}, freed {k.initrd_freed_kb}K")
        if self.diff:
            lines.append(f"{g + ' DT vs host':34} {self.differences} differences, each judged: {self.diff}")
        return lines


def _hex(value: int | None) -> str:
    return "?" if value is None else f"{value:#x}"


def judge(
    build: BuildClaims, domid: int, guest: str, asked: Asked, fdt: bytes, dmesg: Iterable[str], interrupts: str,
    probed: Iterable[str], host_dtb: bytes | None = None, xen_cmdline: str | None = None,
    xen_version: str | None = None,
) -> tuple[list[Finding], Witness, str | None]:
    """Every witness of one guest's build: Xen's log against itself and what was asked, the guest's tree against
    Xen's log (and, for dom0 given the host tree, against the host tree), the kernel against the tree. Returns the
    findings, the record, and the text of the host diff (None without a host tree)."""
    findings = check_xen_build(build, domid, asked, guest)
    findings += dtbuild.check_build(fdt, expectation(build, domid, asked, host_dtb), label=guest)
    tree = dtbuild.read_guest_tree(fdt)
    kernel = kernel_facts(dmesg, interrupts, probed)
    uart = dtbuild.console_uart_region(host_dtb, xen_cmdline) if host_dtb is not None else None
    findings += check_kernel(tree, kernel, guest, uart)
    witness = Witness(guest, domid, build, build.domains.get(domid, DomainClaims()), tree, kernel,
                      expected_vcpus=asked.vcpus)
    diff_text = None
    if host_dtb is not None:
        host_findings, diff_text = dtbuild.diff_host(host_dtb, fdt, xen_cmdline, xen_version)
        findings += host_findings
        witness.differences = sum(1 for line in diff_text.splitlines() if line[:1] in "-+~")
    return findings, witness, diff_text


# Xen gives an ACPI dom0 its RAM through the EFI memory map it builds (xen/arch/arm/efi/efi-dom0.c), with one
# more region holding the ACPI tables it wrote for dom0 (EfiACPIReclaimMemory, which Linux counts as RAM).
ACPI_TABLES_SLACK = 1 * MiB


def judge_acpi(
    build: BuildClaims, guest: str, asked: Asked, fdt: bytes, dmesg: Iterable[str], interrupts: str,
    probed: Iterable[str], uart: Region | None = None,
) -> tuple[list[Finding], Witness]:
    """An ACPI dom0's witnesses: Xen's log against itself, the minimal tree's /chosen against Xen's initrd and the
    plan's command line, and the kernel (memory from the EFI map, CPUs from the MADT, timer from the GTDT)
    against Xen's log; its tables themselves are judged by harness.validate.acpi (MADT GICCs = vCPUs, STAO)."""
    domain = build.domains.get(0, DomainClaims())
    findings = check_xen_build(build, 0, asked, guest)
    findings += dtbuild.check_chosen(fdt, dtbuild.BuildExpectation(bootargs=asked.cmdline, initrd=domain.initrd),
                                     label=guest)
    tree = dtbuild.read_guest_tree(fdt)
    kernel = kernel_facts(dmesg, interrupts, probed)
    findings += list(_acpi_kernel_findings(build, asked, tree, kernel, guest))
    findings += check_uart_hidden(kernel, guest, uart)
    return findings, Witness(guest, 0, build, domain, tree, kernel, expected_vcpus=asked.vcpus)


def _acpi_kernel_findings(build: BuildClaims, asked: Asked, tree: dtbuild.GuestTree, k: KernelFacts,
                          guest: str) -> Iterator[Finding]:
    banks = list(build.domains.get(0, DomainClaims()).banks.values())
    total = sum(b.size for b in banks)
    ram = _merged([*k.iomem_ram, *k.iomem_reserved])
    for bank in banks:
        if not any(r.start <= bank.start and bank.end <= r.end for r in ram):
            yield _err("kernel.memory.iomem", f"{guest} /proc/iomem", f"System RAM over {bank} (Xen's BANK line)",
                       _show(k.iomem_ram))
    if total and k.memory_kb is not None and not total <= k.memory_kb * 1024 <= total + ACPI_TABLES_SLACK:
        yield _err("kernel.memory.total", f"{guest} kernel log 'Memory:'",
                   f"{total // 1024}K (Xen's banks) plus at most {ACPI_TABLES_SLACK // 1024}K of Xen's ACPI tables",
                   f"{k.memory_kb}K")
    if total and k.memtotal_kb is not None and not total // 1024 - k.reserved_kb - k.cma_kb <= k.memtotal_kb <= (
            total + ACPI_TABLES_SLACK) // 1024:
        yield _err("kernel.memory.memtotal", f"{guest} /proc/meminfo MemTotal",
                   f"within Xen's banks ({total // 1024} kB), less what the kernel reserved", f"{k.memtotal_kb} kB")
    yield from _cpus_findings(k, asked.vcpus, "the vCPUs Xen gave", guest)
    yield from _timer_findings(k, build.timer_virt, "Xen's virtual timer PPI", guest)
    yield from _chosen_findings(tree, k, guest)


EFI_CONVENTIONAL = 7  # EfiConventionalMemory
EFI_ACPI_RECLAIM = 9  # EfiACPIReclaimMemory
EFI_TYPES = {7: "conventional", 9: "ACPI reclaim", 10: "ACPI NVS", 11: "MMIO", 5: "runtime code", 6: "runtime data"}


def efi_memory_map(raw: bytes, desc_size: int) -> list[tuple[int, Region]]:
    """(type, region) of each EFI_MEMORY_DESCRIPTOR: u32 type, u32 pad, u64 physical start, u64 virtual start,
    u64 number of 4 KiB pages, u64 attributes."""
    out = []
    for at in range(0, len(raw) - 32 + 1, max(desc_size, 40)):
        kind = int.from_bytes(raw[at:at + 4], "little")
        start, pages = int.from_bytes(raw[at + 8:at + 16], "little"), int.from_bytes(raw[at + 24:at + 32], "little")
        out.append((kind, Region(start, pages * PAGE)))
    return out


def check_efi_memory(build: BuildClaims, where: tuple[int, int, int] | None, raw: bytes | None, witness: Witness,
                     guest: str) -> list[Finding]:
    """The EFI memory map Xen handed an ACPI dom0 (`where` its minimal tree says it is, `raw` its bytes): its
    conventional memory is Xen's banks, what else it gives is ACPI tables (at most ACPI_TABLES_SLACK), and the
    kernel's System RAM is exactly both. Records the map in `witness`."""
    if not raw or where is None:
        return [_err("efi.memory", f"{guest} EFI memory map",
                     "the map /hypervisor/uefi points at, readable through /proc/kcore",
                     "no uefi node" if where is None else f"{where[0]:#x} not mapped by /proc/kcore")]
    entries = efi_memory_map(raw, where[2])
    witness.efi_memory = [f"{EFI_TYPES.get(kind, kind)} {region}" for kind, region in entries]
    kernel = witness.kernel
    banks = _merged(build.domains.get(0, DomainClaims()).banks.values())
    where_text = f"{guest} EFI memory map"
    conventional = _merged(r for kind, r in entries if kind == EFI_CONVENTIONAL)
    tables = [r for kind, r in entries if kind == EFI_ACPI_RECLAIM]
    out = []
    if conventional != banks:
        out.append(_err("efi.memory", where_text, f"conventional memory {_show(banks)} (Xen's BANK lines)",
                        _show(conventional)))
    others = [f"{EFI_TYPES.get(kind, kind)} {r}" for kind, r in entries
              if kind not in (EFI_CONVENTIONAL, EFI_ACPI_RECLAIM)]
    if others or sum(r.size for r in tables) > ACPI_TABLES_SLACK:
        out.append(_err("efi.memory", where_text,
                        f"besides it, only ACPI tables (at most {ACPI_TABLES_SLACK // 1024}K)",
                        ", ".join(others) or f"ACPI reclaim {_show(tables)}"))
    seen = _merged([*kernel.iomem_ram, *kernel.iomem_reserved])
    if kernel.iomem_ram and seen != _merged([*conventional, *tables]):
        out.append(_err("kernel.memory.iomem", f"{guest} /proc/iomem",
                        f"System RAM {_show(_merged([*conventional, *tables]))} (the EFI map's memory and ACPI tables)",
                        _show(kernel.iomem_ram)))
    return out


def spcr_uart(spcr: bytes | None) -> Region | None:
    """The UART an SPCR table describes (its base address GAS at offset 40; MMIO only), one page."""
    if spcr is None or len(spcr) < 52 or spcr[40] != 0:  # address space 0: system memory
        return None
    return Region(int.from_bytes(spcr[44:52], "little"), 0x1000)
