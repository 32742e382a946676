"""Find every process of a job, however it detached, through a marker in its environment.

Each job gets a marker when it is created, stored in its row::

    SYSADMD_JOB=<daemon instance>:<job row number>:<16 random hex digits>

Every command of the job starts with that variable in its environment, and processes
inherit it, so a process that called ``setsid`` (new session, new process group) or was
re-parented to init still carries it.  :func:`scan` reads ``/proc/<pid>/environ`` of
every process (as root all are readable; otherwise only the daemon user's own, which
are the only ones its jobs can start) and matches the marker *exactly*, random part
included: a process whose pid was reused, or one carrying a similar marker, is never
taken for a job's.  :func:`signal_marked` re-checks the marker through a pidfd before it
signals, so a pid reused between the scan and the signal is not hit either.

Limits: a process that rewrites or clears its environment (``env -i``) before it
detaches escapes the marker; under systemd the unit's cgroup still takes it down with
the daemon (``conf/systemd``).  Zombies have an empty environment and count as gone.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
from typing import Dict, Iterable, List, Optional

ENV_NAME = "SYSADMD_JOB"
_ENTRY = ENV_NAME.encode() + b"="
PROC = "/proc"
ROUNDS = 4  # listings of /proc per scan (see scan)


def new_instance() -> str:
    """An id for one run of the daemon (the first part of its jobs' markers)."""
    return secrets.token_hex(4)


def new_marker(instance: str, seq: int) -> str:
    return f"{instance}:{seq}:{secrets.token_hex(8)}"


def markers_in(environ: bytes) -> List[str]:
    """The values of every ``SYSADMD_JOB=`` entry of a NUL-separated environment block."""
    found = []
    start = 0
    while True:
        at = environ.find(_ENTRY, start)
        if at < 0:
            return found
        end = environ.find(b"\0", at)
        if end < 0:
            end = len(environ)
        if at == 0 or environ[at - 1] == 0:  # the start of an entry, not inside another
            found.append(environ[at + len(_ENTRY):end].decode("ascii", "replace"))
        start = end


def read_environ(pid: int, proc: str = PROC) -> Optional[bytes]:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:  # gone, not ours (non-root), or a kernel thread
        return None


def scan(markers: Iterable[str], proc: str = PROC) -> Dict[str, List[int]]:
    """The pids of the living processes carrying each of *markers* (exact match).

    A marked process may fork and exit while the scan runs (a double fork): its child is
    not in the listing the scan started from, and the parent is gone when its turn
    comes.  So ``/proc`` is listed again after each pass and the processes that appeared
    meanwhile are read too, until a listing shows nothing new (at most ``ROUNDS``)."""
    wanted = {m for m in markers if m}
    found: Dict[str, List[int]] = {}
    if not wanted:
        return found
    seen = {os.getpid()}
    for _ in range(ROUNDS):
        try:
            names = os.listdir(proc)
        except OSError:
            return found
        new = [int(name) for name in names if name.isdigit() and int(name) not in seen]
        if not new:
            break
        for pid in new:
            seen.add(pid)
            environ = read_environ(pid, proc)
            if not environ or _ENTRY not in environ:
                continue
            for marker in markers_in(environ):
                if marker in wanted:
                    found.setdefault(marker, []).append(pid)
                    break
    return found


def signal_marked(pid: int, marker: str, signum: int, proc: str = PROC) -> bool:
    """Send *signum* to *pid* only if it still carries *marker*; ``True`` if it was sent."""
    pidfd = None
    try:
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            except OSError as e:  # no pidfds on this kernel: plain kill after the check
                if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                    raise
        environ = read_environ(pid, proc)
        if environ is None or marker not in markers_in(environ):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
