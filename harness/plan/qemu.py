"""QEMU's own boot methods: `qemu-loader` (Xen as -kernel, its modules through QEMU's generic loader)
and `qemu-uefi` (edk2 starts Xen from an ESP)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..images import Artifact
from ..targets import TargetSpec
from .base import BootPlan
from .dtb import build_boot_dtb, layout, packed, xen_modules


def qemu_loader_plan(spec: TargetSpec, images: dict[str, Artifact], xen_cmdline: str, machine_dtb: bytes,
                     omit: frozenset[str] = frozenset()) -> BootPlan:
    """QEMU starts Xen directly (-kernel) with the machine's DT plus /chosen modules (-dtb); its generic
    loader puts each blob where the DT says."""
    machine = packed(machine_dtb)
    wanted, domains = xen_modules(spec, images, omit)
    modules = layout(machine, images["xen"].path.read_bytes(), wanted)
    return BootPlan(
        method=spec.boot, xen_cmdline=xen_cmdline,
        write={"machine.dtb": machine, "boot.dtb": build_boot_dtb(machine, xen_cmdline, modules, domains)},
        qemu_args=tuple(arg for m in modules
                        for arg in ("-device", f"loader,file={m.path},addr={m.addr:#x},force-raw=on")),
        kernel=images["xen"].path, dtb="boot.dtb", modules=tuple(modules),
    )


def qemu_uefi_plan(spec: TargetSpec, images: dict[str, Artifact], xen_cmdline: str, artifacts: Path) -> BootPlan:
    """UEFI firmware starts Xen from an ESP (QEMU's virtual FAT); Xen reads its config beside itself."""
    if spec.domus:
        raise UsageError(f"{spec.path.name}: the qemu-uefi boot method starts dom0 only, not domUs.")
    boot = "esp/EFI/BOOT"
    # Xen's EFI loader reads <its own name>.cfg (docs/misc/efi.pandoc).
    config = (f"[global]\ndefault=xen\n\n[xen]\noptions={xen_cmdline}\n"
              f"kernel=Image {spec.dom0.cmdline}\nramdisk=initrd.gz\n")
    return BootPlan(
        method=spec.boot, xen_cmdline=xen_cmdline,
        write={f"{boot}/BOOTAA64.cfg": config.encode()},
        # Links, not copies: QEMU's vvfat follows them, and artifacts stay small.
        link={f"{boot}/BOOTAA64.EFI": images["xen"].path, f"{boot}/Image": images["kernel"].path,
              f"{boot}/initrd.gz": images["initrd"].path},
        qemu_args=("-drive", f"if=virtio,format=raw,readonly=on,file=fat:{artifacts / 'esp'}"),
    )
