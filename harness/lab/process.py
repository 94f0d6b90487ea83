"""Processes that die with the harness, however it dies (SIGKILL included): the kernel's parent-death
signal. A child gets it from util-linux's `setpriv` before its own program starts, not from a
preexec_fn: Python code run between fork and exec crashed the pytest workers that had loaded gRPC
(labgrid's remote client) with a segmentation fault.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal

PR_SET_PDEATHSIG = 1
SETPRIV = "setpriv"  # util-linux, Essential in Debian


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (an xdist worker: its controller)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def dying_with_us(cmd: list[str]) -> list[str]:
    """`cmd` to start as a child that the kernel SIGKILLs when the thread starting it ends. Raises
    FileNotFoundError, as Popen would, when the program is not there."""
    program = cmd[0] if os.sep in cmd[0] else shutil.which(cmd[0])
    if program is None or not os.access(program, os.X_OK):
        raise FileNotFoundError(errno.ENOENT, "no such program", cmd[0])
    return [SETPRIV, "--pdeathsig", "KILL", "--", *cmd]  # setpriv finds it on PATH, as Popen would
