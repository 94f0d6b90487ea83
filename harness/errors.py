"""Errors a user can cause or meet: each carries one sentence that says what to do.

The CLI and the pytest plugin print ``str(error)`` and never a traceback for these.
"""


class HarnessError(Exception):
    """Base of every error the harness reports as a sentence rather than a traceback."""


class UsageError(HarnessError):
    """The user asked for something that does not exist (unknown target, missing file, bad option)."""


class UnusableInput(HarnessError):
    """A file the user gave (DTB, ACPI table, console log) cannot be read as what it claims to be."""


class InfrastructureError(HarnessError):
    """The lab, not the code under test, failed: a tool is missing, a download failed, QEMU would not start."""
