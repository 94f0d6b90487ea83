"""dom0's network and SSH server, carried in its initramfs for the targets whose `dom0: network:` asks (and any
more modules a boot adds: a fault's xen_wdt).

What goes in (an `initramfs.Extra`, cached with the initramfs under a key of its inputs):

- network drivers: the modules the target names and those they depend on (their `.modinfo`), from the
  very kernel package dom0 boots (a module loads only into the kernel it was built for), at their
  package paths under /lib/modules, and /etc/harness/modules listing them in load order;
- the SSH server: dropbear and dropbearkey from the target's ssh image profile, and what their ELF
  dependencies reach in that profile's packages (harness/elf.py: libraries, the dynamic loader, soname
  links), with the /etc files dropbear needs to let root in.

images/initramfs/init uses them only when dom0's command line has harness.net=ADDRESS/PREFIX[,GATEWAY]:
other boots of the same initramfs behave as before.
"""

from __future__ import annotations

import logging
import re

from . import elf
from .cache import sha256_bytes
from .elf import Node
from .errors import InfrastructureError, UsageError
from .images import Artifact, Images, LockedArtifact, iter_members, read_members
from .initramfs import Extra
from .targets import TargetSpec

log = logging.getLogger(__name__)

FORMAT = "2"  # bump when what goes in changes for the same packages, so cached images are rebuilt
MODULE_LIST = "etc/harness/modules"  # absolute .ko paths, one a line, in load order
SSH_PROGRAMS = ("dropbear", "dropbearkey")  # artifacts of the ssh profile: the roots of the ELF closure
# root's account for dropbear: no password can match "*", and a public key is the only way in (-s)
ETC = {
    "etc/passwd": b"root:*:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/shells": b"/bin/sh\n",
}


def extra(spec: TargetSpec, images: Images, kernel: Artifact, more_modules: tuple[str, ...] = ()) -> Extra | None:
    """What dom0's initramfs carries for its network and `more_modules` (drivers a boot adds, e.g. a fault's
    xen_wdt), or None when there is nothing: no `dom0: network:` and no more modules."""
    network = spec.network
    modules = (*(network.modules if network else ()), *more_modules)
    if network is None and not modules:
        return None
    parts = [FORMAT, *(f"{path}={sha256_bytes(data)}" for path, data in ETC.items())]
    kernel_pin = None
    if modules and kernel.origin == "user":
        log.warning("dom0's modules (%s) come from the pinned kernel package and would not load into your "
                    "--kernel: they are left out, so what they drive must be built in", ", ".join(modules))
    elif modules:
        kernel_pin = images.locked(spec.images)["kernel"]
        parts += [kernel_pin.deb_sha256, *modules]
    ssh = None
    if network is not None and network.ssh:
        ssh = images.locked(network.ssh)
        if missing := [name for name in SSH_PROGRAMS if name not in ssh]:
            raise UsageError(f"image profile {network.ssh} has no {', '.join(missing)}: dom0's SSH server needs "
                             f"artifacts {', '.join(SSH_PROGRAMS)} (dropbear-bin's programs) in images/manifest.yaml.")
        parts += [f"{name}={pin.deb_sha256}:{pin.file_sha256}" for name, pin in sorted(ssh.items())]

    def files() -> dict[str, Node]:
        found: dict[str, Node] = {}
        if kernel_pin is not None:
            found |= module_files(images, kernel_pin, modules)
        if ssh is not None:
            found |= ssh_files(images, network.ssh)
        return found

    return Extra(sha256_bytes(":".join(parts).encode()), files)


def kernel_release(pin: LockedArtifact) -> str:
    """The kernel's release (`uname -r`), from its image's name in the package: boot/vmlinuz-RELEASE."""
    match = re.fullmatch(r"boot/vmlinuz-(.+)", pin.file)
    if not match:
        raise UsageError(f"the kernel {pin.file} of {pin.package} is not named boot/vmlinuz-RELEASE: its modules "
                         "cannot be matched to it.")
    return match.group(1)


def module_files(images: Images, kernel: LockedArtifact, wanted: tuple[str, ...]) -> dict[str, Node]:
    """The modules `wanted` and what they depend on, from the kernel's package, and the list in load order."""
    deb = images.fetch_deb(kernel)
    release = kernel_release(kernel)
    modules = {}
    for path, member, read in iter_members(deb):
        if member.isfile() and path.endswith(".ko"):
            found = elf.module(path, read())
            modules[found.name] = found
    try:
        order = elf.load_order(wanted, modules, release)
    except elf.MissingDependency as exc:
        raise UsageError(f"{kernel.package} {kernel.version} has no {exc.what} ({exc.needed_by} needs it): a "
                         "driver built into the kernel needs no module; fix dom0: network: modules:.") from None
    except elf.ElfError as exc:
        raise InfrastructureError(f"the modules of {kernel.package} {kernel.version}: {exc}.") from None
    chosen = {m.path for m in order}
    files = {path: node for path, node in read_members(deb, chosen.__contains__).items() if path in chosen}
    files[MODULE_LIST] = Node(0o644, "".join(f"/{m.path}\n" for m in order).encode())
    return files


def ssh_files(images: Images, profile: str) -> dict[str, Node]:
    """dropbear, dropbearkey and their ELF closure over the profile's packages, and root's /etc files."""
    return images.program_files(profile, list(SSH_PROGRAMS)) | {path: Node(0o644, data) for path, data in ETC.items()}
