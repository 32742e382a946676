"""The state directory: created once with safe modes, then only read and appended to."""

from __future__ import annotations

import os


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
