"""`harness diff`: what changed for dom0 between two boots, section by section, from their result.json.

1. the hypervisor node dom0 got (compatible, every reg region, interrupts);
2. dom0's /proc/iomem entries that name Xen;
3. Xen's claims in its log (version, grant table, event PPI, extended regions, dom0's memory banks and vCPUs);
4. dom0's kernel: its release, 'Linux version' line, its events interrupt;
5. each line dom0's kernel printed about Xen, in its own wording.

Every section is flattened into field -> value; a field one boot has and the other not is ABSENT there, and a
section one result.json does not hold (its boot never got that far, or an older harness did not keep it) is one
NOT_RECORDED change.
Lines of the kernel's are paired by their wording with the numbers taken out, so 'Xen 4.17 support found' ->
'Xen 4.20 support found' is one change, not two.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .matrix import NOT_RECORDED, x_y

ABSENT = "absent"
NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
SECTIONS = ("hypervisor node", "/proc/iomem (Xen)", "Xen's claims", "dom0's kernel", "dom0's kernel says")


@dataclass(frozen=True)
class Change:
    section: str
    field: str
    left: str
    right: str


def _listed(prefix: str, values: list | None, names: dict[int, str] | None = None) -> dict[str, str]:
    if values is None:
        return {}
    names = names or {}
    return {f"{prefix}[{i}]" + (f" ({names[i]})" if i in names else ""): str(v) for i, v in enumerate(values)}


def _keyed_lines(lines: list[str], strip=lambda s: s) -> dict[str, str]:
    """Lines keyed by their wording without numbers (with a count when a wording repeats)."""
    out: dict[str, str] = {}
    for line in lines:
        key = NUMBERS.sub("N", strip(line)).strip()
        n, unique = 1, key
        while unique in out:
            n += 1
            unique = f"{key} #{n}"
        out[unique] = line.strip()
    return out


def facts(record: dict) -> dict[str, dict[str, str] | None]:
    """Each section's fields for dom0 (None: the boot did not record the section)."""
    dom0 = (record.get("guests") or {}).get("dom0") or {}
    witness = (record.get("witnesses") or {}).get("dom0") or {}
    build, kernel = witness.get("xen") or {}, witness.get("kernel") or {}
    xen = record.get("xen")
    node: dict[str, str] | None = None
    if "hypervisor_node" in dom0:
        n = dom0["hypervisor_node"]
        node = {"node": ABSENT} if n is None else {
            "path": n.get("path"), "compatible": ", ".join(n.get("compatible") or []) or ABSENT,
            **_listed("reg", n.get("reg"), {0: "grant table"} | {i: "extended region"
                                                                for i in range(1, len(n.get("reg") or []))}),
            "interrupts": " ".join(map(str, n["interrupts"])) if n.get("interrupts") is not None else ABSENT,
            "event INTID": str(n.get("event_intid")),
        }
    iomem = None
    if "iomem_xen" in kernel:  # paired by name: the same entry moved shows as one change
        iomem = _keyed_lines(kernel["iomem_xen"], lambda line: line.partition(" : ")[2])
    claims = None
    if xen is not None or build:
        xen = xen or {}
        claims = {
            "version": str(xen.get("release") or xen.get("version")), "booted on": str(xen.get("boot")),
            "grant table": str(xen.get("grant")), "event PPI": str(xen.get("event_ppi")),
            **_listed("d0 extended region", (xen.get("extended") or {}).get("d0") or []),
            **_listed("dom0 memory bank", build.get("memory")),
            "dom0 memory (MB)": str(build.get("total_mb")), "dom0 vCPUs": str(build.get("vcpus")),
        }
    linux = None
    if dom0:
        irq = dom0.get("event_irq") or {}
        linux = {
            "release": str(dom0.get("kernel")), "Linux version": str(dom0.get("linux_version", NOT_RECORDED)),
            "/sys/hypervisor version": str(dom0.get("hypervisor_version")),
            "events interrupt": f"hwirq {irq.get('hwirq')} on {irq.get('chip')}, {irq.get('type')}" if irq else ABSENT,
        }
    says = _keyed_lines(dom0["xen_lines"]) if "xen_lines" in dom0 else None
    return dict(zip(SECTIONS, (node, iomem, claims, linux, says), strict=True))


def compare(left: dict, right: dict) -> list[Change]:
    """Every field whose value differs between the two records, section by section."""
    a, b = facts(left), facts(right)
    changes = []
    for section in SECTIONS:
        la, lb = a[section], b[section]
        if la is None and lb is None:
            continue
        if la is None or lb is None:  # one boot never got that far, or its harness did not keep this section
            changes.append(Change(section, "recorded", NOT_RECORDED if la is None else "yes",
                                  NOT_RECORDED if lb is None else "yes"))
            continue
        fields = list(dict.fromkeys([*(la or {}), *(lb or {})]))
        for name in fields:
            va, vb = la.get(name, ABSENT), lb.get(name, ABSENT)
            if va != vb:
                changes.append(Change(section, name, va, vb))
    return changes


def describe(record: dict) -> dict[str, str | None]:
    """Which boot a record is: target, Xen release, Linux release and X.Y, verdict."""
    xen = record.get("xen") or {}
    release = ((record.get("guests") or {}).get("dom0") or {}).get("kernel")
    return {"target": record.get("target"), "xen": xen.get("release") or xen.get("version"), "linux": release,
            "linux_version": x_y(release), "verdict": record.get("verdict")}


def render(left: tuple[Path, dict], right: tuple[Path, dict], changes: list[Change]) -> str:
    lines = []
    for side, (path, record) in (("left ", left), ("right", right)):
        d = describe(record)
        lines.append(f"{side}: {d['target']}  Xen {d['xen'] or '?'}  Linux {d['linux'] or '?'}  {d['verdict']}  "
                     f"({path})")
    if not changes:
        return "\n".join([*lines, "", "no difference for dom0"])
    section = None
    for c in changes:
        if c.section != section:
            section = c.section
            lines += ["", section]
        lines.append(f"  {c.field}: {c.left} → {c.right}")
    lines += ["", f"{len(changes)} difference{'s' if len(changes) != 1 else ''} for dom0"]
    return "\n".join(lines)


def to_json(left: tuple[Path, dict], right: tuple[Path, dict], changes: list[Change]) -> dict:
    return {"left": {"path": str(left[0]), **describe(left[1])}, "right": {"path": str(right[0]), **describe(right[1])},
            "same": not changes, "differences": [asdict(c) for c in changes]}
