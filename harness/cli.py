"""`harness`: boot a target and report what it proved; check DTBs and ACPI tables; manage images.

Exit status of `harness boot` follows `git bisect run`: 0 good, 1 bad (a check failed, Xen or a
guest crashed or hung), 125 cannot test this build (a --xen/--kernel/--initrd file is missing or
not bootable), 128 the lab failed (QEMU missing, download failed: fix it, then go on bisecting).
`harness check` exits 0 clean, 1 findings, 2 unusable input; `harness triage` 0 passed, 1 not, 2 when the
log cannot be read (not a file, too big, empty) or --prompt is no regular expression.
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
    names = {g.source: g.name for g in spec.guests}

    def progress(key: str, line: Line) -> None:
        print(f"  {line.t:7.2f} s  {milestone_title(key, names)}", file=out, flush=True)

    print(f"harness: booting {spec.name}: {spec.description}", file=out)
    print(f"harness: artifacts in {run_dir}", file=out, flush=True)
    session = BootSession(
        spec, run_dir, overrides={"xen": args.xen, "kernel": args.kernel, "initrd": args.initrd},
        on_milestone=progress, tweaks=changes, place=args.place, coordinator=args.lg_coordinator,
    )
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

    names = {g.source: g.name for g in spec.guests}
    lines = ["", f"{'milestone':34} {'since power-on':>14}"]
    lines += [f"{milestone_title(k, names):34} {t:12.2f} s" for k, t in result.milestones.items()]
    claims = result.claims
    if claims:
        lines += ["", f"{'Xen':34} {claims.release or '?'} on {claims.boot or 'Device Tree'}"]
    for g in spec.guests:
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


# --- check --------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    if args.kind == "rules":
        from .checks import RULES as BOOT_RULES
        from .validate import acpi, dt, dtbuild
        from .witnesses import RULES as WITNESS_RULES

        for rule, text in {**BOOT_RULES, **WITNESS_RULES, **dt.RULES, **dtbuild.RULES, **acpi.RULES}.items():
            print(f"{rule:28} {text}")
        return EXIT_GOOD
    try:
        if args.kind == "dtb":
            from .validate import dt

            expect = dt.Expectation(xen_version=args.xen_version) if args.xen_version else None
            findings = dt.check_path(Path(args.path), profile=args.profile, expect=expect)
            asked = {"profile": args.profile, "xen_version": args.xen_version, "host": args.host}
            findings += build_findings(args)
        else:
            from .validate import acpi

            findings = acpi.check_path(
                Path(args.path), host=Path(args.host) if args.host else None, vcpus=args.vcpus,
                hypervisor_id=args.hypervisor_id,
            )
            asked = {"host": args.host, "vcpus": args.vcpus, "hypervisor_id": args.hypervisor_id}
    except UnusableInput as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_CHECK_UNUSABLE
    if args.json:  # what was checked, as asked (null: not given), then what was found
        print(json.dumps({"input": args.path, **asked, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        print(render_table(findings))
    return EXIT_BAD if failures(findings) else EXIT_GOOD


def build_findings(args: argparse.Namespace) -> list[Finding]:
    """`check dtb`: the nodes Xen's domain builder writes (a dom0 or domU tree), and with --host the difference
    from the host's tree, printed (text output) before the findings."""
    from .validate import dtbuild

    if args.profile == "acpi-dom0" and not args.host:
        return []
    findings, diff = dtbuild.check_path(Path(args.path), Path(args.host) if args.host else None)
    if diff is not None and not args.json:
        print(diff)
    return findings


# --- triage -------------------------------------------------------------------------------------


LOG_CHUNK = 1 << 20  # triage reads a log this much at a time: memory stays flat whatever its size


def cmd_triage(args: argparse.Namespace) -> int:
    from .boot import milestone_title
    from .diagnose import diagnose_log
    from .monitor import triage

    try:
        re.compile(args.prompt)
    except re.error as exc:
        raise UsageError(f"--prompt {args.prompt!r} is not a regular expression ({exc}): "
                         "give one that matches the guest's shell prompt, e.g. '\\S+# '.") from None
    path = Path(args.log)
    printed = False  # anything but whitespace: an empty log is a usage error

    def chunks() -> Iterator[bytes]:
        nonlocal printed
        with inputs.open_file(path, inputs.CONSOLE_LOG) as log:
            while True:
                try:
                    chunk = log.read(LOG_CHUNK)
                except OSError as exc:
                    raise UnusableInput(f"{path} cannot be read ({exc.strerror}): "
                                        f"{inputs.CONSOLE_LOG.hint}") from None
                if not chunk:
                    return
                printed = printed or bool(chunk.strip())
                yield chunk

    monitor, verdict = triage(chunks(), prompt=args.prompt)
    if not printed:
        raise UsageError(f"{path} is empty: give the path of a saved console log.")
    failure = monitor.failure
    findings = cmdline_findings(monitor)
    if verdict is Verdict.PASSED and failures(findings):  # as `harness boot` would judge the same boot
        verdict = Verdict.FAILED
    diagnosis = diagnose_log(monitor)  # debug keys someone pressed during the boot
    if diagnosis is not None and diagnosis.conclusive and verdict in (Verdict.PASSED, Verdict.HUNG):
        # what the dumps prove outweighs a prompt printed before the machine stopped answering, or a log's end
        monitor.failure = None
        failure = monitor.hang(diagnosis.conclusion, diagnosis.signature)
        verdict = Verdict.HUNG
    if args.json:
        print(json.dumps({
            "log": str(path),
            "verdict": str(verdict),
            "milestones": {k: line.number for k, line in monitor.reached.items()},
            "failure": failure.to_dict() if failure else None,
            "findings": [f.to_dict() for f in findings],
            "diagnosis": diagnosis.to_dict() if diagnosis else None,
        }, indent=2))
    else:
        print(f"{'milestone':34} {'log line':>8}")
        for key, line in monitor.reached.items():
            print(f"{milestone_title(key):34} {line.number:8}")
        print()
        if findings:
            print(render_table(findings) + "\n")
        if failure:
            print(f"verdict: {verdict} after stage '{failure.stage}': {failure.description}"
                  + (f" ({failure.detail})" if failure.detail else "") + f" [signature {failure.signature}]")
            for line in failure.evidence:
                print(f"  line {line.number:6}  {'(XEN) ' if line.source == 'xen' else ''}{line.text}")
        else:
            print(f"verdict: {verdict}")
        if diagnosis:
            print("\n".join(diagnosis.report()))
    return EXIT_GOOD if verdict is Verdict.PASSED else EXIT_BAD


def cmdline_findings(monitor) -> list[Finding]:
    """What Xen said of its command line in a saved log (and in a ring dump, if the log has one)."""
    from . import checks, xenlog

    claims = xenlog.parse(monitor.text("xen"), ring=monitor.text("xen-ring"))
    firmware = monitor.reached.get("firmware")
    return checks.check_xen_cmdline(claims, efi=firmware is not None and "U-Boot" not in firmware.text)


# --- images and targets -------------------------------------------------------------------------


def cmd_images(args: argparse.Namespace) -> int:
    from .images import Images, StaleLock, load_lock, load_source_lock

    images = Images()
    if args.profile and args.action != "lock":
        raise UsageError("--profile goes with `images lock` only: the other actions cover every profile.")
    if args.action == "lock":
        if args.profile:
            images.lock_profiles(args.profile)
            print(f"harness: pinned {', '.join(args.profile)} into {images.lock_path}; every other pin is unchanged")
        else:
            images.lock()
            print(f"harness: wrote {images.lock_path}")
        return EXIT_GOOD
    if args.action == "refresh":
        # CI's explicit re-pin: only when a pinned package has left the archive, and said loudly.
        try:
            fetch_all(images, load_lock(), load_source_lock())
            print("harness: every pinned image is still in the archive and in the cache")
        except StaleLock as exc:
            print(f"harness: REFRESHING THE LOCK: {exc}")
            images.lock()
            fetch_all(images, load_lock(), load_source_lock())
            print(f"harness: re-pinned {images.lock_path}; commit it to make the new pins the project's")
        return EXIT_GOOD
    for profile, entries in load_lock().items():
        for name, entry in entries.items():
            path = images.fetch(entry) if args.action == "fetch" else None
            print(f"{profile:16} {name:8} {entry.package} {entry.version}" + (f"  {path}" if path else ""))
    for name, source in load_source_lock().items():
        if args.action == "fetch":
            images.fetch_source(source)
        print(f"{'source':16} {name:8} {source.package} {source.version} ({source.suite})")
    return EXIT_GOOD


def fetch_all(images, profiles, sources) -> None:
    for entries in profiles.values():
        for entry in entries.values():
            images.fetch(entry)
    for source in sources.values():
        images.fetch_source(source)


def cmd_targets(args: argparse.Namespace) -> int:  # noqa: ARG001
    for name in targets.target_names():
        spec = targets.load_spec(name)
        print(f"{name:20} {spec.description}  [{', '.join(sorted(spec.capabilities))}]")
    return EXIT_GOOD


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does in detail")
    p.add_argument("--version", action="version", version=f"harness {data.describe()}")
    sub = p.add_subparsers(dest="command", required=True)

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
    dtb = kinds.add_parser("dtb", help="a DTB (or a copy of /proc/device-tree): Xen's hypervisor node")
    dtb.add_argument("path")
    dtb.add_argument("--profile", default="dom0", choices=["dom0", "domU", "acpi-dom0"])
    dtb.add_argument("--xen-version", help="the Xen X.Y that booted, checked against compatible")
    dtb.add_argument("--host", metavar="HOST.dtb", help="the host DTB dom0's tree was made from (a boot's boot.dtb): "
                                                       "every difference is judged against Xen's documented edits")
    dtb.add_argument("--json", action="store_true")
    acpi = kinds.add_parser("acpi", help="a directory of raw ACPI tables (as in /sys/firmware/acpi/tables)")
    acpi.add_argument("path")
    acpi.add_argument("--host", help="the host's tables, to tell rewritten from passed-through ones")
    acpi.add_argument("--vcpus", type=int, help="dom0's vCPU count: enabled GICC entries expected")
    acpi.add_argument("--hypervisor-id", help="expected FADT hypervisor vendor id (default: report only)")
    acpi.add_argument("--json", action="store_true")
    kinds.add_parser("rules", help="list every rule id (a boot's checks, both validators), with what it checks")
    check.set_defaults(func=cmd_check)

    images = sub.add_parser("images", help="pinned Debian images: list, fetch, re-lock, or refresh (CI)")
    images.add_argument("action", choices=["list", "fetch", "lock", "refresh"],
                        help="refresh: fetch all, and re-lock only if a pin left the archive (what CI runs)")
    images.add_argument("--profile", action="append",
                        help="with lock: pin only this profile (repeatable) and leave every other pin as it is")
    images.set_defaults(func=cmd_images)

    tr = sub.add_parser("triage", help="judge a saved console log: milestones, verdict, stage, evidence, "
                                       "and what Xen said of its command line")
    tr.add_argument("log", help="a console log: from a board farm, a bug report, any CI's serial capture")
    tr.add_argument("--prompt", default=r"\S+# ", help="regex of the guest's shell prompt (default: '\\S+# ')")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_triage)

    tl = sub.add_parser("targets", help="list the targets")
    tl.set_defaults(func=cmd_targets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
