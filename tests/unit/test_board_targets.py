"""Real boards' targets (targets/boards/), offline: each one's pinned DTB, its boot plan (every load in the
board's RAM, clear of what the board reserves and of each other), the U-Boot script, and a Xen console that
names a UART of the board Xen 4.17 can drive. Plus how a board names its DTB."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import libfdt
import pytest

from harness.boot import lab_known_hosts, lab_serverip, read_board_dtb
from harness.errors import UsageError
from harness.images import Artifact, Images, load_lock
from harness.initramfs import initramfs
from harness.plan import BootPlan, make_plan
from harness.plan.dtb import xen_image
from harness.plan.uboot import with_serverip
from harness.targets import TARGETS_DIR, BoardSpec, GuestSpec, TargetSpec, expand, load_spec, target_names
from harness.validate.dt import reserved_regions

DATA = Path(__file__).parent / "data"
BOARD_DTB = DATA / "qemu-virt-gicv3-host.dtb"


def spec_with(tmp_path: Path, board: BoardSpec, images: str = "debian12-arm64") -> TargetSpec:
    return TargetSpec(name="board", path=tmp_path / "board.yaml", images=images, boot="uboot-tftp", arch="arm64",
                      dom0=GuestSpec("dom0", 0, "console=hvc0"), domus=(), capabilities=frozenset(), board=board)


# --- how a board names its DTB ------------------------------------------------------------------------


def test_a_dtb_file_is_read_relative_to_the_target_yaml(tmp_path):
    (tmp_path / "dtbs").mkdir()
    (tmp_path / "dtbs" / "board.dtb").write_bytes(BOARD_DTB.read_bytes())
    spec = spec_with(tmp_path, BoardSpec(dtb="dtbs/board.dtb"))
    assert read_board_dtb(spec, Images(), {}) == BOARD_DTB.read_bytes()
    with pytest.raises(UsageError, match=r"^board.yaml: the board's DTB: .*nope.dtb.*"):
        read_board_dtb(replace(spec, board=BoardSpec(dtb="nope.dtb")), Images(), {})
    with pytest.raises(UsageError, match=r"^board.yaml: the board names no DTB: set board: dtb: to its file, "
                                         r"or to image:ARTIFACT for a pinned one\.$"):
        read_board_dtb(replace(spec, board=BoardSpec()), Images(), {})


def test_a_pinned_dtb_the_lock_lacks_is_one_sentence_naming_what_it_has(tmp_path):
    spec = spec_with(tmp_path, BoardSpec(dtb_image=("debian12-arm64", "dtb")))
    with pytest.raises(UsageError) as info:
        read_board_dtb(spec, Images(), {})
    assert str(info.value) == ("image profile 'debian12-arm64' has no artifact 'dtb' (it has: busybox, kernel, "
                               "xen): add it to images/manifest.yaml and run `./run images lock --profile "
                               "debian12-arm64`.")
    with pytest.raises(UsageError, match=r"^image profile 'no-such' is not in lock.json \(it has: .*\): run"):
        read_board_dtb(replace(spec, board=BoardSpec(dtb_image=("no-such", "dtb"))), Images(), {})


# --- the boards of targets/boards/, offline -----------------------------------------------------------

BOARDS = sorted((TARGETS_DIR / "boards").glob("*.yaml"))

# What each board file must say, from the board's documentation and Debian's DTB for it.
EXPECTED = {
    # first RAM bank (base, size), how U-Boot starts Xen, the platform Xen 4.17 has code for
    "zcu102": ((0x0, 0x80000000), "booti", "xlnx,zynqmp"),  # DDR 0-2 GiB, then 0x800000000
    "arndale": ((0x40000000, 0x80000000), "bootz", "samsung,exynos5250"),  # 2 GiB at 1 GiB
}

# The UART compatibles Xen 4.17's drivers match (xen/drivers/char/*.c, DT_MATCH_COMPATIBLE), by the
# architecture their Kconfig builds them for (xen/drivers/char/Kconfig: HAS_CADENCE_UART, HAS_IMX_LPUART,
# HAS_MVEBU and HAS_MESON depend on ARM_64, HAS_EXYNOS4210 and HAS_OMAP on ARM_32). Debian's
# xen-4.17-arm64.config and xen-4.17-armhf.config enable every one of them.
XEN_417_UARTS = {
    "any": {"ns16550", "ns16550a", "snps,dw-apb-uart", "brcm,bcm2835-aux-uart",  # ns16550.c
            "arm,pl011",  # pl011.c
            "renesas,scif", "renesas,scifa", "renesas,hscif"},  # scif-uart.c
    "arm64": {"cdns,uart-r1p8", "cdns,uart-r1p12",  # cadence-uart.c
              "fsl,imx8qm-lpuart",  # imx-lpuart.c
              "marvell,armada-3700-uart",  # mvebu-uart.c
              "amlogic,meson-uart", "amlogic,meson6-uart", "amlogic,meson8-uart", "amlogic,meson8b-uart",
              "amlogic,meson-gx-uart"},  # meson-uart.c
    "arm32": {"samsung,exynos4210-uart",  # exynos4210-uart.c
              "ti,omap4-uart"},  # omap-uart.c
}
UBOOT_FDT_PAD = 0x3000  # what U-Boot adds after a DTB it leaves in place (CONFIG_SYS_FDT_PAD, boot_fdt.c)


@dataclass(frozen=True)
class Board:
    spec: TargetSpec
    images: dict[str, Artifact]
    dtb: bytes
    plan: BootPlan


@pytest.fixture(scope="module", params=BOARDS, ids=[p.stem for p in BOARDS])
def board(request, tmp_path_factory) -> Board:
    """A board's target, its pinned images (fetched into the shared cache on first use) and its boot plan."""
    spec = load_spec(str(request.param))
    images = Images()
    arts = images.artifacts(spec.images)
    arts["initrd"] = initramfs(arts["busybox"], images.cache)
    dtb = read_board_dtb(spec, images, arts)
    plan = make_plan(spec, arts, spec.xen_cmdline, tmp_path_factory.mktemp(spec.name), dtb)
    return Board(spec, arts, dtb, plan)


def first_bank(dtb: bytes) -> tuple[int, int]:
    """The first /memory reg entry, read with libfdt alone (not the plan's reader it checks)."""
    fdt = libfdt.Fdt(dtb)
    cells = [fdt.getprop(0, name).as_uint32() for name in ("#address-cells", "#size-cells")]
    node = fdt.path_offset(f"/{next(n for n in subnodes(fdt, 0) if n.split('@')[0] == 'memory')}")
    words = struct.unpack(f">{cells[0] + cells[1]}I", bytes(fdt.getprop(node, "reg"))[:4 * sum(cells)])
    return (int.from_bytes(struct.pack(f">{cells[0]}I", *words[:cells[0]]), "big"),
            int.from_bytes(struct.pack(f">{cells[1]}I", *words[cells[0]:]), "big"))


def subnodes(fdt: libfdt.Fdt, parent: int) -> list[str]:
    names, node = [], fdt.first_subnode(parent, [libfdt.NOTFOUND])
    while node >= 0:
        names.append(fdt.get_name(node))
        node = fdt.next_subnode(node, [libfdt.NOTFOUND])
    return names


def strings(fdt: libfdt.Fdt, node: int, name: str) -> list[str]:
    prop = fdt.getprop(node, name, [libfdt.NOTFOUND])
    return [] if isinstance(prop, int) else bytes(prop).decode().rstrip("\0").split("\0")


def xen_console_uart(dtb: bytes, xen_cmdline: str, arch: str) -> str:
    """The node Xen 4.17 takes its console from (`dtuart=`, a path or an alias, as xen/drivers/char/arm-uart.c
    reads it); fails, saying expected vs found, unless it is an enabled UART Xen has a driver for on `arch`."""
    args = dict(a.split("=", 1) for a in xen_cmdline.split() if "=" in a)
    assert args.get("console") == "dtuart", f"expected console=dtuart, found console={args.get('console')}"
    assert "dtuart" in args, "expected dtuart= naming the board's UART, found none"
    name = args["dtuart"].split(":", 1)[0]
    fdt = libfdt.Fdt(dtb)
    path = name if name.startswith("/") else fdt.get_alias(name)
    assert path, f"expected dtuart={name} to be an alias of the board's DTB, found none by that name"
    node = fdt.path_offset(path, [libfdt.NOTFOUND])
    assert node >= 0, f"expected a node {path} (dtuart={name}) in the board's DTB, found none"
    status = strings(fdt, node, "status")
    assert status in ([], ["okay"], ["ok"]), f"expected {path} enabled, found status = {status}"
    drivers = XEN_417_UARTS["any"] | XEN_417_UARTS[arch]
    found = strings(fdt, node, "compatible")
    assert drivers & set(found), f"expected {path} to be a UART Xen 4.17 drives on {arch}, found compatible {found}"
    return path


def test_the_boards_are_run_by_path_never_by_all():
    assert [p.stem for p in BOARDS] == sorted(EXPECTED), "targets/boards/ and this test's table disagree"
    assert not set(EXPECTED) & set(target_names()), "a board would boot with --target=all"
    assert expand(str(BOARDS[0])) == [str(BOARDS[0])]


def test_the_dtb_is_the_pinned_one_of_the_boards_own_profile(board, tmp_path):
    locked = load_lock()[board.spec.images]["dtb"]
    assert hashlib.sha256(board.dtb).hexdigest() == locked.file_sha256
    assert locked.package == locked_kernel(board.spec).package, "the DTB and dom0's kernel come from other packages"
    # Taken from the boot's own fetched images: no second look at the lock.
    assert read_board_dtb(board.spec, Images(lock_path=tmp_path / "none.json"), board.images) == board.dtb
    fdt = libfdt.Fdt(board.dtb)
    platform = EXPECTED[board.spec.name][2]
    found = strings(fdt, 0, "compatible")
    assert platform in found, f"expected a {platform} board, found compatible {found}"
    cpus = [n for n in subnodes(fdt, fdt.path_offset("/cpus")) if n.startswith("cpu@")]
    assert board.spec.cpus == len(cpus), f"expected cpus: {len(cpus)} (the DTB's), found {board.spec.cpus}"


def locked_kernel(spec: TargetSpec):
    return load_lock()[spec.images]["kernel"]


def test_xen_and_dom0s_kernel_are_images_the_board_boots(board):
    for name in ("xen", "kernel"):
        kind, _ = xen_image(board.images[name].path.read_bytes()[:4096])
        assert kind == board.spec.arch, f"expected an {board.spec.arch} {name}, found {kind}"


def test_every_load_is_in_the_first_bank_clear_of_what_the_board_keeps_and_of_each_other(board):
    base, size = bank = first_bank(board.dtb)
    assert bank == EXPECTED[board.spec.name][0]
    kept = [(base, base + board.spec.board.firmware_reserve), (base + size - board.spec.board.uboot_reserve,
                                                                base + size)]
    kept += [(r.start, r.end) for r in reserved_regions(board.dtb)]
    loads = board.plan.uboot.loads
    assert [load.name for load in loads] == ["xen", "boot.dtb", "dom0 kernel", "dom0 ramdisk"]
    spans = sorted((load.addr, load.addr + load.size, load.name) for load in loads)
    for start, end, name in spans:
        assert base <= start and end <= base + size, f"{name} {start:#x}-{end:#x} outside RAM {base:#x}+{size:#x}"
        assert start % (2 << 20) == 0, f"{name} at {start:#x}: expected 2 MiB aligned"
        for k_start, k_end in kept:
            assert end <= k_start or k_end <= start, f"{name} {start:#x}-{end:#x} in kept {k_start:#x}-{k_end:#x}"
    for (_, end, name), (start, _, after) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{name} overlaps {after}"
    dtb = next(load for load in loads if load.name == "boot.dtb")
    after = min(load.addr for load in loads if load.addr > dtb.addr)
    assert dtb.addr + dtb.size + UBOOT_FDT_PAD <= after, "no room after the DTB for U-Boot's in-place edits"


def test_the_boot_dtb_tells_xen_its_command_line_and_where_each_module_is(board):
    fdt = libfdt.Fdt(board.plan.write["boot.dtb"])
    chosen = fdt.path_offset("/chosen")
    assert fdt.getprop(chosen, "xen,xen-bootargs").as_str() == board.spec.xen_cmdline
    loads = {load.name: load for load in board.plan.uboot.loads}
    modules = [n for n in subnodes(fdt, chosen) if n.startswith("module@")]
    assert len(modules) == 2, modules
    for kind in ("kernel", "ramdisk"):
        load = loads[f"dom0 {kind}"]
        node = fdt.path_offset(f"/chosen/module@{load.addr:x}")
        assert strings(fdt, node, "compatible") == [f"multiboot,{kind}", "multiboot,module"]
        assert bytes(fdt.getprop(node, "reg")) == struct.pack(">QQ", load.addr, load.size)
    kernel = fdt.path_offset(f"/chosen/module@{loads['dom0 kernel'].addr:x}")
    assert fdt.getprop(kernel, "bootargs").as_str() == board.spec.dom0.cmdline
    assert loads["boot.dtb"].size == len(board.plan.write["boot.dtb"])
    assert first_bank(board.plan.write["boot.dtb"]) == first_bank(board.dtb)  # the board's own tree underneath


def test_uboot_fetches_checks_and_boots_and_boot_cmd_replays_it(board):
    serverip = lab_serverip(board.spec.board, "localhost")
    script = with_serverip(board.plan.uboot, serverip, board.spec.path.name)
    staged = {load.path: f"{board.spec.name}-1/{load.path.name}" for load in script.loads}
    lines = script.render(staged).splitlines()
    assert "{serverip}" not in "\n".join(lines) and f"setenv serverip {serverip}" in lines
    xen, dtb = script.loads[:2]
    assert lines[-1] == f"{EXPECTED[board.spec.name][1]} {xen.addr:#x} - {dtb.addr:#x}"
    first_fetch = next(i for i, line in enumerate(lines) if line.startswith("tftpboot"))
    assert lines[1:first_fetch] == list(script.setup), "the board's setup runs before the first fetch"
    for load in script.loads:
        at = lines.index(f"tftpboot {load.addr:#x} {staged[load.path]}")
        assert lines[at + 1] == f"crc32 {load.addr:#x} {load.size:#x}  # {load.name}: expect {load.crc32:08x}"


def test_xens_console_is_a_uart_of_the_board_xen_417_drives(board):
    assert xen_console_uart(board.dtb, board.spec.xen_cmdline, board.spec.arch)


@pytest.mark.parametrize(("cmdline", "arch", "message"), [
    ("console=dtuart dtuart=serial9", "arm64", "expected dtuart=serial9 to be an alias of the board's DTB, found none"),
    ("console=dtuart dtuart=/axi/serial@ff990000", "arm64", "expected a node /axi/serial@ff990000"),
    ("console=dtuart dtuart=serial0", "arm32", "expected /axi/serial@ff000000 to be a UART Xen 4.17 drives on arm32, "
                                               "found compatible ['xlnx,zynqmp-uart', 'cdns,uart-r1p12']"),
    ("console=dtuart dtuart=/axi/gpio@ff0a0000", "arm64", "to be a UART Xen 4.17 drives on arm64, found compatible"),
    ("console=dtuart", "arm64", "expected dtuart= naming the board's UART, found none"),
    ("dtuart=serial0", "arm64", "expected console=dtuart, found console=None"),
])
def test_a_xen_console_the_board_lacks_or_xen_cannot_drive_fails(cmdline, arch, message):
    zcu102 = read_board_dtb(load_spec(str(TARGETS_DIR / "boards" / "zcu102.yaml")), Images(), {})
    with pytest.raises(AssertionError, match=re.escape(message)):
        xen_console_uart(zcu102, cmdline, arch)


def test_a_disabled_uart_is_no_console():
    spec = load_spec(str(TARGETS_DIR / "boards" / "zcu102.yaml"))
    fdt = libfdt.Fdt(bytearray(read_board_dtb(spec, Images(), {})))
    fdt.resize(fdt.totalsize() + 64)
    fdt.setprop_str(fdt.path_offset("/axi/serial@ff000000"), "status", "disabled")
    with pytest.raises(AssertionError, match=r"expected /axi/serial@ff000000 enabled, found status = \['disabled'\]"):
        xen_console_uart(bytes(fdt.as_bytearray()), spec.xen_cmdline, spec.arch)


def test_the_labs_known_hosts_for_dom0s_ssh_is_relative_to_the_target_yaml(tmp_path):
    spec = spec_with(tmp_path, BoardSpec(ssh_known_hosts="lab/known_hosts"))
    assert lab_known_hosts(spec) == tmp_path / "lab" / "known_hosts"
    assert lab_known_hosts(replace(spec, board=BoardSpec(ssh_known_hosts="/etc/lab/known_hosts"))) == Path(
        "/etc/lab/known_hosts")
    assert lab_known_hosts(replace(spec, board=BoardSpec())) is None, "a virtual board's comes from its console"
