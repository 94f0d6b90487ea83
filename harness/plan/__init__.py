"""Boot plans as values: what a boot method loads where, and what it tells the machine, made offline
from the target, its images, Xen's command line and the machine's own device tree.

One function per boot method (`qemu-loader`, `qemu-uefi`, `uboot-tftp`) returns a `BootPlan`; the boot
session writes the plan's files into the artifacts and applies it to the lab once. Nothing here
touches labgrid, so every plan is unit-tested without a machine.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..images import Artifact
from ..targets import TargetSpec
from .base import BootPlan
from .qemu import qemu_loader_plan, qemu_uefi_plan
from .uboot import uboot_tftp_plan

QEMU_METHODS = ("qemu-loader", "qemu-uefi")
METHODS = (*QEMU_METHODS, "uboot-tftp")


def make_plan(spec: TargetSpec, images: dict[str, Artifact], xen_cmdline: str, artifacts: Path,
              machine_dtb: bytes | None = None, omit_modules: frozenset[str] = frozenset()) -> BootPlan:
    """The plan of `spec`'s boot method. `machine_dtb` is the machine's own DT (QEMU's dump, or the
    board's DTB file): the loader and U-Boot methods build Xen's boot DTB from it."""
    if spec.boot == "qemu-loader":
        return qemu_loader_plan(spec, images, xen_cmdline, _needs(machine_dtb, spec), omit_modules)
    if spec.boot == "qemu-uefi":
        return qemu_uefi_plan(spec, images, xen_cmdline, artifacts)
    if spec.boot == "uboot-tftp":
        return uboot_tftp_plan(spec, images, xen_cmdline, _needs(machine_dtb, spec), omit_modules)
    raise UsageError(f"{spec.path.name}: boot method {spec.boot!r} is not known: use one of {', '.join(METHODS)}.")


def _needs(machine_dtb: bytes | None, spec: TargetSpec) -> bytes:
    if machine_dtb is None:
        raise UsageError(f"{spec.path.name}: the {spec.boot} boot method needs the machine's device tree.")
    return machine_dtb
