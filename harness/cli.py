"""`harness`: boot a target and report what it proved; check DTBs and ACPI tables; manage images.

Exit status of `harness boot` follows `git bisect run`: 0 good, 1 bad (a check failed, Xen or a
guest crashed or hung), 125 cannot test this build (a --xen/--kernel/--initrd file is missing or
not bootable), 128 the lab failed (QEMU missing, download failed: fix it, then go on bisecting).
`harness bisect` exits 0 complete (culprit proven), 3 inconclusive (skips hide it), 4 inconsistent (a revision gave
both results), 5 unreproducible (an end did not reproduce), 2 bad input, 128 the lab failed.
`harness check` exits 0 clean, 1 findings, 2 unusable input; `harness report` 0, or 1 when a class named by
--fail-on occurred, 2 for an unusable session or quarantine file; `harness triage` 0 passed, 1 not (an empty log
too: no output is a verdict), 2 when the log cannot be read (not a file, too big) or a pattern is no regex.
`harness diff` exits like diff(1): 0 the same for dom0, 1 different, 2 an input is no harness result.json;
`harness matrix` 0, or 2 when the directory holds no readable result.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from . import artifacts, data, inputs, targets
from .artifacts import run_dir_name, writable_dir
from .errors import HarnessError, InfrastructureError, UnusableInput, UsageError
from .findings import Finding, failures, render_table
from .monitor import BootFailure, Line, Verdict
from .report import session as session_summary

EXIT_GOOD, EXIT_BAD, EXIT_UNTESTABLE, EXIT_LAB = 0, 1, 125, 128
EXIT_CHECK_UNUSABLE = 2
# `git bisect run`'s contract: good, bad, skip this commit, stop bisecting (the lab needs a person).
BOOT_EXIT = {Verdict.PASSED: EXIT_GOOD, Verdict.UNTESTABLE: EXIT_UNTESTABLE, Verdict.INFRASTRUCTURE: EXIT_LAB}

log = logging.getLogger("harness")


# --- boot ---------------------------------------------------------------------------------------


def cmd_boot(args: argparse.Namespace) -> int:
    spec = targets.load_spec(args.target)
    changes = tweaks(args)
    if args.artifacts:
        run_dir = writable_dir(Path(args.artifacts).expanduser().resolve())
    else:
        run_dir = writable_dir(run_dir_name(writable_dir(artifacts.default_root(), f"${artifacts.ROOT_ENV}"),
                                            spec.name))
    from .boot import BootSession, milestone_title  # the lab, once the arguments are known to be good
    out = sys.stderr if args.json else sys.stdout
    names = {g.source: g.name for g in spec.every_guest}

    def progress(key: str, line: Line) -> None:
        print(f"  {line.t:7.2f} s  {milestone_title(key, names)}", file=out, flush=True)

    print(f"harness: booting {spec.name}: {spec.description}", file=out)
    print(f"harness: artifacts in {run_dir}", file=out, flush=True)
    session = BootSession(
        spec, run_dir, overrides={"xen": args.xen, "kernel": args.kernel, "initrd": args.initrd},
        on_milestone=progress, tweaks=changes, place=args.place, coordinator=args.lg_coordinator,
    )
    started = session_summary.now()
    session.on_diagnosis = lambda diag: print("\n".join(f"  {line}" for line in diag.report()), file=out, flush=True)
    where_on_sigquit(out)
    try:
        session.boot()
        print(f"harness: {session.spec.console_guest.name}'s shell is up; probing the guests", file=out, flush=True)
        session.check()
    except (BootFailure, HarnessError) as exc:
        print(f"harness: {exc}", file=out)
    finally:
        result = session.close()
        session_summary.write(run_dir, session_summary.boot_document(
            spec.name, sorted(spec.capabilities), run_dir, started, place=args.place,
            board=spec.name if spec.board else None, arch=spec.arch))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(summary(result, session.spec))
    return BOOT_EXIT.get(result.verdict, EXIT_BAD)


def where_on_sigquit(out) -> None:
    """Ctrl-\\ (SIGQUIT) during a boot: the next wait asks the machine where it is, prints it, and goes on."""
    import signal

    from .diagnose import WHERE_REQUESTED

    def asked(signum, frame) -> None:  # noqa: ARG001
        print("harness: asking the machine where it is (Ctrl-\\)", file=out, flush=True)
        WHERE_REQUESTED.set()

    signal.signal(signal.SIGQUIT, asked)


def tweaks(args: argparse.Namespace):
    """--xen-args/--dom0-args, over the injected fault's changes when --fault is given."""
    from .faults import BY_NAME
    from .tweaks import Tweaks

    if args.fault is not None and args.fault not in BY_NAME:
        raise UsageError(f"unknown fault {args.fault!r}: choose one of {', '.join(BY_NAME)}.")
    base = BY_NAME[args.fault].tweaks if args.fault else Tweaks()
    join = " ".join
    return dataclasses.replace(base, xen_args=join(filter(None, [base.xen_args, args.xen_args])),
                               dom0_args=join(filter(None, [base.dom0_args, args.dom0_args])))


def summary(result, spec) -> str:
    """The table `harness boot` ends with: milestones, then what each witness said, then the verdict and
    where the machine was when the harness asked (the diagnosis)."""
    from .boot import milestone_title
    from .validate import dt

    names = {g.source: g.name for g in spec.every_guest}
    lines = ["", f"{'milestone':34} {'since power-on':>14}"]
    lines += [f"{milestone_title(k, names):34} {t:12.2f} s" for k, t in result.milestones.items()]
    claims = result.claims
    if claims:
        lines += ["", f"{'Xen':34} {claims.release or '?'} on {claims.boot or 'Device Tree'}"]
    for g in spec.every_guest:
        view = result.views.get(g.name)
        node = dt.read_hypervisor_node(view.fdt) if view and view.fdt else None
        xen_grant = claims.grant if claims and g.domid == 0 else None
        xen_ext = ", ".join(str(r) for r in claims.extended.get(g.domid, [])) if claims else ""
        if xen_grant or node:
            lines.append(f"{g.name + ' grant table':34} Xen: {xen_grant or '-'}   DT: {node.grant if node else '-'}")
        if xen_ext or (node and node.extended):
            dt_ext = ", ".join(str(r) for r in node.extended) if node else "-"
            lines.append(f"{g.name + ' extended regions':34} Xen: {xen_ext or '-'}   DT: {dt_ext or '-'}")
        if view and view.event_irq:
            irq = view.event_irq
            ppi = claims.event_ppi if claims and g.domid == 0 else dt.GUEST_EVTCHN_PPI
            lines.append(f"{g.name + ' events interrupt':34} Xen: PPI {ppi}   {g.name}: irq {irq.irq}, hwirq "
                         f"{irq.hwirq} on {irq.chip}, {irq.trigger}, count {irq.total} -> {view.event_count_later}")
    if result.toolstack is not None:
        lines += result.toolstack.summary(spec.toolstack.domu.name)
        if witness := result.witnesses.get(g.name):
            lines += witness.report()
    if result.findings:
        lines += ["", render_table(result.findings)]
    lines.append("")
    verdict = str(result.verdict).upper()
    bad = failures(result.findings)
    if result.verdict is Verdict.UNTESTABLE:
        verdict += " (this build cannot be booted, so it was not tested)"
    elif result.error:
        verdict += " (the lab failed, not the build)"
    elif result.failure:
        verdict += f" ({result.failure.signature} after '{result.failure.stage}')"
    elif bad:
        verdict += f" ({len(bad)} failing finding{'s' if len(bad) > 1 else ''})"
    elif known := [f for f in result.findings if f.severity == "known"]:
        verdict += f" ({len(known)} known upstream issue{'s' if len(known) > 1 else ''}, reported above)"
    lines.append(f"verdict: {verdict}   artifacts: {result.artifacts}")
    if result.diagnosis is not None:  # its debug-key dumps are named relative to the artifacts just printed
        lines += result.diagnosis.report()
    return "\n".join(lines)


# --- bisect -------------------------------------------------------------------------------------


def cmd_bisect(args: argparse.Namespace) -> int:
    """Bisect a Xen git tree (--repo) or ordered prebuilt builds (--builds) on a target, with proof."""
    import signal

    from . import bisect
    from .faults import BY_NAME
    from .images import Images

    if bool(args.repo) == bool(args.builds):
        raise UsageError("give --repo XEN_SRC (a git checkout) or --builds DIR (prebuilt images), one of them.")
    if args.repo and not (args.good and args.bad):
        raise UsageError("--repo needs --good REV and --bad REV: a commit that boots and one that does not.")
    if args.builds and args.build_config:
        raise UsageError("--build-config goes with --repo: the images in --builds are built already.")
    config = build_config(args.build_config)
    spec = targets.load_spec(args.target)
    out = sys.stderr if args.json else sys.stdout
    images = Images()
    if args.repo:
        repo = Path(args.repo).expanduser().resolve()
        good, bad, count = bisect.check_range(repo, args.good, args.bad)
        if spec.arch != "arm64":
            raise UsageError(f"{spec.name} boots an {spec.arch} Xen, and the harness builds Xen for arm64 only: "
                             "choose an arm64 target, or bisect prebuilt images with --builds.")
        config = {**(spec.xen_build or {}), **config}
    else:
        found = bisect.pick_builds(bisect.builds_in(Path(args.builds).expanduser().resolve()), args.good, args.bad)
    root = Path(args.artifacts).expanduser().resolve() if args.artifacts else \
        run_dir_name(writable_dir(artifacts.default_root(), f"${artifacts.ROOT_ENV}"), f"bisect-{spec.name}")
    run_dir = writable_dir(root)
    flake = bisect.flake_hook(os.environ.get(bisect.FLAKE_ENV))
    if flake and flake[1] not in BY_NAME:
        raise UsageError(f"{bisect.FLAKE_ENV} names an unknown fault {flake[1]!r}: see harness/faults.py.")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed bisection cleans up as on Ctrl-C
    print(f"harness: bisecting on {spec.name}; artifacts in {run_dir}", file=out, flush=True)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    if args.repo:
        report = bisect.bisect_repo(spec, args.target, repo, good, bad, count, config, run_dir, images, flake,
                                    args.same_failure, say)
    else:
        report = bisect.bisect_builds(spec, args.target, found, run_dir, images, flake, args.same_failure, say)
    bisect.save(report, run_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(bisect.render_text(report))
    return report.exit_status


def build_config(items: list[str] | None) -> dict[str, str]:
    """--build-config K=V… as Kconfig items."""
    config = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--build-config {item!r} is not K=V: give a Kconfig item, e.g. CONFIG_DEBUG=y.")
        config[key if key.startswith("CONFIG_") else f"CONFIG_{key}"] = value
    return config


# --- check --------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    if args.kind == "rules":
        from .checks import RULES as BOOT_RULES
        from .toolstack import RULES as TOOLSTACK_RULES
        from .validate import acpi, dt, dtbuild
        from .witnesses import RULES as WITNESS_RULES

        rules = {**BOOT_RULES, **WITNESS_RULES, **TOOLSTACK_RULES, **dt.RULES, **dtbuild.RULES, **acpi.RULES}
        if args.json:
            print(json.dumps(rules, indent=2))
        else:
            for rule, text in rules.items():
                print(f"{rule:28} {text}")
        return EXIT_GOOD
    try:
        if args.kind == "dtb":
            from .validate import dt, dt_input

            data, reading = dt_input.read(Path(args.path))
            is_32bit = None if args.arch is None else args.arch == "arm32"  # None: as the tree's CPUs say
            expect = dt.Expectation(xen_version=args.xen_version, is_32bit=is_32bit)
            findings = dt.validate_dtb(data, profile=args.profile, expect=expect, label=args.path)
            arch = dt.Arch(args.arch, "given (--arch)") if args.arch else dt.domain_arch(data)
            readings = [reading]
            asked = {"profile": args.profile, "xen_version": args.xen_version,
                     "arch": {"name": arch.name, "why": arch.why}, "host": args.host}
            findings += build_findings(data, args)
            said = [f"domain: {arch.name} ({arch.why})"]
        else:
            from .validate import acpi, acpi_input

            guest = acpi_input.read(Path(args.path))
            host = acpi_input.read(Path(args.host)) if args.host else None
            findings = acpi.validate_tables(guest, host, acpi.Profile(vcpus=args.vcpus,
                                                                      hypervisor_id=args.hypervisor_id))
            readings = [t.reading for t in (guest, host) if t is not None]
            asked = {"host": args.host, "vcpus": args.vcpus, "hypervisor_id": args.hypervisor_id}
            said = []
    except UnusableInput as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_CHECK_UNUSABLE
    if args.json:  # what was read, what was asked (null: not given), then what was found
        print(json.dumps({"input": args.path, "read": [r.to_dict() for r in readings], **asked,
                          "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        print("\n".join([*map(str, readings), *said, "", render_table(findings)]))
    return EXIT_BAD if failures(findings) else EXIT_GOOD


def build_findings(data: bytes, args: argparse.Namespace) -> list[Finding]:
    """`check dtb`: the nodes Xen's domain builder writes (a dom0 or domU tree, `data`), and with --host the
    difference from the host's tree, printed (text output) before the findings."""
    from .validate import dtbuild

    if args.profile == "acpi-dom0" and not args.host:
        return []
    findings, diff = dtbuild.check_data(data, Path(args.host) if args.host else None, args.xen_version)
    if diff is not None and not args.json:
        print(diff)
    return findings


# --- triage -------------------------------------------------------------------------------------


LOG_CHUNK = 1 << 20  # triage reads a log this much at a time: memory stays flat whatever its size


def _regex(option: str, pattern: str, what: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{option} {pattern!r} is not a regular expression ({exc}): give one that matches {what}.") \
            from None
    return pattern


def log_chunks(name: str) -> Iterator[bytes]:
    """The chunks of a console log: a file (examined before it is read), or standard input for '-'."""
    kind = inputs.CONSOLE_LOG
    if name == "-":
        where, stream, limit = "standard input", sys.stdin.buffer, kind.limit
    else:
        where, stream, limit = name, inputs.open_file(Path(name), kind), None
    with stream:
        read = 0
        while True:
            try:
                chunk = stream.read(LOG_CHUNK)
            except OSError as exc:
                raise UnusableInput(f"{where} cannot be read ({exc.strerror}): {kind.hint}") from None
            if not chunk:
                return
            read += len(chunk)
            if limit is not None and read > limit:
                raise UnusableInput(f"{where} is over the {inputs.human(limit)} {kind.noun} may be: {kind.too_big}")
            yield chunk


def cmd_triage(args: argparse.Namespace) -> int:
    from .boot import milestone_title
    from .diagnose import diagnose_log
    from .logreader import LogReader
    from .monitor import ending, triage, verdict_class

    prompts = [_regex("--prompt", p, "the guest's shell prompt, e.g. '\\S+# '") for p in args.prompt or ()]
    passed = _regex("--passed", args.passed, "a line only a good boot prints") if args.passed else None
    reader = LogReader(log_chunks(args.log))
    monitor, verdict = triage(reader, prompts=prompts, passed=passed)
    failure = monitor.failure
    findings = cmdline_findings(monitor)
    if verdict is Verdict.PASSED and failures(findings):  # as `harness boot` would judge the same boot
        verdict = Verdict.FAILED
    diagnosis = diagnose_log(monitor)  # debug keys someone pressed during the boot
    if diagnosis is not None and diagnosis.conclusive and verdict in (Verdict.PASSED, Verdict.INCOMPLETE):
        # what the dumps prove outweighs a prompt printed before the machine stopped answering, or a log's end
        monitor.failure = None
        failure = monitor.hang(diagnosis.conclusion, diagnosis.signature)
        verdict = Verdict.HUNG
    ended = ending(monitor) if verdict is Verdict.PASSED else None
    evidence = evidence_lines(failure.evidence) if failure else []
    if args.json:
        print(json.dumps({
            "log": args.log,
            "reader": reader.to_dict(),
            "verdict": str(verdict),
            "class": verdict_class(verdict),
            "stage": failure.stage if failure else monitor.stage,
            "signature": failure.signature if failure else None,
            "ending": ended,
            "milestones": {k: line.number for k, line in monitor.reached.items()},
            "milestone_titles": {k: milestone_title(k) for k in monitor.reached},
            "failure": failure.to_dict() | {"evidence": [{"line": n, "text": t} for n, t in evidence]}
            if failure else None,
            "findings": [f.to_dict() for f in findings],
            "diagnosis": diagnosis.to_dict() if diagnosis else None,
        }, indent=2))
    else:
        lines = f"{reader.lines} line{'' if reader.lines == 1 else 's'}"
        print(f"log: {'standard input' if args.log == '-' else args.log}, {lines}: {reader.describe()}")
        print(f"{'milestone':34} {'log line':>8}")
        for key, line in monitor.reached.items():
            print(f"{milestone_title(key):34} {line.number:8}")
        print()
        if findings:
            print(render_table(findings) + "\n")
        if failure:
            print(f"verdict: {verdict} after stage '{failure.stage}': {failure.description}"
                  + (f" ({failure.detail})" if failure.detail else "") + f" [signature {failure.signature}]")
            for number, text in evidence:
                print(f"  line {number:6}  {text}")
        else:
            if ended:
                print(f"ended at: {milestone_title(ended)}, line {monitor.reached[ended].number}")
            print(f"verdict: {verdict}")
        if diagnosis:
            print("\n".join(diagnosis.report()))
    return EXIT_GOOD if verdict is Verdict.PASSED else EXIT_BAD


def evidence_lines(lines: list[Line]) -> list[tuple[int, str]]:
    """A failure's evidence as the log's own lines: each physical line once, its pieces (Xen's lines printed into
    a guest's, a line cut in pieces) joined."""
    joined: dict[int, list[str]] = {}
    for line in lines:
        joined.setdefault(line.number, []).append(("(XEN) " if line.source in ("xen", "xen-ring") else "") + line.text)
    return [(number, " ".join(texts)) for number, texts in joined.items()]


def cmdline_findings(monitor) -> list[Finding]:
    """What Xen said of its command line in a saved log (and in a ring dump, if the log has one)."""
    from . import checks, xenlog

    claims = xenlog.parse(monitor.text("xen"), ring=monitor.text("xen-ring"))
    firmware = monitor.reached.get("firmware")
    return checks.check_xen_cmdline(claims, efi=firmware is not None and "U-Boot" not in firmware.text)


# --- report -------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import date

    from .report import html, judge, outputs

    sessions = outputs.gather([Path(p) for p in args.sessions], Path(args.history) if args.history else None)
    quarantine = judge.load_quarantine(Path(args.quarantine)) if args.quarantine else []
    blocking = outputs.fail_on(args.fail_on)
    if args.last < 2:
        raise UsageError(f"--last {args.last}: a trend needs at least 2 sessions.")
    report = judge.judge(sessions, quarantine, date.today(), last=args.last, margin=outputs.margin(args.slowdown))
    if args.output:
        html.write(report, Path(args.output))
    if args.kcidb:
        from .report import kcidb

        kcidb.write(report, Path(args.kcidb), origin=args.kcidb_origin)
    print(outputs.as_json(report) if args.json else outputs.as_text(report))
    if args.output and not args.json:
        print(f"report: {args.output}")
    return EXIT_BAD if blocking & set(report.counts()) else EXIT_GOOD


# --- images and targets -------------------------------------------------------------------------


def cmd_images(args: argparse.Namespace) -> int:
    from .images import Images, StaleLock, load_lock, load_source_lock

    images = Images()
    said: list[str] = []  # what lock and refresh did: printed as it happens, and in the JSON record

    def say(text: str) -> None:
        said.append(text)
        print(f"harness: {text}", file=sys.stderr if args.json else sys.stdout)

    if args.profile and args.action != "lock":
        raise UsageError("--profile goes with `images lock` only: the other actions cover every profile.")
    if args.action == "lock":
        if args.profile:
            images.lock_profiles(args.profile)
            say(f"pinned {', '.join(args.profile)} into {images.lock_path}; every other pin is unchanged")
        else:
            images.lock()
            say(f"wrote {images.lock_path}")
    elif args.action == "refresh":
        # CI's explicit re-pin: only when a pinned package has left the archive, and said loudly.
        try:
            fetch_all(images, load_lock(), load_source_lock())
            say("every pinned image is still in the archive and in the cache")
        except StaleLock as exc:
            say(f"REFRESHING THE LOCK: {exc}")
            images.lock()
            fetch_all(images, load_lock(), load_source_lock())
            say(f"re-pinned {images.lock_path}; commit it to make the new pins the project's")
    if args.action in ("lock", "refresh"):
        if args.json:
            print(json.dumps({"action": args.action, "lock": str(images.lock_path), "said": said}, indent=2))
        return EXIT_GOOD
    pinned, sources = [], []
    for profile, entries in load_lock().items():
        for name, entry in entries.items():
            path = images.fetch(entry) if args.action == "fetch" else None
            pinned.append({"profile": profile, "name": name, "package": entry.package, "version": entry.version,
                           "path": str(path) if path else None})
            if not args.json:
                print(f"{profile:16} {name:8} {entry.package} {entry.version}" + (f"  {path}" if path else ""))
    for name, source in load_source_lock().items():
        if args.action == "fetch":
            images.fetch_source(source)
        sources.append({"name": name, "package": source.package, "version": source.version, "suite": source.suite})
        if not args.json:
            print(f"{'source':16} {name:8} {source.package} {source.version} ({source.suite})")
    if args.json:
        print(json.dumps({"action": args.action, "images": pinned, "sources": sources}, indent=2))
    return EXIT_GOOD


def fetch_all(images, profiles, sources) -> None:
    for entries in profiles.values():
        for entry in entries.values():
            images.fetch(entry)
    for source in sources.values():
        images.fetch_source(source)


def cmd_targets(args: argparse.Namespace) -> int:
    specs = [targets.load_spec(name) for name in targets.target_names()]
    if args.json:
        print(json.dumps([{"name": spec.name, "description": spec.description, "arch": spec.arch, "boot": spec.boot,
                           "capabilities": sorted(spec.capabilities), "path": str(spec.path)} for spec in specs],
                         indent=2))
        return EXIT_GOOD
    width = max(len(spec.name) for spec in specs)
    for spec in specs:
        print(f"{spec.name:{width}}  {spec.description}  [{', '.join(sorted(spec.capabilities))}]")
    return EXIT_GOOD


# --- comparing boots ----------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    from .report import diff
    from .result import load

    left, right = (Path(args.left), load(Path(args.left))), (Path(args.right), load(Path(args.right)))
    changes = diff.compare(left[1], right[1])
    if args.json:
        print(json.dumps(diff.to_json(left, right, changes), indent=2))
    else:
        print(diff.render(left, right, changes))
    return EXIT_BAD if changes else EXIT_GOOD


def cmd_matrix(args: argparse.Namespace) -> int:
    from .report import matrix

    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory: give a session's artifacts directory (it holds one "
                         "directory per target, each with its result.json).")
    found = matrix.collect(directory)
    for why in found.left_out:
        print(f"harness: left out of the matrix: {why}", file=sys.stderr)
    if not found.cells:
        raise UsageError(f"no readable result.json below {directory}: give the artifacts directory of a session "
                         "that booted.")
    if args.json:
        print(json.dumps(matrix.sort_cells([c | {"result": str(p)} for p, c in found.cells]), indent=2))
    else:
        print(matrix.table([c for _, c in found.cells]))
    return EXIT_GOOD


def cmd_version(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"harness": data.version(), "commit": data.commit()}, indent=2))
    else:
        print(f"harness {data.describe()}")
    return EXIT_GOOD


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does in detail")
    p.add_argument("--version", action="store_true", help="print the harness's version and commit, and exit")
    p.add_argument("--json", action="store_true", dest="json_anywhere",
                   help="machine-readable output, for --version and every verb (as each verb's own --json)")
    sub = p.add_subparsers(dest="command")

    boot = sub.add_parser("boot", help="boot Xen + dom0 on a target and report what it verified")
    boot.add_argument("--target", default="qemu-virt",
                      help="a name from targets/, or a target YAML's path, e.g. targets/boards/zcu102.yaml "
                           "(default: qemu-virt)")
    boot.add_argument("--xen", type=Path, help="boot this Xen image instead of Debian's")
    boot.add_argument("--kernel", type=Path, help="boot this dom0 kernel Image instead of Debian's")
    boot.add_argument("--initrd", type=Path, help="boot this dom0 initramfs instead of the built one")
    boot.add_argument("--xen-args", default="", help="append to Xen's command line, e.g. 'sched=null'")
    boot.add_argument("--dom0-args", default="", help="append to dom0's kernel command line")
    boot.add_argument("--fault", metavar="NAME",
                      help="inject a real fault (harness/faults.py) to see how a bad boot is reported")
    boot.add_argument("--artifacts", help="directory for this run's artifacts (default: artifacts/<time>-<target>)")
    boot.add_argument("--place", help="boot on this place of a labgrid farm (acquired for the boot), instead of "
                                      "the target's own resources")
    boot.add_argument("--lg-coordinator", metavar="HOST:PORT",
                      help="the farm's labgrid coordinator (default: $LG_COORDINATOR)")
    boot.add_argument("--json", action="store_true", help="print result.json on stdout, progress on stderr")
    boot.set_defaults(func=cmd_boot)

    check = sub.add_parser("check", help="validate a DTB or a directory of ACPI tables you bring")
    kinds = check.add_subparsers(dest="kind", required=True)
    dtb = kinds.add_parser("dtb", help="a DTB, a DTS (compiled with dtc) or a copy of /proc/device-tree: "
                                       "Xen's hypervisor node")
    dtb.add_argument("path")
    dtb.add_argument("--profile", default="dom0", choices=["dom0", "domU", "acpi-dom0"])
    dtb.add_argument("--xen-version", help="the Xen X.Y that booted, checked against compatible")
    dtb.add_argument("--arch", choices=["arm32", "arm64"],
                     help="the domain's arch (default: arm32 when its CPUs are 32-bit only, e.g. arm,cortex-a15)")
    dtb.add_argument("--host", metavar="HOST.dtb", help="the host DTB dom0's tree was made from (a boot's boot.dtb): "
                                                       "every difference is judged against Xen's documented edits")
    dtb.add_argument("--json", action="store_true")
    acpi = kinds.add_parser("acpi", help="ACPI tables: a copy of /sys/firmware/acpi/tables, acpixtract -a's .dat "
                                         "files, acpidump's text output, or one binary table")
    acpi.add_argument("path")
    acpi.add_argument("--host", help="the host's tables (any of those layouts), to tell rewritten from passed-through "
                                     "ones")
    acpi.add_argument("--vcpus", type=int, help="dom0's vCPU count: enabled GICC entries expected")
    acpi.add_argument("--hypervisor-id", help="expected FADT hypervisor vendor id (default: report only)")
    acpi.add_argument("--json", action="store_true")
    rules = kinds.add_parser("rules", help="list every rule id (a boot's checks, both validators), with what it checks")
    rules.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    images = sub.add_parser("images", help="pinned Debian images: list, fetch, re-lock, or refresh (CI)")
    images.add_argument("action", choices=["list", "fetch", "lock", "refresh"],
                        help="refresh: fetch all, and re-lock only if a pin left the archive (what CI runs)")
    images.add_argument("--profile", action="append",
                        help="with lock: pin only this profile (repeatable) and leave every other pin as it is")
    images.add_argument("--json", action="store_true", help="print a JSON record on stdout, progress on stderr")
    images.set_defaults(func=cmd_images)

    tr = sub.add_parser("triage", help="judge a saved console log: milestones, verdict, stage, evidence, "
                                       "and what Xen said of its command line")
    tr.add_argument("log", help="a console log: from a board farm, a bug report, any CI's serial capture, "
                                "wrapped or not (LAVA, labgrid, Jenkins, ts, e-mail quotes…); - reads standard input")
    tr.add_argument("--prompt", action="append", metavar="REGEX",
                    help="a guest's shell prompt, besides the common forms ('# ', '~ # ', 'root@host:~# ', "
                         "'$ ', 'dom0# '); repeatable")
    tr.add_argument("--passed", metavar="REGEX", help="a line that means the boot passed (e.g. a test's own "
                                                      "'ALL TESTS PASSED')")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_triage)

    df = sub.add_parser("diff", help="what changed for dom0 between two boots: hypervisor node, /proc/iomem's Xen "
                                     "entries, Xen's claims, the kernel's Xen lines")
    df.add_argument("left", help="a result.json, or the artifacts directory holding it")
    df.add_argument("right", help="the other boot's result.json (or its artifacts directory)")
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_diff)

    mx = sub.add_parser("matrix", help="the Xen x Linux matrix (markdown) over every result.json below a directory")
    mx.add_argument("directory", help="a session's artifacts directory, e.g. artifacts/<time>-pytest-<pid>")
    mx.add_argument("--json", action="store_true")
    mx.set_defaults(func=cmd_matrix)

    rp = sub.add_parser("report", help="judge a session against earlier ones: each failure's class (regression, "
                                       "still-failing, …), trends; text, --json, HTML (-o), KCIDB (--kcidb)")
    rp.add_argument("sessions", nargs="+", metavar="SESSION_DIR",
                    help="session directories (each holding session.json); the newest by start time is judged")
    rp.add_argument("--history", metavar="DIR", help="a directory of earlier session directories")
    rp.add_argument("-o", "--output", metavar="report.html", help="write the self-contained HTML report here")
    rp.add_argument("--fail-on", metavar="CLASS[,CLASS]", help="exit 1 when a failure of these classes occurred, "
                                                             "e.g. regression")
    rp.add_argument("--quarantine", metavar="FILE", help="YAML or JSON list of {pattern: 'target::test', reason, "
                                                         "expires: YYYY-MM-DD}")
    rp.add_argument("--slowdown", default="25%", help="flag a milestone slower than its recent median by this "
                                                      "margin (default 25%%)")
    rp.add_argument("--last", type=int, default=10, help="sessions the trends look back over (default 10)")
    rp.add_argument("--kcidb", metavar="FILE", help="write the judged session as KCIDB JSON (validated)")
    rp.add_argument("--kcidb-origin", default="xenarmharness", help="KCIDB origin of the ids (default xenarmharness)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_report)

    bi = sub.add_parser("bisect", help="find the Xen commit (or prebuilt build) that broke a target's boot, and prove "
                                       "it: both ends reproduced, then parent and culprit alternated")
    bi.add_argument("--repo", metavar="XEN_SRC", help="a Xen git checkout (never touched: a scratch worktree is used)")
    bi.add_argument("--builds", metavar="DIR", help="instead of --repo: ordered prebuilt Xen images, one per entry "
                                                    "(a file, or a directory with `xen`), in name order")
    bi.add_argument("--good", metavar="REV", help="a commit (or build name) that boots; builds: default the first")
    bi.add_argument("--bad", metavar="REV", help="a commit (or build name) that does not; builds: default the last")
    bi.add_argument("--target", default="qemu-virt", help="the target to boot on (default: qemu-virt)")
    bi.add_argument("--build-config", nargs="+", metavar="K=V", help="Kconfig items on top of defconfig (and of the "
                                                                      "target's own), e.g. CONFIG_DEBUG=y")
    bi.add_argument("--same-failure", action="store_true",
                    help="bad only when a step fails with the bad end's class, stage and signature (else skipped)")
    bi.add_argument("--artifacts", help="directory for the steps' boots and bisect.json/bisect.md "
                                        "(default: artifacts/<time>-bisect-<target>-<pid>)")
    bi.add_argument("--json", action="store_true", help="print bisect.json on stdout, progress on stderr")
    bi.set_defaults(func=cmd_bisect)

    tl = sub.add_parser("targets", help="list the targets")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=cmd_targets)
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    args.json = getattr(args, "json", False) or args.json_anywhere
    if args.version:
        return cmd_version(args)
    if args.command is None:
        cli.error("choose a verb: boot, bisect, check, images, triage, report, diff, matrix or targets (harness -h "
                  "says what each does)")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="harness: %(message)s", stream=sys.stderr
    )
    if not args.verbose:
        logging.getLogger("labgrid").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:  # labgrid's file and SSH helpers log under their own repr
            handler.addFilter(lambda record: not record.name.startswith(("ManagedFile(", "SSHConnection(")))
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_LAB if args.command == "boot" else EXIT_CHECK_UNUSABLE
    except UnusableInput as exc:  # a file the user brought (a log to triage) is not what it should be
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_UNTESTABLE if args.command == "boot" else EXIT_CHECK_UNUSABLE
    except InfrastructureError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_LAB
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness … | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_GOOD


if __name__ == "__main__":
    sys.exit(main())
