"""The one record every check and validator returns: a finding with a stable rule id.

A finding says where it was seen and what was expected versus what was found, so a
report can be read without the source. Severity decides whether it fails a run:
``error`` and ``warning`` do; ``known`` (a documented upstream defect) and ``info`` do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    KNOWN = "known"  # matches a documented upstream defect: reported with its reason, never fails a run
    INFO = "info"


FAILING = frozenset({Severity.ERROR, Severity.WARNING})


@dataclass(frozen=True)
class Finding:
    rule: str  # stable id, e.g. "dt.compatible.order"
    severity: Severity
    where: str  # e.g. "/hypervisor reg[1]" or "FACP"
    expected: str
    found: str
    note: str = ""  # why it matters, or for a known defect: the reason it is known

    @property
    def fails(self) -> bool:
        return self.severity in FAILING

    def __str__(self) -> str:
        text = f"[{self.rule}] {self.where}: expected {self.expected}, found {self.found}"
        return f"{text} ({self.note})" if self.note else text

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


MAX_PER_RULE = 5  # findings listed per rule; the rest are counted in one more finding
_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.KNOWN: 2, Severity.INFO: 3}


def capped(findings: Iterable[Finding], limit: int = MAX_PER_RULE) -> list[Finding]:
    """The first `limit` findings of each rule, in order; after them, one finding that counts the rest of that
    rule (where the first and last were, the gravest severity), so a hostile input cannot flood a report."""
    kept: list[Finding] = []
    seen: dict[str, int] = {}
    rest: dict[str, tuple[int, Finding, Finding, Severity]] = {}  # rule -> (count, first, last, gravest)
    for f in findings:
        seen[f.rule] = seen.get(f.rule, 0) + 1
        if seen[f.rule] <= limit:
            kept.append(f)
            continue
        count, first, _, gravest = rest.get(f.rule, (0, f, f, f.severity))
        rest[f.rule] = (count + 1, first, f, min(gravest, f.severity, key=_RANK.__getitem__))
    last_kept = {f.rule: i for i, f in enumerate(kept)}
    out: list[Finding] = []
    for i, f in enumerate(kept):
        out.append(f)
        if f.rule in rest and last_kept[f.rule] == i:
            count, first, last, gravest = rest[f.rule]
            span = first.where if count == 1 else f"{first.where} ... {last.where}"
            out.append(Finding(f.rule, gravest, span, f"what the {limit} {f.rule} findings above expected",
                               f"{count} more like them, not listed"))
    return out


def failures(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.fails]


def render_table(findings: Iterable[Finding]) -> str:
    """A fixed-width table: severity, rule, where, expected, found (and a note line when present)."""
    rows = list(findings)
    if not rows:
        return "no findings"
    head = ("severity", "rule", "where", "expected", "found")
    cells = [(f.severity.value, f.rule, f.where, f.expected, f.found) for f in rows]
    widths = [min(48, max(len(str(r[i])) for r in [head, *cells])) for i in range(len(head) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + "  " + head[-1]]
    for f, row in zip(rows, cells, strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
        if f.note:
            lines.append(" " * (widths[0] + 2) + f"note: {f.note}")
    return "\n".join(lines)

