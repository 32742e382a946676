"""Where sysadmd keeps its state directory and its local socket when nothing is configured.

The daemon's configuration (:mod:`sysadmd.config`) fills in ``STATE_DIR`` and ``SOCKET``
with these, and the client looks for the daemon's socket with them, without loading the
daemon's configuration.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/sysadmd/sysadmd.sock"  # the system daemon's local socket (root, default state dir)


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/db/sysadmd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "sysadmd")


def default_socket_path() -> str:
    """The local socket of a sysadmd run by this user with ``STATE_DIR`` and ``SOCKET``
    left empty: :data:`SYSTEM_SOCKET` for root, else ``sysadmd.sock`` in its state dir."""
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    return os.path.join(default_state_dir(), "sysadmd.sock")
