"""Findings are capped per rule: the first few listed, the rest counted in one finding that keeps their gravity."""

from __future__ import annotations

from harness.findings import Finding, Severity, capped, failures


def finding(rule: str, i: int, severity: Severity = Severity.INFO) -> Finding:
    return Finding(rule, severity, f"where {i}", "expected", f"found {i}")


def test_each_rule_keeps_its_first_findings_and_counts_the_rest_in_place():
    mixed = [finding("a", i) for i in range(4)] + [finding("b", 0)] + [finding("a", 4, Severity.WARNING)]
    out = capped(mixed, limit=2)
    assert [(f.rule, f.where) for f in out] == [
        ("a", "where 0"), ("a", "where 1"), ("a", "where 2 ... where 4"), ("b", "where 0")]
    summary = out[2]
    assert summary.found == "3 more like them, not listed"
    assert summary.severity is Severity.WARNING and failures(out) == [summary]  # a capped failure still fails


def test_under_the_limit_nothing_changes():
    few = [finding("a", 0), finding("b", 1), finding("a", 2)]
    assert capped(few, limit=2) == few
    assert capped([finding("a", 0), finding("a", 1), finding("a", 2)], limit=2)[-1].where == "where 2"
