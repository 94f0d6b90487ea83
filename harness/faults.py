"""Real faults the harness can inject into a real boot, each with the verdict it must produce.

Used by tests/test_faults.py (each must be classified right), benchmarks/boot.py (how fast), and
`harness boot --fault NAME` (to see what a bad boot looks like). The injected hangs come with
shortened deadlines, so that they take seconds; every other boot keeps the target's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .monitor import Verdict
from .plan.uboot import UBootScript
from .targets import ToolstackSpec
from .tweaks import Tweaks

SHORT_HANG = {"silence": 15, "stages": {"power-on": 10}}
WATCHDOG_S = 5  # dom0's watchdog fires this long after its prompt: past Xen's console ring dump the checks begin with
XEN_FAULT_HOOKS = ("xen-harness-faults.patch",)


@dataclass(frozen=True)
class Fault:
    name: str
    tweaks: Tweaks
    verdict: Verdict
    stage: str
    signature: str
    evidence: str | None = None  # text the quoted console lines must contain


def _ttyama0(m: re.Match) -> str:
    """console=hvc0 becomes console=ttyAMA0 (a UART Xen keeps for itself); earlycon goes, and panic= (dom0's
    init cannot open its console: a silent panic must not reboot the machine, which would be a crash)."""
    return "console=ttyAMA0" if m.group(0) == "console=hvc0" else ""


FAULTS = (
    Fault("impossible-dom0-mem", Tweaks(xen_args="dom0_mem=4000M"),
          Verdict.CRASHED, "dom0-loading", "xen-dom0-memory", "Failed to allocate requested dom0 memory"),
    Fault("missing-dom0-kernel", Tweaks(omit_modules=frozenset({"kernel"})),
          Verdict.CRASHED, "dom0-loading", "xen-missing-module", "Missing kernel boot module?"),
    Fault("dom0-init-missing-panic-reboots", Tweaks(dom0_args="rdinit=/no/such/init"),
          Verdict.CRASHED, "dom0:events", "no-root-fs", "Unable to mount root fs"),
    Fault("dom0-init-missing-panic-hangs",
          Tweaks(edit_dom0_cmdline=lambda c: re.sub(r"\s*panic=\S+", "", c), dom0_args="rdinit=/no/such/init"),
          Verdict.CRASHED, "dom0:events", "no-root-fs", "Unable to mount root fs"),
    # Xen's watchdog for dom0 (xen_wdt from dom0's own kernel package): /init arms it just before the shell and never
    # pets it, so Xen shuts dom0 down WATCHDOG_S later, during the checks or while the harness listens after them.
    Fault("dom0-watchdog-fires",
          Tweaks(dom0_modules=("xen_wdt",), dom0_args=f"harness.watchdog={WATCHDOG_S}", listen=6 * WATCHDOG_S),
          Verdict.CRASHED, "dom0:shell", "xen-watchdog", "Watchdog timer fired for domain 0"),
    # Hangs: each is diagnosed (harness/diagnose.py) within seconds of the console going quiet.
    Fault("dom0-console-not-hvc0",
          Tweaks(edit_dom0_cmdline=lambda c: re.sub(r"console=hvc0|\s*(earlycon|panic)=\S+", _ttyama0, c),
                 deadlines=SHORT_HANG),
          Verdict.HUNG, "xen-handover", "dom0-console-silent"),
    Fault("wrong-dtuart", Tweaks(xen_args="dtuart=/pl011@9001000", deadlines=SHORT_HANG),
          Verdict.HUNG, "power-on", "xen-console-silent"),
    Fault("no-virtualization",
          Tweaks(edit_qemu_args=lambda a: a.replace("virtualization=on,", ""), deadlines=SHORT_HANG),
          Verdict.HUNG, "power-on", "no-el2"),
    Fault("qemu-rejects-option", Tweaks(edit_qemu_args=lambda a: f"{a} -no-such-option"),
          Verdict.INFRASTRUCTURE, "power-on", "qemu-bad-option"),
    # A blob loaded over Xen: the harness's layout never does this, a hand-written boot plan might.
    Fault("qemu-overlapping-images",
          Tweaks(edit_qemu_args=lambda a: f"{a} -device loader,file=/etc/hostname,addr=0x40200000,force-raw=on"),
          Verdict.INFRASTRUCTURE, "power-on", "qemu-rom-overlap"),
)

# Xen built with the harness's fault hooks (images/patches/xen-harness-faults.patch), one chosen on its command
# line: CPU0 spinning while Xen builds dom0, with its interrupts off (Xen deaf) or on (Xen answers from its
# interrupt handler); dom0's device tree naming an event PPI that Xen never raises. Targets with the
# `xen-fault-hooks` capability (arm64: the builder's arch).
XEN_HOOK_FAULTS = (
    Fault("xen-spins", Tweaks(xen_args="harness-fault=xen-spins", xen_patches=XEN_FAULT_HOOKS, deadlines=SHORT_HANG),
          Verdict.HUNG, "dom0-loading", "xen-hung"),
    Fault("xen-spins-irqs-on",
          Tweaks(xen_args="harness-fault=xen-spins-irqs-on", xen_patches=XEN_FAULT_HOOKS, deadlines=SHORT_HANG),
          Verdict.HUNG, "dom0-loading", "cpu-spinning"),
    Fault("event-ppi-unwired",
          Tweaks(xen_args="harness-fault=event-ppi-unwired", xen_patches=XEN_FAULT_HOOKS, deadlines=SHORT_HANG),
          Verdict.HUNG, "dom0:shell", "events-undelivered"),
)

# Xen built with regressions planted in its domain builder (images/patches/xen-harness-witness-faults.patch), one
# chosen on its command line: dom0 boots and runs, and only what Xen wrote into its device tree is wrong. The
# verdict is failed by the checks, and `signature` is the rule that must say so (harness/validate/dtbuild.py).
XEN_WITNESS_PATCHES = ("xen-harness-witness-faults.patch",)


def _witness_fault(name: str, rule: str) -> Fault:
    return Fault(name, Tweaks(xen_args=f"harness-witness-fault={name}", xen_patches=XEN_WITNESS_PATCHES),
                 Verdict.FAILED, "checks", rule)


WITNESS_FAULTS = tuple(_witness_fault(name, rule) for name, rule in (
    ("dom0-bank-short", "dt.build.memory"), ("dom0-cpu-dropped", "dt.build.cpus"),
    ("dom0-bootargs-altered", "dt.build.bootargs")))
# The same on an ACPI dom0 (targets that build their Xen with ACPI): its EFI memory map's first bank 2 MiB short.
ACPI_WITNESS_FAULTS = (_witness_fault("dom0-efi-bank-short", "efi.memory"),)

# Hangs a board can have (no QEMU to change): diagnosed over its serial console alone.
BOARD_HANG_FAULTS = tuple(f for f in FAULTS if f.name == "dom0-console-not-hvc0")


def _corrupt_xen(script: UBootScript, served: dict[Path, Path]) -> UBootScript:
    """The lab serves Xen with one byte flipped (a bad disk, a stale copy): the board's crc32 must see it."""
    path = served[script.loads[0].path]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))
    return script


def _lose_kernel(script: UBootScript, served: dict[Path, Path]) -> UBootScript:
    """The lab's TFTP server has no dom0 kernel: U-Boot's fetch fails."""
    served[next(load.path for load in script.loads if load.name == "dom0 kernel")].unlink()
    return script


def _boot_elsewhere(script: UBootScript, served: dict[Path, Path]) -> UBootScript:  # noqa: ARG001
    """booti/bootz 2 MiB past Xen: an address where no image is (a lab's hand-written boot command)."""
    xen = script.loads[0].addr
    return replace(script, boot=script.boot.replace(f"{xen:#x}", f"{xen + (2 << 20):#x}", 1))


# Faults in a board's lab path (targets with the `uboot` capability): each is the lab's, never the build's.
UBOOT_FAULTS = (
    Fault("tftp-file-corrupted", Tweaks(edit_uboot=_corrupt_xen),
          Verdict.INFRASTRUCTURE, "uboot-prompt", "uboot-crc-mismatch"),
    Fault("tftp-file-missing", Tweaks(edit_uboot=_lose_kernel),
          Verdict.INFRASTRUCTURE, "uboot-prompt", "uboot-tftp-error", "TFTP error"),
    Fault("boot-address-wrong", Tweaks(edit_uboot=_boot_elsewhere),
          Verdict.INFRASTRUCTURE, "uboot-loaded", "uboot-bad-image"),
)

def _without_blkback(toolstack: ToolstackSpec) -> ToolstackSpec:
    """dom0 never loads the PV disk's backend driver: libxl waits for a backend that never appears."""
    return replace(toolstack, dom0_modules=tuple(m for m in toolstack.dom0_modules if m != "xen_blkback"))


def _domu_without_init(toolstack: ToolstackSpec) -> ToolstackSpec:
    """The domU's kernel finds no init and panics on the console dom0 relays."""
    return replace(toolstack, domu=replace(toolstack.domu, cmdline=f"{toolstack.domu.cmdline} rdinit=/no/such/init"))


# Faults of dom0's toolstack and the domU it creates (targets with the `toolstack` capability): each named on the
# domU's relayed console, at the stage it reached.
TOOLSTACK_FAULTS = (
    Fault("pv-backend-missing", Tweaks(edit_toolstack=_without_blkback),
          Verdict.FAILED, "dom1:xl-create", "libxl-error", "libxl: error:"),
    Fault("domu-init-missing", Tweaks(edit_toolstack=_domu_without_init),
          Verdict.CRASHED, "dom1:events", "no-root-fs", "Kernel panic - not syncing"),
)

BY_NAME = {f.name: f for f in (*FAULTS, *XEN_HOOK_FAULTS, *WITNESS_FAULTS, *ACPI_WITNESS_FAULTS, *UBOOT_FAULTS,
                                *TOOLSTACK_FAULTS)}
