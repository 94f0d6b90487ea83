"""One boot of one target, start to verdict: images → boot plan → labgrid → monitor → probes → checks.

`BootSession` is what both `harness boot` and the pytest fixtures use, so a boot judged on the
command line and in a test run is the same boot. One record, `BootResult`, travels the path and
each stage adds to it; it is written as result.json beside the console log and the DTBs.
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import labgrid
from labgrid.exceptions import NoResourceFoundError

from . import (
    acpidump,
    checks,
    diagnose,
    dom0net,
    guest,
    inputs,
    rootfs,
    sshguest,
    symbols,
    toolstack,
    witnesses,
    xenlog,
)
from .errors import HarnessError, InfrastructureError, UsageError
from .findings import Finding, failures
from .images import IMAGES_DIR, Artifact, Images
from .initramfs import initramfs
from .lab import places
from .lab.places import remote_place
from .lab.qemu import QemuFailed
from .lab.strategy import Status
from .lab.vlab import Board, VirtualLab, dump_dtb
from .monitor import ENDING_TITLES, MILESTONES, BootFailure, Line, qemu_failure
from .plan import QEMU_METHODS, BootPlan, make_plan
from .plan.uboot import with_serverip
from .result import BootResult
from .targets import BoardSpec, Deadlines, TargetSpec, check_guests
from .tweaks import Tweaks
from .validate import acpi, acpi_input, dtbuild
from .xenbuild import build_xen, xen_source

log = logging.getLogger(__name__)

TITLES = {m.key: m.title for m in MILESTONES} | ENDING_TITLES  # a guest's "dom0:shell", a log's "power-off"


def milestone_title(key: str, names: dict[str, str] | None = None) -> str:
    """"dom1:kernel" -> "domU1 kernel start", with `names` mapping a console source to its guest's name."""
    source, _, name = key.rpartition(":")
    title = TITLES.get(name, name)
    return f"{(names or {}).get(source, source)} {title}" if source else title


class BootSession:
    """Boot one target to its console guest's shell, probe it, check it; always clean up."""

    def __init__(
        self,
        spec: TargetSpec,
        artifacts: Path,
        overrides: dict[str, Path | None] | None = None,
        images: Images | None = None,
        on_milestone: Callable[[str, Line], None] | None = None,
        tweaks: Tweaks | None = None,
        place: str | None = None,
        coordinator: str | None = None,
    ) -> None:
        self.tweaks = tweaks or Tweaks()
        self.spec = spec = _tweaked(spec, self.tweaks)
        self.artifacts = artifacts
        self.overrides = {k: v for k, v in (overrides or {}).items() if v}
        self.images = images or Images()
        self.on_milestone = on_milestone
        self.result = BootResult(spec.name, artifacts)
        self.env: labgrid.Environment | None = None
        self.strategy = None
        self.host_acpi: Path | None = None  # the machine's own ACPI tables (acpi targets)
        self.vlab = None  # the virtual lab a virtual board runs in (harness/lab/vlab.py)
        self.place = place  # a farm's place to boot on instead of the target's own resources
        self.coordinator = coordinator  # the farm's coordinator (else labgrid's LG_COORDINATOR)
        self.acquired: str | None = None
        self.serverip: str | None = None  # the TFTP server of the harness's own virtual lab, as its board sees it
        self._console_log = None
        self._ssh: sshguest.GuestSSH | None = None
        self._last_words_taken = False
        self.on_diagnosis: Callable[[diagnose.Diagnosis], None] | None = None  # a probe's finding, as it comes
        self.closed = False

    # --- stages -----------------------------------------------------------------------------

    def boot(self) -> BootResult:
        """Power on and reach the console guest's shell; a failed boot is recorded, then raised."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self.result.images = arts = self._artifacts()
            if self.spec.can("acpi"):  # the machine's own tables, to compare dom0's with: before Xen's boot
                self.host_acpi = acpidump.host_tables(self.spec, arts["kernel"], arts["initrd"], self.images.cache)
            self.env = labgrid.Environment(config_file=str(self.spec.path))
            self._choose_resources()
            target = self.env.get_target("main")
            plan = self._plan(target)
            self.strategy = target.get_driver("XenStrategy")
            self.strategy.guests = list(self.spec.guests)
            self.strategy.deadlines = self.deadlines()
            self.strategy.on_milestone = self._milestone
            self.strategy.artifacts = self.artifacts
            self.strategy.symbolizer = diagnose.Symbolizer(symbol_sources(arts))
            self.strategy.on_diagnosis = self.on_diagnosis
            if plan.uboot is not None:
                self._stage(target, plan)
            self._console_log = (self.artifacts / "console.log").open("wb")  # noqa: SIM115 (closed in close())
            log_file = self._console_log
            self.strategy.console.listeners.append(lambda data: (log_file.write(data), log_file.flush()))
            self.strategy.transition(Status.shell)
        except BootFailure as exc:
            self.result.record_failure(exc.failure)
            self._last_words()
            raise
        except QemuFailed as exc:
            # QEMU refused the machine before any console output: name what it said.
            failure = self.result.record_failure(qemu_failure(exc.stderr or str(exc), "power-on", exc.status))
            raise BootFailure(failure) from None
        except HarnessError as exc:
            self.result.record_error(exc)
            raise
        finally:
            self.result.timings["boot"] = round(time.monotonic() - started, 2)
        return self.result

    def _artifacts(self) -> dict[str, Artifact]:
        check_guests(self.spec)  # a combination Xen would panic on is refused before anything runs
        if self.tweaks.dom0_modules and self.spec.toolstack is not None:
            raise UsageError(f"{self.spec.name}'s dom0 runs from its root disk, which loads the toolstack's modules "
                             f"only: add modules ({', '.join(self.tweaks.dom0_modules)}) on a target whose dom0 runs "
                             "from its initramfs.")
        arts = self.images.artifacts(self.spec.images, self.overrides)
        if (self.spec.xen_build or self.tweaks.xen_patches) and "xen" not in self.overrides:
            patches = [IMAGES_DIR / "patches" / name for name in self.tweaks.xen_patches]
            arts["xen"] = build_xen(self.images.cache, xen_source(), self.spec.arch, config=self.spec.xen_build or {},
                                    patches=patches)
        if "initrd" not in arts:
            if self.spec.toolstack is not None:  # what finds dom0's root disk
                extra = rootfs.loader_extra(self.spec, self.images)
            else:  # dom0's network and SSH server, if any, and the modules this boot adds
                extra = dom0net.extra(self.spec, self.images, arts["kernel"], self.tweaks.dom0_modules)
            arts["initrd"] = initramfs(arts["busybox"], self.images.cache, extra=extra)
        if self.spec.toolstack is not None:
            arts["rootfs"] = rootfs.dom0_rootfs(self.spec, self.images, arts)
        return arts

    def _plan(self, target) -> BootPlan:
        """The target's boot method, with this boot's tweaks, made into a plan and applied to the lab."""
        spec, tweaks = self.spec, self.tweaks
        xen_cmdline = " ".join(filter(None, [spec.xen_cmdline, tweaks.xen_args]))
        self.result.cmdlines = {"xen": xen_cmdline, **{g.name: g.cmdline for g in spec.guests}}
        qemu = target.get_driver("XenQEMUDriver", activate=False) if spec.boot in QEMU_METHODS else None
        machine_dtb = None
        if qemu is not None:
            if tweaks.edit_qemu_args:
                qemu.extra_args = tweaks.edit_qemu_args(qemu.extra_args)
            qemu.stderr_path = self.artifacts / "qemu.stderr"
            if spec.boot == "qemu-loader":
                machine_dtb = qemu.dump_machine_dtb(self.artifacts / "machine.dtb")
        elif spec.board is not None:
            machine_dtb = self._board_dtb()
        plan = make_plan(spec, self.result.images, xen_cmdline, self.artifacts, machine_dtb, tweaks.omit_modules)
        plan.materialize(self.artifacts)
        if qemu is not None:
            qemu.boot_args = xen_cmdline
            qemu.loader_args = list(plan.qemu_args)
            if plan.kernel:
                self.env.config.data.setdefault("images", {}).update(
                    {"xen": str(plan.kernel), "boot-dtb": str(self.artifacts / plan.dtb)})
        return plan

    def _choose_resources(self) -> None:
        """The target's own resources; a farm's place instead (--place, or a RemotePlace in the YAML), acquired
        for this boot; or, for a virtual board, the resources of a lab the harness runs itself."""
        main = self.env.config.data["targets"]["main"]
        if self.coordinator:
            self.env.config.set_option("coordinator_address", self.coordinator)
        if self.place:
            main["resources"] = {"RemotePlace": {"name": self.place}}
        if place := remote_place(main.get("resources")):
            places.acquire(place, self.coordinator, self.deadlines().place)
            self.acquired = place
        elif self.spec.board is not None and self.spec.board.virtual:
            self._start_virtual_lab()

    def deadlines(self) -> Deadlines:
        """The target's deadlines, with this boot's tweaks."""
        return Deadlines.from_config({**self.spec.deadlines, **self.tweaks.deadlines})

    def _start_virtual_lab(self) -> None:
        """Run the virtual board in a lab of the harness's own, and give labgrid that lab's resources."""
        name = self.spec.board.virtual
        self.vlab = VirtualLab([name])
        self.vlab.start()
        self.env.config.data["targets"]["main"]["resources"] = self.vlab.resources(name)
        self.serverip = self.vlab.tftp_address

    def _board_dtb(self) -> bytes:
        """The board's own device tree: a virtual board's (its QEMU's, wherever the board runs: the same
        options on a farm's copy), a pinned image (this boot's, when of its profile), or the lab's file."""
        if self.spec.board.virtual:
            return dump_dtb(Board.from_spec(self.spec.board.virtual), self.artifacts / "machine.dtb")
        return read_board_dtb(self.spec, self.images, self.result.images)

    def _stage(self, target, plan: BootPlan) -> None:
        """Put the plan's files on the lab's TFTP server and give U-Boot's script to the strategy."""
        tftp = target.get_driver("TFTPProviderDriver")
        serverip = self.serverip or lab_serverip(self.spec.board, tftp.provider.host)
        script = with_serverip(plan.uboot, serverip, self.spec.path.name)
        paths = {load.path: load.path if load.path.is_absolute() else self.artifacts / load.path
                 for load in script.loads}
        staged = {name: tftp.stage(str(path)) for name, path in paths.items()}
        if self.tweaks.edit_uboot is not None:
            served = {name: Path(tftp.provider.internal) / path.name for name, path in paths.items()}
            script = self.tweaks.edit_uboot(script, served)
        (self.artifacts / "boot.cmd").write_text(script.render(staged))
        self.strategy.uboot_script = (script.commands(staged), script.boot)

    def _milestone(self, key: str, line: Line) -> None:
        self.result.milestones[key] = line.t
        if self.on_milestone:
            self.on_milestone(key, line)

    def shell(self, name: str | None = None) -> guest.GuestShell:
        """A guest's shell (the console guest's by default), moving Xen's serial input to it if need be."""
        spec = next(g for g in self.spec.guests if g.name == (name or self.spec.console_guest.name))
        driver = self.strategy.focus(spec)
        quiet = self.strategy.command_watch() if spec.domid == 0 else None  # a domU's output mixes with Xen's dumps
        return guest.GuestShell(driver, spec.name, self.strategy.monitor, xen_prefixed=spec.domid != 0, quiet=quiet)

    def ssh(self) -> sshguest.GuestSSH:
        """dom0 over SSH (targets with the ssh capability), connected once per boot: the harness's key installed
        over the serial console first, and dom0's host key checked against the lab's known_hosts or, without one,
        against the key dom0 printed on its console (harness/sshguest.py)."""
        if self._ssh is None:
            if not self.spec.can("ssh"):
                raise UsageError(f"{self.spec.name} has no ssh capability: its dom0 runs no SSH server.")
            endpoint = self._ssh_endpoint()
            key = sshguest.new_key()
            shell = self.shell("dom0")
            self._guarded(lambda: sshguest.authorize(shell, key, f"harness@{self.artifacts.name}"))
            known_hosts = lab_known_hosts(self.spec)
            if known_hosts is None:
                host_key = self._guarded(lambda: sshguest.read_host_key(shell))
                known_hosts = self.artifacts / "known_hosts"
                known_hosts.write_text(sshguest.known_hosts_line(endpoint, host_key))
            self._ssh = sshguest.GuestSSH("dom0", endpoint, key, known_hosts).connect()
        return self._ssh

    def _ssh_endpoint(self) -> sshguest.Endpoint:
        """Where dom0's SSH answers: the target's NetworkService (a virtual lab's forwarded port, or the board's)."""
        from labgrid.resource import NetworkService

        try:
            service = self.env.get_target("main").get_resource(NetworkService, wait_avail=False)
        except NoResourceFoundError:
            raise UsageError(f"{self.spec.path.name}: no NetworkService resource says where dom0's SSH answers: add "
                             "one (address, port, username: root).") from None
        return sshguest.Endpoint(service.address, service.port, service.username)

    def check(self) -> list[Finding]:
        """Probe every guest, in turn on the console, and run every check on what Xen and each guest said."""
        try:
            return self._check()
        except HarnessError as exc:
            self.result.record_error(exc)
            raise

    def _check(self) -> list[Finding]:
        started = time.monotonic()
        monitor = self.strategy.monitor
        self._guarded(self.strategy.dump_xen_ring)  # what Xen said before its serial console was up
        claims = self.result.claims = xenlog.parse(monitor.text("xen"), ring=monitor.text("xen-ring"))
        findings: list[Finding] = checks.check_xen_cmdline(claims, efi=self.spec.boot == "qemu-uefi")
        is_32bit, acpi = self.spec.arch == "arm32", self.spec.can("acpi")
        if self.spec.dom0:
            findings += checks.check_xen_claims(claims, is_32bit=is_32bit, acpi=acpi)
        for spec in self.spec.guests:
            view = self.result.views[spec.name] = self._probe(spec.name)
            if view.fdt:
                (self.artifacts / f"{spec.name}.dtb").write_bytes(view.fdt)
            (self.artifacts / f"{spec.name}-dmesg.txt").write_text("\n".join(view.dmesg) + "\n")
            findings += checks.check_guest(claims, view, spec.domid, is_32bit=is_32bit, event_chip=spec.event_chip,
                                           acpi=acpi)
            if view.fdt:
                findings += self._witness_build(spec, view)
            if acpi and spec.domid == 0:
                findings += self._check_acpi_tables()
        if self.spec.toolstack is not None:
            findings += self._check_toolstack(claims)
        self.result.findings = findings
        self.result.timings["probe"] = round(time.monotonic() - started, 2)
        if self.tweaks.listen:
            self.listen(self.tweaks.listen)
        return findings

    def listen(self, seconds: float) -> None:
        """Read the console `seconds` more; a failure it shows meanwhile (Xen's watchdog firing) is raised."""
        monitor = self.strategy.monitor
        end = monitor.clock() + seconds
        self._guarded(lambda: self.strategy.wait_until(lambda: monitor.clock() >= end,
                                                       f"{seconds:.0f} s more of the console"))

    def _check_toolstack(self, claims: xenlog.XenClaims) -> list[Finding]:
        """dom0's toolstack at work: xenstore, xl, its disk; then a domU `xl create` starts, probed like any guest,
        moving data through its PV disk and network (harness/toolstack.py)."""
        spec, domu = self.spec.toolstack, self.spec.toolstack.domu
        report = self.result.toolstack = toolstack.ToolstackReport()
        dom0 = self.shell("dom0")
        self._guarded(lambda: toolstack.probe_dom0(dom0, report))
        self._guarded(lambda: toolstack.write_pv_disk(dom0, report))
        monitor = self.strategy.monitor
        start = monitor.line_count
        driver = self._guarded(lambda: self.strategy.attach(domu, f"xl create -c {toolstack.DOMU_CONFIG_PATH}"))
        report.xl_create = toolstack.xl_lines(line.text for line in monitor.since(start) if line.source == domu.source)
        shell = guest.GuestShell(driver, domu.name, monitor)
        view = self.result.views[domu.name] = self._guarded(lambda: guest.probe(shell))
        if view.fdt:
            (self.artifacts / f"{domu.name}.dtb").write_bytes(view.fdt)
        (self.artifacts / f"{domu.name}-dmesg.txt").write_text("\n".join(view.dmesg) + "\n")
        self._guarded(lambda: toolstack.exercise_domu(shell, report))
        self._guarded(self.strategy.detach)
        self._guarded(lambda: toolstack.finish_dom0(self.shell("dom0"), report))
        xen_cmdline = self.result.cmdlines["xen"]
        dom0_mem = witnesses.dom0_mem(xen_cmdline)
        return [
            *toolstack.known_libxl_defects(
                checks.check_guest(claims, view, domu.domid, is_32bit=self.spec.arch == "arm32",
                                   event_chip=domu.event_chip, events_fire=True), self.spec.arch == "arm32"),
            *toolstack.check(report, claims, cpus=self.spec.cpus,
                             dom0_vcpus=checks.dom0_vcpus(xen_cmdline, self.spec.cpus),
                             dom0_memory_mb=None if dom0_mem is None else dom0_mem >> 20, domu_name=domu.name,
                             domu_memory_mb=spec.domu_memory_mb),
        ]

    def _witness_build(self, spec, view: guest.GuestView) -> list[Finding]:
        """What Xen's domain builder gave a guest (memory, vCPUs, GIC, timer, /chosen), from Xen's log, the guest's
        firmware tables (its tree; an ACPI dom0's minimal tree and EFI map) and its kernel; a device-tree dom0's
        tree also against the host tree the plan booted (dom0-dt.diff). harness/witnesses.py judges."""
        xen_cmdline = self.result.cmdlines["xen"]
        monitor = self.strategy.monitor
        build = witnesses.parse_xen([*monitor.text("xen-ring"), *monitor.text("xen")])
        if spec.domid == 0:
            vcpus = checks.dom0_vcpus(xen_cmdline, build.pcpus or self.spec.cpus)
            asked = witnesses.Asked(spec.cmdline, witnesses.dom0_mem(xen_cmdline), vcpus, self.spec.arch == "arm32")
        else:
            asked = witnesses.Asked(spec.cmdline, spec.memory_kb * 1024, spec.cpus, self.spec.arch == "arm32")
        probed = self._guarded(lambda: self.shell(spec.name).run(witnesses.PROBE))
        if self.spec.can("acpi") and spec.domid == 0:  # memory, CPUs and the UART in the ACPI tables and EFI map
            spcr = self.host_acpi / "SPCR" if self.host_acpi else None
            uart = witnesses.spcr_uart(spcr.read_bytes() if spcr and spcr.is_file() else None)
            findings, witness = witnesses.judge_acpi(build, spec.name, asked, view.fdt, view.dmesg, view.interrupts,
                                                     probed, uart)
            self.result.witnesses[spec.name] = witness
            return findings + self._witness_efi_memory(spec.name, view.fdt, build, witness)
        host_path = self.artifacts / "boot.dtb"
        host = host_path.read_bytes() if spec.domid == 0 and host_path.is_file() else None
        findings, witness, diff = witnesses.judge(build, spec.domid, spec.name, asked, view.fdt, view.dmesg,
                                                  view.interrupts, probed, host, xen_cmdline,
                                                  self.result.claims.version)
        if diff is not None:
            witness.diff = f"{spec.name}-dt.diff"
            (self.artifacts / witness.diff).write_text(diff)
        self.result.witnesses[spec.name] = witness
        return findings

    def _witness_efi_memory(self, name: str, fdt: bytes, build, witness) -> list[Finding]:
        """An ACPI dom0's EFI memory map (where its minimal tree says), read through /proc/kcore, saved as
        <guest>-efi-mmap.bin and judged against Xen's banks and the kernel's System RAM."""
        where = dtbuild.uefi_memory_map(fdt)
        raw = where and self._guarded(lambda: acpidump.read_physical(self.shell(name), where[0], where[1], "efi-mmap"))
        if raw:
            (self.artifacts / f"{name}-efi-mmap.bin").write_bytes(raw)
        return witnesses.check_efi_memory(build, where, raw, witness, name)

    def _check_acpi_tables(self) -> list[Finding]:
        """dom0's ACPI tables against the bindings and against the machine's own."""
        tables, host = self.artifacts / "dom0-acpi", self.artifacts / "host-acpi"
        self._guarded(lambda: acpidump.capture(self.shell("dom0"), tables, self.result.views["dom0"].dmesg))
        shutil.copytree(self.host_acpi, host, dirs_exist_ok=True)
        vcpus = checks.dom0_vcpus(self.result.cmdlines["xen"], self.spec.cpus)
        return acpi.validate_tables(acpi_input.read(tables), acpi_input.read(host), acpi.Profile(vcpus=vcpus))

    def _probe(self, name: str) -> guest.GuestView:
        return self._guarded(lambda: guest.probe(self.shell(name)))

    def _guarded(self, ask: Callable):
        """`ask()`, a conversation with a guest; a guest that stops answering is recorded as hung."""
        monitor = self.strategy.monitor
        try:
            return ask()
        except BootFailure as exc:
            self.result.record_failure(exc.failure)
            raise
        except guest.ProbeError as exc:
            if not self.strategy.power.running():  # the machine stopped under the probe: say how
                failure = self.result.record_failure(self.strategy.machine_stopped())
            else:  # a shell that stops answering is the guest's fault, not the lab's: a hang at the shell
                monitor.hang(str(exc), "probe-unanswered")
                failure = self.result.record_failure(monitor.conclude())
            raise BootFailure(failure) from None

    def _last_words(self) -> None:
        """Before the console closes on a boot that did not pass: where the machine is, and Xen's debug-key
        dump saved as xen-debugkeys.txt (as Xen's own test system takes before it collects logs). Once a boot."""
        strategy = self.strategy
        if strategy is None or strategy.prober is None or self._last_words_taken:
            return
        self._last_words_taken = True
        if strategy.diagnosis is None or not strategy.diagnosis.complete:
            machine = strategy.machine
            if machine is None or machine.running():
                try:
                    found = strategy.prober.probe()
                except Exception as exc:  # noqa: BLE001 (the verdict stands without it)
                    log.warning("could not take Xen's debug-key dump: %s", exc)
                    return
                if strategy.diagnosis is None:
                    strategy.diagnosis = diagnose.decide(found, strategy.monitor)
                else:
                    strategy.diagnosis.dumps += found.dumps

    def close(self) -> BootResult:
        """Power off, release labgrid, decide the verdict and write result.json (once)."""
        if self.closed:
            return self.result
        self.closed = True
        monitor = self.strategy.monitor if self.strategy else None
        if self.strategy is not None and getattr(self.strategy.power, "version_line", ""):
            self.result.lab["qemu"] = self.strategy.power.version_line
        if monitor is not None and monitor.failure is not None:
            self.result.record_failure(monitor.conclude())  # seen on the console while no one was waiting
        if self.result.failure is not None or failures(self.result.findings):
            self._last_words()
        if self.strategy is not None and self.strategy.diagnosis is not None:  # a probe's, or the last words'
            self.result.diagnosis = self.strategy.diagnosis
        if self._ssh is not None:
            self._ssh.close()
        try:
            if self.strategy is not None:  # a board is left powered by labgrid: off, whatever happened
                self.strategy.transition(Status.off)
        finally:
            if self.env is not None:
                self.env.cleanup()
            if self.vlab is not None:
                self.vlab.close()
            if self.acquired is not None:
                places.forget_labgrid_session()
                places.release(self.acquired, self.coordinator)
            if self._console_log is not None:
                self._console_log.close()
            self.result.decide()
            self.result.write()
        return self.result


def symbol_sources(arts: Mapping[str, Artifact]) -> dict:
    """How to read the symbol tables of the Xen and the kernel that boot (on first use: see diagnose.Symbolizer)."""
    return {kind: functools.partial(symbols.table_for, arts[name].path, kind, sha256=arts[name].sha256)
            for kind, name in (("xen", "xen"), ("linux", "kernel")) if name in arts}


def read_board_dtb(spec: TargetSpec, images: Images, fetched: Mapping[str, Artifact]) -> bytes:
    """The board's own device tree (BoardSpec.dtb): a pinned image artifact, taken from `fetched` (the
    boot's own profile, already fetched) or fetched and verified; or the lab's file, relative to the YAML."""
    board = spec.board
    if board.dtb_image is not None:
        profile, name = board.dtb_image
        pinned = fetched.get(name) if profile == spec.images else None
        path = (pinned or images.artifact(profile, name)).path
    elif board.dtb:
        path = (spec.path.parent / board.dtb).resolve()
    else:
        raise UsageError(f"{spec.path.name}: the board names no DTB: set board: dtb: to its file, "
                         "or to image:ARTIFACT for a pinned one.")
    try:
        return inputs.read_file(path, inputs.DTB)
    except HarnessError as exc:
        raise UsageError(f"{spec.path.name}: the board's DTB: {exc}") from None


def lab_known_hosts(spec: TargetSpec) -> Path | None:
    """The known_hosts the lab provides for dom0's SSH (board: ssh: known_hosts:, relative to the target YAML)."""
    if spec.board is None or not spec.board.ssh_known_hosts:
        return None
    return (spec.path.parent / spec.board.ssh_known_hosts).resolve()


def lab_serverip(board: BoardSpec, provider_host: str) -> str | None:
    """The lab's TFTP server as the board reaches it: the board section's `serverip`, else the exporter
    serving a RemoteTFTPProvider, resolved here; None for a local TFTPProvider (this host: the lab says)."""
    if board.serverip:
        return board.serverip
    if provider_host == "localhost":  # labgrid's name for a local provider
        return None
    try:
        return socket.gethostbyname(provider_host)
    except OSError as exc:
        raise InfrastructureError(f"the TFTP exporter's host {provider_host!r} does not resolve ({exc}): "
                                  "fix the lab's DNS, or set board: serverip:.") from None


def _tweaked(spec: TargetSpec, tweaks: Tweaks) -> TargetSpec:
    """The target as this boot runs it: tweaks applied to its guests."""
    if tweaks.without_dom0:
        spec = spec.without_dom0()
    if spec.dom0 and (tweaks.edit_dom0_cmdline is not None or tweaks.dom0_args):
        cmdline = tweaks.edit_dom0_cmdline(spec.dom0.cmdline) if tweaks.edit_dom0_cmdline else spec.dom0.cmdline
        spec = replace(spec, dom0=replace(spec.dom0, cmdline=" ".join(filter(None, [cmdline, tweaks.dom0_args]))))
    if tweaks.enhanced is not None:
        spec = replace(spec, domus=tuple(replace(d, enhanced=tweaks.enhanced) for d in spec.domus))
    if tweaks.edit_toolstack is not None and spec.toolstack is not None:
        spec = replace(spec, toolstack=tweaks.edit_toolstack(spec.toolstack))
    return spec
