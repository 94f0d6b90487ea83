"""ELF reading (harness/elf.py) on the real binaries of the pinned packages, checked against binutils' readelf and
against a closure walked the way a system would: the packages unpacked by dpkg-deb, symlinks followed by the
file system, dependencies read by readelf."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import elf
from harness.images import Images, read_members

SSH_PROFILES = ["dom0-ssh-arm64", "dom0-ssh-armhf"]
ROOTS = ("usr/sbin/dropbear", "usr/bin/dropbearkey")
VIRTIO_NET = ("virtio_pci", "virtio_net")


def pinned_debs(profile: str) -> list[Path]:
    images = Images()
    return [images.fetch_deb(pin) for pin in {p.deb_sha256: p for p in images.locked(profile).values()}.values()]


@pytest.fixture(scope="module", params=SSH_PROFILES)
def packages(request) -> tuple[str, dict[str, elf.Node]]:
    tree: dict[str, elf.Node] = {}
    for deb in pinned_debs(request.param):
        tree |= read_members(deb, lambda path: not path.startswith("usr/share/"))
    return request.param, tree


def readelf(path: Path) -> dict[str, list[str]]:
    """What binutils says of a file: NEEDED, SONAME, RUNPATH and the interpreter."""
    out = subprocess.run(["readelf", "-W", "-d", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    return {
        "needed": re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out),
        "soname": re.findall(r"\(SONAME\)\s+Library soname: \[(.+?)\]", out),
        "runpath": re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.+?)\]", out),
        "interpreter": re.findall(r"\[Requesting program interpreter: (.+?)\]", out),
    }


def test_what_a_binary_needs_is_what_readelf_says(packages, tmp_path):
    _, tree = packages
    files = [path for path, node in tree.items() if node.link is None and node.data[:4] == elf.MAGIC]
    assert len(files) >= 8, f"expected the programs and libraries of the packages, found {files}"
    for path in files:
        parsed = elf.parse(tree[path].data, path)
        (tmp_path / "f").write_bytes(tree[path].data)
        witness = readelf(tmp_path / "f")
        assert list(parsed.needed) == witness["needed"], f"{path}: NEEDED"
        assert ([parsed.soname] if parsed.soname else []) == witness["soname"], f"{path}: SONAME"
        assert ([parsed.interpreter] if parsed.interpreter else []) == witness["interpreter"], f"{path}: interpreter"
        assert ([":".join(parsed.runpath)] if parsed.runpath else []) == witness["runpath"], f"{path}: RUNPATH"
    parsed_all = [elf.parse(tree[p].data) for p in files]
    assert any(e.interpreter for e in parsed_all) and any(e.soname for e in parsed_all), "nothing to compare"


def system_closure(root: Path, programs: tuple[str, ...]) -> set[str]:
    """The closure as a system finds it: dpkg-deb -x'd packages, readelf's dependencies, the file system's links."""
    found: set[str] = set()
    queue = [root / p for p in programs]
    while queue:
        path = queue.pop()
        while path.is_symlink():  # every link on the way is part of what the loader opens
            found.add(str(path.relative_to(root)))
            target = os.readlink(path)
            path = (root / target.lstrip("/")) if target.startswith("/") else path.parent / target
        relative = str(path.resolve().relative_to(root.resolve()))
        if relative in found:
            continue
        found.add(relative)
        info = readelf(path)
        queue += [root / i.lstrip("/") for i in info["interpreter"]]
        triplet = re.search(r"lib/([^/]+-linux-gnu[^/]*)/", "".join(str(p) for p in root.glob("lib/*/libc.so.6")))[1]
        for soname in info["needed"]:
            dirs = [f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib"]
            queue.append(next(root / d / soname for d in dirs if (root / d / soname).exists()))
    return found


def test_the_closure_is_what_the_system_would_load(packages, tmp_path):
    profile, tree = packages
    for deb in pinned_debs(profile):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    closure = elf.library_closure(ROOTS, tree)
    assert set(closure) == system_closure(tmp_path, ROOTS)
    loader = next(p for p in closure if re.fullmatch(r"lib/ld-linux-[^/]+\.so\.\d", p))
    assert closure[loader].link is not None, f"{loader} is the interpreter's path, a link in libc6"
    assert not any("libm.so" in p or p.startswith("usr/share") for p in closure), "more than was needed"
    for path, node in closure.items():
        assert node == tree[path], f"{path} is not the package's own"


def test_a_library_no_package_has_is_named_with_who_needs_it(packages):
    _, tree = packages
    without_zlib = {p: n for p, n in tree.items() if "libz.so" not in p}
    with pytest.raises(elf.MissingDependency) as info:
        elf.library_closure(ROOTS, without_zlib)
    assert (info.value.what, info.value.needed_by) == ("libz.so.1", "usr/sbin/dropbear")
    assert str(info.value).startswith("usr/sbin/dropbear needs libz.so.1, found in none of /lib/")


def test_a_library_of_another_machine_is_refused():
    arm64, armhf = {}, {}
    for profile, tree in (("dom0-ssh-arm64", arm64), ("dom0-ssh-armhf", armhf)):
        for deb in pinned_debs(profile):
            tree |= read_members(deb, lambda path: not path.startswith("usr/share/"))
    mixed = {p: n for p, n in armhf.items() if "libz.so" not in p}
    mixed |= {p.replace("aarch64-linux-gnu", "arm-linux-gnueabihf"): n for p, n in arm64.items() if "libz.so" in p}
    with pytest.raises(elf.ElfError, match=r"libz\.so\.1\.\S+ is a 64-bit ELF for machine 183, but the programs are "
                                           r"32-bit for machine 40$"):
        elf.library_closure(ROOTS, mixed)


def test_what_is_not_elf_or_is_cut_short_is_one_sentence(packages):
    _, tree = packages
    with pytest.raises(elf.ElfError, match=r"^usr/sbin/x is not an ELF file \(it starts with b'#!/b'\)$"):
        elf.parse(b"#!/bin/sh\n", "usr/sbin/x")
    with pytest.raises(elf.ElfError, match=r"^dropbear is a truncated or damaged ELF file$"):
        elf.parse(tree["usr/sbin/dropbear"].data[:200], "dropbear")


def test_a_link_loop_leads_nowhere():
    loop = {"a": elf.Node(0o777, link="b"), "b": elf.Node(0o777, link="/a")}
    assert elf.resolve(loop, "a") == []
    assert elf.resolve({"x/y": elf.Node(0o777, link="../z"), "z": elf.Node(0o644, b"z")}, "/x/y") == ["x/y", "z"]


# --- kernel modules --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["debian12-arm64", "debian12-armhf"])
def kernel_modules(request) -> tuple[str, dict[str, elf.Module], dict[str, elf.Node]]:
    """The virtio and failover modules of the pinned kernel package, and its release."""
    images = Images()
    pin = images.locked(request.param)["kernel"]
    files = read_members(images.fetch_deb(pin), lambda p: re.search(r"/(virtio[^/]*|[a-z_]*failover)\.ko$", p))
    modules = {m.name: m for m in (elf.module(p, n.data) for p, n in files.items() if n.link is None)}
    return pin.file.removeprefix("boot/vmlinuz-"), modules, files


def test_modinfo_is_what_readelf_dumps(kernel_modules, tmp_path):
    _, modules, files = kernel_modules
    module = modules["virtio_net"]
    (tmp_path / "m.ko").write_bytes(files[module.path].data)
    dump = subprocess.run(["readelf", "-W", "-p", ".modinfo", str(tmp_path / "m.ko")], capture_output=True,
                          text=True, check=True).stdout
    strings = dict(re.findall(r"^\s*\[\s*[0-9a-f]+\]\s+(\w+)=(.*)$", dump, re.M))
    info = elf.modinfo(files[module.path].data)
    for key in ("name", "depends", "vermagic", "license"):
        assert info[key] == strings[key], key
    assert module.depends == tuple(d for d in strings["depends"].split(",") if d)


def test_modules_load_after_what_they_depend_on(kernel_modules):
    release, modules, _ = kernel_modules
    order = elf.load_order(VIRTIO_NET, modules, release)
    names = [m.name for m in order]
    assert {"virtio_pci", "virtio_net", "net_failover", "failover"} <= set(names), names
    for position, module in enumerate(order):
        for dependency in module.depends:
            assert dependency in names[:position], f"{module.name} before its dependency {dependency}: {names}"
    assert len(names) == len(set(names)), names


def test_a_module_the_package_lacks_or_of_another_kernel_is_refused(kernel_modules):
    release, modules, _ = kernel_modules
    with pytest.raises(elf.MissingDependency, match=rf"^the target needs module e1000e, found in none of the "
                                                    rf"{re.escape(release)} package$"):
        elf.load_order(["e1000e"], modules, release)
    with pytest.raises(elf.ElfError, match=r"virtio_net\.ko is built for 6\.1\.\S+, not 6\.1\.0-1-other$"):
        elf.load_order(["virtio_net"], {"virtio_net": modules["virtio_net"]}, "6.1.0-1-other")
