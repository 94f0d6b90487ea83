"""labgrid parts of the harness; importing this package registers them with labgrid's factory."""

from . import qemu, serial, shell, strategy  # noqa: F401  (registration side effect)
