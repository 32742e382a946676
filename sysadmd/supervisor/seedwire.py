"""The taskmaster supervisor wire (docs/protocol.md §2.6): JSON messages ending in ``;;``.

A query is one JSON object, ``{"command":VERB,"job":B64,"data":B64};;``; an answer is
``{"response":KIND,...};;`` written without whitespace, its text fields base64:

==============  ===============================================================
``success``     the command was done
``fail``        ``error``: why not (base64 text)
``invalid``     the query is not one (not JSON, no or an unknown ``command``);
                ``error`` says why (ours: the seed sends no reason)
``status``      ``data``: base64 of the program's status as compact JSON
``redundant``   nothing to do (``start`` of a running program…)
``file``        ``job``: base64 name, ``data``: base64 of the definition (JSON)
``list``        ``list``: base64 of ``{"jobs":[{"name":"nginx"},…]}``
==============  ===============================================================

:func:`parse_query` and :func:`response_bytes` are the pure halves; :class:`SeedWireProtocol`
frames a byte stream into queries, answers them one at a time in order through
``supervisor.handle(verb, name, data, full_access=…, actor=…)`` and survives any input:

* a query longer than ``max_message`` bytes without ``;;`` is answered ``invalid`` and
  the bytes up to the next ``;;`` are dropped, then reading goes on;
* at most :data:`MAX_PIPELINE` parsed queries wait per connection; beyond that the
  connection is not read until they drain (back-pressure, nothing is dropped);
* a connection idle (nothing queued or running) for ``idle_timeout`` seconds is closed.

Who may do what is decided per connection from the peer's uid (:mod:`.peercred`; over TCP
looked up in a thread, queries wait for it), the
way the main local socket does it (:meth:`sysadmd.auth.rights.Rights.for_uid`): full
access for every verb, limited access for ``status``/``list``/``pull``, no access (or
an unknown peer) ``fail`` with the reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Optional, Tuple, Union

from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from sysadmd.auth.rights import user_for_uid
from sysadmd.runtime.listeners import ConnectionGuard, Listener
from sysadmd.supervisor.peercred import PeerUnknown, tcp_peer_uid, unix_peer_uid

log = Logger()

TERMINATOR = b";;"
LOOPBACK = "127.0.0.1"
MAX_MESSAGE_BYTES = 1024 * 1024  # default bound of one query, ";;" and base64 definition included
MAX_PIPELINE = 16  # parsed queries waiting per connection before reading pauses
LOGGED_BAD_QUERIES = 10  # bad or refused queries logged one by one per connection

VERBS = ("start", "stop", "kill", "repair", "status", "pull", "push", "delete", "list", "reload", "restart")
NEEDS_JOB = frozenset(("start", "stop", "kill", "repair", "status", "pull", "push", "delete", "reload"))
READ_VERBS = frozenset(("status", "list", "pull"))
RESPONSES = ("success", "fail", "invalid", "status", "redundant", "file", "list")


@dataclass(frozen=True)
class Query:
    verb: str
    name: Optional[str] = None
    data: Optional[dict] = None


class WireError(Exception):
    """A query that cannot be run: answered ``invalid`` or ``fail`` with :attr:`reason`."""

    def __init__(self, response: str, reason: str):
        super().__init__(reason)
        self.response = response
        self.reason = reason


def _no_constants(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _json(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants)


def _b64_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise WireError("fail", f"{field}: expected a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise WireError("fail", f"{field}: not valid base64 (standard alphabet, '=' padding)") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("fail", f"{field}: the decoded bytes are not UTF-8 text") from None


def parse_query(raw: bytes) -> Query:
    """One query's bytes (without ``;;``) → :class:`Query`, or :class:`WireError`:
    ``invalid`` when it is no query at all, ``fail`` when a field is unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("invalid", "the query is not UTF-8 text") from None
    try:
        message = _json(text)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise WireError("invalid", f"the query is not JSON: {why}") from None
    if not isinstance(message, dict):
        raise WireError("invalid", "the query must be a JSON object such as {\"command\":\"list\"}")
    verb = message.get("command")
    if not isinstance(verb, str):
        raise WireError("invalid", "command: missing; expected one of " + ", ".join(VERBS))
    if verb not in VERBS:
        raise WireError("invalid", f"command: unknown {verb[:40]!r}; expected one of " + ", ".join(VERBS))
    name = None
    if verb in NEEDS_JOB:
        if "job" not in message:
            raise WireError("fail", f"job: missing; {verb} needs the program name, base64-encoded")
        name = _b64_text(message["job"], "job")
    data = None
    if verb == "push":
        if "data" not in message:
            raise WireError("fail", "data: missing; push needs the job.tm.json file, base64-encoded")
        text = _b64_text(message["data"], "data")
        try:
            data = _json(text)
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise WireError("fail", f"data: the definition is not JSON: {why}") from None
        if not isinstance(data, dict):
            raise WireError("fail", "data: the definition must be a JSON object")
    return Query(verb, name, data)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def response_bytes(response: str, *, error: str = "", data: Any = None, job: str = "") -> bytes:
    """One answer on the wire, ``;;`` included, without whitespace."""
    fields = {"response": response}
    if response == "fail":
        fields["error"] = _b64(error or "failed")
    elif response == "invalid":
        if error:
            fields["error"] = _b64(error)
    elif response == "status":
        fields["data"] = _b64(_compact(data if data is not None else {}))
    elif response == "file":
        fields["job"] = _b64(job)
        fields["data"] = _b64(_compact(data if data is not None else {}))
    elif response == "list":
        jobs = [{"name": item} if isinstance(item, str) else item for item in (data or ())]
        fields["list"] = _b64(_compact({"jobs": jobs}))
    elif response not in ("success", "redundant"):
        raise ValueError(f"response: unknown kind {response!r}; expected one of {', '.join(RESPONSES)}")
    return json.dumps(fields, separators=(",", ":")).encode("ascii") + TERMINATOR


def reply_bytes(reply: Any) -> bytes:
    """A core ``Reply`` (status, error, data, job) on the wire."""
    return response_bytes(reply.status, error=getattr(reply, "error", "") or "",
                          data=getattr(reply, "data", None), job=getattr(reply, "job", "") or "")


@dataclass(frozen=True)
class Peer:
    """Who is connected: its uid (``None``: unknown, *problem* says why), its access
    (``True`` full, ``False`` limited, ``None`` none) and the actor text for logs."""
    uid: Optional[int]
    access: Optional[bool]
    actor: str
    problem: str = ""

    def refusal(self, verb: str) -> Optional[str]:
        if self.uid is None:
            return f"the connected process cannot be identified ({self.problem}); nothing is done for it"
        user = user_for_uid(self.uid)
        if self.access is None:
            return (f"uid {self.uid} ({user}) has no access to the supervisor: it is not root and not in "
                    f"FULL_ACCESS_GROUPS or LIMITED_ACCESS_GROUPS")
        if self.access is False and verb not in READ_VERBS:
            return (f"{verb}: needs full access; uid {self.uid} ({user}) has limited access "
                    f"(status, list and pull only)")
        return None


class SeedWireProtocol(Protocol):
    """One connection; see the module docstring."""

    factory: "SeedWireFactory"
    peer: Optional[Peer] = None

    def connectionMade(self) -> None:
        self.buffer = b""
        self.scan_from = 0
        self.discarding = False
        self.queue: Deque[Union[Query, WireError]] = deque()
        self.busy = False
        self.bad = 0  # bad or refused queries so far
        self.paused = False  # reading paused: too many queries waiting
        self.write_paused = False  # answering paused: the peer does not read its answers
        self.idle_call: Any = None
        self.transport.registerProducer(self, True)
        self.arm_idle()
        # Queries that arrive before the peer is known wait for it (the /proc lookup runs
        # in a thread: a host with many sockets makes the tables slow to read).
        self.factory.identify(self.transport).addCallback(self.identified)

    def identified(self, peer: Peer) -> None:
        self.peer = peer
        self.pump()

    # --- the transport's send buffer is full / drained (we are its producer) -----------
    def pauseProducing(self) -> None:
        self.write_paused = True

    def resumeProducing(self) -> None:
        self.write_paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.write_paused = True
        self.queue.clear()

    # --- framing -------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self.arm_idle()
        limit = self.factory.max_message
        if self.discarding:
            data = self.buffer + data
            self.buffer = b""
            end = data.find(TERMINATOR)
            if end < 0:
                self.buffer = data[-1:]  # a ';' that may start the terminator
                return
            self.discarding = False
            self.scan_from = 0
            data = data[end + len(TERMINATOR):]
        self.buffer += data
        while True:
            end = self.buffer.find(TERMINATOR, self.scan_from)
            if end < 0:
                break
            message, self.buffer = self.buffer[:end], self.buffer[end + len(TERMINATOR):]
            self.scan_from = 0
            if end + len(TERMINATOR) > limit:
                self.queue.append(WireError("invalid", f"the query is longer than {limit} bytes"))
                continue
            try:
                self.queue.append(parse_query(message))
            except WireError as e:
                self.queue.append(e)
        if len(self.buffer) + len(TERMINATOR) > limit:
            self.queue.append(WireError("invalid", f"no ';;' within {limit} bytes; the bytes up to the next "
                                                   f"';;' are dropped"))
            self.buffer = self.buffer[-1:]
            self.discarding = True
        self.scan_from = max(0, len(self.buffer) - 1)
        self.pump()

    # --- answering, one query at a time, in order --------------------------------------
    def pump(self) -> None:
        while self.peer is not None and not self.busy and not self.write_paused and self.queue and self.connected:
            item = self.queue.popleft()
            if isinstance(item, WireError):
                self.answer(item.response, item.reason, verb=None)
                continue
            refusal = self.peer.refusal(item.verb)
            if refusal is not None:
                self.note_bad(f"{item.verb} {item.name or ''}: refused: {refusal}")
                self.write(response_bytes("fail", error=refusal))
                continue
            self.busy = True
            d = defer.maybeDeferred(self.factory.supervisor.handle, item.verb, item.name, item.data,
                                    full_access=bool(self.peer.access), actor=self.peer.actor)
            d.addCallbacks(self.answered, self.crashed, callbackArgs=(item,), errbackArgs=(item,))
        if self.paused and len(self.queue) <= MAX_PIPELINE // 2:
            self.paused = False
            self.transport.resumeProducing()
        elif not self.paused and len(self.queue) > MAX_PIPELINE and self.connected:
            self.paused = True
            self.transport.pauseProducing()

    def answer(self, response: str, reason: str, verb: Optional[str]) -> None:
        self.note_bad(f"{response}: {reason}")
        self.write(response_bytes(response, error=reason))

    def note_bad(self, what: str) -> None:
        """Log a bad or refused query; past :data:`LOGGED_BAD_QUERIES` on one connection, only
        their count when it closes (a flood of garbage must not flood the log)."""
        self.bad += 1
        if self.bad <= LOGGED_BAD_QUERIES:
            log.info("supervisor wire: {actor}: {what}", actor=self.peer.actor, what=what)

    def answered(self, reply: Any, query: Query) -> None:
        self.busy = False
        try:
            out = reply_bytes(reply)
        except (ValueError, TypeError) as e:
            log.error("supervisor wire: {verb} {name}: unusable reply {reply!r}: {e}", verb=query.verb,
                      name=query.name or "", reply=reply, e=e)
            out = response_bytes("fail", error="internal error: the supervisor's reply could not be sent; "
                                               "see the daemon log")
        log.info("supervisor wire: {actor}: {verb} {name} -> {response}", actor=self.peer.actor, verb=query.verb,
                 name=query.name or "", response=getattr(reply, "status", "?"))
        self.write(out)
        self.pump()

    def crashed(self, failure: Any, query: Query) -> None:
        self.busy = False
        log.failure("supervisor wire: {actor}: {verb} {name} failed", failure, actor=self.peer.actor,
                    verb=query.verb, name=query.name or "")
        self.write(response_bytes("fail", error=f"{query.verb}: internal error; see the daemon log"))
        self.pump()

    def write(self, data: bytes) -> None:
        if self.connected:
            self.transport.write(data)
            self.arm_idle()

    # --- idle timeout --------------------------------------------------------------
    def arm_idle(self) -> None:
        timeout = self.factory.idle_timeout
        if timeout <= 0 or not self.connected:
            return
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.reset(timeout)
        else:
            self.idle_call = self.factory.clock.callLater(timeout, self.idle)

    def idle(self) -> None:
        self.idle_call = None
        if self.busy or self.queue:
            self.arm_idle()  # a slow command (stop waits up to stopwaitsecs) is not idleness
            return
        log.info("supervisor wire: {actor}: closed after {t:g} s idle", actor=self.peer.actor if self.peer else "?",
                 t=self.factory.idle_timeout)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = 0  # late answers from the core are dropped (see write)
        if self.bad > LOGGED_BAD_QUERIES:
            log.info("supervisor wire: {actor}: {n} bad or refused queries in all on this connection "
                     "(the first {logged} were logged)", actor=self.peer.actor if self.peer else "?",
                     n=self.bad, logged=LOGGED_BAD_QUERIES)
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        self.idle_call = None
        self.queue.clear()


class SeedWireFactory(Factory):
    protocol = SeedWireProtocol
    noisy = False

    def __init__(self, supervisor: Any, access_for_uid: Callable[[int], Optional[bool]], clock: Any, *,
                 where: str, unix: bool, max_message: int = MAX_MESSAGE_BYTES, idle_timeout: float = 300.0):
        self.supervisor = supervisor
        self.access_for_uid = access_for_uid
        self.clock = clock
        self.where = where
        self.unix = unix
        self.max_message = max_message
        self.idle_timeout = idle_timeout

    def identify(self, transport: Any) -> defer.Deferred:
        """A Deferred :class:`Peer` for the connection on *transport*."""
        if self.unix:
            try:
                uid = unix_peer_uid(transport.getHandle())
            except PeerUnknown as e:
                return defer.succeed(self._unknown(self.where, e))
            return defer.succeed(Peer(uid, self.access_for_uid(uid), f"uid {uid} via {self.where}"))
        peer, host = transport.getPeer(), transport.getHost()
        where = f"{host.host}:{host.port}"
        d = threads.deferToThreadPool(self.clock, self.clock.getThreadPool(), tcp_peer_uid,
                                      (peer.host, peer.port), (host.host, host.port))
        d.addCallback(lambda uid: Peer(uid, self.access_for_uid(uid), f"uid {uid} via {where}"))
        d.addErrback(lambda failure: self._unknown(where, failure.trap(PeerUnknown) and failure.value))
        return d

    @staticmethod
    def _unknown(where: str, problem: Exception) -> Peer:
        log.warn("supervisor wire: a connection via {where} cannot be identified: {e}", where=where, e=problem)
        return Peer(None, None, f"unknown peer via {where}", str(problem))


class WireListener(Listener):
    """A :class:`Listener` whose failure to bind is logged, not fatal: the supervisor wire is
    a compatibility port, and a busy 7777 (another taskmaster) must not keep sysadmd down.
    ``ready`` fires with the port, or ``None`` when it could not listen."""

    def startService(self) -> None:
        service.Service.startService(self)  # not Listener's start, which ends the daemon
        d = self.endpoint.listen(self.factory)

        def listening(port):
            self.port = port
            address = port.getHost()
            where = getattr(address, "port", None) or getattr(address, "name", address)
            if isinstance(where, bytes):
                where = where.decode()
            log.info("{label} listening on {host} port {port}", label=self.label,
                     host=getattr(address, "host", "unix"), port=where)
            self.ready.callback(port)

        def failed(failure):
            why = failure.getErrorMessage() if failure.check(CannotListenError, OSError) else repr(failure.value)
            log.critical("{label} cannot listen on {where}: {why}; the daemon runs on without it",
                         label=self.label, where=self.endpoint_description, why=why)
            self.ready.callback(None)

        d.addCallbacks(listening, failed)


def tcp_listener(factory: SeedWireFactory, reactor: Any, port: int,
                 guard: Optional[ConnectionGuard] = None) -> WireListener:
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface=LOOPBACK)
    return WireListener(reactor, f"tcp:{port}:interface={LOOPBACK}", factory, label="supervisor wire",
                        endpoint=endpoint, guard=guard)


def unix_listener(factory: SeedWireFactory, reactor: Any, path: str,
                  guard: Optional[ConnectionGuard] = None) -> WireListener:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
        os.chmod(directory, 0o755)
    endpoint = endpoints.UNIXServerEndpoint(reactor, path, backlog=128, mode=0o666, wantPID=True)
    return WireListener(reactor, f"unix:{path}", factory, label="supervisor socket", endpoint=endpoint, guard=guard)


def wire_guard(clock: Any, max_connections: int) -> ConnectionGuard:
    """At most *max_connections* wire connections at once (TCP and Unix socket together);
    every peer is local, so there is no per-address cap, and no handshake to time."""
    return ConnectionGuard(clock, max_total=max_connections, per_address=0, handshake_timeout=0,
                           label="supervisor wire")


def build_listeners(supervisor: Any, access_for_uid: Callable[[int], Optional[bool]], reactor: Any, *,
                    port: Optional[int], socket_path: str, max_connections: int, max_message: int,
                    idle_timeout: float) -> Tuple[Tuple[str, WireListener], ...]:
    """The wire's listeners, ``(name, listener)``: TCP on 127.0.0.1:*port* unless ``None``,
    the Unix socket at *socket_path* unless empty."""
    guard = wire_guard(reactor, max_connections)
    out = []
    if port is not None:
        factory = SeedWireFactory(supervisor, access_for_uid, reactor, where=f"{LOOPBACK}:{port}", unix=False,
                                  max_message=max_message, idle_timeout=idle_timeout)
        out.append(("supervisor-tcp", tcp_listener(factory, reactor, port, guard)))
    if socket_path:
        factory = SeedWireFactory(supervisor, access_for_uid, reactor, where=socket_path, unix=True,
                                  max_message=max_message, idle_timeout=idle_timeout)
        out.append(("supervisor-unix", unix_listener(factory, reactor, socket_path, guard)))
    return tuple(out)
