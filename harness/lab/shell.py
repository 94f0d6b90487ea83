"""A guest's shell on a console Xen shares: labgrid's ShellDriver, with Xen's lines allowed between a command's
exit status and the guest's next prompt.

Xen prints whenever it likes on the one serial line: a dom0less domU's boot ("(XEN) DOM1: …"), a debug-key
dump. ShellDriver ends a command at `MARKER <status>` followed by whitespace and the prompt, so one such line
in between left the command unanswered until its timeout although the guest had answered (a dom0less boot
under load). The output itself keeps those lines; harness.guest drops them.
"""

from __future__ import annotations

import shlex

import attr
from labgrid.driver.shelldriver import ShellDriver
from labgrid.factory import target_factory
from labgrid.util import gen_marker, re_vt100

XEN_LINES = r"(?:\(XEN\)[^\r\n]*[\r\n]+)*"  # whole lines of Xen's, any number


def answer(marker: str, prompt: str) -> str:
    """What ends a command: its output between two markers, its status, Xen's lines if any, the prompt."""
    return rf"{marker}(.*){marker}\s+(\d+)\s+{XEN_LINES}{prompt}"


@target_factory.reg_driver
@attr.s(eq=False)
class XenShellDriver(ShellDriver):
    def _run(self, cmd, *, timeout=30.0, codec="utf-8", decodeerrors="strict"):
        self._check_prompt()
        marker = gen_marker()
        # the marker split in two, so that the command's own echo never matches it (as ShellDriver does)
        self.console.sendline(f"MARKER='{marker[:4]}''{marker[4:]}' run {shlex.quote(cmd)}")
        _, _, match, _ = self.console.expect(answer(marker, self.prompt), timeout=timeout)
        data = re_vt100.sub("", match.group(1).decode(codec, decodeerrors)).split("\r\n")
        if data and not data[-1]:
            del data[-1]
        return (data, [], int(match.group(2)))
