"""What one boot changes of its target: a user's extra arguments, or a fault a test injects. Light to
import, so that the command line refuses a bad --fault before loading the lab."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .plan.uboot import UBootScript
from .targets import ToolstackSpec


@dataclass(frozen=True)
class Tweaks:
    """Changes to a target for one boot: a user's extra arguments, or a fault a test injects."""

    xen_args: str = ""  # appended to Xen's command line (the last value of a parameter wins)
    dom0_args: str = ""  # appended to dom0's command line
    edit_dom0_cmdline: Callable[[str], str] | None = None  # rewrites dom0's command line
    edit_qemu_args: Callable[[str], str] | None = None  # rewrites the target's extra QEMU arguments
    omit_modules: frozenset[str] = frozenset()  # dom0's "kernel" or "ramdisk": boot without them
    deadlines: dict = field(default_factory=dict)  # merged over the target's deadlines
    without_dom0: bool = False  # a dom0less target's domUs alone
    enhanced: str | None = None  # replaces every domU's xen,enhanced
    # a fault in a board's lab path: given U-Boot's script and where each file was staged (host file ->
    # the file the TFTP server serves), damage the staging or return an edited script
    edit_uboot: Callable[[UBootScript, dict[Path, Path]], UBootScript] | None = None
    edit_toolstack: Callable[[ToolstackSpec], ToolstackSpec] | None = None  # rewrites a toolstack target's section
    # boot a Xen built from the pinned source with these patches (files in images/patches/) applied
    xen_patches: tuple[str, ...] = ()
    # drivers from dom0's own kernel package that its initramfs carries and /init loads (with what they need)
    dom0_modules: tuple[str, ...] = ()
    # seconds the console is still read after the checks: a fault that strikes at a time (Xen's watchdog), not at a
    # point of the boot, is seen whether the checks took long or not
    listen: float = 0.0
