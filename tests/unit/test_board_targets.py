"""Real boards' targets (targets/boards/), offline: each one's pinned DTB, its boot plan (every load in the
board's RAM, clear of what the board reserves and of each other), the U-Boot script, and a Xen console that
names a UART of the board Xen 4.17 can drive. Plus how a board names its DTB."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.boot import read_board_dtb
from harness.errors import UsageError
from harness.images import Images
from harness.targets import BoardSpec, GuestSpec, TargetSpec

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
