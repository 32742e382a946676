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

The full scan reads every process's environment (about 0.4 ms with 80 processes).  When
a command ends, :class:`PidCounter` makes that cheaper without weakening it: every
process a command starts, however it detaches, is created after the command's leader,
and Linux hands out pids in increasing order (wrapping at ``pid_max``), so the job's
processes can only have the pids handed out since the leader's: from the leader's pid
up to the last pid handed out (``/proc/sys/kernel/ns_last_pid``, read before the leader
is made and again at its end).  Only those are read, usually a handful.  That the counter has not gone round since the leader was made is
proved with the kernel's count of created processes (``processes`` in ``/proc/stat``),
not assumed from timing.  When it cannot be proved (too many processes created since,
more than :data:`PROBE_MAX` pids to read, ``ns_last_pid`` unreadable, or this ``/proc``
not of the daemon's pid namespace) the full scan runs, as before.

Limits: a process that rewrites or clears its environment (``env -i``) before it
detaches escapes the marker; under systemd the unit's cgroup still takes it down with
the daemon (``conf/systemd``).  Zombies have an empty environment and count as gone.
The cheap look at a command's end sees only processes made after its leader: one that
chose its own pid (``clone3`` with ``set_tid``, which needs ``CAP_CHECKPOINT_RESTORE``),
or an older process that learnt the marker and exec'd itself with it, is seen by the
full scans only (the tracker's, and every kill's).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

ENV_NAME = "SYSADMD_JOB"
_ENTRY = ENV_NAME.encode() + b"="
PROC = "/proc"
ROUNDS = 4  # listings of /proc per scan (see scan)
MARK_REUSE = 1.0  # seconds a mark is reused for later spawns (only a matter of cost: see PidCounter)
PROBE_MAX = 512  # more pids handed out than this since a command started: the full scan is cheaper


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
    """The environment block of *pid*; ``None`` if it cannot be read.

    An empty read is not trusted at once.  A process inside ``execve`` has its new memory
    but not yet its new environment (``env_end`` is 0 in ``/proc/<pid>/stat`` until the
    loader sets it), and a freshly forked child of a job is often just exec'ing: such a
    read is tried again for up to :data:`EXEC_WAIT` seconds.  Zombies, kernel threads and
    ``env -i`` processes (an empty environment that is set) stay empty at once."""
    path = f"{proc}/{pid}/environ"
    deadline = 0.0
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # gone, not ours (non-root), or a kernel thread
            return None
        if data or not _inside_exec(pid, proc):
            return data
        now = time.monotonic()
        if not deadline:
            deadline = now + EXEC_WAIT
        elif now >= deadline:
            return data
        time.sleep(0.0002)


#: How long an empty environment of a process that is inside ``execve`` is read again.
EXEC_WAIT = 0.05
_PF_KTHREAD = 0x00200000


def _inside_exec(pid: int, proc: str) -> bool:
    """Whether *pid* is a live user process whose environment is not set up yet."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); flags is field 9, env_end field 50 (Linux 3.5+).
    if len(fields) < 48 or fields[0] in (b"Z", b"X", b"x"):
        return False
    try:
        if int(fields[6]) & _PF_KTHREAD:
            return False
        return int(fields[47]) == 0
    except ValueError:
        return False


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


Mark = Tuple[int, int]  # (a fork count, then the last pid handed out), both read before a leader was made


class PidCounter:
    """Proves which pids were handed out since a command's leader was made.

    ``processes`` in ``/proc/stat`` counts every process and thread created since boot,
    in every pid namespace.  A command's mark is a fork count and then the last pid
    handed out (``ns_last_pid``), both read before its leader was made.  When the fork
    count read at its end (after ``ns_last_pid``) exceeds the marked one by less than the
    pid cycle (``pid_max`` less the 300 low pids the wrap skips), the counter cannot have
    gone round, so every process made since has a pid after the marked one, up to the
    last one, in cyclic order.  Marks are reused for later spawns (an older mark is
    still a valid one, only wider) for up to :data:`MARK_REUSE` seconds."""

    def __init__(self, proc: str = PROC, clock: Callable[[], float] = time.monotonic):
        self.proc = proc
        self.clock = clock
        self.pid_max = self._read_int(f"{proc}/sys/kernel/pid_max") or 0
        self.current: Optional[Mark] = None  # the latest mark, taken at current_at
        self.current_at = 0.0
        self.usable = self._check()
        self.probed = self.declined = 0  # probes answered, and handed back to the full scan

    def _read_int(self, path: str) -> Optional[int]:
        try:
            with open(path, "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def _check(self) -> bool:
        try:
            ours = os.readlink(f"{self.proc}/self") == str(os.getpid())
        except OSError:
            return False
        return ours and self.pid_max > 1024 and self.last_pid() is not None and self.forks() is not None

    def last_pid(self) -> Optional[int]:
        return self._read_int(f"{self.proc}/sys/kernel/ns_last_pid")

    def forks(self) -> Optional[int]:
        """``processes`` of ``/proc/stat``."""
        try:
            with open(f"{self.proc}/stat", "rb") as f:
                data = f.read()
            at = data.index(b"\nprocesses ") + len(b"\nprocesses ")
            return int(data[at:data.index(b"\n", at)])
        except (OSError, ValueError):
            return None

    def _remember(self, forks: Optional[int], last: Optional[int]) -> None:
        if forks is not None and last is not None and 0 <= last < self.pid_max:
            self.current, self.current_at = (forks, last), self.clock()

    def before_spawn(self) -> Optional[Mark]:
        """The mark for a leader about to be made (call it before making it)."""
        if not self.usable:
            return None
        if self.current is None or self.clock() - self.current_at > MARK_REUSE:
            forks = self.forks()
            self._remember(forks, self.last_pid())
        return self.current

    def probe(self, marker: str, since: Optional[Mark], skip: Mapping[int, int] = {}) -> Optional[List[int]]:
        """The pids carrying *marker* among those handed out after the mark *since*;
        ``None`` when that cannot be proved cheaply (then use :func:`scan`).  Like
        :func:`scan`, pids handed out while it reads are read too.

        *skip* maps the pids of command leaders to the fork count of the mark each was
        made after.  A leader made after *since* was taken carries its own job's marker
        (or is gone, and its pid not handed out again: the counter has not gone round),
        so it is not read: reading the environment of a process in ``execve`` waits for
        the exec to finish.  An older leader's pid may have been handed out again, and is
        read."""
        found = self._probe(marker, since, skip)
        if found is None:
            self.declined += 1
        else:
            self.probed += 1
        return found

    def _probe(self, marker: str, since: Optional[Mark], skip: Mapping[int, int]) -> Optional[List[int]]:
        if since is None or not marker or not self.usable:
            return None
        forks_before, after = since
        found: List[int] = []
        done = 0  # how far past *after* has been read
        forks: Optional[int] = None
        for _ in range(ROUNDS):
            last = self.last_pid()
            if last is None or last >= self.pid_max:
                return None
            self._remember(forks, last)  # a fork count read before this ns_last_pid: a new mark
            span = (last - after) % self.pid_max
            if span <= done:
                return found
            forks = self.forks()  # read after ns_last_pid: it counts every pid up to *last*
            if forks is None or forks - forks_before >= self.pid_max - 300 or span > PROBE_MAX:
                if self.current == since:
                    self.current = None  # too old to prove anything: the next spawn takes a new mark
                return None
            read = 0
            for offset in range(done + 1, span + 1):
                pid = (after + offset) % self.pid_max
                if skip.get(pid, -1) >= forks_before:
                    continue
                read += 1
                environ = read_environ(pid, self.proc)
                if environ and _ENTRY in environ and marker in markers_in(environ):
                    found.append(pid)
            done = span
            if found:  # the command is not over; the tracker's full scans take over
                return found
            if not read:  # no process of the job was there to make one meanwhile
                return found
        return None
