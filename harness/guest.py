"""Guest probes: what a running guest says about Xen, read through its shell on the console.

Files move from guest to host framed so that console noise cannot corrupt them silently: the guest
prints the file's length and SHA256, then its base64; the host drops lines that cannot be base64
(Xen's own messages share the console), decodes, and checks both. A mismatch is retried once, then
reported with both digests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import time
from dataclasses import dataclass, field

import pexpect

from .errors import HarnessError, UnusableInput
from .monitor import GUEST_DEBUG, XEN_OWN, XEN_PREFIX, BootFailure, ConsoleMonitor
from .validate import dt

XEN_LINE = re.compile(f"{XEN_PREFIX.pattern}|{GUEST_DEBUG.pattern}")
BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# What a kernel says about Xen as it finds it ('Xen 4.17 support found', 'xen:grant_table: …', 'Grant table
# initialized', 'xen:events: Using FIFO-based ABI', 'Xen: initializing cpu0'), in the wording of that kernel:
# kept whole, so a release that words them differently shows in `harness diff`. Not its command line.
KERNEL_XEN = re.compile(r"\bxen\b|\bxen[\w-]*:|grant.table", re.IGNORECASE)
KERNEL_NOT_XEN = re.compile(r"^Kernel command line:")
LINUX_VERSION = re.compile(r"Linux version \S+.*")
DMESG_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s?")
MAX_XEN_LINES = 60  # result.json stays small when a driver repeats itself


class ProbeError(HarnessError):
    """A guest did not answer a probe, or answered something the harness cannot read."""


class GuestShell:
    """Commands in a guest's shell (a labgrid ShellDriver), with console noise filtered out."""

    def __init__(self, shell, guest: str, monitor: ConsoleMonitor | None = None, xen_prefixed: bool = False,
                 quiet=None) -> None:
        self.shell = shell
        self.guest = guest
        self.monitor = monitor
        self.xen_prefixed = xen_prefixed  # a focused dom0less domU: Xen prints its output with "(XEN) "
        self.quiet = quiet  # a console QuietWatch: a command gone quiet is asked where the machine is

    def run(self, command: str, timeout: float = 30.0, check: bool = True) -> list[str]:
        console = getattr(self.shell, "console", None) if self.quiet else None
        if console is not None:
            console.quiet = self.quiet
        try:
            # "replace": a byte of line noise must not end the conversation (file transfers are checked)
            out, _, status = self.shell.run(command, timeout=timeout, decodeerrors="replace")
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            if self.monitor and self.monitor.failure:
                raise BootFailure(self.monitor.failure, f"while {self.guest} ran `{command}`") from None
            what = "stopped" if isinstance(exc, pexpect.EOF) else f"did not answer within {timeout:.0f} s"
            raise ProbeError(f"{self.guest} {what} while running `{command}`: see console.log.") from None
        finally:
            if console is not None:
                console.quiet = None
        lines = self.clean(out)
        if check and status != 0:
            tail = " | ".join(lines[-3:]) or "no output"
            raise ProbeError(f"`{command}` failed in {self.guest} with status {status}: {tail}")
        return lines

    def clean(self, out: list[str]) -> list[str]:
        """The command's own output: Xen's interleaved lines dropped (or, for a focused domU, its prefix)."""
        lines = []
        for raw in out:
            line = raw.rstrip("\r")
            if m := XEN_LINE.match(line):
                body = line[m.end():]
                if not (self.xen_prefixed and line.startswith("(XEN)") and not XEN_OWN.match(body)):
                    continue
                line = body
            lines.append(line)
        while lines and not lines[-1]:  # the prefix Xen printed before the closing marker
            lines.pop()
        return lines

    def read_file(self, path: str, attempts: int = 2) -> bytes:
        quoted = shlex.quote(path)
        problem = ""
        for _ in range(attempts):
            try:
                return decode_transfer(self.run(TRANSFER.format(path=quoted), timeout=120))
            except TransferError as exc:
                problem = str(exc)
        raise ProbeError(f"copying {path} out of {self.guest} failed {attempts} times: {problem}.")


# The guest's half of a file transfer: busybox's wc, sha256sum and base64.
TRANSFER = "wc -c < {path}; sha256sum < {path}; base64 < {path}"


class TransferError(ValueError):
    pass


def decode_transfer(lines: list[str]) -> bytes:
    """The file a TRANSFER command printed, checked against the length and SHA256 it printed first."""
    if len(lines) < 2 or not lines[0].strip().isdigit() or not re.match(r"^[0-9a-f]{64}\b", lines[1]):
        raise TransferError(f"unexpected answer {lines[:2]!r}")
    size, digest = int(lines[0]), lines[1].split()[0]
    payload = "".join(line.strip() for line in lines[2:] if BASE64_LINE.match(line.strip()))
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise TransferError(f"undecodable base64 ({exc})") from None
    found = hashlib.sha256(data).hexdigest()
    if len(data) != size or found != digest:
        raise TransferError(
            f"expected {size} bytes with SHA256 {digest}, received {len(data)} bytes with SHA256 {found}"
        )
    return data


@dataclass
class EventIrq:
    """The `events` row of /proc/interrupts and what /sys/kernel/irq says of it."""

    irq: int
    hwirq: int | None
    chip: str  # "GICv3", "GIC-0"
    trigger: str
    counts: list[int]  # per CPU, at the first sample

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class GuestView:
    guest: str
    uname: str = ""
    hypervisor_type: str = ""
    hypervisor_version: str = ""  # "4.17" from /sys/hypervisor/version
    dmesg: list[str] = field(default_factory=list)
    interrupts: str = ""  # /proc/interrupts at the first sample
    interrupts_later: str = ""  # … and after the other probes ran
    event_irq: EventIrq | None = None
    event_count_later: int | None = None
    fdt: bytes | None = None  # /sys/firmware/fdt: the whole tree the guest was given
    live_tree: bool = False  # /proc/device-tree exists (not on an ACPI boot)
    procfs_hypervisor: dict[str, bytes] = field(default_factory=dict)  # /proc/device-tree/hypervisor/*
    seconds: float = 0.0  # how long probing took

    def summary(self) -> dict:
        """What result.json keeps of this view (the DTB and logs are files beside it)."""
        irq = self.event_irq
        return {
            "kernel": self.uname,
            "linux_version": linux_version(self.dmesg),
            "xen_lines": kernel_xen_lines(self.dmesg),
            "hypervisor_node": hypervisor_node(self.fdt),
            "hypervisor_type": self.hypervisor_type,
            "hypervisor_version": self.hypervisor_version,
            "event_irq": None if irq is None else {
                "irq": irq.irq, "hwirq": irq.hwirq, "chip": irq.chip, "type": irq.trigger,
                "count": irq.total, "count_later": self.event_count_later,
            },
            "probe_seconds": self.seconds,
        }


def _untimed(line: str) -> str:
    return DMESG_TIME.sub("", line.rstrip())


def linux_version(dmesg: list[str]) -> str | None:
    """The kernel's 'Linux version RELEASE (builder) … #1 SMP Debian X.Y.Z-N (date)' line, without its time."""
    return next((m.group(0).strip() for line in dmesg if (m := LINUX_VERSION.search(line))), None)


def kernel_xen_lines(dmesg: list[str]) -> list[str]:
    """The kernel's lines about Xen (KERNEL_XEN), without their times, in order."""
    lines = [_untimed(line) for line in dmesg if KERNEL_XEN.search(line)]
    return [line for line in lines if not KERNEL_NOT_XEN.match(line)][:MAX_XEN_LINES]


def hypervisor_node(fdt: bytes | None) -> dict | None:
    """The hypervisor node of the guest's tree, decoded (None without a tree, a node, or a readable tree: the
    checks report those)."""
    try:
        node = dt.read_hypervisor_node(fdt) if fdt else None
    except UnusableInput:
        return None
    return node.summary() if node else None


def parse_interrupts(text: str) -> dict[str, tuple[int, list[int], list[str]]]:
    """/proc/interrupts rows with a numeric IRQ: name -> (irq, per-CPU counts, other columns)."""
    lines = text.splitlines()
    if not lines:
        return {}
    ncpus = len(lines[0].split())
    rows: dict[str, tuple[int, list[int], list[str]]] = {}
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        if not head.strip().isdigit():
            continue
        cols = rest.split()
        counts = [int(c) for c in cols[:ncpus] if c.isdigit()]
        rows.setdefault(cols[-1] if cols else "", (int(head), counts, cols[len(counts):]))
    return rows


def event_irq(shell: GuestShell, interrupts: str) -> EventIrq | None:
    row = parse_interrupts(interrupts).get("events")
    if row is None:
        return None
    irq, counts, columns = row
    base = f"/sys/kernel/irq/{irq}"
    values = dict(
        line.split("=", 1)
        for line in shell.run(
            f"for f in hwirq type; do echo \"$f=$(cat {base}/$f 2>/dev/null)\"; done"
        )
        if "=" in line
    )
    hwirq = values.get("hwirq", "").strip()
    return EventIrq(
        irq=irq,
        hwirq=int(hwirq) if hwirq.isdigit() else None,
        chip=columns[0] if columns else "",  # as /proc/interrupts shows it: sysfs chip_name is empty for GIC-0
        trigger=values.get("type", "").strip(),
        counts=counts,
    )


def probe(shell: GuestShell) -> GuestView:
    """Everything the checks need from a guest that booted on a device tree."""
    started = time.monotonic()
    view = GuestView(shell.guest)
    view.interrupts = "\n".join(shell.run("cat /proc/interrupts"))
    view.event_irq = event_irq(shell, view.interrupts)
    view.uname = " ".join(shell.run("uname -r"))
    view.hypervisor_type = " ".join(shell.run("cat /sys/hypervisor/type", check=False)).strip()
    view.hypervisor_version = ".".join(
        shell.run("cat /sys/hypervisor/version/major /sys/hypervisor/version/minor", check=False)
    ).strip()
    view.dmesg = shell.run("dmesg", timeout=60)
    if shell.run("test -e /sys/firmware/fdt && echo yes", check=False) == ["yes"]:
        view.fdt = shell.read_file("/sys/firmware/fdt")
    view.live_tree = shell.run("test -d /proc/device-tree && echo yes", check=False) == ["yes"]
    present = shell.run("ls /proc/device-tree/hypervisor 2>/dev/null", check=False)
    for prop in ("compatible", "reg", "interrupts"):
        if any(prop in line.split() for line in present):
            view.procfs_hypervisor[prop] = shell.read_file(f"/proc/device-tree/hypervisor/{prop}")
    view.interrupts_later = "\n".join(shell.run("cat /proc/interrupts"))
    if later := parse_interrupts(view.interrupts_later).get("events"):
        view.event_count_later = sum(later[1])
    view.seconds = round(time.monotonic() - started, 2)
    return view
