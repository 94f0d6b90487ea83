"""What dom0's initramfs carries for its network and SSH server (harness/dom0net.py), from the real pinned packages:
the drivers from the very kernel package dom0 boots, in load order; dropbear with its closure; and one sentence
for each way the target, the lock or the packages can fall short."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from harness import dom0net, elf
from harness.cache import sha256_bytes
from harness.errors import UsageError
from harness.images import LOCK, Artifact, Images
from harness.targets import NetworkSpec, load_spec


@pytest.fixture(scope="module")
def images() -> Images:
    return Images()


@pytest.fixture(scope="module")
def vboard_arm64(images):
    spec = load_spec("vboard-arm64")
    kernel = images.artifact(spec.images, "kernel")
    extra = dom0net.extra(spec, images, kernel)
    return spec, kernel, extra, extra.files()


def test_dom0_carries_its_drivers_in_load_order_from_its_own_kernel_package(images, vboard_arm64):
    spec, _, _, files = vboard_arm64
    order = files[dom0net.MODULE_LIST].data.decode().splitlines()
    release = images.locked(spec.images)["kernel"].file.removeprefix("boot/vmlinuz-")
    assert order and all(p.startswith(f"/lib/modules/{release}/kernel/") for p in order), order
    modules = [elf.module(p, files[p.lstrip("/")].data) for p in order]
    loaded: list[str] = []
    for module in modules:
        assert set(module.depends) <= set(loaded), f"{module.name} is loaded before {module.depends}: {order}"
        assert module.vermagic.split()[0] == release
        loaded.append(module.name)
    assert {"virtio_pci", "virtio_net"} <= set(loaded)
    assert {p for p in files if p.endswith(".ko")} == {p.lstrip("/") for p in order}, "a module not in the list"


def test_dom0_carries_the_pinned_dropbear_with_its_closure_and_roots_account(images, vboard_arm64):
    spec, _, _, files = vboard_arm64
    pins = images.locked(spec.network.ssh)
    for name in dom0net.SSH_PROGRAMS:
        node = files[pins[name].file]
        assert (node.mode, sha256_bytes(node.data)) == (0o755, pins[name].file_sha256), name
    programs = [pins[name].file for name in dom0net.SSH_PROGRAMS]
    closure = elf.library_closure(programs, {p: n for p, n in files.items()})
    assert set(closure) | set(dom0net.ETC) | {p for p in files if "modules" in p} == set(files)
    assert files["etc/passwd"].data == b"root:*:0:0:root:/root:/bin/sh\n"


def test_the_key_names_the_inputs_without_building(images, vboard_arm64):
    spec, kernel, extra, _ = vboard_arm64
    assert dom0net.extra(spec, images, kernel).key == extra.key
    fewer = replace(spec, network=NetworkSpec(("virtio_net",), spec.network.ssh))
    no_ssh = replace(spec, network=NetworkSpec(spec.network.modules, None))
    assert len({extra.key, dom0net.extra(fewer, images, kernel).key, dom0net.extra(no_ssh, images, kernel).key}) == 3
    assert dom0net.extra(load_spec("qemu-virt"), images, kernel) is None


def test_a_boot_adds_modules_from_dom0s_own_kernel_package_without_a_network(images):
    """A fault's xen_wdt on a target with no `dom0: network:`: the module and what it needs, in load order."""
    spec = load_spec("qemu-virt")
    kernel = images.artifact(spec.images, "kernel")
    extra = dom0net.extra(spec, images, kernel, ("xen_wdt",))
    files = extra.files()
    order = files[dom0net.MODULE_LIST].data.decode().splitlines()
    release = images.locked(spec.images)["kernel"].file.removeprefix("boot/vmlinuz-")
    names = [elf.module(p, files[p.lstrip("/")].data).name for p in order]
    assert names[-1] == "xen_wdt" and set(names) <= {"watchdog", "xen_wdt"}, order
    assert all(p.startswith(f"/lib/modules/{release}/kernel/") for p in order)
    assert {p for p in files if p.endswith(".ko")} == {p.lstrip("/") for p in order}
    assert dom0net.extra(spec, images, kernel) is None and extra.key != dom0net.extra(
        spec, images, kernel, ("xen_wdt", "softdog")).key


def test_a_kernel_of_the_users_own_gets_no_modules_and_a_warning(images, vboard_arm64, caplog, tmp_path):
    spec, kernel, extra, _ = vboard_arm64
    mine = Artifact("kernel", kernel.path, kernel.sha256, "user")
    only_ssh = replace(spec, network=NetworkSpec(spec.network.modules, None))
    with caplog.at_level(logging.WARNING):
        theirs = dom0net.extra(only_ssh, images, mine)
    assert theirs.files() == {}, "modules of the pinned package went in beside the user's kernel"
    assert "would not load into your --kernel" in caplog.text


def test_a_module_the_kernel_package_lacks_is_one_sentence(images, vboard_arm64):
    spec, kernel, _, _ = vboard_arm64
    wrong = replace(spec, network=NetworkSpec(("virtio_net", "e1000e"), None))
    with pytest.raises(UsageError) as info:
        dom0net.extra(wrong, images, kernel).files()
    pin = images.locked(spec.images)["kernel"]
    assert str(info.value) == (f"{pin.package} {pin.version} has no module e1000e (the target needs it): a driver "
                               "built into the kernel needs no module; fix dom0: network: modules:.")


def edited_lock(tmp_path: Path, profile: str, drop: str) -> Images:
    lock = json.loads(LOCK.read_text())
    del lock["profiles"][profile][drop]
    path = tmp_path / "lock.json"
    path.write_text(json.dumps(lock))
    return Images(lock_path=path)


def test_an_ssh_profile_without_dropbearkey_is_one_sentence(tmp_path, vboard_arm64):
    spec, kernel, _, _ = vboard_arm64
    with pytest.raises(UsageError, match=r"^image profile dom0-ssh-arm64 has no dropbearkey: dom0's SSH server needs "
                                         r"artifacts dropbear, dropbearkey \(dropbear-bin's programs\) in "
                                         r"images/manifest\.yaml\.$"):
        dom0net.extra(spec, edited_lock(tmp_path, "dom0-ssh-arm64", "dropbearkey"), kernel)


def test_a_library_no_pinned_package_ships_is_one_sentence_naming_it(tmp_path, vboard_arm64):
    spec, kernel, _, _ = vboard_arm64
    images = edited_lock(tmp_path, "dom0-ssh-arm64", "zlib")
    no_modules = replace(spec, network=NetworkSpec((), spec.network.ssh))
    with pytest.raises(UsageError) as info:
        dom0net.extra(no_modules, images, kernel).files()
    assert str(info.value) == (
        "usr/sbin/dropbear needs libz.so.1, which no package of image profile dom0-ssh-arm64 has in "
        "/lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib, /usr/lib: add the package that ships it to "
        "dom0-ssh-arm64 in images/manifest.yaml and run `./run images lock --profile dom0-ssh-arm64`.")


def test_modules_a_boot_adds_are_refused_where_dom0_runs_from_its_root_disk(tmp_path):
    """A toolstack target's dom0 loads the modules on its disk, not its initramfs': one sentence, before any image."""
    from harness.boot import BootSession
    from harness.tweaks import Tweaks

    session = BootSession(load_spec("qemu-virt-xl"), tmp_path, tweaks=Tweaks(dom0_modules=("xen_wdt",)))
    with pytest.raises(UsageError) as info:
        session.boot()
    assert str(info.value) == ("qemu-virt-xl's dom0 runs from its root disk, which loads the toolstack's modules only: "
                               "add modules (xen_wdt) on a target whose dom0 runs from its initramfs.")
