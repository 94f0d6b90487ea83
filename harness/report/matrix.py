"""The Xen x Linux version matrix: one cell per boot, what each witness said of dom0's grant table, event PPI and
extended regions, which regions dom0's kernel used for its grant and unpopulated mappings, and the verdict.

A cell is made from a result record (the dict result.json holds), so the boot writes it into result.json and
`harness matrix DIR` remakes it for a record that has none. What a witness did not say is NOT_STATED, never a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnusableInput

NOT_STATED = "not stated"  # the witness was asked and said nothing of it
NOT_RECORDED = "not recorded"  # the boot never got that far, or a harness from before it was kept
WITNESSES = {"xen": "Xen's log", "dt": "dom0's tree", "kernel": "dom0's kernel"}
RELEASE = re.compile(r"^(\d+)\.(\d+)")
# /proc/iomem names (harness.witnesses.KernelFacts.iomem_xen): Linux requests the extended regions it found as
# one Xen resource ('Xen unused space' in arch/arm/xen/enlighten.c, 'Xen unallocated space' in some releases'
# drivers/xen/unpopulated-alloc.c), and unpopulated-alloc takes 'Xen scratch' pages out of it for grant and
# foreign mappings.
IOMEM_LINE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")
IOMEM_EXTENDED = re.compile(r"unused|unallocated", re.IGNORECASE)
IOMEM_UNPOPULATED = re.compile(r"scratch|unpopulated", re.IGNORECASE)
IOMEM_GRANT = re.compile(r"grant", re.IGNORECASE)
KERNEL_RANGE = re.compile(r"0x[0-9a-fA-F]+\s*-\s*(?:0x)?[0-9a-fA-F]+")


def x_y(release: str | None) -> str | None:
    """'6.1.0-56-cloud-arm64' -> '6.1', '4.20.1-pre' -> '4.20'."""
    m = RELEASE.match(release or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _iomem(lines: list[str], kind: re.Pattern) -> list[str]:
    """Regions (end exclusive, as the other witnesses say them) of the /proc/iomem lines whose name is `kind`."""
    out = []
    for line in lines:
        if (m := IOMEM_LINE.match(line)) and kind.search(m.group(3)):
            out.append(f"{int(m.group(1), 16):#x}-{int(m.group(2), 16) + 1:#x}")
    return out


def _stated(found: list[str] | str | int | None) -> list[str] | str | int:
    return NOT_STATED if found is None or found == [] else found


def _xen_extended(xen: dict) -> list[str] | str:
    if regions := (xen.get("extended") or {}).get("d0"):
        return regions
    return "none (32-bit dom0)" if "d0" in (xen.get("no_extended_32bit") or []) else NOT_STATED


def _tree(dom0: dict) -> dict:
    """The hypervisor node's word: reg[0] the grant table, the rest extended regions ('none' when it has none)."""
    if "hypervisor_node" not in dom0:
        return dict.fromkeys(("grant", "event_ppi", "extended"), NOT_RECORDED)
    if (node := dom0["hypervisor_node"]) is None:
        return dict.fromkeys(("grant", "event_ppi", "extended"), "no hypervisor node")
    reg = node.get("reg") or []
    return {"grant": reg[0] if reg else NOT_STATED, "event_ppi": _stated(node.get("event_intid")),
            "extended": reg[1:] or "none"}


def cell(record: dict) -> dict:
    """The matrix cell of one boot's record (dom0's view: the guest named dom0)."""
    xen = record.get("xen") or {}
    dom0 = (record.get("guests") or {}).get("dom0") or {}
    kernel = ((record.get("witnesses") or {}).get("dom0") or {}).get("kernel") or {}
    recorded = "iomem_xen" in kernel  # a boot before the harness kept /proc/iomem's Xen lines: not recorded

    def iomem(kind: re.Pattern) -> list[str] | str:
        return _stated(_iomem(kernel["iomem_xen"], kind)) if recorded else NOT_RECORDED

    said_grant = [r for line in dom0.get("xen_lines") or [] if IOMEM_GRANT.search(line)
                  for r in KERNEL_RANGE.findall(line)]
    kernel_grant = said_grant or iomem(IOMEM_GRANT)
    return {
        "target": record.get("target"),
        "xen": {"version": xen.get("version"), "release": xen.get("release")},
        "linux": {"version": x_y(dom0.get("kernel")), "release": dom0.get("kernel")},
        "witnesses": {
            "xen": {"grant": _stated(xen.get("grant")), "event_ppi": _stated(xen.get("event_ppi")),
                    "extended": _xen_extended(xen)},
            "dt": _tree(dom0),
            "kernel": {"grant": kernel_grant, "event_ppi": _stated((dom0.get("event_irq") or {}).get("hwirq")),
                       "extended": iomem(IOMEM_EXTENDED)},
        },
        "kernel_used": {"grant": kernel_grant, "unpopulated": iomem(IOMEM_UNPOPULATED)},
        "verdict": record.get("verdict"),
    }


def _version_key(version: str | None) -> tuple:
    """Numeric order ('4.9' before '4.17'); an unknown version last."""
    return (1, ()) if not version else (0, tuple(int(n) for n in re.findall(r"\d+", version)))


def sort_cells(cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda c: (_version_key(c["xen"]["version"]), _version_key(c["linux"]["version"]),
                                        _version_key(c["xen"]["release"]), _version_key(c["linux"]["release"]),
                                        c["target"] or ""))


def _show(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "?" if value is None else str(value)


def table(cells: list[dict]) -> str:
    """The markdown table: per cell one row per witness, and one for what the kernel used."""
    rows = ["| Xen | Linux | target | witness | grant table | event PPI | extended regions | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for c in sort_cells(cells):
        xen = c["xen"]["release"] or c["xen"]["version"] or "?"
        linux = f"{c['linux']['version'] or '?'} ({c['linux']['release'] or '?'})"
        head, verdict = [xen, linux, c["target"] or "?"], c["verdict"] or "?"
        for key, title in WITNESSES.items():
            said = c["witnesses"][key]
            rows.append("| " + " | ".join([*head, title, _show(said["grant"]), _show(said["event_ppi"]),
                                           _show(said["extended"]), verdict]) + " |")
            head, verdict = ["", "", ""], ""
        used = c["kernel_used"]
        rows.append("| " + " | ".join([*head, "kernel used", f"grant: {_show(used['grant'])}", "",
                                       f"unpopulated: {_show(used['unpopulated'])}", ""]) + " |")
    return "\n".join(rows)


@dataclass
class Found:
    """The cells of the result.json files below a directory, and the files left out, each with why."""

    cells: list[tuple[Path, dict]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # one sentence each (UnusableInput's)


def collect(directory: Path) -> Found:
    """Every result.json below `directory`: its path and the cell the boot recorded (else one made now). A file that
    is no harness result.json (a stray one, an old harness's) is left out, saying why, not the whole table."""
    from ..result import load  # result.py builds cells with this module: load it only when reading files

    found = Found()
    for path in sorted(Path(directory).rglob("result.json")):
        try:
            record = load(path)
        except UnusableInput as exc:
            found.left_out.append(str(exc))
            continue
        found.cells.append((path, record.get("matrix") or cell(record)))
    return found


def write(directory: Path) -> Found:
    """matrix.md and matrix.json in `directory` over every result.json below it (nothing written when none)."""
    found = collect(directory)
    if found.cells:
        cells = sort_cells([c | {"result": str(p.relative_to(directory))} for p, c in found.cells])
        (directory / "matrix.md").write_text(table(cells) + "\n")
        (directory / "matrix.json").write_text(json.dumps(cells, indent=2) + "\n")
    return found
