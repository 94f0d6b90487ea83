"""The toolstack targets' proof that the grant table and event channels *work*: dom0 drives a real disk,
answers through xenstore and xl, and `xl create`s a domU whose PV disk and network move data through
grants and event channels.

Two halves, as everywhere in the harness: probe_dom0(), write_pv_disk(), exercise_domu() and finish_dom0()
ask the guests (dom0's shell, then the domU's through `xl console`; BootSession._check_toolstack runs them)
and record what they said in a `ToolstackReport`; `check()` is a pure function from that report and Xen's
claims to findings, unit-tested on bad inputs without a machine. What xl and libxl print when they fail is
the console monitor's (signatures libxl-error, xenconsoled-error, xenbus-unconnected, domu-not-started).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import asdict, dataclass, field, replace

from .findings import Finding, Severity
from .guest import GuestShell, parse_interrupts
from .rootfs import DOMU_ADDRESS, DOMU_CONFIG, KNOWN_PATH, KNOWN_SIZE, PV_DISK, known_content
from .targets import ROOT_LABEL
from .xenlog import XenClaims

DOMU_CONFIG_PATH = f"/{DOMU_CONFIG}"
PV_DISK_MB = 16  # the file dom0 writes and the domU reads through blkfront/blkback
WRITE_BACK_KB = 1024  # what the domU writes at the start of its disk for dom0 to read back
DOM0_ADDRESS = DOMU_ADDRESS.rsplit(".", 1)[0] + ".1"  # dom0's end of the PV network (harness-vif)
CONNECTED = "4"  # XenbusStateConnected
XENBUS_WAIT_S = 30.0
# xenstore paths of the domU's PV devices (domid 1, the first domain after dom0; xvda is 51712): each
# frontend's and backend's `state`.
XENBUS = {
    "vbd frontend": "/local/domain/1/device/vbd/51712/state",
    "vbd backend": "/local/domain/0/backend/vbd/1/51712/state",
    "vif frontend": "/local/domain/1/device/vif/0/state",
    "vif backend": "/local/domain/0/backend/vif/1/0/state",
}
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]|Booting Linux")  # the domU kernel's first words on its console
# The rows of /proc/interrupts that are event channels (Linux's Xen irq chips), by name.
EVENT_CHIP = re.compile(r"^xen-(?:dyn|percpu|pirq)")
RULES: dict[str, str] = {
    "toolstack.xenstore": "xenstore answers in dom0 with dom0's own entries (name Domain-0, domid 0)",
    "toolstack.xl-info": "`xl info` agrees with what Xen printed: version, CPUs",
    "toolstack.xl-list": "`xl list` shows Domain-0 with the memory and vCPUs Xen gave it, and the domU running",
    "disk.sha256": "dom0 reads a file of known content from its virtio root disk: the SHA256 matches",
    "disk.irq": "the disk's SPI is routed to dom0: its /proc/interrupts row counts up while dom0 reads",
    "xenbus.state": "each PV device's frontend and backend reach XenbusStateConnected (4) in xenstore",
    "pv.disk.read": "the domU reads its PV disk (a file dom0 wrote): the SHA256 matches dom0's",
    "pv.disk.write": "what the domU writes to its PV disk, dom0 reads back from the file: the SHA256 matches",
    "pv.events": "the PV devices' event channels fire on both sides while data moves",
    "pv.net.ping": "the PV network pair answers pings both ways",
}


@dataclass
class EventCounts:
    """Event-channel rows of /proc/interrupts (name -> total over CPUs) before and after some I/O."""

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)


@dataclass
class ToolstackReport:
    """What dom0 and the domU said, for check() and result.json (`toolstack`)."""

    xenstore_dom0: list[str] = field(default_factory=list)  # xenstore-ls /local/domain/0
    xl_info: dict[str, str] = field(default_factory=dict)
    xl_list: list[str] = field(default_factory=list)  # after the domU ran
    xen_bus_dom0: list[str] = field(default_factory=list)  # /sys/bus/xen/devices in dom0
    backends: list[str] = field(default_factory=list)  # /sys/bus/xen-backend/devices in dom0
    disk_device: str = ""  # "vda (virtio0)"
    disk_sha256: str = ""  # what dom0 read from KNOWN_PATH
    disk_irq: dict[str, int | str] = field(default_factory=dict)  # row, hwirq, chip, before, after
    disk_seconds: float = 0.0
    xl_create: list[str] = field(default_factory=list)  # xl create's own lines
    domu_devices: list[str] = field(default_factory=list)  # /sys/bus/xen/devices in the domU
    xenbus: dict[str, str] = field(default_factory=dict)  # XENBUS name -> state
    pv_disk_size: int = 0
    pv_disk_sha256_dom0: str = ""  # of the file dom0 wrote
    pv_disk_sha256_domu: str = ""  # of /dev/xvda as the domU read it
    pv_read_seconds: float = 0.0
    written_sha256_domu: str = ""  # of what the domU wrote
    written_sha256_dom0: str = ""  # of the file's first WRITE_BACK_KB as dom0 read it back
    domu_events: EventCounts = field(default_factory=EventCounts)
    dom0_events: EventCounts = field(default_factory=EventCounts)
    ping_domu_to_dom0: list[str] = field(default_factory=list)
    ping_dom0_to_domu: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def pv_read_mib_s(self) -> float | None:
        if not self.pv_read_seconds:
            return None
        return round(self.pv_disk_size / (1 << 20) / self.pv_read_seconds, 1)


    def summary(self, domu: str) -> list[str]:
        """The rows `harness boot` prints for the toolstack, as wide as its other witness rows."""
        irq = self.disk_irq
        disk = (f"{self.disk_device}: {KNOWN_SIZE >> 20} MiB read in {self.disk_seconds:.2f} s, SHA256 "
                f"{'as known' if self.disk_sha256 == known_sha256() else 'WRONG'}")
        if irq:
            disk += f"; its SPI (INTID {irq['hwirq']}) on {irq['chip']}, count {irq['before']} -> {irq['after']}"
        info = self.xl_info
        states = ", ".join(f"{name} {state or '-'}" for name, state in self.xenbus.items())
        read = "as dom0 wrote it" if self.pv_disk_sha256_domu == self.pv_disk_sha256_dom0 != "" else "WRONG"
        back = ("dom0 read it back" if self.written_sha256_dom0 == self.written_sha256_domu != ""
                else "dom0 read OTHER bytes")
        speed = f" ({self.pv_read_mib_s} MiB/s)" if self.pv_read_mib_s else ""
        events = "; ".join(
            f"{side} " + ", ".join(f"{n} {counts.before.get(n, 0)} -> {a}" for n, a in sorted(counts.after.items())
                                   if a > counts.before.get(n, 0) and not n.startswith(("hvc", "xenbus")))
            for side, counts in ((domu, self.domu_events), ("dom0", self.dom0_events)))
        pings = "; ".join(f"{where} {_received(lines)}/3" for where, lines in
                          ((f"{domu} -> dom0", self.ping_domu_to_dom0), (f"dom0 -> {domu}", self.ping_dom0_to_domu)))
        return [
            f"{'dom0 root disk':34} {disk}",
            f"{'dom0 toolstack':34} xenstore {'answers' if self.xenstore_dom0 else 'silent'}; xl info: Xen "
            f"{info.get('xen_version', '?')}, {info.get('nr_cpus', '?')} CPUs, {info.get('total_memory', '?')} MiB",
            f"{domu + ' xenbus states':34} {states}",
            f"{domu + ' PV disk':34} {self.pv_disk_size >> 20} MiB read in {self.pv_read_seconds:.2f} s{speed}, "
            f"SHA256 {read}; {WRITE_BACK_KB} KiB written, {back}",
            f"{domu + ' PV event channels':34} {events}",
            f"{domu + ' PV network':34} ping {pings}",
        ]


def _received(lines: list[str]) -> int:
    return next((int(m.group(1)) for line in lines if (m := re.search(r"(\d+) packets received", line))), 0)


@functools.cache
def known_sha256() -> str:
    return hashlib.sha256(known_content()).hexdigest()


# --- asking the guests -------------------------------------------------------------------------------


def parse_xl_info(lines: list[str]) -> dict[str, str]:
    """`xl info`'s `key : value` lines."""
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in lines) if sep and k.strip()}


def event_totals(interrupts: str) -> dict[str, int]:
    """Event-channel rows of /proc/interrupts: name -> total over CPUs (rows of one name are summed)."""
    totals: dict[str, int] = {}
    lines = interrupts.splitlines()
    if not lines:
        return totals
    ncpus = len(lines[0].split())
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        cols = rest.split()
        if not head.strip().isdigit() or len(cols) <= ncpus or not EVENT_CHIP.match(cols[ncpus]):
            continue
        counts = [int(c) for c in cols[:ncpus] if c.isdigit()]
        totals[cols[-1]] = totals.get(cols[-1], 0) + sum(counts)
    return totals


def _sha(lines: list[str]) -> str:
    """The first SHA256 sha256sum printed, or ""."""
    return next((m.group(0) for line in lines if (m := re.match(r"[0-9a-f]{64}\b", line))), "")


def xl_lines(relayed) -> list[str]:
    """What xl itself printed on the relayed console: the lines before the domU's kernel speaks."""
    lines = []
    for text in relayed:
        if KERNEL_LINE.match(text) or len(lines) >= 20:
            break
        lines.append(text)
    return lines


def probe_dom0(dom0: GuestShell, report: ToolstackReport) -> None:
    """dom0 before any domU: xenstore, xl, and a read of the known file through its root disk's driver."""
    report.xenstore_dom0 = dom0.run("xenstore-ls /local/domain/0", timeout=60, check=False)
    report.xl_info = parse_xl_info(dom0.run("xl info", timeout=60, check=False))
    report.xen_bus_dom0 = dom0.run("ls -1 /sys/bus/xen/devices", check=False)
    device = " ".join(dom0.run(f"findfs LABEL={ROOT_LABEL}", check=False)).strip().removeprefix("/dev/")
    virtio = " ".join(dom0.run(f"basename $(readlink /sys/block/{device}/device)", check=False)).strip()
    report.disk_device = f"{device} ({virtio})"
    before = "\n".join(dom0.run("cat /proc/interrupts"))
    dom0.run("sync; echo 3 > /proc/sys/vm/drop_caches")  # read through the disk, not the page cache
    started = time.monotonic()
    report.disk_sha256 = _sha(dom0.run(f"sha256sum /{KNOWN_PATH}", timeout=120, check=False))
    report.disk_seconds = round(time.monotonic() - started, 2)
    after = "\n".join(dom0.run("cat /proc/interrupts"))
    row_before, row_after = parse_interrupts(before).get(virtio), parse_interrupts(after).get(virtio)
    if row_before is not None:
        irq = row_before[0]
        hwirq = " ".join(dom0.run(f"cat /sys/kernel/irq/{irq}/hwirq", check=False)).strip()
        report.disk_irq = {"row": virtio, "irq": irq, "hwirq": int(hwirq) if hwirq.isdigit() else -1,
                           "chip": (row_before[2] or [""])[0], "before": sum(row_before[1]),
                           "after": sum(row_after[1]) if row_after else -1}


def write_pv_disk(dom0: GuestShell, report: ToolstackReport) -> None:
    """The file behind the domU's PV disk, written by dom0 with bytes only it knows, and its SHA256."""
    dom0.run(f"dd if=/dev/urandom of={PV_DISK} bs=1M count={PV_DISK_MB} 2>/dev/null", timeout=120, check=False)
    report.pv_disk_size = PV_DISK_MB << 20
    report.pv_disk_sha256_dom0 = _sha(dom0.run(f"sha256sum {PV_DISK}", timeout=120, check=False))


def exercise_domu(domu: GuestShell, report: ToolstackReport) -> None:
    """In the domU: its PV devices, a read of the whole PV disk, a write back, a ping to dom0, and the event
    channels' counts around that I/O. The write is O_DIRECT: straight through blkfront, none of it left in the
    domU's page cache when dom0 reads the file."""
    report.domu_devices = domu.run("ls -1 /sys/bus/xen/devices", check=False)
    report.domu_events.before = event_totals("\n".join(domu.run("cat /proc/interrupts")))
    started = time.monotonic()
    report.pv_disk_sha256_domu = _sha(domu.run("sha256sum /dev/xvda", timeout=300, check=False))
    report.pv_read_seconds = round(time.monotonic() - started, 2)
    report.written_sha256_domu = _sha(domu.run(
        f"dd if=/dev/urandom of=/tmp/written bs=64k count={WRITE_BACK_KB // 64} 2>/dev/null; sha256sum /tmp/written; "
        "dd if=/tmp/written of=/dev/xvda bs=64k oflag=direct 2>/dev/null", timeout=120, check=False))
    report.ping_domu_to_dom0 = domu.run(f"ping -c 3 -W 5 {DOM0_ADDRESS}", timeout=60, check=False)
    report.domu_events.after = event_totals("\n".join(domu.run("cat /proc/interrupts")))


def finish_dom0(dom0: GuestShell, report: ToolstackReport) -> None:
    """Back in dom0: xenbus states, backends, what the domU wrote, a ping the other way, its event counts."""
    report.dom0_events.before = event_totals("\n".join(dom0.run("cat /proc/interrupts")))
    report.xenbus = read_xenbus(dom0)
    report.backends = dom0.run("ls -1 /sys/bus/xen-backend/devices", check=False)
    report.written_sha256_dom0 = _sha(dom0.run(
        f"dd if={PV_DISK} bs=1k count={WRITE_BACK_KB} 2>/dev/null | sha256sum", timeout=120, check=False))
    report.ping_dom0_to_domu = dom0.run(f"ping -c 3 -W 5 {DOMU_ADDRESS}", timeout=60, check=False)
    report.dom0_events.after = event_totals("\n".join(dom0.run("cat /proc/interrupts")))
    report.xl_list = dom0.run("xl list", timeout=60, check=False)


def read_xenbus(dom0: GuestShell, deadline_s: float = XENBUS_WAIT_S) -> dict[str, str]:
    """Each PV device's frontend and backend state, asked again until all are Connected or the deadline."""
    paths = " ".join(XENBUS.values())
    end = time.monotonic() + deadline_s
    while True:
        lines = dom0.run(f"for p in {paths}; do echo \"$p=$(xenstore-read $p 2>/dev/null)\"; done", check=False)
        by_path = dict(line.split("=", 1) for line in lines if "=" in line)
        states = {name: by_path.get(path, "").strip() for name, path in XENBUS.items()}
        if all(state == CONNECTED for state in states.values()) or time.monotonic() > end:
            return states
        time.sleep(1)


# --- the checks --------------------------------------------------------------------------------------


def known_libxl_defects(findings: list[Finding], is_32bit: bool) -> list[Finding]:
    """A toolstack domU's findings, with what libxl does by design reported as known: libxl 4.17 gives every Arm
    domU extended regions, 32-bit ones too, where Xen's own domain builder gives 32-bit domains none."""
    note = ("libxl 4.17 gives a 32-bit domU extended regions (tools/libs/light/libxl_arm.c finalize_hypervisor_node "
            "has no check of the guest's bitness), where Xen's builder for dom0 and dom0less domUs gives none. Known "
            "upstream inconsistency; an LPAE guest can address them")
    return [replace(f, severity=Severity.KNOWN, note=note) if is_32bit and f.rule == "dt.ext.32bit" else f
            for f in findings]


def _error(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule, Severity.ERROR, where, expected, found, note)


def check(report: ToolstackReport, claims: XenClaims, *, cpus: int, dom0_vcpus: int, dom0_memory_mb: int | None,
          domu_name: str, domu_memory_mb: int, network: bool = True) -> list[Finding]:
    """What dom0 and the domU said against Xen's claims, the known content and each other."""
    out: list[Finding] = []
    xs = "\n".join(report.xenstore_dom0)
    if not re.search(r'^name = "Domain-0"', xs, re.M) or not re.search(r'^domid = "0"', xs, re.M):
        out.append(_error("toolstack.xenstore", "dom0 xenstore-ls /local/domain/0", 'name = "Domain-0" and domid = "0"',
                          (report.xenstore_dom0 or ["no answer"])[0][:120],
                          "xenstored or xen-init-dom0 did not run (see harness-init lines on the console)"))
    info = report.xl_info
    version = f"{info.get('xen_major', '?')}.{info.get('xen_minor', '?')}"
    if not info:
        out.append(_error("toolstack.xl-info", "dom0 xl info", "xl's answer", "none"))
    else:
        if claims.version and version != claims.version:
            out.append(_error("toolstack.xl-info", "dom0 xl info xen_major.xen_minor",
                              f"{claims.version} (Xen's banner)",
                              version))
        if info.get("nr_cpus") != str(cpus):
            out.append(_error("toolstack.xl-info", "dom0 xl info nr_cpus", f"{cpus} (the machine's CPUs)",
                              info.get("nr_cpus", "absent")))
    out += _check_xl_list(report.xl_list, dom0_vcpus, dom0_memory_mb, domu_name, domu_memory_mb)
    out += _check_disk(report)
    for name, state in report.xenbus.items():
        if state != CONNECTED:
            out.append(_error("xenbus.state", f"xenstore {XENBUS[name]}", f"{CONNECTED} (Connected)", state or "absent",
                              f"the {name} never connected" if "backend" in name else f"the domU's {name} is stuck"))
    out += _check_pv_disk(report)
    out += _check_events(report)
    if network:
        pings = (("domU ping dom0", report.ping_domu_to_dom0), ("dom0 ping domU", report.ping_dom0_to_domu))
        for where, lines in pings:
            if _received(lines) == 0:
                out.append(_error("pv.net.ping", where, "replies", " | ".join(lines[-2:]) or "no answer"))
    return out


def _check_xl_list(lines: list[str], vcpus: int, memory_mb: int | None, domu: str, domu_mb: int) -> list[Finding]:
    """`xl list`: Name ID Mem VCPUs State Time(s)."""
    rows = {cols[0]: cols for line in lines if len(cols := line.split()) >= 5 and cols[1].isdigit()}
    out = []
    dom0 = rows.get("Domain-0")
    if dom0 is None:
        return [_error("toolstack.xl-list", "dom0 xl list", "a Domain-0 row", " | ".join(lines[:3]) or "no answer")]
    if dom0[3] != str(vcpus):
        out.append(_error("toolstack.xl-list", "dom0 xl list Domain-0 VCPUs",
                          f"{vcpus} (dom0_max_vcpus or one per CPU)",
                          dom0[3]))
    if memory_mb is not None and dom0[2] != str(memory_mb):
        out.append(_error("toolstack.xl-list", "dom0 xl list Domain-0 Mem", f"{memory_mb} MiB (Xen's allocation)",
                          dom0[2]))
    row = rows.get(domu)
    if row is None:
        out.append(_error("toolstack.xl-list", "dom0 xl list", f"a {domu} row (the domU xl created)", "none"))
    elif "c" in row[4] or row[2] != str(domu_mb):
        out.append(_error("toolstack.xl-list", f"dom0 xl list {domu}", f"running or blocked, {domu_mb} MiB",
                          f"state {row[4]}, {row[2]} MiB"))
    return out


def _check_disk(report: ToolstackReport) -> list[Finding]:
    out = []
    known = known_sha256()
    if report.disk_sha256 != known:
        out.append(_error("disk.sha256", f"dom0 sha256sum /{KNOWN_PATH} on {report.disk_device}",
                          f"{known} ({KNOWN_SIZE} known bytes)", report.disk_sha256 or "no hash"))
    irq = report.disk_irq
    if not irq:
        out.append(_error("disk.irq", "dom0 /proc/interrupts", f"a row for the root disk {report.disk_device}", "none",
                          "Xen did not route the disk's SPI to dom0"))
        return out
    if int(irq["hwirq"]) < 32:
        out.append(_error("disk.irq", f"dom0 /sys/kernel/irq/{irq['irq']}/hwirq", "an SPI (32 or above)",
                          str(irq["hwirq"])))
    if int(irq["after"]) <= int(irq["before"]):
        out.append(_error("disk.irq", f"dom0 /proc/interrupts {irq['row']}",
                          f"a count above {irq['before']} after reading {KNOWN_SIZE >> 20} MiB", str(irq["after"]),
                          "the disk's interrupt did not reach dom0"))
    return out


def _check_pv_disk(report: ToolstackReport) -> list[Finding]:
    out = []
    if not report.pv_disk_sha256_dom0 or report.pv_disk_sha256_domu != report.pv_disk_sha256_dom0:
        out.append(_error("pv.disk.read", "domU sha256sum /dev/xvda", f"{report.pv_disk_sha256_dom0 or 'a hash'} "
                          f"(dom0's {PV_DISK})", report.pv_disk_sha256_domu or "no hash"))
    if not report.written_sha256_domu or report.written_sha256_dom0 != report.written_sha256_domu:
        out.append(_error("pv.disk.write", f"dom0 sha256 of {PV_DISK}'s first {WRITE_BACK_KB} KiB",
                          f"{report.written_sha256_domu or 'a hash'} (what the domU wrote)",
                          report.written_sha256_dom0 or "no hash"))
    return out


def _check_events(report: ToolstackReport) -> list[Finding]:
    out = []
    for side, counts in (("domU", report.domu_events), ("dom0", report.dom0_events)):
        grew = [name for name, after in counts.after.items() if after > counts.before.get(name, 0)]
        if not grew:
            rows = ", ".join(f"{n} {counts.before.get(n, 0)}->{a}" for n, a in sorted(counts.after.items()))
            out.append(_error("pv.events", f"{side} /proc/interrupts event-channel rows",
                              "a row whose count grows while data moves", rows or "no rows"))
    return out
