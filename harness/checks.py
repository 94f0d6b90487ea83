"""The checks: three witnesses compared, each disagreement a finding that says expected vs found.

1. Xen's own console lines (what it says it gave: xenlog.XenClaims);
2. the device tree the guest received (the hypervisor node, validated by harness.validate.dt);
3. the guest kernel (its log, /proc/interrupts, /sys/kernel/irq, /sys/hypervisor).

Pure functions over text and bytes: unit-tested without QEMU, reused by `harness boot` and pytest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .findings import Finding, Severity
from .guest import GuestView
from .monitor import SIGNATURES, Verdict
from .validate import dt
from .xenlog import Complaint, XenClaims

# Linux's own failure strings when it does not find what Xen should have given it
# (arch/arm/xen/enlighten.c, drivers/xen): the console monitor's guest "failed" signatures, plus one
# it does not stop a boot for. Any of them in a guest's log is a finding.
KERNEL_XEN_ERRORS = (
    *(sig.pattern for sig in SIGNATURES if sig.verdict is Verdict.FAILED),
    re.compile(r"No extended regions are found"),
)
# Every rule id these checks report (`harness check rules` lists them beside the validators').
RULES: dict[str, str] = {
    "xen.banner": "Xen printed its 'Xen version X.Y' banner",
    "xen.boot": "Xen booted on the firmware tables the target provides (Device Tree or ACPI)",
    "xen.grant": "Xen printed dom0's grant table range",
    "xen.event-ppi": "Xen allocated a PPI (INTID 16..31) for dom0's event channel interrupt",
    "xen.extended": "Xen printed extended regions for a 64-bit device-tree dom0",
    "xen.cmdline.unknown": "Xen knows every parameter on its command line ('parameter \"X\" unknown!')",
    "xen.cmdline.invalid": "Xen accepts every value on its command line ('has invalid value', 'Bad console=')",
    "xen.cmdline.fallback": "Xen did not fall back to a default for an option asked for ('Could not find scheduler')",
    "xen.cmdline.unread": "Xen's console ring still holds its 'Command line:' (else its complaints may be lost)",
    "dt.missing": "the guest has the flattened tree it booted with (/sys/firmware/fdt)",
    "dt.procfs.match": "the kernel's live tree (/proc/device-tree) says what the flattened tree says",
    "kernel.xen-found": "the guest kernel says 'Xen X.Y support found', X.Y the booted Xen",
    "kernel.grant-layout": "the guest kernel uses the version 1 grant table layout",
    "kernel.grant-init": "the guest kernel says 'Grant table initialized'",
    "kernel.events-abi": "the guest kernel names its event channel ABI (FIFO-based or 2-level)",
    "kernel.xen-error": "the guest kernel printed none of Linux's Xen discovery errors",
    "irq.events.row": "the guest has a /proc/interrupts row named 'events'",
    "irq.events.hwirq": "the events interrupt's hwirq is Xen's event PPI",
    "irq.events.chip": "the events interrupt is on the target's interrupt controller",
    "irq.events.trigger": "the events interrupt is level triggered",
    "irq.events.count": "the events interrupt fires while dom0 runs",
    "sys.hypervisor.type": "/sys/hypervisor/type is 'xen'",
    "sys.hypervisor.version": "/sys/hypervisor says the booted Xen's X.Y",
}
EVENTS_ABI = re.compile(r"xen:events: Using (FIFO-based|2-level) ABI")
XEN_FOUND = re.compile(r"Xen (\d+\.\d+) support found")


def _error(rule: str, where: str, expected: str, found: str, note: str = "") -> Finding:
    return Finding(rule, Severity.ERROR, where, expected, found, note)


def check_xen_claims(
    claims: XenClaims, *, is_32bit: bool = False, acpi: bool = False
) -> list[Finding]:
    """Xen printed what dom0's checks compare against, and booted on the firmware tables it should.

    Xen 4.17 gives an ACPI dom0 no extended regions (they live in the DT hypervisor node only)."""
    out = []
    if claims.version is None:
        out.append(_error("xen.banner", "Xen console", "a 'Xen version X.Y' banner", "none"))
    booted = claims.boot or "Device Tree"
    if booted != ("ACPI" if acpi else "Device Tree"):
        out.append(_error("xen.boot", "Xen console", "ACPI" if acpi else "Device Tree", booted,
                          "Xen read other firmware tables than the target provides"))
    if claims.grant is None:
        out.append(_error("xen.grant", "Xen console", "'Grant table range: A-B'", "none"))
    if claims.event_ppi is None:
        out.append(_error("xen.event-ppi", "Xen console", "'Allocating PPI N for event channel interrupt'", "none"))
    if claims.event_ppi is not None and not dt.PPI_BASE <= claims.event_ppi < 32:
        out.append(_error("xen.event-ppi", "Xen console", "a PPI INTID in 16..31", str(claims.event_ppi)))
    if not is_32bit and not acpi and not claims.extended.get(0):
        out.append(
            _error("xen.extended", "Xen console", "'d0: extended region N: A->B' lines for a 64-bit dom0", "none")
        )
    return out


# Xen before 4.19, started by UEFI on Arm, puts its image name in front of its own command line
# (xen/arch/arm/efi/efi-boot.h efi_arch_handle_cmdline) and then parses that as a parameter.
EFI_IMAGE_NAME_DEFECT = (
    "Xen before 4.19 started by UEFI on Arm puts its image name first on its own command line "
    "(xen/arch/arm/efi/efi-boot.h efi_arch_handle_cmdline), then parses it as a parameter. Known upstream "
    "defect, harmless; Xen 4.19 dropped the name (commit b1185ce66c 'arm/efi: Simplify efi_arch_handle_cmdline()')"
)


def check_xen_cmdline(claims: XenClaims, *, efi: bool = False) -> list[Finding]:
    """Each complaint of Xen's about its command line: the user asked for something Xen did not do.

    `efi`: Xen was started by UEFI firmware (its image name may then head its command line)."""
    out = []
    if claims.ring_start is not None and claims.cmdline is None:
        # The ring (conring_size=, 16 KiB by default) filled up with later lines, e.g. a domU's console.
        out.append(Finding("xen.cmdline.unread", Severity.WARNING, "Xen console ring (debug key 'w')",
                           "Xen's 'Command line: …' line, with what Xen said about it",
                           f"a ring that begins later: {claims.ring_start!r}",
                           "the ring wrapped: raise conring_size= on the target's Xen command line"))
    for c in claims.complaints:
        if efi and _is_efi_image_name(c, claims):
            out.append(Finding(f"xen.cmdline.{c.kind}", Severity.KNOWN, "Xen command line", c.expected, c.found,
                               EFI_IMAGE_NAME_DEFECT))
        else:
            out.append(_error(f"xen.cmdline.{c.kind}", "Xen command line", c.expected, c.found,
                              "Xen booted on without it: what was asked for is not what ran"))
    return out


def _is_efi_image_name(complaint: Complaint, claims: XenClaims) -> bool:
    words = (claims.cmdline or "").split()
    version = tuple(int(n) for n in claims.version.split(".")) if claims.version else None
    return (complaint.kind == "unknown" and bool(words) and complaint.parameter == words[0]
            and version is not None and version < (4, 19))


def expectation(claims: XenClaims, domid: int = 0, is_32bit: bool = False) -> dt.Expectation:
    """What the DT validator should find in a guest's hypervisor node, per Xen's own lines."""
    return dt.Expectation(
        xen_version=claims.version,
        grant=claims.grant if domid == 0 else None,
        # Xen prints no extended-region lines for toolstack guests: unknown then, not "none".
        extended=tuple(claims.extended[domid]) if domid in claims.extended else None,
        event_intid=claims.event_ppi if domid == 0 else None,
        is_32bit=is_32bit,
    )


def check_device_tree(view: GuestView, expect: dt.Expectation, profile: str = "dom0") -> list[Finding]:
    """The hypervisor node of the tree the guest was given, against the binding and Xen's claims."""
    where = f"{view.guest} /sys/firmware/fdt"
    if view.fdt is None:
        return [_error("dt.missing", where, "the flattened tree the guest booted with", "no /sys/firmware/fdt")]
    findings = dt.validate_dtb(view.fdt, profile, expect)
    node = dt.read_hypervisor_node(view.fdt)
    if node is None or not view.live_tree:  # an ACPI boot has no live tree to compare
        return findings
    # The live tree Linux built (/proc/device-tree) must say what the flattened one says.
    flat = _node_props(view.fdt)
    for prop, live in view.procfs_hypervisor.items():
        if flat.get(prop) != live:
            findings.append(
                _error("dt.procfs.match", f"{view.guest} /proc/device-tree/hypervisor/{prop}",
                       _hex(flat.get(prop)), _hex(live), "the kernel's live tree differs from the tree it booted")
            )
    for prop in ("compatible", "reg", "interrupts"):
        if prop in flat and prop not in view.procfs_hypervisor:
            findings.append(
                _error("dt.procfs.match", f"{view.guest} /proc/device-tree/hypervisor/{prop}",
                       "present, as in the flattened tree", "absent")
            )
    return findings


def _node_props(fdt_bytes: bytes) -> dict[str, bytes]:
    import libfdt

    fdt = libfdt.Fdt(fdt_bytes)
    node = fdt.path_offset("/hypervisor")
    return {
        name: bytes(value)
        for name in ("compatible", "reg", "interrupts")
        if (value := fdt.getprop(node, name, [libfdt.NOTFOUND])) != -libfdt.NOTFOUND
    }


def _hex(data: bytes | None) -> str:
    return "absent" if data is None else data.hex(" ", 4)


def check_kernel_log(view: GuestView, xen_version: str | None) -> list[Finding]:
    """The guest kernel says it found Xen, its grant table and its event channel ABI."""
    log = view.dmesg
    where = f"{view.guest} kernel log"
    out = []
    versions = [m.group(1) for line in log if (m := XEN_FOUND.search(line))]
    if not versions:
        out.append(_error("kernel.xen-found", where, f"'Xen {xen_version or 'X.Y'} support found'", "no such line",
                          "the guest did not recognise Xen (its hypervisor node is missing or misnamed?)"))
    elif xen_version and versions[0] != xen_version:
        out.append(_error("kernel.xen-found", where, f"Xen {xen_version} (the booted Xen)", f"Xen {versions[0]}"))
    for rule, text in (
        ("kernel.grant-layout", "Grant tables using version 1 layout"),
        ("kernel.grant-init", "Grant table initialized"),
    ):
        if not _has(log, text):
            out.append(_error(rule, where, f"'{text}'", "no such line"))
    if not any(EVENTS_ABI.search(line) for line in log):
        out.append(_error("kernel.events-abi", where, "'xen:events: Using FIFO-based|2-level ABI'", "no such line"))
    for line in log:
        if any(pattern.search(line) for pattern in KERNEL_XEN_ERRORS):
            out.append(_error("kernel.xen-error", where, "no Xen discovery errors", line.strip()))
    return out


def _has(lines: Iterable[str], text: str) -> bool:
    return any(text in line for line in lines)


def check_event_irq(
    view: GuestView, intid: int | None, chip: str | None = None, must_fire: bool = True
) -> list[Finding]:
    """The guest's `events` interrupt is Xen's PPI, on the expected irq chip, and fires while the guest runs.

    `must_fire`: dom0's console is an event channel, so typing at it fires the interrupt. A dom0less
    domU without xenstore has no event channel bound at all (its console is the vPL011)."""
    where = f"{view.guest} /proc/interrupts"
    irq = view.event_irq
    if irq is None:
        return [_error("irq.events.row", where, "a row named 'events'", "none",
                       "the guest never requested Xen's event channel interrupt")]
    out = []
    sys_where = f"{view.guest} /sys/kernel/irq/{irq.irq}"
    if intid is not None and irq.hwirq != intid:
        out.append(_error("irq.events.hwirq", f"{sys_where}/hwirq", f"{intid} (Xen's event PPI)", str(irq.hwirq)))
    if chip is not None and irq.chip != chip:
        out.append(_error("irq.events.chip", where, f"{chip} (the target's interrupt controller)", irq.chip or "none"))
    if "Level" not in irq.trigger and "level" not in irq.trigger:
        out.append(_error("irq.events.trigger", f"{sys_where}/type", "level (the binding's level-low PPI)",
                          irq.trigger or "unknown"))
    later = view.event_count_later
    if must_fire and (later is None or later <= irq.total):
        out.append(_error("irq.events.count", where, f"a count above {irq.total} after the probes ran",
                          "no events row" if later is None else str(later),
                          "Xen's event channel interrupt did not fire while the guest ran"))
    return out


def check_hypervisor_sysfs(view: GuestView, xen_version: str | None) -> list[Finding]:
    where = f"{view.guest} /sys/hypervisor"
    out = []
    if view.hypervisor_type != "xen":
        out.append(_error("sys.hypervisor.type", f"{where}/type", "xen", view.hypervisor_type or "absent"))
    if xen_version and view.hypervisor_version != xen_version:
        out.append(_error("sys.hypervisor.version", f"{where}/version", xen_version,
                          view.hypervisor_version or "absent"))
    return out


def check_guest(
    claims: XenClaims, view: GuestView, domid: int, *, is_32bit: bool = False, event_chip: str | None = None,
    acpi: bool = False, events_fire: bool | None = None,
) -> list[Finding]:
    """Every check of a guest: dom0 against what Xen printed (an ACPI dom0's minimal DT against the
    acpi-dom0 profile), a domU (dom0less, or built by the toolstack) against Xen's fixed guest layout
    (GUEST_GNTTAB_BASE, GUEST_EVTCHN_PPI) and the extended regions Xen printed for it, if it did.
    `events_fire`: the events row must count up (by default dom0's only: a dom0less domU may bind no channel)."""
    if domid == 0:
        profile, intid = ("acpi-dom0" if acpi else "dom0"), claims.event_ppi
    else:
        profile, intid = "domU", dt.GUEST_EVTCHN_PPI
    return [
        *check_device_tree(view, expectation(claims, domid, is_32bit), profile),
        *check_kernel_log(view, claims.version),
        *check_event_irq(view, intid, event_chip, must_fire=domid == 0 if events_fire is None else events_fire),
        *check_hypervisor_sysfs(view, claims.version),
    ]


def dom0_vcpus(xen_cmdline: str, cpus: int) -> int:
    """How many vCPUs Xen gives dom0: dom0_max_vcpus= if set (the last one wins), else one per CPU."""
    if found := re.findall(r"(?:^|\s)dom0_max_vcpus=(?:\d+-)?(\d+)", xen_cmdline):
        return int(found[-1])
    return cpus
