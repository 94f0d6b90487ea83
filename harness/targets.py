"""Targets: one labgrid environment YAML per target under targets/, plus a `harness:` section.

The labgrid part (drivers, strategy, tools) says how to power and talk to the target; the
`harness:` part says everything else that differs between targets: which image profile it boots,
how the boot plan is made, dom0's command line, what it can do (capabilities that tests ask for,
never target names) and its deadlines.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def target_path(name: str, directory: Path = TARGETS_DIR) -> Path:
    names = target_names(directory)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown target {name!r}: choose one of {', '.join(names)}.{hint}")
    return directory / f"{name}.yaml"


def expand(spec: str, directory: Path = TARGETS_DIR) -> list[str]:
    """`qemu-virt,qemu-a15` or `all` -> target names, each checked."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return target_names(directory)
    for name in names:
        target_path(name, directory)
    if not names:
        raise UsageError("--target is empty: name a target, e.g. --target=qemu-virt, or --target=all.")
    return names


@dataclass(frozen=True)
class TargetSpec:
    """The `harness:` section of a target YAML."""

    name: str
    path: Path
    images: str  # image profile in images/lock.json
    boot: str  # how the boot plan is made: "qemu-loader"
    dom0_cmdline: str
    capabilities: frozenset[str]
    deadlines: dict = field(default_factory=dict)
    description: str = ""

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def load_spec(name: str, directory: Path = TARGETS_DIR) -> TargetSpec:
    path = target_path(name, directory)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        section = data["harness"]
        return TargetSpec(
            name=name,
            path=path,
            images=section["images"],
            boot=section.get("boot", "qemu-loader"),
            dom0_cmdline=section["dom0"]["cmdline"],
            capabilities=frozenset(section.get("capabilities", [])),
            deadlines=section.get("deadlines", {}),
            description=section.get("description", ""),
        )
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path} is not a valid target ({exc!r}): compare it with targets/qemu-virt.yaml.") from exc
