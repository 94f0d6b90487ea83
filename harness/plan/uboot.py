"""The `uboot-tftp` boot method, as a board boots: its U-Boot fetches Xen, Xen's boot DTB and the guests'
images from the lab's TFTP server, checks each against the CRC32 the host computed (a file the lab
corrupted or cut short is the lab's fault, found before anything boots), then starts Xen with `booti`
(arm64 Image) or `bootz` (arm32 zImage) and the boot DTB.

Addresses are chosen here, 2 MiB aligned, inside the board's first RAM bank, clear of each other, of
what the firmware keeps at the bottom of RAM (QEMU's own DTB on a virtual board), of the top of RAM
where U-Boot relocated itself, and of what the board's DTB reserves (/memreserve/, /reserved-memory).
`UBootScript` is the whole conversation, rendered as boot.cmd so that a person can replay it at the
`=>` prompt.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError
from ..images import Artifact
from ..targets import TargetSpec
from ..validate.dt import reserved_regions
from .base import BootPlan
from .dtb import Module, build_boot_dtb, memory_bank, packed, place, xen_image, xen_modules

BOOT_COMMAND = {"arm64": "booti", "arm32": "bootz"}
DTB_ROOM = 64 * 1024  # what Xen's /chosen nodes add to the board's DTB, and more
SERVERIP = re.compile(r"(?<!\$)\{serverip\}")  # the lab's TFTP server; ${serverip} is U-Boot's own variable


@dataclass(frozen=True)
class Load:
    """One file U-Boot fetches: where it goes and what the host says its CRC32 is."""

    name: str  # what it is: "xen", "boot.dtb", "dom0 kernel", …
    path: Path  # the host's file, which the lab stages on its TFTP server (relative: one the plan writes)
    addr: int
    size: int
    crc32: int


@dataclass(frozen=True)
class UBootCommand:
    text: str
    check: Load | None = None  # a `crc32` whose answer must be this load's CRC32


@dataclass(frozen=True)
class UBootScript:
    setup: tuple[str, ...]  # the board's own commands first (its network, as the lab wants it)
    loads: tuple[Load, ...]
    boot: str  # e.g. "booti 0x40400000 - 0x40200000"

    def commands(self, staged: Mapping[Path, str]) -> list[UBootCommand]:
        """Every command before the boot, with each file's name on the TFTP server (`staged`)."""
        commands = [UBootCommand(text) for text in self.setup]
        for load in self.loads:
            commands.append(UBootCommand(f"tftpboot {load.addr:#x} {staged[load.path]}"))
            commands.append(UBootCommand(f"crc32 {load.addr:#x} {load.size:#x}", load))
        return commands

    def render(self, staged: Mapping[Path, str]) -> str:
        """boot.cmd: the commands as a person types them at `=>`, with what each crc32 must print."""
        lines = ["# What the harness said to U-Boot, in order (each crc32 must print the value noted)."]
        for command in self.commands(staged):
            note = f"  # {command.check.name}: expect {command.check.crc32:08x}" if command.check else ""
            lines.append(command.text + note)
        lines.append(self.boot)
        return "\n".join(lines) + "\n"


def with_serverip(script: UBootScript, serverip: str | None, where: str) -> UBootScript:
    """`script` with `{serverip}` in the board's setup replaced by the lab's TFTP server address."""
    if not any(SERVERIP.search(command) for command in script.setup):
        return script
    if not serverip:
        raise UsageError(f"{where}: the board's setup uses {{serverip}}, but the lab's TFTP server is this host "
                         "(a local TFTPProvider), whose address on the board's network the harness cannot know: "
                         "set board: serverip: to it.")
    return replace(script, setup=tuple(SERVERIP.sub(serverip, command) for command in script.setup))


def crc_of(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def uboot_tftp_plan(spec: TargetSpec, images: dict[str, Artifact], xen_cmdline: str, board_dtb: bytes,
                    omit: frozenset[str] = frozenset()) -> BootPlan:
    board = spec.board
    if board is None:
        raise UsageError(f"{spec.path.name}: the uboot-tftp boot method needs a `board:` section "
                         "(see targets/vboard-arm64.yaml).")
    machine = packed(board_dtb)
    xen = images["xen"].path
    kind, xen_size = xen_image(xen.read_bytes())  # an image U-Boot cannot start is refused here
    if kind != spec.arch:
        raise UsageError(f"{spec.path.name} is an {spec.arch} board, but the Xen image is {kind}: "
                         "give the Xen built for the board.")
    base, size = ram = memory_bank(machine)
    reserved = [(base, base + board.firmware_reserve), (base + size - board.uboot_reserve, base + size),
                *((r.start, r.end) for r in reserved_regions(machine))]
    wanted, domains = xen_modules(spec, images, omit)
    own = [Module("xen", str(xen), xen_size), Module("dtb", "boot.dtb", len(machine) + DTB_ROOM)]
    placed = place([*own, *wanted], ram, reserved)
    (xen_at, dtb_at), modules = placed[:2], placed[2:]
    boot_dtb = build_boot_dtb(machine, xen_cmdline, modules, domains)
    if len(boot_dtb) > dtb_at.size:
        raise UsageError(f"the boot DTB grew to {len(boot_dtb)} bytes, over the {dtb_at.size} kept for it.")
    return BootPlan(
        method=spec.boot, xen_cmdline=xen_cmdline,
        write={"machine.dtb": machine, "boot.dtb": boot_dtb},
        modules=tuple(modules),
        uboot=UBootScript(
            setup=board.setup,
            loads=(Load("xen", xen, xen_at.addr, xen.stat().st_size, crc_of(xen)),
                   Load("boot.dtb", Path("boot.dtb"), dtb_at.addr, len(boot_dtb), zlib.crc32(boot_dtb)),
                   *(Load(f"{_guest(m)} {m.kind}", Path(m.path), m.addr, m.size, crc_of(Path(m.path)))
                     for m in modules)),
            boot=f"{BOOT_COMMAND[kind]} {xen_at.addr:#x} - {dtb_at.addr:#x}",
        ),
    )


def _guest(module: Module) -> str:
    return "dom0" if module.parent == "/chosen" else module.parent.rsplit("/", 1)[-1]

