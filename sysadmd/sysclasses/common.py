"""What every ``sysadm/<class>`` module shares (see :mod:`sysadmd.sysclasses`).

An :class:`ActionTable` is the handler of one class::

    table = ActionTable("systemmanager")
    table.add("memorystats", memorystats)                  # any authenticated user
    table.add("killproc", killproc, full_access=True)      # limited users get 403
    table.add("list", listing, wrap=False)                 # handler returns the whole reply
    api.add("sysadm", "systemmanager", table, limited="read")   # or table.route(api)

* ``args`` must be an object holding ``action`` (a string, matched exactly, as upstream
  does); otherwise 400.  An unknown action is 400 naming the known ones.
* A handler is ``handler(session, args)`` and returns the result or a Deferred of it; the
  reply is ``{"<action>": result}`` (upstream's common shape) unless it was added with
  ``wrap=False``.
* Failures are :class:`~sysadmd.envelope.ApiError` (an error reply), never a success
  holding ``{"error": …}`` (upstream's habit).  :func:`run_tool` turns a tool's non-zero
  exit into a 400 carrying the tool's own message.

Argument readers (:func:`text_arg`, :func:`flag_arg`, :func:`names_arg`) bound every
string before use and say which field was wrong and what was expected.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer, error, protocol

from sysadmd.api import require_full_access
from sysadmd.envelope import ApiError, type_name
from sysadmd.session import Session

ActionHandler = Callable[[Session, Dict[str, Any]], Any]

MAX_ACTION_CHARS = 64
MAX_TEXT_CHARS = 1024  # default bound of a string argument
MAX_NAMES = 256  # default bound of a string-or-array argument
TOOL_OUTPUT_LIMIT = 1 << 20  # bytes of a tool's output kept (the rest is dropped)
TOOL_TIMEOUT = 120.0  # seconds before a tool is killed
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass
class _Action:
    handler: ActionHandler
    full_access: bool
    wrap: bool


class ActionTable:
    """The actions of one ``sysadm/<name>`` class; callable as an Api handler."""

    def __init__(self, name: str):
        self.name = name
        self._actions: Dict[str, _Action] = {}

    def add(self, action: str, handler: ActionHandler, *, full_access: bool = False, wrap: bool = True) -> None:
        if action in self._actions:
            raise ValueError(f"sysadm/{self.name} action {action} added twice")
        self._actions[action] = _Action(handler, full_access, wrap)

    def names(self) -> List[str]:
        return sorted(self._actions)

    def known(self) -> str:
        return ", ".join(self.names())

    def route(self, api: Any, *, limited: str = "read") -> None:
        """Register this table as ``sysadm/<name>``."""
        api.add("sysadm", self.name, self, limited=limited)

    def __call__(self, session: Session, request: Any) -> Any:
        args = request.args
        if not isinstance(args, dict):
            raise ApiError("400", f"args must be an object with 'action' (one of: {self.known()}), "
                                  f"got {type_name(args)}")
        action = args.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError("400", f"args need 'action', a string (one of: {self.known()})")
        entry = self._actions.get(action)
        if entry is None:
            shown = action if len(action) <= MAX_ACTION_CHARS else action[:MAX_ACTION_CHARS] + "…"
            raise ApiError("400", f"unknown sysadm/{self.name} action {shown!r}; expected one of: {self.known()}")
        if entry.full_access:
            require_full_access(session, f"sysadm/{self.name} {action}")
        result = entry.handler(session, args)
        if not entry.wrap:
            return result
        if isinstance(result, defer.Deferred):
            return result.addCallback(lambda r: {action: r})
        return {action: result}


# --- argument readers -------------------------------------------------------------------------

def text_arg(args: Dict[str, Any], field: str, *, required: bool = True, default: Optional[str] = None,
             max_chars: int = MAX_TEXT_CHARS) -> Optional[str]:
    """``args[field]`` as a string of at most *max_chars*; 400 naming *field* otherwise."""
    value = args.get(field)
    if value is None or value == "":
        if required:
            raise ApiError("400", f"args need '{field}' (a non-empty string)")
        return default
    if not isinstance(value, str):
        raise ApiError("400", f"'{field}' must be a string, got {type_name(value)}")
    if len(value) > max_chars:
        raise ApiError("400", f"'{field}' is {len(value)} characters; at most {max_chars} are accepted")
    if "\x00" in value:
        raise ApiError("400", f"'{field}' contains a NUL character")
    return value


def flag_arg(args: Dict[str, Any], field: str, default: bool) -> bool:
    """Upstream's flags: ``"true"``/``"false"`` strings (JSON booleans accepted too)."""
    value = args.get(field)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ApiError("400", f"'{field}' must be \"true\" or \"false\", got {value!r:.40}")


def names_arg(args: Dict[str, Any], field: str, *, max_items: int = MAX_NAMES,
              max_chars: int = MAX_TEXT_CHARS) -> List[str]:
    """A string or an array of strings (upstream accepts both), bounded; at least one."""
    value = args.get(field)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ApiError("400", f"args need '{field}': a string or a non-empty array of strings")
    if len(items) > max_items:
        raise ApiError("400", f"'{field}' has {len(items)} entries; at most {max_items} are accepted")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise ApiError("400", f"'{field}'[{i}] must be a non-empty string, got {type_name(item)}")
        if len(item) > max_chars:
            raise ApiError("400", f"'{field}'[{i}] is {len(item)} characters; at most {max_chars} are accepted")
        out.append(item)
    return out


# --- running tools ----------------------------------------------------------------------------

class _Collect(protocol.ProcessProtocol):
    """stdout and stderr (each bounded) and the exit code of one child."""

    def __init__(self, done: defer.Deferred, limit: int = TOOL_OUTPUT_LIMIT):
        self.done = done
        self.limit = limit
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.sizes = [0, 0]

    def _keep(self, which: int, into: List[bytes], data: bytes) -> None:
        room = self.limit - self.sizes[which]
        if room > 0:
            into.append(data[:room])
            self.sizes[which] += min(room, len(data))

    def outReceived(self, data: bytes) -> None:
        self._keep(0, self.out, data)

    def errReceived(self, data: bytes) -> None:
        self._keep(1, self.err, data)

    def processEnded(self, reason) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else None
        if code is None and isinstance(value, error.ProcessTerminated):
            code = -(value.signal or 0)
        self.done.callback((code, b"".join(self.out).decode("utf-8", "replace"),
                            b"".join(self.err).decode("utf-8", "replace")))


def spawn(reactor: Any, argv: Sequence[str], *, timeout: float = TOOL_TIMEOUT,
          env: Optional[Dict[str, str]] = None, output_limit: int = TOOL_OUTPUT_LIMIT,
          path: Optional[str] = None, uid: Optional[int] = None, gid: Optional[int] = None) -> defer.Deferred:
    """Run *argv* (no shell); fires with ``(exit code, stdout, stderr)``.

    The exit code is negative for a signal (``-9`` after the *timeout* kill).  Each stream
    keeps its first *output_limit* bytes.  *path* is the child's working directory;
    *uid*/*gid* run it as that user (with the user's supplementary groups; needs root).
    Raises :class:`ApiError` (500) when the program cannot be started.
    """
    done: defer.Deferred = defer.Deferred()
    try:
        transport = reactor.spawnProcess(_Collect(done, output_limit), argv[0], list(argv),
                                         env=dict(env or TOOL_ENV), path=path, uid=uid, gid=gid)
    except OSError as e:
        raise ApiError("500", f"cannot run {argv[0]}: {e.strerror or e}") from None
    killer = reactor.callLater(timeout, _kill, transport)

    def finished(result):
        if killer.active():
            killer.cancel()
        return result

    return done.addBoth(finished)


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess(signal.SIGKILL)
    except (error.ProcessExitedAlready, OSError):
        pass


def tool_message(argv: Sequence[str], result: Tuple[Optional[int], str, str]) -> str:
    """A one-paragraph error detail for a failed tool: its name, exit status and message."""
    code, out, err = result
    text = (err.strip() or out.strip())[-2000:] or "no message"
    status = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
    return f"{os.path.basename(argv[0])} {status}: {text}"


def run_tool(reactor: Any, argv: Sequence[str], *, timeout: float = TOOL_TIMEOUT,
             env: Optional[Dict[str, str]] = None, ok_codes: Sequence[int] = (0,)) -> defer.Deferred:
    """Run *argv*; fires with its stdout, or fails with a 400 :class:`ApiError` carrying
    the tool's message when the exit code is not in *ok_codes*."""

    def checked(result):
        if result[0] not in ok_codes:
            raise ApiError("400", tool_message(argv, result))
        return result[1]

    return spawn(reactor, argv, timeout=timeout, env=env).addCallback(checked)
