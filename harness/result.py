"""The record of one boot, `BootResult`, and result.json: its schema version and every field, here.

Each stage of a boot adds to the record (images, milestones, Xen's claims, what each guest saw,
findings); a failure or a lab error is recorded once, through `record_failure` / `record_error`, and
the verdict is decided from them at the end. `FIELDS` documents result.json; a unit test keeps it
and `to_dict` in step.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import data, inputs
from .diagnose import Diagnosis
from .errors import HarnessError, UnusableInput
from .findings import Finding, failures
from .images import Artifact
from .monitor import Failure, Verdict
from .report.matrix import cell

SCHEMA_VERSION = 2  # bump when a field changes meaning or goes away; adding one is compatible

FIELDS: dict[str, str] = {
    "schema": f"this document's schema version ({SCHEMA_VERSION})",
    "harness": "the harness that ran the boot: {version, commit}",
    "target": "the target's name (a file in targets/, or the stem of the YAML given as --target)",
    "host": "the machine that ran the boot (its host name)",
    "started": "UTC time the boot started, ISO 8601",
    "verdict": "passed | failed | crashed | hung | infrastructure-error | untestable (the build cannot be booted)",
    "artifacts": "the directory holding this file, console.log, the DTBs and tables",
    "images": "each file booted: {name: {name, path, sha256, origin}}; origin is 'debian PACKAGE VERSION', "
              "'user' or 'built …'",
    "lab": "what ran the machine: {qemu: QEMU's version line} (empty for a board without QEMU)",
    "cmdlines": "the command lines booted: {xen: Xen's, dom0: dom0's, <domU name>: each domU's}",
    "milestones": "{milestone key: seconds since power-on}; guest milestones are '<domN>:<key>'",
    "xen": "what Xen's console claimed: {version, release, boot, grant, event_ppi, extended: {dN: [regions]}, "
           "no_extended_32bit: [dN Xen gave none, being 32-bit], cmdline, ring_start, complaints}",
    "guests": "what each guest saw: {name: {kernel (uname -r), linux_version (its 'Linux version …' line), "
              "xen_lines (its log's lines about Xen, without times), hypervisor_node: {path, compatible, reg: "
              "[regions, the grant table first], interrupts: [cells], event_intid} (null without one), "
              "hypervisor_type, hypervisor_version, event_irq: {irq, hwirq, chip, type, count, count_later}, "
              "probe_seconds}}",
    "witnesses": "what Xen's domain builder gave each guest, from three sides: {name: {xen: {memory: "
                 "[banks], total_mb, initrd, vcpus, gic, timer: {phys, virt}}, dt: {memory, cpus, gic: {compatible, "
                 "reg}, timer_intids, bootargs, initrd}, kernel: {memory_kb, memtotal_kb, system_ram, cpus_up, "
                 "cpus_online, timer, timer_hwirq, cmdline, initrd_unpacked, initrd_freed_kb, iomem_xen: "
                 "/proc/iomem's lines naming Xen, as printed}, host_diff: the file "
                 "in the artifacts with dom0's tree vs the host's, each difference judged (null for a domU), "
                 "efi_memory: an ACPI dom0's EFI memory map, ['type start-end'] (null on a device tree)}}",
    "findings": "every check's findings: [{rule, severity, where, expected, found, note}]",
    "failure": "why the boot did not pass, when it did not: {verdict, stage, signature, description, detail, "
               "evidence: [console lines], first_sign, decided} (seconds since power-on)",
    "error": "a lab or input problem that stopped the boot, as one sentence ('' when none)",
    "timings": "wall seconds of the harness's steps: {boot, probe}",
    "diagnosis": "where a quiet or failed machine was, when the harness asked: {method, stage, conclusion, "
                 "signature, vcpus: [each vCPU's latest {cpu, pc, el, mode, t, symbol}, from QEMU or, on a board, "
                 "Xen's 'd' dump], samples, xen_answered, "
                 "xen_registers: [{who, cpu, pc, el, symbol}], dumps: [debug-key dump files, relative to artifacts], "
                 "quiet_since, seconds_from_quiet}; null when it did not ask",
    "toolstack": "toolstack targets: what dom0 and the domU xl created said: {xenstore_dom0, xl_info, xl_list, "
                 "xen_bus_dom0, backends, disk_device, disk_sha256, disk_irq: {row, irq, hwirq, chip, before, after}, "
                 "disk_seconds, xl_create, domu_devices, xenbus: {device end: state}, pv_disk_size, "
                 "pv_disk_sha256_dom0, pv_disk_sha256_domu, pv_read_seconds, written_sha256_domu, "
                 "written_sha256_dom0, domu_events and dom0_events: {before, after: {row: count}}, "
                 "ping_domu_to_dom0, ping_dom0_to_domu}; null on other targets",
    "matrix": "this boot's cell of the Xen x Linux matrix (harness/report/matrix.py): {target, xen: {version, "
              "release}, linux: {version (X.Y), release}, witnesses: {xen, dt, kernel: {grant, event_ppi, extended}}, "
              "kernel_used: {grant, unpopulated}, verdict}; what a witness did not say is 'not stated'",
}


@dataclass
class BootResult:
    target: str
    artifacts: Path
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    verdict: Verdict | None = None
    images: dict[str, Artifact] = field(default_factory=dict)
    lab: dict[str, str] = field(default_factory=dict)
    cmdlines: dict[str, str] = field(default_factory=dict)
    milestones: dict[str, float] = field(default_factory=dict)  # key -> seconds since power-on
    claims: Any = None  # xenlog.XenClaims
    views: dict[str, Any] = field(default_factory=dict)  # guest name -> guest.GuestView
    witnesses: dict[str, Any] = field(default_factory=dict)  # guest name -> witnesses.Witness
    findings: list[Finding] = field(default_factory=list)
    failure: Failure | None = None
    error: str = ""  # a lab or input problem, as one sentence
    error_verdict: Verdict = Verdict.INFRASTRUCTURE  # what `error` makes of the boot
    timings: dict[str, float] = field(default_factory=dict)
    diagnosis: Diagnosis | None = None  # where the machine was when it went quiet or failed
    toolstack: Any = None  # toolstack.ToolstackReport (toolstack targets)

    def record_failure(self, failure: Failure) -> Failure:
        """The boot's failure: the first one recorded is the one that counts (what followed is its consequence)."""
        if self.failure is None:
            self.failure = failure
        return self.failure

    def record_error(self, exc: HarnessError | str, untestable: bool = False) -> None:
        """A problem that is not the guests' doing: the lab's, or a build that cannot be booted at all."""
        if not self.error:
            self.error = str(exc)
            untestable = untestable or isinstance(exc, UnusableInput)
            self.error_verdict = Verdict.UNTESTABLE if untestable else Verdict.INFRASTRUCTURE

    def decide(self) -> Verdict:
        if self.error:
            self.verdict = self.error_verdict
        elif self.failure:
            self.verdict = self.failure.verdict
        else:
            self.verdict = Verdict.FAILED if failures(self.findings) else Verdict.PASSED
        return self.verdict

    def to_dict(self) -> dict:
        record = {
            "schema": SCHEMA_VERSION,
            "harness": {"version": data.version(), "commit": data.commit()},
            "target": self.target,
            "host": platform.node(),
            "started": self.started,
            "verdict": str(self.verdict) if self.verdict else None,
            "artifacts": str(self.artifacts),
            "images": {name: a.to_dict() for name, a in self.images.items()},
            "lab": self.lab,
            "cmdlines": self.cmdlines,
            "milestones": self.milestones,
            "xen": self.claims.to_dict() if self.claims else None,
            "guests": {name: v.summary() for name, v in self.views.items()},
            "witnesses": {name: w.to_dict() for name, w in self.witnesses.items()},
            "findings": [f.to_dict() for f in self.findings],
            "failure": self.failure.to_dict() if self.failure else None,
            "error": self.error,
            "timings": self.timings,
            "diagnosis": self.diagnosis.to_dict() if self.diagnosis else None,
            "toolstack": self.toolstack.to_dict() if self.toolstack else None,
        }
        return record | {"matrix": cell(record)}

    def write(self) -> Path:
        path = self.artifacts / "result.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load(path: Path) -> dict:
    """A result.json a boot wrote (`path` the file, or the artifacts directory holding it), or one sentence saying
    why it cannot be one."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    raw = inputs.read_file(path, inputs.RESULT_JSON)
    hint = inputs.RESULT_JSON.hint
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UnusableInput(f"{path} is not JSON ({str(exc).splitlines()[0][:80]}): {hint}.") from None
    missing = [key for key in ("schema", "target", "verdict") if not isinstance(record, dict) or key not in record]
    if missing:
        raise UnusableInput(f"{path} is not a harness result.json (it has no {', '.join(missing)}): {hint}.")
    if not isinstance(record["schema"], int) or record["schema"] > SCHEMA_VERSION:
        raise UnusableInput(f"{path} has schema {record['schema']!r}, which this harness (schema {SCHEMA_VERSION}) "
                            "cannot read: compare it with the harness that wrote it.")
    return record
