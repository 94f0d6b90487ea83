"""Device trees a user brings, read into one DTB for the validator: a DTB, a DTS, or a copy of /proc/device-tree.

A DTB is taken as it is; a DTS is compiled with dtc (Debian's device-tree-compiler), bounded in time, memory
and output; a directory is read as Linux lays out /proc/device-tree (a node per directory, a property per
file), as ``dtc -I fs`` reads it. Each reading says which layout it saw; the validator only ever sees a DTB.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import stat
import subprocess
import tempfile

import libfdt

from harness import inputs
from harness.errors import InfrastructureError, UnusableInput
from harness.findings import Finding
from harness.validate.dt import MAX_DEPTH, Expectation, check_profile, validate_dtb

DTB_LAYOUT, DTS_LAYOUT, PROCFS_LAYOUT = "a DTB", "a DTS (compiled with dtc)", "a copy of /proc/device-tree"
FDT_MAGIC = (libfdt.FDT_MAGIC & 0xFFFFFFFF).to_bytes(4, "big")  # the binding gives it as a signed int
DTS_TAG = b"/dts-v1/"
DTC_SECONDS = 30  # a real DTS compiles in well under a second
DTC_MEMORY = 1 << 30  # address space for dtc: a hostile /incbin/ cannot take the machine's memory
PRLIMIT = "prlimit"  # util-linux, Essential in Debian


def read(path: pathlib.Path) -> tuple[bytes, inputs.Reading]:
    """The DTB a path holds or stands for, and what was read; UnusableInput when it is none of the three."""
    path = pathlib.Path(path)
    if stat.S_ISDIR(inputs.examine(path, inputs.DTB).st_mode):
        return dtb_from_procfs(path), inputs.Reading(str(path), PROCFS_LAYOUT)
    data = inputs.read_file(path, inputs.DTB)
    if data.startswith(FDT_MAGIC):
        return data, inputs.Reading(str(path), DTB_LAYOUT)
    if DTS_TAG in data[:65536] and b"\0" not in data:
        return compile_dts(path, data), inputs.Reading(str(path), DTS_LAYOUT)
    seen = "empty" if not data.strip() else "neither a DTB (no FDT magic d00dfeed) nor a DTS (no /dts-v1/ tag)"
    raise UnusableInput(f"{path} is {seen}: {inputs.DTB.hint}")


def check_path(path: pathlib.Path, profile: str = "dom0", expect: Expectation | None = None) -> list[Finding]:
    """Validate a DTB, a DTS or a copy of /proc/device-tree."""
    check_profile(profile)
    return validate_dtb(read(path)[0], profile, expect, label=str(path))


def compile_dts(path: pathlib.Path, text: bytes) -> bytes:
    """A DTS compiled by dtc; UnusableInput with dtc's own error when it cannot be."""
    dtc = shutil.which("dtc")
    if dtc is None:
        raise InfrastructureError(f"{path} is a DTS and dtc is not installed: install Debian's device-tree-compiler "
                                  "(./run does it), or give the compiled .dtb")
    # util-linux's prlimit caps dtc's output file and memory, not a preexec_fn: Python run between fork and
    # exec crashes a process that has loaded gRPC (harness/lab/process.py), and dtc's "failure" was that crash
    bounded = [PRLIMIT, f"--fsize={inputs.DTB.limit}", f"--as={DTC_MEMORY}", "--"]
    with tempfile.TemporaryDirectory(prefix="harness-dtc-") as tmp:
        out = pathlib.Path(tmp) / "out.dtb"
        try:  # the path, not stdin: a DTS's /include/ names files beside it
            proc = subprocess.run([*bounded, dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(out), str(path)],
                                  capture_output=True, timeout=DTC_SECONDS, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UnusableInput(f"{path}: dtc did not compile it within {DTC_SECONDS} s: "
                                "compile it yourself (dtc -O dtb) and give the .dtb") from None
        if proc.returncode != 0:
            raise UnusableInput(f"{path} is a DTS that dtc cannot compile ({_dtc_error(proc)}): "
                                + ("run it through cpp first, as the kernel's build does (it uses #include), "
                                   "or give the .dtb" if b"#include" in text else "fix it, or give the .dtb"))
        return inputs.read_file(out, inputs.DTB)


def _dtc_error(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode == -signal.SIGXFSZ:
        return f"it compiles to more than the {inputs.human(inputs.DTB.limit)} a DTB may be"
    if proc.returncode in (-signal.SIGABRT, -signal.SIGSEGV, -signal.SIGKILL):  # malloc failed under the cap
        return f"it needs more than the {inputs.human(DTC_MEMORY)} of memory dtc may use"
    if proc.returncode < 0:
        return f"dtc was stopped by signal {-proc.returncode}"
    lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("Error", "FATAL"))] or lines or [f"exit status {proc.returncode}"]
    return errors[0][:200]


def dtb_from_procfs(root: pathlib.Path) -> bytes:
    """Rebuild a DTB from a copy of /proc/device-tree: files are properties, directories nodes.

    Linux adds a ``name`` pseudo-property to every node; it is dropped when it only repeats
    the node name, as it was not in the blob Linux was given. Symbolic links are skipped (never
    followed: no loops); the walk reads at most what a DTB may hold (harness/inputs.py).
    """
    root = pathlib.Path(root)
    hint = inputs.DT_COPY.hint
    budget = inputs.Budget(root, inputs.DT_COPY)
    top = inputs.list_dir(root, budget)
    if not top:
        raise UnusableInput(f"{root} is empty: {hint}")
    sw = libfdt.FdtSw()
    sw.finish_reservemap()

    def emit(directory: pathlib.Path, entries: list[inputs.Entry], name: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise UnusableInput(f"{directory} nests more than {MAX_DEPTH} levels deep: {hint}")
        for entry in entries:
            if not entry.name.isascii():  # DT names are ASCII; libfdt's binding takes only text
                raise UnusableInput(f"{entry.path} is not an ASCII node or property name: {hint}")
            if entry.what not in (inputs.FILE, inputs.DIRECTORY, inputs.SYMLINK):
                raise UnusableInput(f"{entry.path} is {entry.what}, not a property file: {hint}")
        sw.begin_node(name)
        base = name.split("@", 1)[0].encode()
        for entry in entries:
            if entry.what != inputs.FILE:
                continue
            value = inputs.read_file(entry.path, inputs.DTB, budget)
            if entry.name == "name" and value == base + b"\0":
                continue
            sw.property(entry.name, value)
        for entry in entries:
            if entry.what == inputs.DIRECTORY:
                emit(entry.path, inputs.list_dir(entry.path, budget), entry.name, depth + 1)
        sw.end_node()

    try:
        emit(root, top, "", 0)
        return bytes(sw.as_fdt().as_bytearray())
    except libfdt.FdtException as exc:
        raise UnusableInput(f"{root} cannot be turned into a DTB ({exc}): {hint}") from exc

