"""The framed guest-to-host file transfer, fed the lines busybox prints for the real dom0 DTB."""

from __future__ import annotations

import base64
import hashlib

import pytest

from harness.guest import TRANSFER, TransferError, decode_transfer, parse_interrupts

XEN_NOISE = [
    "(XEN) d0v1: vGICR: SGI: unhandled word write 0x000000ffffffff to ICACTIVER0",
    "(d0) some guest debug output",
]


def guest_lines(data: bytes) -> list[str]:
    """What `wc -c < F; sha256sum < F; base64 < F` prints in busybox: base64 wrapped at 76 columns."""
    encoded = base64.b64encode(data).decode()
    return [
        str(len(data)),
        f"{hashlib.sha256(data).hexdigest()}  -",
        *(encoded[i : i + 76] for i in range(0, len(encoded), 76)),
    ]


def test_transfer_command_is_the_one_framed_here():
    assert TRANSFER.format(path="/sys/firmware/fdt") == (
        "wc -c < /sys/firmware/fdt; sha256sum < /sys/firmware/fdt; base64 < /sys/firmware/fdt"
    )


def test_decodes_the_real_dtb_exactly(dom0_dtb):
    lines = guest_lines(dom0_dtb)
    assert max(len(line) for line in lines[2:]) == 76 and len(lines) > 50
    assert decode_transfer(lines) == dom0_dtb


@pytest.mark.parametrize("data", [b"", b"x", b"xy", b"xyz", bytes(range(256)) * 3], ids=len)
def test_decodes_every_padding(data):
    assert decode_transfer(guest_lines(data)) == data


def test_lines_as_the_console_delivers_them(dom0_dtb):
    """Carriage returns, a padded wc count, and lines that cannot be base64 inside the payload."""
    lines = guest_lines(dom0_dtb)
    lines[0] = f"    {lines[0]}\r"
    noisy = lines[:2]
    for i, line in enumerate(lines[2:]):
        noisy.append(line + "\r")
        if i % 10 == 3:
            noisy += [XEN_NOISE[i % 2], "", "   ", "[   12.345678] xen:events: not base64 (has spaces)"]
    assert decode_transfer(noisy) == dom0_dtb


def test_a_flipped_character_is_a_sha256_mismatch(dom0_dtb):
    lines = guest_lines(dom0_dtb)
    line = lines[20]
    lines[20] = line[:30] + ("B" if line[30] != "B" else "C") + line[31:]
    with pytest.raises(TransferError) as info:
        decode_transfer(lines)
    message = str(info.value)
    expected = hashlib.sha256(dom0_dtb).hexdigest()
    assert f"expected {len(dom0_dtb)} bytes with SHA256 {expected}" in message, message
    received = hashlib.sha256(base64.b64decode("".join(lines[2:]))).hexdigest()
    assert f"received {len(dom0_dtb)} bytes with SHA256 {received}" in message and received != expected, message


def test_a_noise_line_that_looks_like_base64_is_caught(dom0_dtb):
    """A console word such as `done` passes the line filter: the digest is what catches it."""
    lines = guest_lines(dom0_dtb)
    lines.insert(10, "done")
    with pytest.raises(TransferError, match=r"expected \d+ bytes with SHA256 [0-9a-f]{64}, received"):
        decode_transfer(lines)


def test_a_truncated_payload_reports_both_sizes(dom0_dtb):
    lines = guest_lines(dom0_dtb)[:-3]  # the last lines never arrived
    with pytest.raises(TransferError) as info:
        decode_transfer(lines)
    received = len(base64.b64decode("".join(lines[2:])))
    assert received < len(dom0_dtb)
    assert f"expected {len(dom0_dtb)} bytes" in str(info.value) and f"received {received} bytes" in str(info.value)


def test_a_cut_mid_line_is_undecodable(dom0_dtb):
    lines = guest_lines(dom0_dtb)
    lines[-1] = lines[-1][:-3]
    with pytest.raises(TransferError, match=r"^undecodable base64"):
        decode_transfer(lines)


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["7391"],
        ["sh: can't open /sys/firmware/fdt: no such file", "e3b0c442  -"],
        ["7391", "not a digest  -"],
        ["seven", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -"],
    ],
    ids=["nothing", "no-digest", "shell-error", "bad-digest", "bad-size"],
)
def test_a_garbage_header_is_refused(lines):
    with pytest.raises(TransferError, match=r"^unexpected answer \["):
        decode_transfer([*lines, "AAAA"])


# --- /proc/interrupts -----------------------------------------------------------------------------

GICV2 = """           CPU0       CPU1
  1:          0          0     GIC-0  25 Level     vgic
  3:       2113       1876     GIC-0  27 Level     arch_timer
  5:         17          3     GIC-0  16 Level     events
  6:          0          0   xen-dyn     Edge    -event     xenbus
 41:         94          0     GIC-0  33 Level     uart-pl011
IPI0:       120        212       Rescheduling interrupts
Err:          0"""


def test_parse_interrupts_gicv2_row():
    rows = parse_interrupts(GICV2)
    assert rows["events"] == (5, [17, 3], ["GIC-0", "16", "Level", "events"])
    assert rows["xenbus"] == (6, [0, 0], ["xen-dyn", "Edge", "-event", "xenbus"])
    assert set(rows) == {"vgic", "arch_timer", "events", "xenbus", "uart-pl011"}, "IPI and Err rows are not IRQs"


def test_parse_interrupts_one_cpu_and_empty():
    one = "           CPU0\n  5:         17     GIC-0  16 Level     events"
    assert parse_interrupts(one)["events"] == (5, [17], ["GIC-0", "16", "Level", "events"])
    assert parse_interrupts("") == {}


def test_focused_domu_output_keeps_its_lines_and_drops_xens():
    from harness.guest import GuestShell

    out = ["(XEN) line one\r", "(XEN) d1v0: vGICD: unhandled word write 0x1 to ICACTIVER0", "(XEN) line two", "(XEN) "]
    assert GuestShell(None, "domU1", xen_prefixed=True).clean(out) == ["line one", "line two"]
    # dom0's own output has no prefix: every "(XEN)" line is Xen's and goes
    assert GuestShell(None, "dom0").clean(["line one\r", "(XEN) noise", "line two"]) == ["line one", "line two"]
