"""Targets: one labgrid environment YAML per target under targets/, plus a `harness:` section.

The labgrid part (drivers, strategy, tools) says how to power and talk to the target; the
`harness:` part says everything else that differs between targets: which image profile it boots,
how the boot plan is made, dom0's command line, what it can do (capabilities that tests ask for,
never target names) and its deadlines.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .data import data_dir
from .errors import UsageError

TARGETS_DIR = data_dir("targets")


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def is_path(name: str) -> bool:
    """A target given as a file (`--target ~/lab/board.yaml`) rather than a name from targets/."""
    return "/" in name or name.endswith((".yaml", ".yml"))


def target_path(name: str, directory: Path = TARGETS_DIR) -> Path:
    if is_path(name):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"target file {name} does not exist: give the path of a labgrid environment YAML "
                             "with a harness: section (see targets/qemu-virt.yaml).")
        return path
    names = target_names(directory)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"unknown target {name!r}: choose one of {', '.join(names)}, a capability some of them have (e.g. "
            f"xen-matrix: `harness targets` lists them), or give a YAML file's path.{hint}"
        )
    return directory / f"{name}.yaml"


def expand(spec: str, directory: Path = TARGETS_DIR) -> list[str]:
    """`qemu-virt,qemu-a15`, `all`, a capability (`xen-matrix`: every target that has it) or
    `path/to/board.yaml` -> target names or paths, each checked."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return target_names(directory)
    names = list(dict.fromkeys(found for name in names for found in having(name, directory)))  # a target in two
    for name in names:
        target_path(name, directory)
    if not names:
        raise UsageError("--target is empty: name a target, e.g. --target=qemu-virt, or --target=all.")
    stems = [Path(n).stem for n in names]
    if len(set(stems)) != len(stems):
        raise UsageError(f"--target names one target twice ({', '.join(names)}): give each once.")
    return names


def having(name: str, directory: Path = TARGETS_DIR) -> list[str]:
    """`name` itself when it is a target (or a path), else the targets with capability `name`, if any."""
    if is_path(name) or name in target_names(directory):
        return [name]
    return [t for t in target_names(directory) if load_spec(t, directory).can(name)] or [name]


# xen,enhanced values Xen 4.17 understands for a dom0less domU (docs/misc/arm/device-tree/booting.txt):
# "enabled" gives xenstore, grant table and event channels; "no-xenstore" the last two; "disabled"
# (or no property) none, and then the guest does not see Xen at all.
ENHANCED = ("enabled", "no-xenstore", "disabled")


@dataclass(frozen=True)
class GuestSpec:
    """A guest the target boots: dom0, or a dom0less domU that Xen starts from /chosen."""

    name: str  # "dom0", "domU1": its shell prompt ("NAME# ") and its ShellDriver's name
    domid: int
    cmdline: str
    event_chip: str | None = None  # irq chip of its `events` row in /proc/interrupts, when known
    memory_kb: int = 0  # dom0less only
    cpus: int = 1
    vpl011: bool = True  # its console: Xen's emulated PL011 on the shared serial line
    enhanced: str | None = None  # xen,enhanced; None leaves the property out

    @property
    def source(self) -> str:
        """How the console monitor names this guest's lines."""
        return f"dom{self.domid}"


@dataclass(frozen=True)
class Deadlines:
    """Seconds. Defaults hold on a loaded 2-core host without KVM; a target YAML may override them."""

    boot: float = 600.0  # power-on to the console guest's shell prompt, whatever happens
    place: float = 300.0  # how long to wait for a farm's place that someone else holds
    silence: float = 60.0  # no console output at all, at any stage not listed below
    probe: float = 1.5  # console quiet this long before a milestone: ask the machine where it is (0: never)
    stages: dict[str, float] = field(default_factory=lambda: {"power-on": 30.0, "firmware": 180.0})

    def silence_at(self, stage: str) -> float:
        # Guest stages are recorded as "dom0:kernel": a deadline may name either form.
        return self.stages.get(stage, self.stages.get(stage.split(":")[-1], self.silence))

    @classmethod
    def from_config(cls, data: dict | None) -> Deadlines:
        data = dict(data or {})
        stages = {**cls().stages, **{k: float(v) for k, v in data.pop("stages", {}).items()}}
        if unknown := set(data) - {"boot", "silence", "place", "probe"}:
            raise UsageError(
                f"unknown deadline(s) {', '.join(sorted(unknown))}: "
                "use boot, silence, place, probe, or stages: {STAGE: SECONDS}."
            )
        return cls(stages=stages, **{k: float(v) for k, v in data.items()})


MiB = 1 << 20


PINNED_DTB = "image:"  # board: dtb: image:… names a pinned image artifact, not a file


@dataclass(frozen=True)
class BoardSpec:
    """How a board boots through its U-Boot (boot method uboot-tftp): what the lab's YAML cannot say.

    `dtb:` is the board's own device tree, which the boot plan adds Xen's /chosen nodes to:

        dtb: zcu102.dtb               a file of the lab's, relative to the target YAML
        dtb: image:dtb                the artifact `dtb` of the target's own image profile
        dtb: image:board-zcu102/dtb   the artifact `dtb` of the image profile board-zcu102

    A pinned DTB is fetched and checked against images/lock.json like every other image (a file whose
    name starts with `image:` is written `./image:…`). Without `dtb:`, a virtual lab dumps its machine's.

    `setup:` runs at U-Boot's prompt before any file is fetched (the board's network, as the lab wants
    it). `{serverip}` in it becomes the address of the lab's TFTP server: `serverip:` when the board
    section gives one, else the host of a RemoteTFTPProvider (the exporter holding the files), resolved
    on this host. A local TFTPProvider serves from this host, whose address on the board's network only
    the lab knows: give `serverip:`. `${serverip}` is U-Boot's own variable and is left alone.
    """

    dtb: str | None = None  # a file, relative to the target YAML (see above)
    dtb_image: tuple[str, str] | None = None  # (image profile, artifact) of a pinned DTB
    setup: tuple[str, ...] = ()  # U-Boot commands before loading (network); {serverip} is the lab's TFTP server
    serverip: str | None = None  # the TFTP server's address as the board reaches it, when the lab must say
    firmware_reserve: int = 2 * MiB  # RAM the firmware keeps at the bottom (QEMU puts its DTB there)
    uboot_reserve: int = 64 * MiB  # RAM at the top, where U-Boot relocated itself and copies the DTB
    virtual: str | None = None  # a virtual board the harness runs in its own lab (harness/lab/vlab.py)
    # `ssh: {known_hosts: FILE}`: dom0's SSH host key as the lab knows it (relative to the target YAML);
    # without it, the harness trusts the key dom0 prints on its serial console (a virtual board's is new at
    # every boot)
    ssh_known_hosts: str | None = None


ROOT_ARGUMENT = "harness.root="  # on dom0's command line: where its root disk is; images/initramfs/init reads it
ROOT_LABEL = "harness-dom0"  # the ext4 label of dom0's root disk (harness/rootfs.py)
NET_ARGUMENT = "harness.net="  # on dom0's command line: ADDRESS/PREFIX[,GATEWAY]; images/initramfs/init reads it


def net_argument(cmdline: str) -> str | None:
    """The value of harness.net= on a kernel command line (the last one wins, as for the kernel's own)."""
    values = [word[len(NET_ARGUMENT):] for word in cmdline.split() if word.startswith(NET_ARGUMENT)]
    return values[-1] if values else None


@dataclass(frozen=True)
class NetworkSpec:
    """dom0's network (`dom0: network:`): what its initramfs carries for /init to use when harness.net= asks."""

    modules: tuple[str, ...] = ()  # network drivers from dom0's kernel package, loaded with what they depend on
    ssh: str | None = None  # the image profile of dom0's SSH server (dropbear and its libraries' packages)


@dataclass(frozen=True)
class ToolstackSpec:
    """dom0 with Debian's toolstack (`toolstack:`): its root on a disk, and a domU that `xl create` starts.

    dom0's initramfs only finds the disk (`loader_modules`) and switches to it; the disk (harness/rootfs.py)
    carries busybox, the toolstack's programs and libraries (image profile `profile`), the kernel modules
    the backends need (`dom0_modules`), and the domU's kernel (dom0's own), initramfs and config."""

    profile: str  # image profile of the toolstack's programs (e.g. dom0-toolstack-arm64)
    loader_modules: tuple[str, ...]  # in dom0's initramfs: what finds its root disk
    dom0_modules: tuple[str, ...]  # on the disk: xenfs, privcmd, evtchn, gntdev, the PV backends …
    domu: GuestSpec  # the domU `xl create` starts (domid 1: the first domain after dom0)
    domu_modules: tuple[str, ...] = ()  # in the domU's initramfs: its PV frontends
    domu_memory_mb: int = 256
    root_device: str = "virtio-blk-device"  # QEMU's device for dom0's root disk


@dataclass(frozen=True)
class TargetSpec:
    """The `harness:` section of a target YAML."""

    name: str
    path: Path
    images: str  # image profile in images/lock.json
    boot: str  # how the boot plan is made: "qemu-loader" (DTB + modules) or "qemu-uefi" (firmware + ESP)
    arch: str  # the guests' architecture: "arm64" or "arm32" (no extended regions for 32-bit guests)
    dom0: GuestSpec | None
    domus: tuple[GuestSpec, ...]
    capabilities: frozenset[str]
    deadlines: dict = field(default_factory=dict)
    description: str = ""
    xen_build: dict[str, str] | None = None  # boot Xen built from source with these Kconfig items
    xen_cmdline: str = ""  # Xen's command line (a boot's --xen-args are appended)
    cpus: int = 1  # the machine's CPUs: QEMU's -smp, or the board's
    board: BoardSpec | None = None  # uboot-tftp only
    network: NetworkSpec | None = None  # dom0's network and SSH server
    toolstack: ToolstackSpec | None = None  # dom0's toolstack and the domU it creates

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def guests(self) -> tuple[GuestSpec, ...]:
        return ((self.dom0,) if self.dom0 else ()) + self.domus

    @property
    def every_guest(self) -> tuple[GuestSpec, ...]:
        """The guests Xen boots and the domU the toolstack starts."""
        return self.guests + ((self.toolstack.domu,) if self.toolstack else ())

    @property
    def console_guest(self) -> GuestSpec:
        """Whose shell the serial console gives first: dom0, else the first domU (Xen's input focus)."""
        return self.guests[0]

    def without_dom0(self) -> TargetSpec:
        return replace(self, dom0=None)


def check_guests(spec: TargetSpec) -> None:
    """Refuse, before any boot, guest combinations Xen would panic on or the harness cannot reach."""
    where = spec.path.name
    if not spec.guests:
        raise UsageError(f"{where}: no guests: give a dom0, domUs, or both.")
    for domu in spec.domus:
        if domu.enhanced is not None and domu.enhanced not in ENHANCED:
            raise UsageError(
                f"{where}: {domu.name} has xen,enhanced = {domu.enhanced!r}: use one of {', '.join(ENHANCED)}."
            )
        if domu.enhanced == "enabled" and spec.dom0 is None:
            raise UsageError(
                f"{where}: {domu.name} has xen,enhanced = \"enabled\" without a dom0, and Xen would panic "
                "('Xenstore support requires dom0 to be present'): use \"no-xenstore\", or boot a dom0."
            )
        if not domu.vpl011:
            raise UsageError(f"{where}: {domu.name} has no vpl011, so no console to reach its shell: set vpl011: true.")
        if domu.memory_kb <= 0:
            raise UsageError(f"{where}: {domu.name} needs memory (KiB), e.g. memory: 262144.")
    if spec.can("ssh") and (spec.network is None or spec.network.ssh is None):
        raise UsageError(f"{where}: the ssh capability needs dom0's SSH server: give dom0 a network: section with "
                         "ssh: PROFILE (e.g. dom0-ssh-arm64).")
    if spec.can("toolstack") and spec.toolstack is None:
        raise UsageError(f"{where}: the toolstack capability needs a toolstack: section (profile, modules, domU): "
                         "compare it with targets/qemu-virt-xl.yaml.")
    if spec.toolstack is not None and (spec.dom0 is None or ROOT_ARGUMENT not in spec.dom0.cmdline):
        raise UsageError(f"{where}: dom0's root disk is used only when its command line says so: add "
                         f"{ROOT_ARGUMENT}LABEL={ROOT_LABEL} to dom0's cmdline.")
    if spec.network is not None and (spec.dom0 is None or net_argument(spec.dom0.cmdline) is None):
        raise UsageError(f"{where}: dom0's network is brought up only when its command line says so: add "
                         f"{NET_ARGUMENT}ADDRESS/PREFIX[,GATEWAY] to dom0's cmdline.")


def qemu_smp(data: dict) -> int | None:
    """The -smp of the target's QEMU driver, if it has one."""
    for name, config in _drivers(data):
        args = (config or {}).get("extra_args", "") if name == "XenQEMUDriver" else ""
        if m := re.search(r"-smp\s+(?:cpus=)?(\d+)", args):
            return int(m.group(1))
    return None


def _drivers(data: dict) -> list[tuple[str, dict]]:
    """(driver class, its config) of the main target: labgrid takes a mapping or a list of one-key mappings."""
    drivers = ((data.get("targets") or {}).get("main") or {}).get("drivers") or {}
    items = drivers.items() if isinstance(drivers, dict) else (kv for d in drivers for kv in d.items())
    return list(items)


def _board(data: dict | None, profile: str) -> BoardSpec | None:
    if data is None:
        return None
    known = {"dtb", "setup", "serverip", "firmware_reserve", "uboot_reserve", "virtual", "ssh"}
    if unknown := set(data) - known:
        raise ValueError(f"unknown board setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    sizes = {k: int(str(data[k]), 0) for k in ("firmware_reserve", "uboot_reserve") if k in data}
    dtb, dtb_image = data.get("dtb"), None
    if dtb is not None and str(dtb).startswith(PINNED_DTB):
        dtb_image, dtb = _pinned_dtb(str(dtb), profile), None
    ssh = data.get("ssh") or {}
    if not isinstance(ssh, dict) or set(ssh) - {"known_hosts"}:
        raise ValueError(f"board ssh: {ssh!r} is not a mapping with only known_hosts: FILE")
    return BoardSpec(dtb=dtb, dtb_image=dtb_image, setup=tuple(str(c) for c in data.get("setup", ())),
                     serverip=str(data["serverip"]) if data.get("serverip") else None,
                     virtual=data.get("virtual"), ssh_known_hosts=ssh.get("known_hosts"), **sizes)


def _network(data: dict | None) -> NetworkSpec | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - {"modules", "ssh"}:
        raise ValueError(f"dom0 network: {data!r} is not a mapping of modules: [NAME, ...] and ssh: PROFILE")
    return NetworkSpec(modules=tuple(str(m) for m in data.get("modules") or ()), ssh=data.get("ssh"))


def _toolstack(data: dict | None) -> ToolstackSpec | None:
    if data is None:
        return None
    known = {"profile", "loader_modules", "dom0_modules", "domU", "root_device"}
    if not isinstance(data, dict) or set(data) - known or not isinstance(data.get("domU"), dict):
        raise ValueError(f"toolstack: {data!r} is not a mapping of {', '.join(sorted(known))} (domU: name, cmdline, "
                         "memory in MiB, modules)")
    domu = data["domU"]
    return ToolstackSpec(
        profile=str(data["profile"]),
        loader_modules=tuple(str(m) for m in data.get("loader_modules") or ()),
        dom0_modules=tuple(str(m) for m in data.get("dom0_modules") or ()),
        domu=GuestSpec(str(domu["name"]), 1, str(domu["cmdline"]), domu.get("event_chip")),
        domu_modules=tuple(str(m) for m in domu.get("modules") or ()),
        domu_memory_mb=int(domu.get("memory", 256)),
        root_device=str(data.get("root_device", "virtio-blk-device")),
    )


def _pinned_dtb(ref: str, profile: str) -> tuple[str, str]:
    """`image:ARTIFACT` (of the target's own profile) or `image:PROFILE/ARTIFACT` -> (profile, artifact)."""
    named, slash, artifact = ref.removeprefix(PINNED_DTB).rpartition("/")
    if not artifact or (slash and not named):
        what = "artifact" if not artifact else "profile"
        raise ValueError(f"board dtb {ref!r} names no {what}: write image:ARTIFACT or image:PROFILE/ARTIFACT")
    return (named or profile), artifact


def load_spec(name: str, directory: Path = TARGETS_DIR) -> TargetSpec:
    """The target `name` (from targets/), or the one in the YAML file `name` (named after the file)."""
    if (found := having(name, directory)) != [name]:
        raise UsageError(f"{name} is a capability of {len(found)} targets ({', '.join(found)}), not one target: "
                         f"boot one of them, or test them all with `./run test --target={name}`.")
    path = target_path(name, directory)
    name = path.stem
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the target {path} ({exc}): give a readable labgrid environment YAML.") from None
    try:
        data = yaml.safe_load(text) or {}
        section = data["harness"]
        dom0 = section.get("dom0")
        spec = TargetSpec(
            name=name,
            path=path,
            images=section["images"],
            boot=section.get("boot", "qemu-loader"),
            arch=section.get("arch", "arm64"),
            dom0=GuestSpec("dom0", 0, dom0["cmdline"], dom0.get("event_chip")) if dom0 else None,
            domus=tuple(
                GuestSpec(d["name"], i, d["cmdline"], d.get("event_chip"), int(d["memory"]), int(d.get("cpus", 1)),
                          bool(d.get("vpl011", True)), d.get("enhanced"))
                for i, d in enumerate(section.get("domUs", []), 1)
            ),
            capabilities=frozenset(section.get("capabilities", [])),
            deadlines=section.get("deadlines", {}),
            description=section.get("description", ""),
            xen_build={k: str(v) for k, v in section["xen_build"].items()} if section.get("xen_build") else None,
            xen_cmdline=" ".join(str(section.get("xen_cmdline", "")).split()),
            cpus=int(section.get("cpus") or qemu_smp(data) or 1),
            board=_board(section.get("board"), section["images"]),
            network=_network(dom0.get("network")) if dom0 else None,
            toolstack=_toolstack(section.get("toolstack")),
        )
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{path} is not a valid target ({exc!r}): compare it with targets/qemu-virt.yaml.") from exc
    check_guests(spec)
    try:
        Deadlines.from_config(spec.deadlines)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: deadlines must be seconds ({exc}): e.g. deadlines: {{silence: 60}}.") from None
    return spec
