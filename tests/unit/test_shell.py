"""A command's answer on a console Xen shares (harness/lab/shell.py), on the bytes a real dom0less boot printed."""

from __future__ import annotations

import re

from harness.lab.shell import answer

# qemu-dom0less-xen420 under load (CI, 2026-12-03): dom0 answered, then domU1's boot put a line of Xen's between
# the exit status and dom0's prompt, and labgrid's ShellDriver waited 30 s for an answer it had had.
INTERLEAVED = (b"MARKER='WMTW''SLAPEE' run 'cat /sys/hypervisor/version/major /sys/hypervisor/version/minor'\r\n"
               b"WMTWSLAPEE4\r\n20\r\nWMTWSLAPEE 0\r\n"
               b"(XEN) DOM1: [    8.429106] Checked W+X mappings: passed, no W+X pages found\r\n"
               b"dom0# ")


def test_xens_lines_between_the_status_and_the_prompt_still_end_the_command():
    m = re.search(answer("WMTWSLAPEE", "dom0# ").encode(), INTERLEAVED, re.S)
    assert m is not None and m.group(1) == b"4\r\n20\r\n" and m.group(2) == b"0"
    labgrid = rb"WMTWSLAPEE(.*)WMTWSLAPEE\s+(\d+)\s+dom0# "  # ShellDriver's own pattern: no answer at all
    assert re.search(labgrid, INTERLEAVED, re.S) is None


def test_a_guests_own_line_there_is_no_prompt():
    other = INTERLEAVED.replace(b"(XEN) DOM1:", b"DOM1:")  # not Xen's: the command has not ended
    assert re.search(answer("WMTWSLAPEE", "dom0# ").encode(), other, re.S) is None
