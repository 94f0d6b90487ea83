"""Console logs as people bring them: one reader finds the wrapper around the console's own lines, takes it
off, and says what it saw. The judge behind it (harness/monitor.py) sees console lines only, each with the
number of the line it came from in the file.

What wraps a console log in the wild, each recognised on the log's first lines:

- a layout, at most one: LAVA's job log (one YAML flow mapping a line, `- {"dt": …, "lvl": "target", "msg": …}`;
  only the target's own lines are console output), labgrid's serial logger (`… < DATA␍␤`, its log lines)
  or its `--lg-log` console file (a three-line header, then raw bytes), a Jenkins console (`[Pipeline]`
  lines, the timestamper's `[ISO] ` prefix), a terminal program's status lines (minicom, picocom), or a
  timestamp on every line (moreutils' `ts`, ISO 8601, or `[   12.345678]` before Xen's own lines);
- e-mail quote markers (`> `), under any of those;
- what a terminal leaves in: CR before LF (`\\r\\n`, Xen's `\\r\\r\\n`), ANSI escapes, backspaces;
- gzip around it all (a CI's artifact), unpacked as it streams.

Bounded work: the log is read as a stream, at most SNIFF_LINES lines (SNIFF_BYTES) are held to recognise
it, and a line longer than LINE_LIMIT goes on in pieces, so memory does not grow with the log.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain

import yaml

from .errors import UnusableInput
from .inputs import CONSOLE_LOG, human

GZIP_MAGIC = b"\x1f\x8b\x08"
GUNZIP_PIECE = 1 << 20
GUNZIP_LIMIT = CONSOLE_LOG.limit  # unpacked, as much as a console log may be
SNIFF_LINES = 400  # lines looked at to recognise the wrapper
SNIFF_BYTES = 256 << 10
LINE_LIMIT = 64 << 10  # a physical line longer than this goes on in pieces (a log without newlines)
MOST = 0.8  # a prefix is a wrapper when this share of the non-blank lines looked at carry it


Unwrap = Callable[[bytes], "bytes | list[bytes] | None"]  # a line's console text(s), or None: not console output


@dataclass(frozen=True)
class Layout:
    name: str  # "lava-yaml": what --json says
    title: str  # "LAVA job log (YAML)": what the text says
    unwrap: Unwrap


def _keep(line: bytes) -> bytes:
    return line


def _prefix(pattern: re.Pattern[bytes]) -> Unwrap:
    return lambda line: line[m.end():] if (m := pattern.match(line)) else line


# --- LAVA -----------------------------------------------------------------------------------------

LAVA_ENTRY = re.compile(rb'^- \{"?dt"?: ')
LAVA_CONSOLE = ("target", "feedback")  # the device's console; "input" is what LAVA typed, the rest its own


def _lava(line: bytes) -> list[bytes] | None:
    if not LAVA_ENTRY.match(line):
        return None
    body = line[2:].strip()
    try:
        entry = json.loads(body)
    except ValueError:
        try:  # LAVA writes YAML: a message JSON cannot read (single quotes, YAML escapes)
            entry = yaml.safe_load(body)
        except yaml.YAMLError:
            return None
    if not isinstance(entry, dict) or entry.get("lvl") not in LAVA_CONSOLE:
        return None
    msg = entry.get("msg")
    msgs = msg if isinstance(msg, list) else [msg]
    return [m.encode("utf-8", "replace") for m in msgs if isinstance(m, str)] or None


# --- labgrid --------------------------------------------------------------------------------------

# labgrid/logging.py SerialLoggingReporter: "{driver} < {data}" (read) or "> " (written), after the log
# format's own fields; the data's control characters shown as symbols.
LABGRID_SERIAL = re.compile(rb"\) ([<>]) ")
LABGRID_SYMBOLS = {"␍": "\r", "␤": "\n", "␈": "\b", "␇": "\a", "␋": "\v", "␌": "\f"}
LABGRID_SYMBOL = re.compile("|".join(LABGRID_SYMBOLS))


def _labgrid_serial(line: bytes) -> list[bytes] | None:
    m = LABGRID_SERIAL.search(line)
    if m is None or m.group(1) != b"<":  # the harness's own log lines, and what it typed
        return None
    data = LABGRID_SYMBOL.sub(lambda s: LABGRID_SYMBOLS[s.group(0)], line[m.end():].decode("utf-8", "replace"))
    return data.removesuffix("\n").encode().split(b"\n")


# labgrid/consoleloggingreporter.py (`--lg-log`): each file (re)opened starts with these three lines
LABGRID_HEADER = re.compile(rb"^(Labgrid Console Logfile for |Logfile started at |=== Log starts here ===)")


# --- Jenkins, terminal programs, timestamps -------------------------------------------------------

JENKINS = re.compile(rb"^\[Pipeline\] ")
ISO = rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
ISO_STAMP = re.compile(rb"^(?:\[" + ISO + rb"\]|" + ISO + rb")(?: |\t|$)")


def _jenkins(line: bytes) -> bytes | None:
    return None if JENKINS.match(line) else _prefix(ISO_STAMP)(line)


TERMINAL_STATUS = re.compile(
    rb"^(Welcome to minicom |OPTIONS: |Compiled on |Port /dev/\S+|Press CTRL-A Z for help|AT S7=45 "
    rb"|picocom v\d|Terminal ready\s*$|Terminating\.\.\.\s*$|Thanks for using picocom|Type \[C-a\] \[C-h\]"
    rb"|Script (started|done) on \d{4}-"  # util-linux script(1), which records a terminal program's session
    rb"|(port|flowcontrol|baudrate|parity|databits|stopbits|escape|local echo|noinit|noreset|hangup|nolock"
    rb"|send_cmd|receive_cmd|imap|omap|emap|logfile|initstring|exit_after|exit)( is| are)?\s*: )"
)
TERMINAL_SIGN = re.compile(rb"^(Welcome to minicom |picocom v\d|Terminal ready\s*$|Press CTRL-A Z for help"
                           rb"|Script started on \d{4}-)")

# moreutils' ts: "%b %d %H:%M:%S " by default, "%H:%M:%S" with -s or -i, "%.S" for fractions
TS_STAMP = re.compile(rb"^(?:[A-Z][a-z]{2} [ 0-3]\d )?\d\d:\d\d:\d\d(?:\.\d+)? ")
# seconds in brackets before every line, Xen's too (grabserial, a lab's own logger); a guest kernel's own
# "[    3.9] …" is the guest's line, never taken off: this wrapper is seen only in front of "(XEN)".
SECONDS_STAMP = re.compile(rb"^\[\s*\d+\.\d+\] ")
SECONDS_BEFORE_XEN = re.compile(rb"^\[\s*\d+\.\d+\] \(XEN\)")

PLAIN = Layout("plain", "plain console log", _keep)
LAVA = Layout("lava-yaml", "LAVA job log (YAML)", _lava)
LABGRID_LOGGER = Layout("labgrid-serial-logger", "labgrid serial logger", _labgrid_serial)
LABGRID_CONSOLE = Layout("labgrid-console-log", "labgrid console log (--lg-log)",
                         lambda line: None if LABGRID_HEADER.match(line) else line)
JENKINS_CONSOLE = Layout("jenkins", "Jenkins console", _jenkins)
TERMINAL = Layout("terminal-program", "minicom/picocom capture",
                  lambda line: None if TERMINAL_STATUS.match(line) else line)
TS = Layout("ts-timestamps", "timestamp on every line (moreutils ts)", _prefix(TS_STAMP))
ISO_TIMESTAMPS = Layout("iso-timestamps", "ISO 8601 timestamp on every line", _prefix(ISO_STAMP))
SECONDS = Layout("seconds-timestamps", "[seconds] timestamp on every line", _prefix(SECONDS_STAMP))
QUOTE = re.compile(rb"^(?:> ?)+")


def _share(lines: list[bytes], pattern: re.Pattern[bytes]) -> float:
    return sum(1 for line in lines if pattern.match(line)) / len(lines) if lines else 0.0


def recognise(lines: list[bytes]) -> tuple[Layout, bool]:
    """The layout of a log from its first lines (without line ends), and whether they are e-mail quoted."""
    lines = [line.rstrip(b"\r") for line in lines if line.strip()]
    quoted = _share(lines, QUOTE) >= MOST
    if quoted:
        lines = [QUOTE.sub(b"", line) for line in lines]
    if _share(lines, LAVA_ENTRY) >= MOST:
        return LAVA, quoted
    if any(LABGRID_HEADER.match(line) for line in lines):
        return LABGRID_CONSOLE, quoted
    if sum(1 for line in lines if line.endswith("␤".encode()) and LABGRID_SERIAL.search(line)) >= 2:
        return LABGRID_LOGGER, quoted
    if any(JENKINS.match(line) for line in lines):
        return JENKINS_CONSOLE, quoted
    if any(TERMINAL_SIGN.match(line) for line in lines):
        return TERMINAL, quoted
    for layout, pattern in ((TS, TS_STAMP), (ISO_TIMESTAMPS, ISO_STAMP)):
        if _share(lines, pattern) >= MOST:
            return layout, quoted
    if _share(lines, SECONDS_STAMP) >= MOST and any(SECONDS_BEFORE_XEN.match(line) for line in lines):
        return SECONDS, quoted
    return PLAIN, quoted


ANSI_ESCAPE = re.compile(rb"\x1b\[")


def erase_backspaces(text: bytes) -> bytes:
    """What a terminal shows: each backspace takes back the character before it."""
    out = bytearray()
    for byte in text:
        if byte == 8:
            if out:
                out.pop()
        else:
            out.append(byte)
    return bytes(out)


@dataclass
class LogReader:
    """Reads a log's chunks as what the monitor is fed; afterwards says what it saw (`layout`, `quoted`, `seen`)."""

    chunks: Iterable[bytes]
    layout: Layout = PLAIN
    quoted: bool = False
    seen: set[str] = field(default_factory=set)  # "CRLF line ends", "ANSI escapes", "backspaces"
    size: int = 0  # bytes read
    printed: bool = False  # console output other than whitespace (a wrapper's own lines are none)
    lines: int = 0  # physical lines

    def feeds(self) -> Iterator[tuple[int | None, bytes]]:
        """(the physical line number the bytes begin, or None when the monitor's own count holds; console bytes,
        each line ended by LF, the last one too)."""
        chunks = self._counted()
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= SNIFF_BYTES or head.count(b"\n") >= SNIFF_LINES:
                break
        self.layout, self.quoted = recognise(bytes(head[:SNIFF_BYTES]).split(b"\n")[:SNIFF_LINES])
        stream = chain([bytes(head)], chunks)
        if self.layout is PLAIN and not self.quoted:
            yield from self._plain(stream)
        else:
            yield from self._wrapped(stream)

    def _counted(self) -> Iterator[bytes]:
        """The log's bytes as read, counted; a gzipped log (a CI's artifact) unpacked as it streams."""
        chunks = iter(self.chunks)
        for chunk in chunks:
            self.size += len(chunk)
            if chunk[: len(GZIP_MAGIC)] == GZIP_MAGIC:  # the first chunk says
                self.seen.add("gzip")
                yield from self._gunzip(chain([chunk], chunks))
                return
            yield chunk

    def _gunzip(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Unpacked in pieces of at most GUNZIP_PIECE bytes (memory stays flat), up to GUNZIP_LIMIT in all."""
        unpack, unpacked = zlib.decompressobj(wbits=31), 0  # 31: a gzip header and trailer
        for i, chunk in enumerate(chunks):
            if i:
                self.size += len(chunk)
            data = chunk
            while data or unpack.unconsumed_tail:
                try:
                    piece = unpack.decompress(data or unpack.unconsumed_tail, GUNZIP_PIECE)
                except zlib.error as exc:
                    raise UnusableInput(f"the log is gzipped but cannot be unpacked ({exc}): give it unpacked, "
                                        "or whole") from None
                data = b""
                unpacked += len(piece)
                if unpacked > GUNZIP_LIMIT:
                    raise UnusableInput(f"the gzipped log unpacks to over {human(GUNZIP_LIMIT)}, more than "
                                        f"{CONSOLE_LOG.noun} may be: {CONSOLE_LOG.too_big}")
                if piece:
                    yield piece
                if unpack.eof:  # a second member or trailing bytes: what is left is not this log
                    return

    def _plain(self, stream: Iterable[bytes]) -> Iterator[tuple[int | None, bytes]]:
        """A log with no wrapper goes on as read, chunk by chunk (the monitor counts its lines): fast."""
        ended = True
        for chunk in stream:
            if not chunk:
                continue
            self.lines += chunk.count(b"\n")
            ended = chunk.endswith(b"\n")
            self._note(chunk)
            if b"\b" in chunk:  # erased within each chunk's lines
                chunk = b"\n".join(erase_backspaces(line) for line in chunk.split(b"\n"))
            yield None, chunk
        if not ended:
            self.lines += 1
            yield None, b"\n"

    def _wrapped(self, stream: Iterable[bytes]) -> Iterator[tuple[int | None, bytes]]:
        """Line by line: each physical line's wrapper taken off, or the line dropped, its number kept."""
        dropping = False
        for number, text, first, ends in self._physical(stream):
            if not first:  # a later piece of a long line: its wrapper was taken off its first piece
                if not dropping:
                    self._note(text)
                    yield None, text + b"\n" if ends else text
                continue
            if self.quoted:
                text = QUOTE.sub(b"", text, count=1)
            unwrapped = self.layout.unwrap(text)
            pieces = [unwrapped] if isinstance(unwrapped, bytes) else unwrapped
            dropping = pieces is None
            for i, piece in enumerate(pieces or ()):
                self._note(piece)
                if b"\b" in piece:
                    piece = erase_backspaces(piece)
                yield number, piece + b"\n" if ends or i < len(pieces) - 1 else piece

    def _note(self, text: bytes) -> None:
        """What a terminal left in (the monitor takes CRs and ANSI escapes out of whole lines)."""
        if b"\r" in text and (b"\r\n" in text or text.endswith(b"\r")):
            self.seen.add("CRLF line ends")
        if b"\x1b" in text and ANSI_ESCAPE.search(text):
            self.seen.add("ANSI escapes")
        if b"\b" in text:
            self.seen.add("backspaces")
        self.printed = self.printed or bool(text.strip())

    def _physical(self, stream: Iterable[bytes]) -> Iterator[tuple[int, bytes, bool, bool]]:
        """(line number, bytes, first piece of its line, line ends here): lines without their LF, a line longer
        than LINE_LIMIT in pieces, the last line also when no LF ends it."""
        partial = bytearray()
        first = True
        for chunk in stream:
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                partial += chunk[start:end]
                self.lines += 1
                yield self.lines, bytes(partial), first, True
                partial.clear()
                first = True
                start = end + 1
            partial += chunk[start:]
            while len(partial) > LINE_LIMIT:
                yield self.lines + 1, bytes(partial[:LINE_LIMIT]), first, False
                del partial[:LINE_LIMIT]
                first = False
        if partial or not first:
            self.lines += 1
            yield self.lines, bytes(partial), first, True

    def to_dict(self) -> dict:
        return {"layout": self.layout.name, "title": self.layout.title, "quoted": self.quoted,
                "seen": sorted(self.seen), "lines": self.lines, "bytes": self.size}

    def describe(self) -> str:
        """'LAVA job log (YAML), e-mail quoted; CRLF line ends, ANSI escapes'."""
        head = self.layout.title + (", e-mail quoted" if self.quoted else "")
        return head + (f"; {', '.join(sorted(self.seen))}" if self.seen else "")
