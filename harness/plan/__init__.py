"""Boot plans as values: what a boot method loads where, and what it tells the machine, made offline
from the target, its images, Xen's command line and the machine's own device tree.

One function per boot method (`qemu-loader`, `qemu-uefi`, `uboot-tftp`) returns a `BootPlan`; the boot
session writes the plan's files into the artifacts and applies it to the lab once. Nothing here
touches labgrid, so every plan is unit-tested without a machine.
"""

from __future__ import annotations

from dataclasses import replace
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
    if "rootfs" in images and spec.boot not in QEMU_METHODS:
        raise UsageError(f"{spec.path.name}: dom0's root disk (toolstack:) is given by QEMU; the {spec.boot} boot "
                         "method has no disk to give it.")
    if spec.boot == "qemu-loader":
        return with_root_disk(qemu_loader_plan(spec, images, xen_cmdline, _needs(machine_dtb, spec), omit_modules),
                              spec, images)
    if spec.boot == "qemu-uefi":
        return with_root_disk(qemu_uefi_plan(spec, images, xen_cmdline, artifacts), spec, images)
    if spec.boot == "uboot-tftp":
        return uboot_tftp_plan(spec, images, xen_cmdline, _needs(machine_dtb, spec), omit_modules)
    raise UsageError(f"{spec.path.name}: boot method {spec.boot!r} is not known: use one of {', '.join(METHODS)}.")


def with_root_disk(plan: BootPlan, spec: TargetSpec, images: dict[str, Artifact]) -> BootPlan:
    """`plan` with dom0's root disk (toolstack targets) on QEMU's `root_device`. The image is a cache entry:
    QEMU writes to a temporary overlay (snapshot=on), never to it."""
    if "rootfs" not in images:
        return plan
    drive = f"if=none,id=dom0-root,format=raw,snapshot=on,file={images['rootfs'].path}"
    return replace(plan, qemu_args=(*plan.qemu_args, "-drive", drive,
                                    "-device", f"{spec.toolstack.root_device},drive=dom0-root"))


def _needs(machine_dtb: bytes | None, spec: TargetSpec) -> bytes:
    if machine_dtb is None:
        raise UsageError(f"{spec.path.name}: the {spec.boot} boot method needs the machine's device tree.")
    return machine_dtb
