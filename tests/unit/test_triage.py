"""`harness triage` on logs as people bring them: how a good boot ends offline, what a failure's context says of
a fragment, and the wrappers other tools put around a console log.

The endings are real qemu-virt boots (tests/unit/data/logs/capture_endings.py made them: a getty's login
prompt, an orderly power-off, Xen's watchdog killing dom0, dom0's init exiting); the wrapped logs are those boots
as real tools wrote them (tests/unit/data/logs/wrap_logs.py: moreutils' ts, labgrid's own loggers, picocom under
script(1), sed's e-mail quoting; LAVA's and Jenkins' layouts written by their documented formats).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys

import pytest
from captured import DATA, HEALTHY_LOG
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import cli, logreader
from harness.errors import UnusableInput
from harness.logreader import LINE_LIMIT, LogReader, erase_backspaces, recognise
from harness.monitor import ConsoleMonitor, Verdict, ending, triage

LOGS = DATA / "logs"


def log(name: str) -> bytes:
    return gzip.decompress((LOGS / f"{name}.log.gz").read_bytes())


def run(capsys, *args: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    status = cli.main(["triage", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out


# --- how a good boot ends ---------------------------------------------------------------------------


ENDINGS = [  # (log, verdict, ending or failure stage, signature, the line where it ended or failed)
    ("ending-login", Verdict.PASSED, "dom0:login", None, 336),
    ("ending-poweroff", Verdict.PASSED, "power-off", None, 335),
    ("ending-watchdog", Verdict.CRASHED, "dom0:shell", "xen-watchdog", 900),
    ("ending-init-exits", Verdict.CRASHED, "dom0:init", "init-killed", 335),
]


@pytest.mark.parametrize(("name", "verdict", "where", "signature", "line"), ENDINGS, ids=[e[0] for e in ENDINGS])
def test_each_real_ending_gets_its_verdict(name, verdict, where, signature, line):
    monitor, got = triage(log(name))
    assert got is verdict, monitor.failure and monitor.failure.message()
    if verdict is Verdict.PASSED:
        assert (monitor.failure, ending(monitor), monitor.reached[where].number) == (None, where, line)
    else:
        failure = monitor.failure
        assert (failure.stage, failure.signature, failure.line.number) == (where, signature, line)


def test_the_healthy_boot_ends_at_its_shell_prompt_without_being_told_the_prompt():
    monitor, verdict = triage(HEALTHY_LOG.read_bytes())
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:shell")


@pytest.mark.parametrize("prompt", ["# ", "~ # ", "/ # ", "root@bookworm:~# ", "user@host:/tmp$ ", "[root@host ~]# ",
                                    "$ ", "uart:~$ ", "qemu-aarch64 ~ # "])
def test_common_prompts_end_a_boot(prompt):
    cut = log("ending-login")[: log("ending-login").index(b"dom0 login: ")]
    monitor, verdict = triage(cut + prompt.encode())
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:shell")


@pytest.mark.parametrize("tail", [
    b"=> ",  # U-Boot's prompt: firmware's, never a guest's
    b"Press any key to stop autoboot:  3 ",
    b"[    5.0] random: crng init done\r\n",
    b"Last boot: #1 ",
])
def test_what_is_no_prompt_leaves_the_log_incomplete(tail):
    cut = log("ending-login")[: log("ending-login").index(b"dom0 login: ")]
    monitor, verdict = triage(cut + tail)
    assert verdict is Verdict.INCOMPLETE and monitor.failure.signature == "log-ends"
    assert monitor.failure.stage == "dom0:init"  # the last stage, not "hung": a cut capture looks the same


def test_a_log_cut_before_its_power_off_is_incomplete_not_hung():
    data = log("ending-poweroff")
    monitor, verdict = triage(data[: data.index(b"[    5.982251] reboot: Power down")])
    assert (verdict, monitor.failure.stage) == (Verdict.INCOMPLETE, "dom0:init")


def test_a_reboot_is_no_orderly_power_off():
    data = log("ending-poweroff").replace(b"reboot: Power down", b"reboot: Restarting system")
    data = data.replace(b"Hardware Dom0 halted: halting machine", b"Hardware Dom0 shutdown: rebooting machine")
    monitor, verdict = triage(data)
    assert (verdict, monitor.failure.signature) == (Verdict.CRASHED, "dom0-reboot")


def test_xens_watchdog_line_is_xens_while_a_domu_has_the_serial_input():
    """Xen 4.17 prints a focused domU's console with its own prefix: its watchdog line must stay Xen's."""
    monitor = ConsoleMonitor()
    monitor.feed(b"(XEN) Xen version 4.17.7 (Debian)\n(XEN) Freed 348kB init memory.\n"
                 b"(XEN) *** Serial input to DOM1 (type 'CTRL-a' three times to switch input)\n"
                 b"(XEN) domU1# \n(XEN) Watchdog timer fired for domain 1\n")
    assert monitor.lines[-2].source == "dom1" and monitor.lines[-1].source == "xen"
    assert monitor.failure is not None and monitor.failure.signature == "xen-watchdog"


def test_a_users_prompt_and_passed_pattern(capsys):
    path = LOGS / "ending-init-exits.log.gz"
    data = log("ending-init-exits")
    cut = data[: data.index(b"[    3.9")]  # before the panic: ends at "harness-init: dom0 ready"
    monitor, verdict = triage(cut + b"ready> ", prompts=[r"ready> "])
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:shell")
    monitor, verdict = triage(cut, passed=r"harness-init: \S+ ready")
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "passed")
    monitor, verdict = triage(cut, passed=r"ALL TESTS PASSED")  # a pattern that is not there
    assert verdict is Verdict.INCOMPLETE
    assert cli.main(["triage", "--passed", "(", str(path)]) == 2
    assert "--passed '(' is not a regular expression" in capsys.readouterr().err


def test_a_non_linux_guest_passes_on_what_it_printed():
    """A Zephyr dom0 (its banner and shell, as Zephyr prints them): no Linux milestones, still a good boot."""
    data = log("ending-login")
    xen = data[: data.index(b"[    0.000000] Booting Linux")]
    zephyr = b"*** Booting Zephyr OS build v3.6.0 ***\r\r\nHello from dom0\r\r\n\r\r\nuart:~$ "
    monitor, verdict = triage(xen + zephyr)
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:shell")
    assert "dom0:kernel" in monitor.reached
    minios = xen + b"(d1) Xen Minimal OS!\r\n(d1) Initialising console ... done.\r\n"  # Mini-OS's own words
    monitor, verdict = triage(minios)
    assert (verdict, monitor.failure.stage) == (Verdict.INCOMPLETE, "dom1:kernel")


# --- a Linux guest under Xen must show it found Xen ------------------------------------------------


def without(data: bytes, *words: bytes) -> bytes:
    """The log without the lines holding any of `words` (a kernel that did not print them)."""
    return b"\n".join(line for line in data.split(b"\n") if not any(w in line for w in words))


DISCOVERY_WORDS = (b"support found", b"Grant table initialized", b"xen:events: Using")


@pytest.mark.parametrize("name", ["ending-login", "ending-poweroff"])
def test_a_good_ending_passes_when_the_guest_found_xen(name):
    monitor, verdict = triage(log(name))
    assert verdict is Verdict.PASSED and monitor.failure is None
    assert {"dom0:kernel", "dom0:xen-found", "dom0:grant-table", "dom0:events"} <= set(monitor.reached)


@pytest.mark.parametrize("name", ["ending-login", "ending-poweroff"])
def test_a_good_ending_without_the_guests_xen_discovery_fails(name):
    """dom0's kernel started under Xen and reached its prompt (or power-off), but never said it found Xen."""
    monitor, verdict = triage(without(log(name), *DISCOVERY_WORDS))
    failure = monitor.failure
    assert (verdict, failure.verdict, failure.stage, failure.signature) == (
        Verdict.FAILED, Verdict.FAILED, "dom0:kernel", "xen-discovery-missing")
    assert failure.detail == ("expected 'Xen X.Y support found', 'Grant table initialized', 'xen:events: Using … ABI'; "
                              "found none of them")
    assert [(line.number, line.text) for line in failure.evidence] == [
        (93, "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x411fd070]")]  # the kernel's first line


def test_each_missing_discovery_line_is_named_and_the_found_ones_with_their_lines():
    monitor, verdict = triage(without(log("ending-login"), b"xen:events: Using"))
    assert verdict is Verdict.FAILED and monitor.failure.detail == (
        "expected 'xen:events: Using … ABI'; found 'Xen X.Y support found' (line 99), "
        "'Grant table initialized' (line 190)")


def test_a_fragment_that_starts_after_the_kernel_start_is_not_judged_on_its_discovery():
    """Xen's lines, then dom0 from its init on: the log never held dom0's kernel start or its discovery lines."""
    data = log("ending-login")
    xen, rest = data[: data.index(b"[    0.000000] Booting Linux")], data[data.index(b"[    2.776845] Run /init"):]
    monitor, verdict = triage(xen + rest)
    assert (verdict, ending(monitor), "dom0:kernel" in monitor.reached) == (Verdict.PASSED, "dom0:login", False)


def test_a_linux_kernel_without_xen_is_not_judged_on_xens_discovery():
    """A log with no line of Xen's (a kernel on its own): nothing says the kernel ran under Xen."""
    data = without(log("ending-login"), *DISCOVERY_WORDS)
    monitor, verdict = triage(b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"(XEN)")))
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:login")


def test_the_discovery_verdict_on_the_command_line(capsys, tmp_path):
    path = tmp_path / "no-discovery.log"
    path.write_bytes(without(log("ending-login"), b"Grant table initialized"))
    status, out = run(capsys, str(path))
    assert status == 1 and "verdict: failed after stage 'dom0:kernel'" in out and "xen-discovery-missing" in out
    assert "expected 'Grant table initialized'; found 'Xen X.Y support found' (line 99)" in out
    status, out = run(capsys, "--json", str(path))
    record = json.loads(out)
    assert (status, record["verdict"], record["class"], record["signature"], record["ending"]) == (
        1, "failed", "build", "xen-discovery-missing", None)
    assert record["failure"]["evidence"] == [
        {"line": 93, "text": "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x411fd070]"}]


# --- fragments and empty logs -----------------------------------------------------------------------


def test_a_fragment_takes_its_stage_from_the_failures_context():
    """A log that starts at Xen's panic while it builds dom0: stage dom0-loading (the log has no milestone)."""
    data = log("fault-impossible-dom0-mem")
    monitor, verdict = triage(data[data.index(b"(XEN) Panic on CPU 0:"):])
    assert (verdict, monitor.failure.signature, monitor.failure.stage) == (
        Verdict.CRASHED, "xen-dom0-memory", "dom0-loading")
    assert monitor.failure.evidence[0].number == 1  # the fragment's own line numbers


def test_a_guest_fragment_is_the_guests():
    """dom0's panic without any of Xen's lines before it: a guest kernel line, not firmware's."""
    data = log("fault-dom0-init-missing-panic-hangs")
    monitor, verdict = triage(data[data.index(b"[    "):][-3000:].split(b"\n", 1)[1])
    assert (verdict, monitor.failure.signature, monitor.failure.stage) == (Verdict.CRASHED, "no-root-fs", "dom0:kernel")


@pytest.mark.parametrize("data", [b"", b"   \n\r\n\t\n", b"[Pipeline] Start of Pipeline\n[Pipeline] End of Pipeline\n"])
def test_no_output_is_a_hang_at_power_on(data):
    monitor, verdict = triage(data)
    failure = monitor.failure
    assert (verdict, failure.stage, failure.signature, failure.description) == (
        Verdict.HUNG, "power-on", "silence", "no console output")


def test_qemu_refusing_to_start_in_a_log_is_the_labs():
    captured = (b"+ qemu-system-aarch64 -machine virt -no-such-option\n"  # a CI's shell trace, then QEMU's stderr
                b"qemu-system-aarch64: -no-such-option: invalid option\n")
    monitor, verdict = triage(captured)
    assert (verdict, monitor.failure.signature, monitor.failure.stage) == (
        Verdict.INFRASTRUCTURE, "qemu-bad-option", "power-on")


# --- wrappers ---------------------------------------------------------------------------------------


WRAPPED = [  # (wrapped fixture, the ending it wraps, the layout the reader must name, quoted)
    ("wrapped-ts", "ending-login", "ts-timestamps", False),
    ("wrapped-ts-iso", "ending-login", "iso-timestamps", False),
    ("wrapped-ts-seconds", "ending-login", "seconds-timestamps", False),
    ("wrapped-labgrid-serial-logger", "ending-watchdog", "labgrid-serial-logger", False),
    ("wrapped-labgrid-console-log", "ending-watchdog", "labgrid-console-log", False),
    ("wrapped-picocom", "ending-poweroff", "terminal-program", False),
    ("wrapped-lava", "ending-watchdog", "lava-yaml", False),
    ("wrapped-jenkins", "ending-poweroff", "jenkins", False),
    ("wrapped-email", "ending-init-exits", "plain", True),
]


def judged(data: bytes) -> tuple:
    monitor, verdict = triage(data)
    failure = monitor.failure
    return verdict, ending(monitor), failure and failure.stage, failure and failure.signature, list(monitor.reached)


@pytest.mark.parametrize(("name", "base", "layout", "quoted"), WRAPPED, ids=[w[0] for w in WRAPPED])
def test_a_wrapped_log_is_judged_as_its_console(name, base, layout, quoted):
    reader = LogReader([log(name)])
    monitor, verdict = triage(reader)
    assert (reader.layout.name, reader.quoted) == (layout, quoted)
    failure = monitor.failure
    assert (verdict, ending(monitor), failure and failure.stage, failure and failure.signature,
            list(monitor.reached)) == judged(log(base))


@pytest.mark.parametrize(("name", "base", "layout", "quoted"), WRAPPED, ids=[w[0] for w in WRAPPED])
def test_line_numbers_are_the_wrapped_files_own(name, base, layout, quoted):
    """Each milestone and each line of evidence names the physical line of the file that holds it, once."""
    physical = log(name).split(b"\n")

    def holds(line) -> bool:
        return not line.text.strip() or line.text.split()[-1].encode() in physical[line.number - 1]

    monitor, _ = triage(log(name))
    for key, line in monitor.reached.items():
        assert holds(line), (key, line)
    if monitor.failure:
        numbers = [n for n, _ in cli.evidence_lines(monitor.failure.evidence)]
        assert numbers == sorted(set(numbers)) and len(numbers) > 5
        for line in monitor.failure.evidence:
            assert holds(line), line


def test_what_the_reader_saw_is_said():
    data = log("wrapped-lava")
    reader = LogReader([data])
    triage(reader)
    assert reader.describe() == "LAVA job log (YAML); ANSI escapes"
    assert reader.to_dict()["lines"] == data.count(b"\n")


def test_a_plain_log_and_a_linux_dmesg_are_not_mistaken_for_wrappers():
    assert recognise(HEALTHY_LOG.read_bytes().split(b"\n")) == (recognise([])[0], False)
    dmesg = (DATA / "logs" / "qemu-virt-dom0-dmesg.txt").read_bytes()  # every line "[  t] …": the kernel's own
    reader = LogReader([dmesg])
    monitor, _ = triage(reader)
    assert reader.layout.name == "plain" and "dom0:xen-found" in monitor.reached  # the stamps were kept


def test_what_only_looks_like_a_wrapper_is_left_alone():
    login = log("ending-login").split(b"\n")
    half = b"\n".join(b"Dec 03 15:00:00 " + line if i % 2 else line for i, line in enumerate(login))
    reader = LogReader([half])  # a stamp on half the lines is no wrapper: nothing is taken off
    monitor, _ = triage(reader, keep_lines=None)
    assert reader.layout.name == "plain" and monitor.lines[1].text == "Dec 03 15:00:00"  # kept, before Xen's line
    lava = log("wrapped-lava").split(b"\n")
    not_console = b"\n".join(line for line in lava if b"lvl: target" not in line)  # LAVA's own lines only
    monitor, verdict = triage(not_console)
    assert (verdict, monitor.failure.description) == (Verdict.HUNG, "no console output")
    serial = log("wrapped-labgrid-serial-logger").replace(b") < ", b") > ")  # what labgrid typed, not read
    monitor, verdict = triage(serial)
    assert (verdict, monitor.failure.description) == (Verdict.HUNG, "no console output")


def test_a_gzipped_log_is_read_as_it_streams(monkeypatch):
    packed = (LOGS / "wrapped-lava.log.gz").read_bytes()
    reader = LogReader(packed[i : i + 4096] for i in range(0, len(packed), 4096))
    monitor, verdict = triage(reader)
    assert "gzip" in reader.seen and reader.layout.name == "lava-yaml" and reader.size == len(packed)
    assert (verdict, monitor.failure.signature) == (Verdict.CRASHED, "xen-watchdog")
    with pytest.raises(UnusableInput, match="gzipped but cannot be unpacked"):
        triage(packed[:100] + b"\xff" * 100 + packed[200:])
    monkeypatch.setattr(logreader, "GUNZIP_LIMIT", 10_000)  # a bomb: more unpacked than a log may be
    with pytest.raises(UnusableInput, match="unpacks to over"):
        triage(packed)


def test_crlf_ansi_colour_and_backspaces_are_cleaned():
    data = log("ending-login")
    coloured = re.sub(rb"(Xen \d+\.\d+ support found)", lambda m: b"\x1b[1;32m" + m.group(1) + b"\x1b[0m", data)
    typed = coloured.replace(b"dom0 login: ", b"dom0 logn\x08\x08\x08ogin: ")
    reader = LogReader([typed.replace(b"\r\r\n", b"\r\n")])
    monitor, verdict = triage(reader)
    assert (verdict, ending(monitor)) == (Verdict.PASSED, "dom0:login") and "dom0:xen-found" in monitor.reached
    assert reader.seen == {"CRLF line ends", "ANSI escapes", "backspaces"}
    assert erase_backspaces(b"ab\x08\x08\x08c") == b"c"


def test_a_line_longer_than_the_limit_keeps_its_number_and_its_wrapper_is_taken_off():
    lines = log("ending-login").split(b"\n")
    data = b"\n".join(b"Dec 03 15:00:%02d " % (i % 60) + line for i, line in enumerate(lines))
    long = b"Dec 03 15:00:00 " + b"x" * (3 * LINE_LIMIT) + b"\n"
    reader = LogReader([long + data])
    monitor, verdict = triage(reader)
    assert reader.layout.name == "ts-timestamps" and verdict is Verdict.PASSED
    assert monitor.reached["dom0:login"].number == log("ending-login").count(b"\n") + 2


# --- the command line -------------------------------------------------------------------------------


def test_json_says_everything_the_text_says(capsys, tmp_path):
    path = tmp_path / "lava.yaml"
    path.write_bytes(log("wrapped-lava"))
    status, out = run(capsys, "--json", str(path))
    record = json.loads(out)
    assert status == 1
    assert (record["verdict"], record["class"], record["stage"], record["signature"], record["ending"]) == (
        "crashed", "build", "dom0:shell", "xen-watchdog", None)
    assert record["reader"]["layout"] == "lava-yaml" and record["milestones"]["dom0:shell"] == 338
    assert {"line": 899, "text": "(XEN) Hardware Dom0 shutdown: watchdog rebooting machine"} in \
        record["failure"]["evidence"]
    status, text = run(capsys, str(path))
    assert "LAVA job log (YAML)" in text and "line    899  (XEN) Hardware Dom0 shutdown" in text
    assert "verdict: crashed after stage 'dom0:shell'" in text and status == 1


def test_standard_input_and_an_empty_capture(capsys, monkeypatch):
    status, out = run(capsys, "-", stdin=log("ending-login"), monkeypatch=monkeypatch)
    assert status == 0 and "ended at: dom0 login prompt, line 336" in out and "log: standard input" in out
    status, out = run(capsys, "--json", "-", stdin=b"\r\n  \n", monkeypatch=monkeypatch)
    record = json.loads(out)
    assert status == 1 and (record["verdict"], record["stage"], record["signature"]) == ("hung", "power-on", "silence")


# --- no input, however mangled, gives a traceback or a hang -----------------------------------------

# Short real logs to mangle: wrapped and plain, each cut to its last 6 KB (the endings and their wrappers).
MANGLE_BASES = [log(name)[-6000:] for name in ("wrapped-lava", "wrapped-labgrid-serial-logger", "wrapped-ts",
                                               "wrapped-email", "wrapped-picocom", "ending-watchdog")]
WRAPPER_BYTES = [b"\r", b"\r\r\n", b"\x1b[0;31m", b"\x08", b"> ", b"[Pipeline] ", b"- {\"dt\": ", b"\xe2\x90\xa4",
                 b"Dec 03 15:00:00 ", b"(XEN) ", b"\n", b"\xff\xfe", b"login: ", b"# ", b"\x00"]


@st.composite
def mangled_logs(draw: st.DrawFn) -> bytes:
    """A real (wrapped) log with bytes flipped, wrapper pieces and newlines put anywhere, and cut anywhere."""
    data = bytearray(draw(st.sampled_from(MANGLE_BASES)))
    for _ in range(draw(st.integers(0, 12))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(WRAPPER_BYTES))
        elif at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data[draw(st.integers(0, len(data))):][: draw(st.integers(0, len(data)))])


def survives(data: bytes, chunk: int) -> None:
    reader = LogReader(data[i : i + chunk] for i in range(0, len(data), chunk))
    monitor, verdict = triage(reader)
    assert verdict in Verdict
    assert (verdict is Verdict.PASSED) == (monitor.failure is None)
    assert reader.lines == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    for line in monitor.lines:
        assert 1 <= line.number <= max(reader.lines, 1)
    json.dumps(reader.to_dict()) and reader.describe()


@settings(max_examples=120, deadline=None)
@given(mangled_logs() | st.binary(max_size=2048), st.sampled_from([1, 7, 4096, 1 << 20]))
def test_mangled_logs_never_crash(data, chunk):
    survives(data, chunk)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(WRAPPER_BYTES) | st.binary(max_size=40), max_size=60).map(b"".join))
def test_wrapper_soup_never_crashes(data):
    survives(data, 13)


def test_chunking_does_not_change_the_verdict_or_the_line_numbers():
    data = log("wrapped-labgrid-serial-logger")
    whole = triage(data)[0]
    pieces = triage(LogReader(data[i : i + 333] for i in range(0, len(data), 333)))[0]
    assert [(k, v.number) for k, v in whole.reached.items()] == [(k, v.number) for k, v in pieces.reached.items()]
    assert whole.failure.signature == pieces.failure.signature
