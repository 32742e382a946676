"""The state directory: created once with safe modes, then only read and appended to.

Also where sysadmd keeps it, and its local socket, when nothing is configured: the
daemon's configuration (:mod:`sysadmd.config`) and the client, which looks for that
socket, both use these defaults.
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


def ensure_private_dir(path: str) -> str:
    """Create *path* (and parents) as a 0700 directory; tighten an existing one."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private_file(path: str, data: bytes) -> None:
    """Write *data* atomically to *path* with mode 0600."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, path)
