"""Device trees as Linux shows them: a DTB flattened to paths and properties, and laid out as /proc/device-tree."""

from __future__ import annotations

import pathlib

import libfdt


def flatten(blob: bytes) -> dict[str, dict[str, bytes]]:
    """path -> {property: value} of a DTB, read with libfdt."""
    fdt = libfdt.FdtRo(blob)
    out: dict[str, dict[str, bytes]] = {}
    stack = [0]
    while stack:
        off = stack.pop()
        props = {}
        p = fdt.first_property_offset(off, (libfdt.NOTFOUND,))
        while p >= 0:
            prop = fdt.get_property_by_offset(p)
            props[prop.name] = bytes(prop)
            p = fdt.next_property_offset(p, (libfdt.NOTFOUND,))
        out[fdt.get_path(off)] = props
        sub = fdt.first_subnode(off, (libfdt.NOTFOUND,))
        while sub >= 0:
            stack.append(sub)
            sub = fdt.next_subnode(sub, (libfdt.NOTFOUND,))
    return out


def write_procfs(blob: bytes, root: pathlib.Path) -> None:
    """Lay a DTB out the way Linux shows it in /proc/device-tree, `name` files included."""
    for path, props in flatten(blob).items():
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        base = path.rsplit("/", 1)[-1].split("@", 1)[0]
        (directory / "name").write_bytes(base.encode() + b"\0")
        for name, value in props.items():
            (directory / name).write_bytes(value)
