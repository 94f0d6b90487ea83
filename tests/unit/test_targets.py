"""Target names and specs: a wrong name or a malformed target file is one sentence, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness import targets
from harness.errors import UsageError
from harness.images import Images, load_lock

REAL = yaml.safe_load((targets.TARGETS_DIR / "qemu-virt.yaml").read_text())

VALID = """\
targets:
  main:
    drivers: {}
harness:
  images: debian12-arm64
  dom0:
    cmdline: console=hvc0
"""


def one_line(message: str) -> None:
    assert "\n" not in message and message.endswith((".", "?")), f"expected one line of prose, found {message!r}"


@pytest.fixture
def directory(tmp_path) -> Path:
    for name in ("board-a", "board-b"):
        (tmp_path / f"{name}.yaml").write_text(VALID)
    (tmp_path / "notes.txt").write_text("not a target")
    return tmp_path


def test_misspelt_target_lists_names_and_suggests():
    with pytest.raises(UsageError) as info:
        targets.target_path("qemu-virtt")
    message = str(info.value)
    one_line(message)
    assert "unknown target 'qemu-virtt'" in message, message
    for name in targets.target_names():
        assert name in message, f"expected {name} listed, found {message!r}"
    assert message.endswith("Did you mean 'qemu-virt'?"), message


def test_unlike_name_gets_no_suggestion(directory):
    with pytest.raises(UsageError) as info:
        targets.target_path("zzz", directory)
    assert str(info.value) == ("unknown target 'zzz': choose one of board-a, board-b, a capability some of them have "
                               "(e.g. xen-matrix: `harness targets` lists them), or give a YAML file's path.")


def test_target_names_are_the_yaml_files(directory):
    assert targets.target_names(directory) == ["board-a", "board-b"]
    assert "qemu-virt" in targets.target_names()
    assert targets.target_path("board-b", directory) == directory / "board-b.yaml"


def test_expand(directory):
    assert targets.expand("all", directory) == ["board-a", "board-b"]
    assert targets.expand("all") == targets.target_names()
    assert targets.expand("qemu-virt") == ["qemu-virt"]
    assert targets.expand(" board-b , board-a ,", directory) == ["board-b", "board-a"]


def test_expand_empty_and_unknown(directory):
    for spec in ("", " , "):
        with pytest.raises(UsageError, match=r"^--target is empty: name a target, e\.g\. --target=qemu-virt"):
            targets.expand(spec, directory)
    with pytest.raises(UsageError) as info:
        targets.expand("board-a,bord-b", directory)
    assert str(info.value) == ("unknown target 'bord-b': choose one of board-a, board-b, a capability some of them "
                               "have (e.g. xen-matrix: `harness targets` lists them), or give a YAML file's path. "
                               "Did you mean 'board-b'?")


def test_a_capability_names_every_target_that_has_it(directory):
    (directory / "board-b.yaml").write_text(VALID + "  capabilities: [dom0, xen-matrix]\n")
    assert targets.expand("xen-matrix", directory) == ["board-b"]
    assert targets.expand("board-b,xen-matrix,board-a", directory) == ["board-b", "board-a"]  # each once
    with pytest.raises(UsageError) as info:  # one boot needs one target
        targets.load_spec("xen-matrix", directory)
    assert str(info.value) == ("xen-matrix is a capability of 1 targets (board-b), not one target: boot one of them, "
                               "or test them all with `./run test --target=xen-matrix`.")
    matrix = targets.expand("xen-matrix")
    assert {"qemu-virt", "qemu-virt-xen420", "qemu-virt-linux612", "qemu-virt-xen420-linux61"} <= set(matrix)


VERSIONED = re.compile(r"^(xen|linux)-(\d+\.\d+)$")


def pinned_versions(profile: str) -> dict[str, str]:
    """The Xen and Linux X.Y that `profile`'s pins boot, read from the pinned packages' names."""
    pins = Images().locked(profile)
    xen = re.search(r"xen-hypervisor-(\d+\.\d+)-", pins["xen"].package)
    linux = re.search(r"linux-image-(\d+\.\d+)\.", pins["kernel"].package)
    return {"xen": xen.group(1), "linux": linux.group(1)}


@pytest.mark.parametrize("name", [*targets.target_names(), "boards/zcu102", "boards/arndale",
                                  "experimental/qemu-a15-xl"])
def test_a_targets_version_capabilities_are_what_its_images_boot(name):
    """`xen-X.Y` and `linux-X.Y` name what the target's pinned images are, never a wish: the matrix's tests
    and reports select and label cells by them."""
    spec = targets.load_spec(str(targets.TARGETS_DIR / f"{name}.yaml"))
    declared = {m.group(1): m.group(2) for c in spec.capabilities if (m := VERSIONED.match(c))}
    assert declared == pinned_versions(spec.images), f"{name}: capabilities say {declared}"


def test_load_spec_of_qemu_virt():
    spec = targets.load_spec("qemu-virt")
    section = REAL["harness"]
    assert spec.name == "qemu-virt" and spec.path == targets.TARGETS_DIR / "qemu-virt.yaml"
    assert spec.images == section["images"] and spec.images in load_lock(), f"{spec.images} is not a locked profile"
    assert spec.boot == "qemu-loader"
    assert spec.dom0.cmdline == section["dom0"]["cmdline"]
    assert "guest=dom0" in spec.dom0.cmdline, "the shell prompt is named by guest= on dom0's command line"
    assert spec.capabilities == frozenset(section["capabilities"]) and spec.can("dom0")
    assert not spec.can("acpi")
    assert spec.deadlines == section["deadlines"] and all(v > 0 for v in spec.deadlines.values())
    assert spec.description == section["description"]


def test_defaults_for_optional_fields(directory):
    spec = targets.load_spec("board-a", directory)
    assert (spec.boot, spec.capabilities, spec.deadlines, spec.description) == ("qemu-loader", frozenset(), {}, "")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (VALID.split("harness:")[0], "KeyError('harness')"),
        (VALID.replace("    cmdline: console=hvc0\n", "    event_chip: GICv3\n"), "KeyError('cmdline')"),
        (VALID.replace("  images: debian12-arm64\n", ""), "KeyError('images')"),
        ("", "KeyError('harness')"),
        ("- a list\n", "TypeError"),
        ("harness: [unclosed\n", "ParserError"),
    ],
    ids=["no-harness-section", "dom0-without-cmdline", "no-images", "empty", "a-list", "bad-yaml"],
)
def test_malformed_target_is_one_sentence(directory, text, why):
    path = directory / "broken.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        targets.load_spec("broken", directory)
    message = str(info.value)
    one_line(message)
    assert message.startswith(f"{path} is not a valid target (") and why in message, message
    assert message.endswith("compare it with targets/qemu-virt.yaml."), message


DOMU = """  domUs:
    - name: domU1
      cmdline: console=ttyAMA0 rdinit=/init guest=domU1
      memory: 262144
{extra}"""


@pytest.mark.parametrize(
    ("dom0", "extra", "why"),
    [
        (False, "", "no guests"),
        (False, "      enhanced: enabled\n", "Xenstore support requires dom0 to be present"),
        (True, "      enhanced: sometimes\n", "use one of enabled, no-xenstore, disabled"),
        (True, "      vpl011: false\n", "no console"),
    ],
    ids=["no-guests", "xenstore-without-dom0", "unknown-enhanced", "no-vpl011"],
)
def test_guest_combinations_xen_would_refuse_are_caught_before_boot(directory, dom0, extra, why):
    text = VALID if dom0 else VALID.replace("  dom0:\n    cmdline: console=hvc0\n", "")
    if extra or not dom0:
        text += DOMU.format(extra=extra) if extra else ""
    (directory / "broken.yaml").write_text(text)
    with pytest.raises(UsageError) as info:
        targets.load_spec("broken", directory)
    one_line(str(info.value))
    assert why in str(info.value), str(info.value)


def test_dom0less_guests_are_numbered_in_order(directory):
    text = VALID + DOMU.format(extra="      enhanced: no-xenstore\n") + DOMU.format(extra="").replace(
        "  domUs:\n", "").replace("domU1", "domU2")
    (directory / "two.yaml").write_text(text)
    spec = targets.load_spec("two", directory)
    assert [(g.name, g.domid, g.source) for g in spec.guests] == [
        ("dom0", 0, "dom0"), ("domU1", 1, "dom1"), ("domU2", 2, "dom2")]
    assert spec.domus[0].enhanced == "no-xenstore" and spec.domus[1].enhanced is None
    assert spec.console_guest.name == "dom0"
    assert spec.without_dom0().console_guest.name == "domU1"


@pytest.mark.parametrize("deadlines", ["{silence: soon}", "{stages: {power-on: never}}", "{reboot: 5}"])
def test_bad_deadlines_are_refused_when_the_target_loads(directory, deadlines):
    (directory / "slow.yaml").write_text(VALID + f"  deadlines: {deadlines}\n")
    with pytest.raises(UsageError) as info:
        targets.load_spec("slow", directory)
    one_line(str(info.value))


def test_a_target_given_as_a_file_is_named_after_it(tmp_path):
    board = tmp_path / "lab-board.yaml"
    board.write_text(yaml.safe_dump(REAL))
    assert targets.expand(str(board)) == [str(board)]
    spec = targets.load_spec(str(board))
    assert (spec.name, spec.path) == ("lab-board", board)
    with pytest.raises(UsageError, match=r"target file \S+/nope.yaml does not exist"):
        targets.load_spec(str(tmp_path / "nope.yaml"))


def test_xen_cmdline_cpus_and_board_come_from_the_harness_section(tmp_path):
    spec = targets.load_spec("qemu-virt")
    assert spec.xen_cmdline.startswith("dom0_mem=512M ") and "\n" not in spec.xen_cmdline
    assert spec.cpus == 2  # QEMU's -smp
    data = {**REAL, "harness": {**REAL["harness"], "boot": "uboot-tftp", "cpus": 4,
                                "board": {"dtb": "zcu102.dtb", "setup": ["dhcp"], "uboot_reserve": "0x4000000"}}}
    board = tmp_path / "b.yaml"
    board.write_text(yaml.safe_dump(data))
    spec = targets.load_spec(str(board))
    assert spec.cpus == 4 and spec.board == targets.BoardSpec(dtb="zcu102.dtb", setup=("dhcp",),
                                                              uboot_reserve=0x4000000)
    data["harness"]["board"]["colour"] = "red"
    board.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match="unknown board setting"):
        targets.load_spec(str(board))


@pytest.mark.parametrize(("dtb", "expected"), [
    ("zcu102.dtb", targets.BoardSpec(dtb="zcu102.dtb")),
    ("image:dtb", targets.BoardSpec(dtb_image=("debian12-arm64", "dtb"))),  # the target's own profile
    ("image:board-zcu102/dtb", targets.BoardSpec(dtb_image=("board-zcu102", "dtb"))),
    ("./image:odd.dtb", targets.BoardSpec(dtb="./image:odd.dtb")),  # a file whose name starts with image:
])
def test_a_board_names_its_dtb_as_a_file_or_as_a_pinned_image(tmp_path, dtb, expected):
    data = {**REAL, "harness": {**REAL["harness"], "boot": "uboot-tftp", "board": {"dtb": dtb}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    assert targets.load_spec(str(tmp_path / "b.yaml")).board == expected


@pytest.mark.parametrize("dtb", ["image:", "image:board-zcu102/", "image:/dtb"])
def test_a_pinned_dtb_must_name_its_artifact(tmp_path, dtb):
    data = {**REAL, "harness": {**REAL["harness"], "boot": "uboot-tftp", "board": {"dtb": dtb}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=r"board dtb .* names no (artifact|profile): write image:ARTIFACT or "
                                         r"image:PROFILE/ARTIFACT") as info:
        targets.load_spec(str(tmp_path / "b.yaml"))
    one_line(str(info.value))


def test_a_board_may_give_the_tftp_servers_address(tmp_path):
    data = {**REAL, "harness": {**REAL["harness"], "boot": "uboot-tftp",
                                "board": {"setup": ["setenv serverip {serverip}"], "serverip": "192.0.2.1"}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    board = targets.load_spec(str(tmp_path / "b.yaml")).board
    assert (board.setup, board.serverip) == (("setenv serverip {serverip}",), "192.0.2.1")


# --- dom0's network and SSH server ----------------------------------------------------------------

NET = "harness.net=10.0.2.15/24,10.0.2.2"


def with_dom0(tmp_path, cmdline: str, network: dict | None, capabilities: list[str], board: dict | None = None):
    dom0 = {"cmdline": cmdline, **({"network": network} if network is not None else {})}
    harness = {**REAL["harness"], "dom0": dom0, "capabilities": capabilities, **({"board": board} if board else {})}
    (tmp_path / "n.yaml").write_text(yaml.safe_dump({**REAL, "harness": harness}))
    return targets.load_spec(str(tmp_path / "n.yaml"))


def test_the_virtual_boards_give_dom0_a_network_and_an_ssh_server():
    for name, profile in (("vboard-arm64", "dom0-ssh-arm64"), ("vboard-a15", "dom0-ssh-armhf")):
        spec = targets.load_spec(name)
        assert spec.can("ssh") and spec.network == targets.NetworkSpec(("virtio_pci", "virtio_net"), profile)
        assert targets.net_argument(spec.dom0.cmdline) == "10.0.2.15/24,10.0.2.2"
        assert profile in load_lock(), f"{profile} is not pinned"
    assert targets.load_spec("qemu-virt").network is None and not targets.load_spec("qemu-virt").can("ssh")


def test_the_net_argument_is_the_last_one_and_only_a_whole_word():
    assert targets.net_argument(f"console=hvc0 {NET} harness.net=192.0.2.7/24") == "192.0.2.7/24"
    assert targets.net_argument("console=hvc0 xharness.net=1 harness.network=2") is None


@pytest.mark.parametrize(
    ("cmdline", "network", "capabilities", "why"),
    [
        (f"console=hvc0 {NET}", None, ["ssh"], "the ssh capability needs dom0's SSH server: give dom0 a network: "
                                               "section with ssh: PROFILE (e.g. dom0-ssh-arm64)."),
        (f"console=hvc0 {NET}", {"modules": ["virtio_net"]}, ["ssh"], "the ssh capability needs dom0's SSH server"),
        ("console=hvc0", {"ssh": "dom0-ssh-arm64"}, [], "dom0's network is brought up only when its command line "
                                                        "says so: add harness.net=ADDRESS/PREFIX[,GATEWAY] to "
                                                        "dom0's cmdline."),
    ],
    ids=["ssh-without-network", "ssh-without-server", "network-without-argument"],
)
def test_ssh_needs_a_server_and_a_network_needs_its_argument(tmp_path, cmdline, network, capabilities, why):
    with pytest.raises(UsageError) as info:
        with_dom0(tmp_path, cmdline, network, capabilities)
    one_line(str(info.value))
    assert str(info.value).startswith("n.yaml: ") and why in str(info.value), str(info.value)


@pytest.mark.parametrize("network", [["virtio_net"], {"modules": ["virtio_net"], "sshd": "x"}])
def test_a_malformed_network_section_is_one_sentence(tmp_path, network):
    with pytest.raises(UsageError, match=r"is not a valid target \(ValueError\(\"dom0 network: .* is not a mapping of "
                                         r"modules: \[NAME, \.\.\.\] and ssh: PROFILE"):
        with_dom0(tmp_path, f"console=hvc0 {NET}", network, [])


def test_a_board_may_give_dom0s_known_hosts(tmp_path):
    spec = with_dom0(tmp_path, f"console=hvc0 {NET}", {"ssh": "dom0-ssh-arm64"}, ["ssh"],
                     board={"ssh": {"known_hosts": "lab/known_hosts"}})
    assert spec.board.ssh_known_hosts == "lab/known_hosts"
    with pytest.raises(UsageError, match=r"board ssh: .* is not a mapping with only known_hosts: FILE"):
        with_dom0(tmp_path, "console=hvc0", None, [], board={"ssh": {"known_host": "typo"}})
