"""The plan value every boot method returns, and how its files land in a boot's artifacts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .dtb import Module

if TYPE_CHECKING:
    from .uboot import UBootScript


@dataclass(frozen=True)
class BootPlan:
    method: str
    xen_cmdline: str
    write: dict[str, bytes] = field(default_factory=dict)  # files the plan makes, relative to the artifacts
    link: dict[str, Path] = field(default_factory=dict)  # relative path in the artifacts -> the file it links to
    qemu_args: tuple[str, ...] = ()  # what QEMU needs beyond the target's own options
    kernel: Path | None = None  # what QEMU starts directly (-kernel)
    dtb: str | None = None  # the DTB QEMU hands over (-dtb), relative to the artifacts
    modules: tuple[Module, ...] = ()  # what Xen boots, where
    uboot: UBootScript | None = None  # U-Boot's part (uboot-tftp)

    def materialize(self, artifacts: Path) -> None:
        """Write the plan's files (and links) into `artifacts`; boot.dts beside boot.dtb, for people."""
        for name, data in self.write.items():
            path = artifacts / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if name.endswith(".dtb"):
                _decompile(path)
        for name, target in self.link.items():
            path = artifacts / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(target)


def _decompile(dtb: Path) -> None:
    """NAME.dts beside NAME.dtb, for people; dtc is optional."""
    if shutil.which("dtc"):
        subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", "-o", str(dtb.with_suffix(".dts")), str(dtb)],
                       check=False, capture_output=True, timeout=60)
