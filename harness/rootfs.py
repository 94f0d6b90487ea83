"""dom0's root disk for the toolstack targets: an ext4 image made with `mke2fs -d`, reproducibly.

What goes on it (targets with a `toolstack:` section; harness/targets.py ToolstackSpec):

- busybox, images/initramfs/init (the same init as every initramfs: on this disk it finds
  /etc/harness/on-disk, loads /etc/harness/modules and runs /etc/harness/start) and the harness's guest tools;
- Debian's toolstack for the Xen that boots: xl, xenstored, xenconsoled, xen-init-dom0 and xenstore, with
  what their ELF dependencies reach in the pinned packages (harness/elf.py), and images/rootfs/start;
- the kernel modules the backends need, from the very kernel package dom0 boots;
- the domU `xl create` starts: dom0's kernel, an initramfs with its PV frontends, its config, and the
  hotplug scripts for its PV disk and network (images/rootfs/harness-block, harness-vif);
- /srv/known.bin: KNOWN_SIZE bytes the host knows (known_content()), which dom0 reads back through the
  disk's driver to prove the device works.

dom0's initramfs carries only the drivers that find the disk (loader_extra). Every header mke2fs writes
is fixed (UUID, hash seed, times, owners), so the same inputs give the same bytes and the cache keys the
image by its inputs, known without building it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import dom0net
from .cache import sha256_bytes
from .elf import Node
from .errors import InfrastructureError, UsageError
from .images import IMAGES_DIR, RELOCK_COMMAND, Artifact, Images, LockedArtifact, load_manifest
from .initramfs import INIT_SCRIPT, Extra, guest_tools, initramfs
from .targets import ROOT_LABEL, TargetSpec, ToolstackSpec

FORMAT = "3"  # bump when what goes on the disk changes for the same inputs, so cached images are rebuilt
ROOTFS_DIR = IMAGES_DIR / "rootfs"
SCRIPTS = {  # the disk's path -> the repository's file
    "etc/harness/start": ROOTFS_DIR / "start",
    "etc/xen/scripts/harness-block": ROOTFS_DIR / "harness-block",
    "etc/xen/scripts/harness-vif": ROOTFS_DIR / "harness-vif",
}
DIRECTORIES = ("dev", "proc", "sys", "tmp", "root", "mnt", "srv", "proc/xen", "var/run", "var/lock", "var/lib/xen",
               "var/log/xen")
KNOWN_PATH = "srv/known.bin"
KNOWN_SIZE = 4 << 20
DOMU_KERNEL, DOMU_INITRD = "boot/domu/vmlinuz", "boot/domu/initrd.gz"
DOMU_CONFIG = "etc/xen/domu.cfg"
# xl's own settings (xl.conf(5)): dom0's memory is fixed by dom0_mem, and libxl runs the hotplug scripts itself.
XL_CONF = b'autoballoon = "off"\nrun_hotplug_scripts = 1\n'

PV_DISK = "/srv/pv-disk.img"  # written by dom0 at run time (harness/toolstack.py), the domU's xvda
DOMU_ADDRESS = "192.168.77.2"  # the domU's end of the PV network; dom0's is .1 (harness-vif)
DOMU_MAC = "00:16:3e:77:00:02"
SLACK = 48 << 20  # free space on the disk: the PV disk file and what the toolstack writes
EPOCH = "1"  # the time mke2fs and debugfs write in the superblock (E2FSPROGS_FAKE_TIME)
FIXED_TIME = "19700101000001"  # every inode's times: EPOCH, as debugfs's set_inode_field takes one
UUID = "5ee0e2a7-0000-4000-8000-00000000d0d0"  # fixed: the same inputs give the same bytes


def known_content() -> bytes:
    """The bytes of /srv/known.bin: pseudo-random (no compression or dedup can fake reading them), fixed."""
    return hashlib.shake_256(b"xen-arm-harness dom0 disk").digest(KNOWN_SIZE)


def domu_config(toolstack: ToolstackSpec) -> str:
    """The domU's xl config: dom0's kernel, a PV disk on a file in dom0, a PV network, a PV console."""
    domu = toolstack.domu
    return "\n".join([
        f'name = "{domu.name}"',
        f'kernel = "/{DOMU_KERNEL}"',
        f'ramdisk = "/{DOMU_INITRD}"',
        f'cmdline = "{domu.cmdline} harness.net={DOMU_ADDRESS}/24"',
        f"memory = {toolstack.domu_memory_mb}",
        "vcpus = 1",
        f'disk = [ "format=raw, vdev=xvda, access=rw, script=harness-block, target={PV_DISK}" ]',
        f'vif = [ "mac={DOMU_MAC}, ip={DOMU_ADDRESS}, script=harness-vif" ]',
        'on_crash = "preserve"',  # a crashed domU stays for `xl list` and its console to say so
        "",
    ])


def loader_extra(spec: TargetSpec, images: Images) -> Extra:
    """What dom0's initramfs carries to find its root disk: the disk driver's modules."""
    kernel = images.locked(spec.images)["kernel"]
    modules = spec.toolstack.loader_modules
    key = sha256_bytes(":".join([FORMAT, "loader", kernel.deb_sha256, *modules]).encode())
    return Extra(key, lambda: dom0net.module_files(images, kernel, modules))


def dom0_rootfs(spec: TargetSpec, images: Images, arts: dict[str, Artifact]) -> Artifact:
    """dom0's root disk for `spec`, a cache entry keyed by its inputs: verified, or built now."""
    toolstack = spec.toolstack
    if arts["kernel"].origin == "user":
        raise UsageError("a toolstack target's modules come from the pinned kernel package and would not load into "
                         "your --kernel: boot a toolstack target with Debian's kernel.")
    kernel = images.locked(spec.images)["kernel"]
    pins = images.locked(toolstack.profile)
    programs = closure_programs(toolstack.profile, pins)
    domu_initrd = initramfs(arts["busybox"], images.cache, extra=Extra(
        sha256_bytes(":".join([FORMAT, "domu", kernel.deb_sha256, *toolstack.domu_modules]).encode()),
        lambda: dom0net.module_files(images, kernel, toolstack.domu_modules)))
    own = {path: source.read_bytes() for path, source in SCRIPTS.items()} | {
        f"bin/{name}": data for name, data in guest_tools().items()} | {
        "init": INIT_SCRIPT.read_bytes(), DOMU_CONFIG: domu_config(toolstack).encode(), "etc/xen/xl.conf": XL_CONF}
    inputs = [FORMAT, *DIRECTORIES, arts["busybox"].sha256, arts["kernel"].sha256, domu_initrd.sha256,
              kernel.deb_sha256, *toolstack.dom0_modules, *(f"{n}={p.deb_sha256}" for n, p in sorted(pins.items())),
              *(f"{path}={sha256_bytes(data)}" for path, data in sorted(own.items()))]
    key = sha256_bytes(":".join(inputs).encode())

    def files() -> dict[str, Node]:
        tree = images.program_files(toolstack.profile, programs)
        tree |= dom0net.module_files(images, kernel, toolstack.dom0_modules)
        tree |= {path: Node(0o755 if path in SCRIPTS or path == "init" or path.startswith("bin/") else 0o644, data)
                 for path, data in own.items()}
        tree |= {
            "bin/busybox": Node(0o755, arts["busybox"].path.read_bytes()),
            "usr/sbin/xl": Node(0o777, link="/usr/lib/xen-4.17/bin/xl"),
            "etc/harness/on-disk": Node(0o644, b"dom0's root disk: /init runs from here\n"),
            DOMU_KERNEL: Node(0o644, arts["kernel"].path.read_bytes()),
            DOMU_INITRD: Node(0o644, domu_initrd.path.read_bytes()),
            KNOWN_PATH: Node(0o644, known_content()),
        }
        return tree

    entry = images.cache.entry("rootfs", f"{key[:16]}.ext4", lambda path: make_ext4(files(), path, ROOT_LABEL))
    return Artifact("rootfs", entry.path, entry.sha256, "built")


def closure_programs(profile: str, pins: dict[str, LockedArtifact]) -> list[str]:
    """The programs of `profile` whose ELF closure goes in: the manifest's `closure:` artifacts."""
    names = load_manifest()["profiles"].get(profile, {}).get("closure") or []
    if not names or any(name not in pins for name in names):
        raise UsageError(f"image profile {profile} pins no `closure:` programs: give it one in images/manifest.yaml "
                         f"and run `{RELOCK_COMMAND} --profile {profile}`.")
    return names


def make_ext4(files: dict[str, Node], path: Path, label: str) -> None:
    """An ext4 image of `files` at `path`, sized to them plus SLACK, with every header field and time fixed
    (mke2fs -d from a staging tree, then debugfs for the times mke2fs copies from it)."""
    size = sum(len(node.data) for node in files.values())
    size_mb = (size * 5 // 4 + SLACK) >> 20
    with tempfile.TemporaryDirectory(prefix="harness-rootfs-") as staging:
        root = Path(staging) / "root"
        for directory in DIRECTORIES:
            (root / directory).mkdir(parents=True, exist_ok=True)
        for name, node in sorted(files.items()):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if node.link is not None:
                target.symlink_to(node.link)
            else:
                target.write_bytes(node.data)
                target.chmod(node.mode)
        tool = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
        cmd = [tool, "-q", "-F", "-t", "ext4", "-L", label, "-U", UUID, "-b", "4096", "-I", "256",
               "-E", f"hash_seed={UUID},root_owner=0:0", "-O", "^metadata_csum_seed", "-d", str(root), str(path),
               f"{size_mb}M"]
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": EPOCH, "MKE2FS_DEVICE_SECTSIZE": "512"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        except FileNotFoundError:
            raise InfrastructureError("mke2fs is missing: install Debian's e2fsprogs.") from None
        if proc.returncode != 0:
            raise InfrastructureError(f"mke2fs could not build dom0's root disk ({proc.stderr.strip()[-300:]}).")
        # mke2fs 1.47.0 copies each file's times from the staging tree, and a ctime no one can set: debugfs sets
        # every time of every inode afterwards.
        paths = ["/", "/lost+found", *sorted("/" + str(p.relative_to(root)) for p in root.rglob("*"))]
        commands = Path(staging) / "times"
        commands.write_text("".join(f'sif "{path}" {field} {FIXED_TIME}\n' for path in paths
                                    for field in ("atime", "mtime", "ctime", "crtime")))
        proc = subprocess.run([shutil.which("debugfs") or "/usr/sbin/debugfs", "-w", "-f", str(commands), str(path)],
                              capture_output=True, text=True, timeout=300, env=env)
        if proc.returncode != 0 or "debugfs: " in proc.stderr.replace("debugfs 1.", ""):
            raise InfrastructureError(f"debugfs could not fix the times on dom0's root disk "
                                      f"({proc.stderr.strip()[-300:]}).")
