"""The uboot-tftp boot plan, offline: addresses inside the board's RAM and clear of each other and of what
the firmware and U-Boot keep, the boot DTB, the U-Boot script and boot.cmd; and what U-Boot's answers
and complaints become."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import libfdt
import pytest
from test_plan_dtb import arm64_image, zimage

from harness.errors import UnusableInput, UsageError
from harness.images import Artifact
from harness.lab.strategy import crc_printed
from harness.monitor import ConsoleMonitor, Verdict
from harness.plan import make_plan
from harness.plan.dtb import MiB, memory_bank
from harness.targets import BoardSpec, GuestSpec, TargetSpec

DATA = Path(__file__).parent / "data"
BOARD_DTB = (DATA / "qemu-virt-gicv3-host.dtb").read_bytes()  # a real machine's DT, as a board's file


def artifact(tmp_path: Path, name: str, data: bytes) -> Artifact:
    path = tmp_path / name
    path.write_bytes(data)
    return Artifact(name, path, "", "test")


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Artifact]:
    return {"xen": artifact(tmp_path, "xen", arm64_image(0, 1_300_000, 1_000_000)),
            "kernel": artifact(tmp_path, "Image", bytes(27_000_000)),
            "initrd": artifact(tmp_path, "initrd.gz", bytes(990_000))}


def board_spec(tmp_path: Path, arch: str = "arm64", **board) -> TargetSpec:
    return TargetSpec(
        name="board", path=tmp_path / "board.yaml", images="p", boot="uboot-tftp", arch=arch,
        dom0=GuestSpec("dom0", 0, "console=hvc0 rdinit=/init"), domus=(), capabilities=frozenset(),
        xen_cmdline="dom0_mem=512M console=dtuart", cpus=2,
        board=BoardSpec(setup=("setenv serverip 127.0.0.9",), **board),
    )


def test_every_file_lands_in_ram_clear_of_each_other_and_of_firmware_and_uboot(tmp_path, images):
    spec = board_spec(tmp_path)
    plan = make_plan(spec, images, spec.xen_cmdline, tmp_path, BOARD_DTB)
    base, size = memory_bank(BOARD_DTB)
    loads = plan.uboot.loads
    assert [load.name for load in loads] == ["xen", "boot.dtb", "dom0 kernel", "dom0 ramdisk"]
    spans = sorted((load.addr, load.addr + load.size) for load in loads)
    assert spans[0][0] >= base + spec.board.firmware_reserve, "a file lands in what the firmware keeps"
    assert spans[-1][1] <= base + size - spec.board.uboot_reserve, "a file lands where U-Boot relocated itself"
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans
    assert all(load.addr % (2 * MiB) == 0 for load in loads)
    assert plan.uboot.boot == f"booti {loads[0].addr:#x} - {loads[1].addr:#x}"


def test_the_boot_dtb_names_every_module_where_uboot_loads_it(tmp_path, images):
    spec = board_spec(tmp_path)
    plan = make_plan(spec, images, spec.xen_cmdline, tmp_path, BOARD_DTB)
    fdt = libfdt.Fdt(plan.write["boot.dtb"])
    chosen = fdt.path_offset("/chosen")
    assert fdt.getprop(chosen, "xen,xen-bootargs").as_str() == spec.xen_cmdline
    by_name = {load.name: load for load in plan.uboot.loads}
    for kind in ("kernel", "ramdisk"):
        load = by_name[f"dom0 {kind}"]
        node = fdt.path_offset(f"/chosen/module@{load.addr:x}")
        assert bytes(fdt.getprop(node, "reg")) == load.addr.to_bytes(8, "big") + load.size.to_bytes(8, "big")
    assert by_name["boot.dtb"].crc32 == zlib.crc32(plan.write["boot.dtb"])
    assert by_name["xen"].crc32 == zlib.crc32(images["xen"].path.read_bytes())


def test_the_script_fetches_and_checks_each_file_and_boot_cmd_replays_it(tmp_path, images):
    spec = board_spec(tmp_path)
    plan = make_plan(spec, images, spec.xen_cmdline, tmp_path, BOARD_DTB)
    staged = {load.path: f"board/{load.path.name}" for load in plan.uboot.loads}
    commands = plan.uboot.commands(staged)
    assert commands[0].text == "setenv serverip 127.0.0.9"
    xen = plan.uboot.loads[0]
    assert commands[1].text == f"tftpboot {xen.addr:#x} board/xen" and commands[1].check is None
    assert commands[2].text == f"crc32 {xen.addr:#x} {xen.size:#x}" and commands[2].check == xen
    text = plan.uboot.render(staged)
    assert f"crc32 {xen.addr:#x} {xen.size:#x}  # xen: expect {xen.crc32:08x}" in text
    assert text.rstrip().endswith(plan.uboot.boot)


def test_an_arm32_board_boots_a_zimage_with_bootz(tmp_path, images):
    images["xen"] = artifact(tmp_path, "xen32", zimage(900_000))
    spec = board_spec(tmp_path, arch="arm32")
    plan = make_plan(spec, images, spec.xen_cmdline, tmp_path, BOARD_DTB)
    assert plan.uboot.boot.startswith("bootz ")


def test_what_uboot_cannot_boot_is_refused_before_the_board_is_touched(tmp_path, images):
    images["xen"] = artifact(tmp_path, "xen-syms", b"\x7fELF" + bytes(4000))
    with pytest.raises(UnusableInput, match="neither an arm64 Image nor an arm32 zImage"):
        make_plan(board_spec(tmp_path), images, "", tmp_path, BOARD_DTB)
    images["xen"] = artifact(tmp_path, "xen32", zimage(900_000))
    with pytest.raises(UsageError, match="is an arm64 board, but the Xen image is arm32"):
        make_plan(board_spec(tmp_path), images, "", tmp_path, BOARD_DTB)


def test_files_that_do_not_fit_the_boards_ram_say_so(tmp_path, images):
    spec = board_spec(tmp_path, uboot_reserve=2030 * MiB)  # a board whose U-Boot keeps all but 18 MiB
    with pytest.raises(UsageError, match=r"Image \(27000000 bytes\) does not fit in the RAM 0x40000000\+0x80000000"):
        make_plan(spec, images, "", tmp_path, BOARD_DTB)
    with pytest.raises(UsageError, match="needs a `board:` section"):
        make_plan(replace(spec, board=None), images, "", tmp_path, BOARD_DTB)


@pytest.mark.parametrize(("out", "crc"), [
    (["crc32 for 40400000 ... 404f0007 ==> 10f35054"], 0x10F35054),
    (["", "CRC32 for 42000000 ... 43a09fbf ==> 41205F78  "], 0x41205F78),
    (["Unknown command 'crc32' - try 'help'"], None),
])
def test_the_crc_uboot_printed(out, crc):
    assert crc_printed(out) == crc


@pytest.mark.parametrize(("line", "signature"), [
    (b"TFTP error: 'File not found' (1)", "uboot-tftp-error"),
    (b"Retry count exceeded; starting again", "uboot-tftp-error"),
    (b"Bad Linux ARM64 Image magic!", "uboot-bad-image"),
    (b"Wrong Image Format for bootm command", "uboot-bad-image"),
    (b"zimage: Bad magic!", "uboot-bad-image"),  # U-Boot 2023.01's bootz, as a board prints it
    (b"ERROR: Did not find a cmdline Flattened Device Tree", "uboot-bad-fdt"),
    (b"libfdt fdt_check_header(): FDT_ERR_BADMAGIC", "uboot-bad-fdt"),
])
def test_what_uboot_refuses_before_xen_is_the_labs(line, signature):
    monitor = ConsoleMonitor()
    monitor.feed(b"U-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026 - 08:38:07 +0000)\n\nDRAM:  2 GiB\n" + line + b"\n")
    assert (monitor.failure.verdict, monitor.failure.signature, monitor.failure.stage) == (
        Verdict.INFRASTRUCTURE, signature, "firmware"), monitor.failure.message()


def test_a_firmware_banner_after_xens_is_a_board_reset_and_the_first_is_not():
    monitor = ConsoleMonitor()
    monitor.feed(b"U-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026)\n(XEN) Xen version 4.17.7 (Debian)\n")
    assert monitor.failure is None and "firmware" in monitor.reached
    monitor.feed(b"[    1.2] Booting Linux on physical CPU 0x0\nU-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026)\n")
    assert (monitor.failure.verdict, monitor.failure.signature) == (Verdict.INFRASTRUCTURE, "board-reset")


def test_the_harness_marks_the_uboot_milestones_itself():
    monitor = ConsoleMonitor()
    monitor.feed(b"U-Boot 2023.01\n")
    monitor.mark("uboot-prompt")
    assert list(monitor.reached) == ["firmware", "uboot-prompt"]
    assert monitor.reached["uboot-prompt"].source == "harness"
