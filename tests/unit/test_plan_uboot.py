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

from harness.boot import lab_serverip
from harness.errors import InfrastructureError, UnusableInput, UsageError
from harness.images import Artifact
from harness.lab.strategy import crc_printed
from harness.monitor import ConsoleMonitor, Verdict
from harness.plan import make_plan
from harness.plan.dtb import MiB, memory_bank
from harness.plan.uboot import with_serverip
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


# --- a board's own memory map -----------------------------------------------------------------------


def board_dt(cells: int = 2, banks: tuple[tuple[int, int], ...] = ((0x40000000, 0x80000000),),
             memreserve: tuple[tuple[int, int], ...] = (), reserved: tuple[tuple[int, int], ...] = ()) -> bytes:
    """A board's DT as libfdt writes it: its RAM banks with `cells` address and size cells, its /memreserve/
    entries and /reserved-memory children."""
    def reg(pairs: tuple[tuple[int, int], ...]) -> bytes:
        return b"".join(value.to_bytes(4 * cells, "big") for pair in pairs for value in pair)

    sw = libfdt.FdtSw()
    for addr, size in memreserve:
        sw.add_reservemap_entry(addr, size)
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_u32("#address-cells", cells)
        sw.property_u32("#size-cells", cells)
        with sw.add_node(f"memory@{banks[0][0]:x}"):
            sw.property_string("device_type", "memory")
            sw.property("reg", reg(banks))
        if reserved:
            with sw.add_node("reserved-memory"):
                sw.property_u32("#address-cells", cells)
                sw.property_u32("#size-cells", cells)
                sw.property("ranges", b"")
                for addr, size in reserved:
                    with sw.add_node(f"firmware@{addr:x}"):
                        sw.property("reg", reg(((addr, size),)))
                        sw.property("no-map", b"")
    return bytes(sw.as_fdt().as_bytearray())


def test_a_board_whose_root_has_one_address_cell_gives_its_first_bank(tmp_path, images):
    dt = board_dt(cells=1, banks=((0x40000000, 0x80000000),))  # as exynos5250-arndale.dtb
    assert memory_bank(dt) == (0x40000000, 0x80000000)
    two_banks = board_dt(banks=((0, 0x80000000), (0x800000000, 0x80000000)))  # as zynqmp-zcu102-rev1.0.dtb
    assert memory_bank(two_banks) == (0, 0x80000000)
    plan = make_plan(board_spec(tmp_path), images, "", tmp_path, two_banks)
    assert all(load.addr + load.size <= 0x80000000 for load in plan.uboot.loads), plan.uboot.loads


def test_nothing_lands_in_the_boards_reserved_memory_or_memreserve_entries(tmp_path, images):
    spec = board_spec(tmp_path)
    free = make_plan(spec, images, "", tmp_path, board_dt()).uboot.loads
    assert free[0].addr == 0x40200000  # what the firmware_reserve alone leaves: where the reservations go
    memreserve, reserved = (0x40200000, 0x100000), (0x40c00000, 0x3000000)
    dt = board_dt(memreserve=(memreserve,), reserved=(reserved,))
    loads = make_plan(spec, images, "", tmp_path, dt).uboot.loads
    for start, size in (memreserve, reserved):
        clash = [load.name for load in loads if load.addr < start + size and start < load.addr + load.size]
        assert not clash, f"{', '.join(clash)} placed in the board's reserved {start:#x}+{size:#x}"


# --- {serverip}: the lab's TFTP server in the board's setup -------------------------------------------


def test_serverip_in_the_boards_setup_becomes_the_labs_tftp_server(tmp_path, images):
    spec = board_spec(tmp_path)
    spec = replace(spec, board=replace(spec.board, setup=(
        "setenv autoload no", "dhcp", "setenv serverip {serverip}", "echo ${serverip} {serverip}")))
    script = with_serverip(make_plan(spec, images, "", tmp_path, BOARD_DTB).uboot, "192.0.2.1", "board.yaml")
    assert script.setup == ("setenv autoload no", "dhcp", "setenv serverip 192.0.2.1",
                            "echo ${serverip} 192.0.2.1")  # U-Boot's own ${serverip} is U-Boot's to expand
    assert script.render({load.path: load.path.name for load in script.loads}).splitlines()[3] == \
        "setenv serverip 192.0.2.1"


def test_a_setup_without_serverip_needs_no_address_and_one_with_it_says_where_to_give_it(tmp_path, images):
    plan = make_plan(board_spec(tmp_path), images, "", tmp_path, BOARD_DTB)
    assert with_serverip(plan.uboot, None, "board.yaml") is plan.uboot  # "setenv serverip 127.0.0.9"
    asks = replace(plan.uboot, setup=("dhcp", "setenv serverip {serverip}"))
    with pytest.raises(UsageError) as info:
        with_serverip(asks, None, "board.yaml")
    assert str(info.value) == (
        "board.yaml: the board's setup uses {serverip}, but the lab's TFTP server is this host "
        "(a local TFTPProvider), whose address on the board's network the harness cannot know: "
        "set board: serverip: to it.")


@pytest.mark.parametrize(("serverip", "host", "expected"), [
    ("192.0.2.1", "exporter-1", "192.0.2.1"),  # the board section's own wins
    (None, "localhost", None),  # a local TFTPProvider: only the lab knows this host's address
    (None, "127.0.0.7", "127.0.0.7"),  # a RemoteTFTPProvider: its exporter serves the files
])
def test_the_tftp_servers_address_comes_from_the_board_or_the_exporter(serverip, host, expected):
    assert lab_serverip(BoardSpec(serverip=serverip), host) == expected


def test_an_exporter_this_host_cannot_resolve_is_the_labs_fault():
    with pytest.raises(InfrastructureError, match=r"^the TFTP exporter's host 'no-such-host.invalid' does not "
                                                  r"resolve \(.*\): fix the lab's DNS, or set board: serverip:\.$"):
        lab_serverip(BoardSpec(), "no-such-host.invalid")
