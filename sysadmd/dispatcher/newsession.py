"""Start a child process as the leader of a new session, without an extra exec.

Twisted's ``spawnProcess`` has no pre-exec hook, and running every command through
util-linux ``setsid`` costs a second exec per command: on the fast ``posix_spawn`` path
(child directory = daemon directory) that halved job throughput (bench/dispatcher_bench).
:class:`NewSessionProcess` is Twisted's own ``Process`` with the session started where
the child is made: ``os.setsid()`` after ``fork``, ``setsid=True`` for ``posix_spawnp``.

Both hooks are private to Twisted, so :func:`available` checks they are still there
(and that the reactor is a real POSIX reactor); callers fall back to the ``setsid``
program when it returns False.
"""

from __future__ import annotations

import fcntl
import os
import signal
from typing import Any

from twisted.internet import process as twisted_process
from twisted.internet.posixbase import PosixReactorBase

_HOOKS = ("_listOpenFDs", "_getFileActions", "_PS_CLOSE", "_PS_DUP2")

try:
    from _signal import getsignal as _getsignal
except ImportError:  # not CPython
    _getsignal = signal.getsignal


def available(reactor: Any) -> bool:
    return (
        isinstance(reactor, PosixReactorBase)
        and hasattr(os, "posix_spawnp")
        and all(hasattr(twisted_process, name) for name in _HOOKS)
        and hasattr(twisted_process.Process, "_trySpawnInsteadOfFork")
        and hasattr(twisted_process.Process, "_setupChild")
    )


class NewSessionProcess(twisted_process.Process):
    def _setupChild(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the forked child before exec.
        os.setsid()
        super()._setupChild(*args, **kwargs)

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment, kwargs):
        # Twisted's conditions for posix_spawnp, and its file actions; plus setsid=True.
        if (
            uid is not None
            or gid is not None
            or (path is not None and os.path.abspath(path) != os.path.abspath("."))
            or getattr(self._reactor, "_neverUseSpawn", False)
        ):
            return False
        fd_state = []
        for fd in twisted_process._listOpenFDs():
            try:
                close_on_exec = fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC)
            except OSError:
                continue
            fd_state.append((fd, close_on_exec))
        # _signal.getsignal: the same answer without an enum per signal (a tenth of the time).
        default_signals = [s for s in range(1, signal.NSIG) if _getsignal(s) == signal.SIG_IGN]
        self.pid = os.posix_spawnp(
            executable,
            args,
            os.environ if environment is None else environment,
            file_actions=twisted_process._getFileActions(
                fd_state, kwargs.get("fdmap"), doClose=twisted_process._PS_CLOSE, doDup2=twisted_process._PS_DUP2
            ),
            setsigdef=default_signals,
            setsid=True,
        )
        self.status = -1
        return True


def spawn(reactor: Any, proto: Any, executable: str, args: list, env: dict, path: str, child_fds: dict) -> Any:
    """Like ``reactor.spawnProcess`` (no PTY, no uid change) with the child in a new session."""
    return NewSessionProcess(reactor, executable, args, env, path, proto, None, None, child_fds)
