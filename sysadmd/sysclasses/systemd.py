"""The systemd backend of ``sysadm/services``: systemd's manager over the system D-Bus.

The bus connection is ours, on Twisted's reactor (the daemon's reactor is not asyncio's):
a Unix socket, the ``EXTERNAL`` SASL exchange, then D-Bus messages framed here and
marshalled and parsed by ``dbus-fast`` (:class:`dbus_fast.Message` and its unmarshaller).
``dbus-fast`` is imported only when the backend is built, so a daemon without it still
starts (the class is then not routed on a systemd host; the log says why).

* ``list``: ``ListUnits`` (loaded units: description, ``ActiveState``) and
  ``ListUnitFiles`` (installed files: path, ``UnitFileState``), ``.service`` units only,
  template files (``name@.service``) left out.  A service is named without its
  ``.service`` suffix (``cron``); ``tag`` is the unit name (``cron.service``), ``path``
  its unit file; ``is_running`` is ``ActiveState`` active or reloading; ``is_enabled``
  is ``UnitFileState`` enabled or enabled-runtime.
* ``owns``: the name (with or without ``.service``) is in the backend's index of units,
  made on connecting, remade by every listing and kept current from systemd's
  ``UnitNew``, ``UnitFilesChanged`` and ``Reloading`` signals; or it is an instance of a
  template unit file of the index (``getty@tty2`` of ``getty@.service``).
* ``start``/``stop``/``restart``: ``StartUnit``/``StopUnit``/``RestartUnit`` with mode
  ``replace``, then the ``JobRemoved`` signal of the job is awaited (at most
  ``job_timeout`` seconds); a result other than ``done`` is an error naming it.
* ``enable``/``disable``: ``EnableUnitFiles``/``DisableUnitFiles`` (persistent, not
  forced), then ``Reload``.  A unit without an ``[Install]`` section cannot be enabled:
  an error says so.
* ``logs(name, lines)``: ``journalctl -u UNIT -n N -o short-iso --no-pager`` (argv).

systemd's error replies are error replies here carrying systemd's own message and error
name.  When the bus connection is lost every waiting call fails with a 503 saying so, and
the next request connects again.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import struct
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python import failure

from sysadmd.wire.envelope import ApiError
from sysadmd.sysclasses import logtail
from sysadmd.sysclasses.common import TOOL_ENV, spawn, tool_message

log = Logger()

DEFAULT_BUS = "unix:path=/run/dbus/system_bus_socket"
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
DBUS = "org.freedesktop.DBus"
CALL_TIMEOUT = 30.0  # seconds a method call waits for its reply
CONNECT_TIMEOUT = 10.0  # seconds for connecting, authenticating and Hello
JOB_TIMEOUT = 120.0  # default seconds a start/stop/restart job may take
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # larger messages close the connection
MAX_AUTH_LINE = 512
FINISHED_KEEP = 256  # JobRemoved results kept for replies that arrive after their signal
RUNNING_STATES = frozenset(("active", "reloading"))
ENABLED_STATES = frozenset(("enabled", "enabled-runtime"))
SIGNALS = ("JobRemoved", "UnitNew", "UnitFilesChanged", "Reloading")
LOG_LINES_MAX = 5000
LOG_TIMEOUT = 30.0
LOG_OUTPUT_LIMIT = 16 * 1024 * 1024  # bytes of journalctl's output kept


def dbus_fast_missing() -> Optional[str]:
    """Why the backend cannot be built (``dbus-fast`` is not importable), or ``None``."""
    try:
        for module in ("dbus_fast", "dbus_fast.constants", "dbus_fast._private.unmarshaller"):
            importlib.import_module(module)
    except ImportError as e:
        return f"the Python package dbus-fast is not importable ({e})"
    return None


def socket_path(address: str) -> str:
    """The socket of a D-Bus address (``unix:path=…`` or ``unix:abstract=…``; the first
    of ``;``-separated alternatives that is one of these); ValueError otherwise."""
    for part in address.split(";"):
        transport, _, options = part.strip().partition(":")
        if transport != "unix":
            continue
        for option in options.split(","):
            key, _, value = option.partition("=")
            if key == "path" and value:
                return _unescape(value)
            if key == "abstract" and value:
                return "\0" + _unescape(value)
    raise ValueError(f"{address!r} is not a D-Bus address this daemon can use: expected unix:path=/socket "
                     "or unix:abstract=name")


def _unescape(value: str) -> str:
    out, i = bytearray(), 0
    raw = value.encode()
    while i < len(raw):
        if raw[i:i + 1] == b"%" and i + 3 <= len(raw):
            out += bytes.fromhex(raw[i + 1:i + 3].decode())
            i += 3
        else:
            out += raw[i:i + 1]
            i += 1
    return out.decode()


def unit_of(name: str) -> str:
    return name if name.endswith(".service") else name + ".service"


def service_of(unit: str) -> str:
    return unit[:-len(".service")]


class BusError(Exception):
    """An error reply: its D-Bus error name and its message."""

    def __init__(self, name: str, text: str):
        super().__init__(f"{text} ({name})")
        self.name = name
        self.text = text


class BusGone(Exception):
    """The connection to the bus closed (or never opened)."""


def _frame_length(buf: bytes) -> int:
    """Total bytes of the message starting *buf* (which holds at least 16 bytes)."""
    endian = buf[0:1]
    if endian == b"l":
        body, fields = struct.unpack_from("<I", buf, 4)[0], struct.unpack_from("<I", buf, 12)[0]
    elif endian == b"B":
        body, fields = struct.unpack_from(">I", buf, 4)[0], struct.unpack_from(">I", buf, 12)[0]
    else:
        raise ValueError(f"bad D-Bus message: first byte {endian!r} is no byte order mark")
    return 16 + fields + (-fields & 7) + body


class BusProtocol(protocol.Protocol):
    """One D-Bus connection: SASL ``EXTERNAL``, ``Hello``, then method calls and signals.

    :attr:`ready` fires with the protocol once ``Hello`` is answered.  Signals are handed
    to *on_signal(message)*; *on_lost(reason)* is called once when the connection ends."""

    def __init__(self, clock: Any, on_signal: Callable[[Any], None], on_lost: Callable[["BusProtocol", str], None]):
        from dbus_fast import Message
        from dbus_fast.constants import MessageType
        from dbus_fast._private.unmarshaller import Unmarshaller

        self._Message, self._types, self._Unmarshaller = Message, MessageType, Unmarshaller
        self.clock = clock
        self.on_signal = on_signal
        self.on_lost = on_lost
        self.ready: defer.Deferred = defer.Deferred()
        self.gone: defer.Deferred = defer.Deferred()  # fires (None) once the connection is closed
        self._authenticated = False
        self._buf = bytearray()
        self._serial = 0
        self._pending: Dict[int, Tuple[defer.Deferred, Any]] = {}
        self._lost: Optional[str] = None

    # --- connection -------------------------------------------------------------------------
    def connectionMade(self) -> None:
        uid = str(os.getuid()).encode().hex()
        self.transport.write(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        try:
            if not self._authenticated:
                self._auth_lines()
            if self._authenticated:
                self._messages()
        except Exception as e:  # a malformed stream: nothing more can be trusted on it
            self._lost = self._lost or f"the bus sent what is not D-Bus ({e})"
            self.transport.abortConnection()

    def _auth_lines(self) -> None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_AUTH_LINE:
                raise ValueError("authentication line too long")
            return
        line = bytes(self._buf[:end]).decode("ascii", "replace")
        del self._buf[:end + 2]
        if not line.startswith("OK "):
            raise ValueError(f"the bus refused our EXTERNAL authentication as uid {os.getuid()}: {line[:200]}")
        self.transport.write(b"BEGIN\r\n")
        self._authenticated = True
        hello = self.call(DBUS, "/org/freedesktop/DBus", DBUS, "Hello", "", [], timeout=CONNECT_TIMEOUT)
        hello.addCallbacks(lambda _: self.ready.callback(self), self._not_ready)

    def _not_ready(self, reason: failure.Failure) -> None:
        if not self.ready.called:
            self.ready.errback(reason)

    def _messages(self) -> None:
        while len(self._buf) >= 16:
            size = _frame_length(self._buf)
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"a message of {size} bytes (at most {MAX_MESSAGE_BYTES})")
            if len(self._buf) < size:
                return
            frame = bytes(self._buf[:size])
            del self._buf[:size]
            message = self._Unmarshaller(io.BytesIO(frame)).unmarshall()
            if message is None:
                raise ValueError("a message the unmarshaller could not complete")
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        kind = message.message_type
        if kind is self._types.SIGNAL:
            try:
                self.on_signal(message)
            except Exception:
                log.failure("handling the D-Bus signal {member}", member=message.member)
            return
        if kind not in (self._types.METHOD_RETURN, self._types.ERROR):
            return  # method calls to us: we export nothing, and never reply
        waiting = self._pending.pop(message.reply_serial, None)
        if waiting is None:
            return
        d, timer = waiting
        if timer.active():
            timer.cancel()
        if kind is self._types.ERROR:
            text = message.body[0] if message.body and isinstance(message.body[0], str) else ""
            d.errback(BusError(message.error_name or "org.freedesktop.DBus.Error.Failed", text[:2000]))
        else:
            d.callback(message.body)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        why = self._lost or f"the connection to the system bus closed ({reason.getErrorMessage()})"
        self._lost = why
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(BusGone(why))
        self._not_ready(failure.Failure(BusGone(why)))
        self.on_lost(self, why)
        self.gone.callback(None)

    # --- calls ------------------------------------------------------------------------------
    def call(self, destination: Optional[str], path: str, interface: str, member: str, signature: str,
             body: List[Any], timeout: float = CALL_TIMEOUT) -> defer.Deferred:
        """Fires with the reply's body (a list); fails with :class:`BusError` or :class:`BusGone`."""
        if self._lost is not None:
            return defer.fail(BusGone(self._lost))
        self._serial = self._serial % 0xFFFFFFFF + 1
        serial = self._serial
        message = self._Message(destination=destination, path=path, interface=interface, member=member,
                                signature=signature, body=body, serial=serial)
        d: defer.Deferred = defer.Deferred()
        timer = self.clock.callLater(timeout, self._timed_out, serial, member, timeout)
        self._pending[serial] = (d, timer)
        self.transport.write(bytes(message._marshall(False)))
        return d

    def _timed_out(self, serial: int, member: str, timeout: float) -> None:
        waiting = self._pending.pop(serial, None)
        if waiting is not None:
            waiting[0].errback(BusError("org.freedesktop.DBus.Error.NoReply",
                                        f"no reply to {member} within {timeout:g} s"))

    def close(self) -> defer.Deferred:
        """Close the connection; fires once it is closed."""
        self._lost = self._lost or "the daemon closed its bus connection"
        self.transport.loseConnection()
        return self.gone


class _Job:
    def __init__(self, unit: str, verb: str):
        self.unit = unit
        self.verb = verb
        self.done: defer.Deferred = defer.Deferred()


class SystemdBackend:
    """``sysadm/services`` on systemd (see the module's docstring)."""

    name = "systemd"

    def __init__(self, reactor: Any, address: str = DEFAULT_BUS, job_timeout: float = JOB_TIMEOUT,
                 clock: Optional[Any] = None, journalctl: Optional[str] = None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.address = address or DEFAULT_BUS
        self.path = socket_path(self.address)
        self.job_timeout = job_timeout
        self.journalctl = journalctl if journalctl is not None else (shutil.which("journalctl", path=TOOL_ENV["PATH"]) or "")
        self._bus: Optional[BusProtocol] = None
        self._connecting: Optional[List[defer.Deferred]] = None
        self._index: Set[str] = set()
        self._templates: Set[str] = set()  # template unit files (name@.service)
        self._jobs: Dict[str, _Job] = {}  # job object path → waiter
        self._finished: "OrderedDict[str, str]" = OrderedDict()  # job path → result, seen before its reply
        self._listing: Optional[List[defer.Deferred]] = None
        self._refresh_pending = False
        self._closed = False

    # --- the connection -----------------------------------------------------------------------
    def start(self) -> None:
        """Connect now (the index of units is made as soon as the bus answers)."""
        self._connected().addErrback(lambda f: log.warn("systemd backend: {why}", why=_why(f)))

    def close(self) -> defer.Deferred:
        """Close the bus connection (fires once closed); a connection being made closes
        itself when it is ready."""
        self._closed = True
        if self._bus is not None:
            return self._bus.close()
        return defer.succeed(None)

    def _connected(self) -> defer.Deferred:
        """Fires with a live :class:`BusProtocol` (connecting first when needed)."""
        if self._bus is not None:
            return defer.succeed(self._bus)
        d: defer.Deferred = defer.Deferred()
        if self._connecting is not None:
            self._connecting.append(d)
            return d
        if self._closed:
            return defer.fail(BusGone("the services class is stopped"))
        self._connecting = [d]

        def done(result):
            waiters, self._connecting = self._connecting, None
            for waiter in waiters:
                waiter.errback(result) if isinstance(result, failure.Failure) else waiter.callback(result)

        defer.ensureDeferred(self._connect()).addBoth(done)
        return d

    async def _connect(self) -> BusProtocol:
        creator = protocol.ClientCreator(self.reactor, BusProtocol, self.clock, self._signal, self._lost)
        try:
            bus = await _bounded(self.clock, creator.connectUNIX(self.path, timeout=int(CONNECT_TIMEOUT)),
                                 CONNECT_TIMEOUT, f"connecting to {self.path}")
            await _bounded(self.clock, bus.ready, CONNECT_TIMEOUT, "the bus's answer to Hello")
        except BusGone:
            raise
        except Exception as e:
            raise BusGone(f"cannot connect to the system bus at {self.address}: {_text(e)}") from None
        try:
            for member in SIGNALS:
                rule = f"type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',interface='{MANAGER}',member='{member}'"
                await bus.call(DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule])
            await bus.call(SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe", "", [])
        except (BusError, BusGone) as e:
            bus.close()
            raise BusGone(f"systemd does not answer on {self.address}: {_text(e)}") from None
        if self._closed:
            bus.close()
            raise BusGone("the services class is stopped")
        self._bus = bus
        self.clock.callLater(0, self._refresh)
        return bus

    def _lost(self, bus: BusProtocol, why: str) -> None:
        if self._bus is not bus:
            return  # a connection that never became the live one
        self._bus = None
        jobs, self._jobs = self._jobs, {}
        for job in jobs.values():
            job.done.errback(BusGone(why))
        if not self._closed:
            log.warn("systemd backend: {why}", why=why)

    def _signal(self, message: Any) -> None:
        if message.interface != MANAGER:
            return
        if message.member == "JobRemoved" and len(message.body) >= 4:
            _id, path, unit, result = message.body[:4]
            job = self._jobs.pop(path, None)
            if job is not None:
                job.done.callback(result)
            else:
                self._finished[path] = result
                while len(self._finished) > FINISHED_KEEP:
                    self._finished.popitem(last=False)
        elif message.member == "UnitNew" and message.body and str(message.body[0]).endswith(".service"):
            self._index.add(message.body[0])
        elif message.member == "UnitFilesChanged" or (message.member == "Reloading" and message.body
                                                        and message.body[0] is False):
            self._refresh()

    def _refresh(self) -> None:
        """Remake the index of units soon (one listing however many signals ask)."""
        if self._refresh_pending or self._closed:
            return
        self._refresh_pending = True

        def run():
            self._refresh_pending = False
            self.list().addErrback(lambda f: log.warn("systemd backend: listing units: {why}", why=_why(f)))

        self.clock.callLater(0, run)

    @defer.inlineCallbacks
    def _call(self, member: str, signature: str, body: List[Any], what: str):
        """A Manager method call; systemd's errors become ApiErrors carrying its message."""
        try:
            bus = yield self._connected()
            reply = yield bus.call(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, body)
        except BusError as e:
            code = "503" if e.name in ("org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.ServiceUnknown") \
                else "400"
            raise ApiError(code, f"{what}: systemd answered: {e.text or 'no message'} ({e.name})") from None
        except BusGone as e:
            raise ApiError("503", f"{what}: {e}") from None
        return reply

    # --- listing ------------------------------------------------------------------------------
    def list(self) -> defer.Deferred:
        """Fires with ``{name: upstream's service object}``; concurrent calls share one run."""
        d: defer.Deferred = defer.Deferred()
        if self._listing is not None:
            self._listing.append(d)
            return d
        self._listing = [d]

        def done(result):
            waiters, self._listing = self._listing, None
            for waiter in waiters:
                waiter.errback(result) if isinstance(result, failure.Failure) else waiter.callback(result)

        self._list().addBoth(done)
        return d

    @defer.inlineCallbacks
    def _list(self):
        # both calls in flight at once (D-Bus replies carry the serial they answer)
        units, files = yield _both(self._call("ListUnits", "", [], "listing units"),
                                   self._call("ListUnitFiles", "", [], "listing unit files"))
        out: Dict[str, Dict[str, str]] = {}
        states: Dict[str, Tuple[str, str]] = {}
        templates: Set[str] = set()
        for path, state in files[0]:
            unit = path[path.rfind("/") + 1:]
            if unit.endswith("@.service"):
                templates.add(unit)
            elif unit.endswith(".service"):
                states.setdefault(unit, (path, state))
        loaded: Dict[str, Tuple[str, str]] = {}
        for row in units[0]:
            unit, description, active = row[0], row[1], row[3]
            if unit.endswith(".service"):
                loaded[unit] = (description, active)
        for unit in sorted(set(states) | set(loaded)):
            path, state = states.get(unit, ("", ""))
            description, active = loaded.get(unit, ("", "inactive"))
            name = service_of(unit)
            out[name] = {"name": name, "tag": unit, "path": path, "description": description,
                         "is_enabled": "true" if state in ENABLED_STATES else "false",
                         "is_running": "true" if active in RUNNING_STATES else "false"}
        self._index = set(states) | set(loaded)
        self._templates = templates
        return out

    def owns(self, name: str) -> bool:
        """A unit systemd listed, or an instance of a template it has (``getty@tty2``)."""
        unit = unit_of(name)
        if unit in self._index:
            return True
        prefix, at, instance = unit.partition("@")
        return bool(at and prefix and instance != ".service" and f"{prefix}@.service" in self._templates)

    # --- actions ------------------------------------------------------------------------------
    @defer.inlineCallbacks
    def act(self, verb: str, name: str):
        unit = unit_of(name)
        if verb in ("start", "stop", "restart"):
            member = {"start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit"}[verb]
            reply = yield self._call(member, "ss", [unit, "replace"], f"{member} {unit}")
            path = reply[0]
            result = yield self._job_result(path, unit, verb)
            if result != "done":
                raise ApiError("400", f"systemd's {verb} job for {unit} ended '{result}'"
                                      f"{_RESULT_HINTS.get(result, '')} (see: journalctl -u {unit})")
        elif verb == "enable":
            reply = yield self._call("EnableUnitFiles", "asbb", [[unit], False, False], f"EnableUnitFiles {unit}")
            carries_install_info, changes = reply[0], reply[1]
            if not carries_install_info and not changes:
                raise ApiError("400", f"{unit} has no [Install] section: systemd cannot enable it "
                                      "(it is started by another unit or by hand)")
            yield self._call("Reload", "", [], "Reload after enabling")
        elif verb == "disable":
            yield self._call("DisableUnitFiles", "asb", [[unit], False], f"DisableUnitFiles {unit}")
            yield self._call("Reload", "", [], "Reload after disabling")
        else:
            raise ApiError("400", f"unknown verb {verb}")
        self._index.add(unit)

    def _job_result(self, path: str, unit: str, verb: str) -> defer.Deferred:
        if path in self._finished:
            return defer.succeed(self._finished.pop(path))
        job = _Job(unit, verb)
        self._jobs[path] = job

        def timed_out():
            if self._jobs.pop(path, None) is job:
                job.done.errback(ApiError("503", f"systemd's {verb} job for {unit} ({path}) did not finish within "
                                                 f"{self.job_timeout:g} s; it may still be running "
                                                 f"(see: systemctl status {unit})"))

        timer = self.clock.callLater(self.job_timeout, timed_out)

        def settled(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, failure.Failure) and result.check(BusGone):
                raise ApiError("503", f"waiting for systemd's {verb} job for {unit}: {result.value}")
            return result

        return job.done.addBoth(settled)

    # --- logs (used by the services class's logs action) -------------------------------------
    def logs(self, name: str, lines: int) -> defer.Deferred:
        """Fires with ``{"lines": the unit's last *lines* journal lines, "source": the command}``."""
        if not self.journalctl:
            return defer.fail(ApiError("404", "journalctl is not installed: systemd's journal cannot be read"))
        lines = max(1, min(int(lines), LOG_LINES_MAX))
        argv = [self.journalctl, "-u", unit_of(name), "-n", str(lines), "-o", "short-iso", "--no-pager"]

        def checked(result):
            if result[0] != 0:
                raise ApiError("400", tool_message(argv, result))
            data = result[1] if isinstance(result[1], bytes) else result[1].encode("utf-8", "replace")
            return {"lines": logtail.split_lines(data, lines), "source": f"journalctl -u {argv[2]}"}

        return spawn(self.reactor, argv, timeout=LOG_TIMEOUT, output_limit=LOG_OUTPUT_LIMIT).addCallback(checked)


_RESULT_HINTS = {
    "failed": ": the unit failed",
    "timeout": ": systemd's own timeout for the unit expired",
    "canceled": ": another job replaced it",
    "dependency": ": a unit it requires failed",
    "skipped": ": the unit was not active",
}


def _both(first: defer.Deferred, second: defer.Deferred) -> defer.Deferred:
    """Both results, or the first failure (the other's is consumed)."""
    return defer.gatherResults([first, second], consumeErrors=True).addErrback(lambda f: f.value.subFailure)


def _bounded(clock: Any, d: defer.Deferred, seconds: float, what: str) -> defer.Deferred:
    def late(deferred, timeout):
        raise BusGone(f"no answer within {seconds:g} s ({what})")

    return d.addTimeout(seconds, clock, onTimeoutCancel=late)


def _text(e: BaseException) -> str:
    return getattr(e, "text", None) or str(e) or type(e).__name__


def _why(f: failure.Failure) -> str:
    return _text(f.value)
