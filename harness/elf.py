"""ELF files as the loader and the kernel read them: what a program needs to run, what a module needs to load.

Pure functions over bytes and a file tree (the files of pinned Debian packages), no host tools: a
program's dynamic loader (PT_INTERP) and libraries (DT_NEEDED, looked up as glibc's loader looks them
up: DT_RUNPATH, else DT_RPATH, then the multiarch and plain library directories) give the closure of
files a program needs in an initramfs; a kernel module's `.modinfo` (`name=`, `depends=`, `vermagic=`)
gives the modules to load before it, in order.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAGIC = b"\x7fELF"
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 14, 15, 29
EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183
EF_ARM_ABI_FLOAT_HARD = 0x400
MAX_LINKS = 40  # symlinks followed for one path, as Linux's own limit


class ElfError(ValueError):
    """A file that is not the ELF file it should be, or a dependency that cannot be satisfied."""


class MissingDependency(ElfError):
    def __init__(self, what: str, needed_by: str, searched: Iterable[str]) -> None:
        self.what, self.needed_by, self.searched = what, needed_by, tuple(searched)
        super().__init__(f"{needed_by} needs {what}, found in none of {', '.join(self.searched)}")


@dataclass(frozen=True)
class Elf:
    bits: int  # 32 or 64
    machine: int  # e_machine
    flags: int  # e_flags (an Arm hard-float ABI is a flag)
    interpreter: str | None  # PT_INTERP: the dynamic loader's path
    needed: tuple[str, ...]  # DT_NEEDED sonames, in order
    soname: str | None
    runpath: tuple[str, ...]  # DT_RUNPATH, else DT_RPATH
    sections: Mapping[str, bytes]  # by name (what a relocatable module carries)

    @property
    def multiarch(self) -> str:
        """Debian's multiarch triplet for this machine: where its libraries live."""
        if self.machine == EM_AARCH64:
            return "aarch64-linux-gnu"
        if self.machine == EM_ARM:
            return "arm-linux-gnueabihf" if self.flags & EF_ARM_ABI_FLOAT_HARD else "arm-linux-gnueabi"
        if self.machine == EM_X86_64:
            return "x86_64-linux-gnu"
        raise ElfError(f"ELF machine {self.machine} has no Debian multiarch directory known to the harness")

    def library_dirs(self) -> tuple[str, ...]:
        """Where the loader looks for this object's DT_NEEDED (root-relative, without ld.so.cache)."""
        triplet = self.multiarch
        defaults = (f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib")
        return tuple(d.strip("/") for d in self.runpath) + defaults


def parse(data: bytes, name: str = "the file") -> Elf:
    """The header, program headers, dynamic section and sections of a little-endian ELF file."""
    if data[:4] != MAGIC:
        raise ElfError(f"{name} is not an ELF file (it starts with {data[:4]!r})")
    if len(data) < 52 or data[4] not in (1, 2) or data[5] != 1:
        raise ElfError(f"{name} is not a little-endian 32- or 64-bit ELF file")
    bits = 32 if data[4] == 1 else 64
    try:
        return _parse(data, bits, name)
    except struct.error:
        raise ElfError(f"{name} is a truncated or damaged ELF file") from None


def _parse(data: bytes, bits: int, name: str) -> Elf:
    if bits == 64:
        (machine,) = struct.unpack_from("<H", data, 18)
        phoff, shoff, flags = struct.unpack_from("<QQI", data, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 54)
        ph_format, sh_format, dyn_format = "<IIQQQQQQ", "<IIQQQQIIQQ", "<qQ"
    else:
        (machine,) = struct.unpack_from("<H", data, 18)
        phoff, shoff, flags = struct.unpack_from("<III", data, 28)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 42)
        ph_format, sh_format, dyn_format = "<IIIIIIII", "<IIIIIIIIII", "<iI"

    segments = []  # (type, offset, vaddr, filesz)
    for i in range(phnum):
        fields = struct.unpack_from(ph_format, data, phoff + i * phentsize)
        if bits == 64:
            p_type, _, offset, vaddr, _, filesz, _, _ = fields
        else:
            p_type, offset, vaddr, _, filesz, _, _, _ = fields
        segments.append((p_type, offset, vaddr, filesz))

    def file_range(offset: int, size: int, what: str) -> bytes:
        if offset + size > len(data):
            raise ElfError(f"{name}: its {what} lies past the end of the file")
        return data[offset:offset + size]

    interpreter = None
    for p_type, offset, _, filesz in segments:
        if p_type == PT_INTERP:
            interpreter = file_range(offset, filesz, "PT_INTERP").split(b"\0")[0].decode()

    needed: list[int] = []
    soname = runpath = rpath = None
    strtab = None
    for p_type, offset, _, filesz in segments:
        if p_type != PT_DYNAMIC:
            continue
        size = struct.calcsize(dyn_format)
        for i in range(filesz // size):
            tag, value = struct.unpack_from(dyn_format, data, offset + i * size)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(value)
            elif tag == DT_STRTAB:
                strtab = value
            elif tag == DT_SONAME:
                soname = value
            elif tag == DT_RUNPATH:
                runpath = value
            elif tag == DT_RPATH:
                rpath = value

    def dynamic_string(value: int) -> str:
        if strtab is None:
            raise ElfError(f"{name}: its dynamic section names libraries but has no string table")
        for p_type, offset, vaddr, filesz in segments:  # DT_STRTAB is an address: find its file offset
            if p_type == PT_LOAD and vaddr <= strtab < vaddr + filesz:
                start = offset + (strtab - vaddr) + value
                end = data.find(b"\0", start)
                if start >= len(data) or end < 0:
                    break
                return data[start:end].decode()
        raise ElfError(f"{name}: its dynamic string table is outside every loaded segment")

    path = runpath if runpath is not None else rpath
    sections: dict[str, bytes] = {}
    if shoff and shnum:
        headers = [struct.unpack_from(sh_format, data, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx >= shnum:
            raise ElfError(f"{name}: its section name table index {shstrndx} is past its {shnum} sections")
        names = headers[shstrndx]
        names_data = file_range(names[4], names[5], "section name table")
        for header in headers:
            sh_name, sh_type, _, _, offset, size = header[:6]
            label = names_data[sh_name:names_data.find(b"\0", sh_name)].decode(errors="replace")
            if sh_type != 8 and label:  # SHT_NOBITS has no bytes in the file
                sections[label] = file_range(offset, size, f"section {label}")
    return Elf(
        bits=bits, machine=machine, flags=flags, interpreter=interpreter,
        needed=tuple(dynamic_string(v) for v in needed),
        soname=dynamic_string(soname) if soname is not None else None,
        runpath=tuple(p for p in dynamic_string(path).split(":") if p) if path is not None else (),
        sections=sections,
    )  # fmt: skip


# --- a file tree: the files of packages, and the closure a program needs of it ----------------------


@dataclass(frozen=True)
class Node:
    """A regular file (its bytes) or a symbolic link (its target), with its permission bits."""

    mode: int
    data: bytes = b""
    link: str | None = None


Tree = Mapping[str, Node]  # root-relative path ("lib/x/libc.so.6") -> node


def resolve(tree: Tree, path: str) -> list[str]:
    """The paths `path` goes through to a regular file of `tree`, the file last; [] when it leads nowhere."""
    chain: list[str] = []
    path = posixpath.normpath(path.lstrip("/"))
    for _ in range(MAX_LINKS):  # (a directory that is a link is not followed: Debian's packages have none)
        node = tree.get(path)
        if node is None:
            return []
        chain.append(path)
        if node.link is None:
            return chain
        target = node.link if node.link.startswith("/") else posixpath.join(posixpath.dirname(path), node.link)
        path = posixpath.normpath(target.lstrip("/"))
    return []


def library_closure(roots: Iterable[str], tree: Tree) -> dict[str, Node]:
    """Every path of `tree` the programs `roots` need to run: themselves, their dynamic loader and each
    library their DT_NEEDED entries reach, transitively, with the symlinks the loader goes through.

    Raises MissingDependency naming the soname and who needs it, or ElfError for a file of another
    machine than the first root's (a library of the wrong architecture would not load)."""
    taken: dict[str, Node] = {}
    first: Elf | None = None
    queue = [(root, "the roots") for root in roots]
    seen: set[str] = set()
    while queue:
        path, needed_by = queue.pop(0)
        chain = resolve(tree, path)
        if not chain:
            raise MissingDependency(f"/{path.lstrip('/')}", needed_by, ["the packages"])
        for step in chain:
            taken[step] = tree[step]
        real = chain[-1]
        if real in seen:
            continue
        seen.add(real)
        elf = parse(tree[real].data, real)
        first = first or elf
        if (elf.bits, elf.machine) != (first.bits, first.machine):
            raise ElfError(f"{real} is a {elf.bits}-bit ELF for machine {elf.machine}, but the programs are "
                           f"{first.bits}-bit for machine {first.machine}")
        if elf.interpreter:
            queue.append((elf.interpreter, real))
        for soname in elf.needed:
            dirs = elf.library_dirs()
            found = next((posixpath.join(d, soname) for d in dirs if resolve(tree, posixpath.join(d, soname))), None)
            if found is None:
                raise MissingDependency(soname, real, (f"/{d}" for d in dirs))
            queue.append((found, real))
    return dict(sorted(taken.items()))


# --- kernel modules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    path: str  # in the tree
    name: str
    depends: tuple[str, ...]
    vermagic: str


def modinfo(data: bytes, name: str = "the module") -> dict[str, str]:
    """A kernel module's `.modinfo` as key -> value (the first of a repeated key, like modinfo -F)."""
    elf = parse(data, name)
    if ".modinfo" not in elf.sections:
        raise ElfError(f"{name} has no .modinfo section: it is not a kernel module")
    info: dict[str, str] = {}
    for item in elf.sections[".modinfo"].split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, value)
    return info


def module(path: str, data: bytes) -> Module:
    info = modinfo(data, path)
    # The kernel knows a module by its name with "_" for "-" (xen-privcmd.ko is xen_privcmd); `depends` may
    # spell it either way.
    name = (info.get("name") or posixpath.basename(path).removesuffix(".ko")).replace("-", "_")
    depends = tuple(d.replace("-", "_") for d in info.get("depends", "").split(",") if d)
    return Module(path, name, depends, info.get("vermagic", ""))


def load_order(wanted: Iterable[str], modules: Mapping[str, Module], release: str) -> list[Module]:
    """`wanted` and every module they depend on, each after what it depends on (what insmod needs).

    Raises MissingDependency for a module the kernel's package lacks (built in, or misspelled), and
    ElfError for a module built for another kernel release than `release`."""
    order: list[Module] = []
    state: dict[str, str] = {}

    def visit(name: str, needed_by: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ElfError(f"the modules {name} and {needed_by} depend on each other")
        if name not in modules:
            raise MissingDependency(f"module {name}", needed_by, [f"the {release} package"])
        found = modules[name]
        built_for = (found.vermagic.split() or ["no kernel release"])[0]
        if built_for != release:
            raise ElfError(f"{found.path} is built for {built_for}, not {release}")
        state[name] = "visiting"
        for dependency in found.depends:
            visit(dependency, name)
        state[name] = "done"
        order.append(found)

    for name in wanted:
        visit(name.replace("-", "_"), "the target")
    return order
