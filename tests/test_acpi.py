"""An ACPI dom0: Xen (built with CONFIG_ACPI) boots through UEFI on ACPI and hands dom0 tables of its
own making; they must follow the bindings, and differ from the machine's exactly where Xen rewrites."""

from __future__ import annotations

import pytest
from probing import probed

from harness import checks
from harness.boot import BootSession
from harness.findings import Severity, failures, render_table
from harness.validate import acpi_input, dt

pytestmark = [pytest.mark.boot, pytest.mark.requires("acpi")]


def test_xen_booted_on_acpi(booted: BootSession) -> None:
    result = probed(booted)
    assert result.claims.boot == "ACPI", f"Xen's firmware tables: expected ACPI, found {result.claims.boot}"
    assert "firmware" in result.milestones, f"no UEFI firmware seen before Xen: {list(result.milestones)}"
    assert result.claims.event_ppi is not None, "Xen allocated no event channel PPI for dom0"


def test_dom0_acpi_tables_follow_the_bindings(booted: BootSession) -> None:
    """STAO, FADT flags, MADT GICCs = dom0's vCPUs, XSDT, checksums; rewritten vs passed through."""
    probed(booted)
    tables = acpi_input.read(booted.artifacts / "dom0-acpi")
    assert acpi_input.read(booted.artifacts / "host-acpi").tables, "the machine's own tables are missing"
    assert {"FACP", "APIC", "STAO", "GTDT", "DSDT", "SPCR"} <= set(tables.tables), sorted(tables.tables)
    assert tables.rsdp is not None and "XSDT" in tables.tables, "the RSDP and the XSDT were not captured"
    findings = [f for f in booted.result.findings if f.rule.startswith("acpi.")]  # what the boot found
    assert any(f.rule == "acpi.host.summary" for f in findings), "the boot did not compare with the host's tables"
    bad = failures(findings)
    assert not bad, f"dom0's ACPI tables:\n{render_table(bad)}"
    # Xen 4.17's RSDP v1 checksum defect is reported as known, with its reason, not hidden.
    known = [f for f in findings if f.severity is Severity.KNOWN]
    assert [f.rule for f in known] == ["acpi.rsdp.checksum.v1"], render_table(findings)
    assert "acpi_create_rsdp" in known[0].note
    summary = next(f for f in findings if f.rule == "acpi.host.summary")
    assert "new STAO" in summary.found and "identical" in summary.found, summary.found


def test_dom0_minimal_device_tree(booted: BootSession) -> None:
    """Xen gives an ACPI dom0 a DT with only /hypervisor { compatible; uefi { xen,uefi-* } }."""
    result = probed(booted)
    view = result.views["dom0"]
    assert view.fdt, "dom0 has no /sys/firmware/fdt"
    assert not view.live_tree, "an ACPI dom0 should have no /proc/device-tree"
    findings = dt.validate_dtb(view.fdt, "acpi-dom0", checks.expectation(result.claims))
    assert not failures(findings), render_table(failures(findings))
