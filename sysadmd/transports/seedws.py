"""The seed's WebSocket wire on path ``/websocket``: TrueNAS-style messages over the same
request pipeline, logins, limits and event hub as the sysadm wire.

Wire (JSON text frames; every message is an object with a ``msg`` member)::

    → {"msg":"connect","version":"1","support":["1"]}
    ← {"msg":"connected","session":"<uuid>"}
    → {"msg":"ping","id":"p1"}                       ← {"msg":"pong","id":"p1"}
    → {"id":"a1","msg":"method","method":"auth.login","params":["alice","pw"]}
    ← {"id":"a1","msg":"result","result":true}
    → {"id":"q1","msg":"method","method":"core.get_jobs","params":[[["id","=",53]]]}
    ← {"id":"q1","msg":"result","result":[{"id":53,…,"time_started":{"$date":1571300596053},…}]}
    ← {"id":"q2","msg":"result","error":{"error":22,"errname":"EINVAL","type":null,
        "reason":"filters[0][1]: unknown operator …","trace":null,"extra":null,"code":"400"}}
    → {"msg":"sub","id":"s1","name":"core.get_jobs"}  ← {"msg":"ready","subs":["s1"]}
    ← {"msg":"added","collection":"core.get_jobs","id":54,"fields":{<the job>}}
    ← {"msg":"changed","collection":"core.get_jobs","id":54,"fields":{<the job>}}
    → {"msg":"unsub","id":"s1"}                       (no reply)

* ``connect`` first: until then every message but ``connect`` is answered
  ``{"msg":"failed","version":"1"}``, as is a ``connect`` whose version is not "1".
* Before a login only ``ping``, ``auth.login``, ``auth.login_with_token`` and
  ``auth.logout`` are served; anything else gets an ``EACCES`` error (code 401).
* ``auth.login`` ``[username, password]`` is ``rpc/auth``, ``auth.login_with_token``
  ``[token]`` is ``rpc/auth_token``, ``auth.logout`` ``[]`` is ``rpc/auth_clear``: the
  same handlers, so the same plausibility checks, blacklist, fair PAM queue and login
  gate.  As in TrueNAS the result is ``true``, or ``false`` for refused credentials (a
  401; the reason is in the server's log); a blocked address is also disconnected
  (1008).  Messages that arrive while a login is checked wait for it, bounded as on the
  sysadm wire (``AUTH_PENDING_MAX_REQUESTS``/``AUTH_PENDING_MAX_BYTES``, then 1008).
* Any other ``method`` ``"namespace.name"`` (split at the last dot) is the route
  ``namespace/name``.  Params become the handler's ``args``: for the methods in
  :data:`NAMED_PARAMS` an object of the named positions
  (``core.get_jobs [filters, options]`` → ``{"filters":…,"options":…}``); otherwise
  ``[]`` → ``{}``, ``[{…}]`` → that object, anything else → the params array itself
  (``sysadm.update [{"action":"checkupdates"}]`` → ``{"action":"checkupdates"}``,
  ``events.subscribe ["dispatcher"]`` → ``["dispatcher"]``).
* Errors: ``"error"`` in the result message with TrueNAS's fields (``error`` an errno,
  ``errname``, ``type``, ``reason``: our sentence, ``trace`` and ``extra`` null) plus
  ``code``, the sysadm wire's code (400 → EINVAL, 401/403 → EACCES, 404 → ENOENT,
  409 → EBUSY, 413 → E2BIG, 429 → EAGAIN, 500/503 → EFAULT).  A message that is not
  JSON, or has no usable ``id``, gets such an error with ``"id":null``.
* Jobs in results and events use the seed's ``{"$date": milliseconds}`` for
  ``time_started``, ``time_finished`` and ``time_created`` (numbers on the sysadm wire).
* ``sub`` ``core.get_jobs`` (any logged-in user) gets every ``jobs`` event of the event
  hub as ``added``/``changed``; another name, or more than :data:`MAX_SUBSCRIPTIONS`
  subscriptions, gets ``{"msg":"nosub","id":…,"error":{…}}``.  Subscriptions end with
  the login (``auth.*``, token expiry: a ``nosub`` is sent) and the connection.
* Limits, as on the sysadm wire (:mod:`sysadmd.transports.websocket`, which this
  extends): message size before and after login, the authentication and idle
  deadlines, connection limits, the slow-reader buffer; and at most
  :data:`MAX_PENDING_CALLS` method calls in progress per connection (more get
  ``ETOOMANYREFS``, as TrueNAS answers).
"""

from __future__ import annotations

import errno
import json
import uuid
from collections import deque
from typing import Any, Deque, Dict, Optional, Set, Tuple

from twisted.internet import defer

from sysadmd.wire import envelope
from sysadmd.wire.envelope import Request
from sysadmd.wire.close import CLOSE_POLICY
from sysadmd.transports.websocket import SysadmServerFactory, SysadmServerProtocol

PATH = b"/websocket"
MAX_PENDING_CALLS = 32
MAX_SUBSCRIPTIONS = 16
MAX_ID_CHARS = 256
MAX_METHOD_CHARS = 256
JOBS_COLLECTION = "core.get_jobs"

# Methods whose positional params are named fields of the handler's args object.
NAMED_PARAMS: Dict[str, Tuple[str, ...]] = {
    "core.get_jobs": ("filters", "options"),
    "core.job_abort": ("id",),
    "core.job_wait": ("id",),
    "core.download": ("method", "params", "filename"),
}
# Methods whose result holds jobs (converted to the seed's date form).
JOB_RESULTS = ("core.get_jobs", "core.job_wait")
AUTH_ROUTES = {"auth.login": "auth", "auth.login_with_token": "auth_token", "auth.logout": "auth_clear"}
DATE_FIELDS = ("time_started", "time_finished", "time_created")

ERRNOS = {"400": errno.EINVAL, "401": errno.EACCES, "403": errno.EACCES, "404": errno.ENOENT, "405": errno.EINVAL,
          "409": errno.EBUSY, "413": errno.E2BIG, "429": errno.EAGAIN, "500": errno.EFAULT, "503": errno.EFAULT}


def error_object(code: str, reason: str, errnum: Optional[int] = None) -> Dict[str, Any]:
    """TrueNAS's error fields for one of our ``(code, reason)`` refusals."""
    number = errnum if errnum is not None else ERRNOS.get(str(code), errno.EFAULT)
    return {"error": number, "errname": errno.errorcode.get(number, "EUNKNOWN"), "type": None, "reason": reason,
            "trace": None, "extra": None, "code": str(code)}


def seed_job(job: Any) -> Any:
    """A job dict with the seed's ``{"$date": ms}`` times (anything else unchanged)."""
    if not isinstance(job, dict):
        return job
    out = dict(job)
    for name in DATE_FIELDS:
        value = out.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = {"$date": int(round(value * 1000))}
    return out


def args_for(method: str, params: list) -> Any:
    """The handler's ``args`` for a seed call's positional *params* (see the module doc)."""
    names = NAMED_PARAMS.get(method)
    if names is not None:
        return {name: value for name, value in zip(names, params)}
    if not params:
        return {}
    if len(params) == 1 and isinstance(params[0], dict):
        return params[0]
    return params


class _Refusal(Exception):
    def __init__(self, code: str, reason: str, errnum: Optional[int] = None):
        super().__init__(reason)
        self.error = error_object(code, reason, errnum)


class SeedServerProtocol(SysadmServerProtocol):
    """One connection speaking the seed's messages; the session is the sysadm wire's."""

    def __init__(self) -> None:
        super().__init__()
        self.handshake_done = False
        self.seed_session_id = ""
        self.subs: Dict[str, str] = {}  # sub id -> collection name
        self.calls = 0  # method calls in progress
        self.login_in_flight: Optional[defer.Deferred] = None
        self.parked: Deque[Tuple[int, Any]] = deque()
        self.parked_bytes = 0

    # --- reading ----------------------------------------------------------------------
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or session.closed or (self.channel is not None and self.channel.closing):
            return
        session.touch()
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            self.send_error(None, "400", f"message is not valid UTF-8 (byte {e.start})")
            return
        message = self.parse(text)
        if message is None:
            return
        if self.login_in_flight is not None:
            self.park(len(text), message)
            return
        self.dispatch(message)

    def parse(self, text: str) -> Optional[Dict[str, Any]]:
        stripped = text.strip()
        if not stripped.startswith("{"):
            self.send_error(None, "400", "a message is a JSON object and its text must begin with '{'")
            return None
        values = stripped.count(",") + stripped.count("{") + stripped.count("[")
        if values > envelope.MAX_JSON_VALUES:
            self.send_error(None, "400", f"the message holds about {values} JSON values; at most "
                                         f"{envelope.MAX_JSON_VALUES} are accepted")
            return None
        try:
            message = json.loads(stripped)
        except (ValueError, RecursionError) as e:
            self.send_error(None, "400", f"invalid JSON: {e}")
            return None
        if not isinstance(message, dict):
            self.send_error(None, "400", "a message must be a JSON object")
            return None
        where = envelope.lone_surrogate_path(message)
        if where is not None:
            self.send_error(None, "400", f"{where} holds a lone UTF-16 surrogate; the message was refused")
            return None
        return message

    def park(self, size: int, message: Dict[str, Any]) -> None:
        """Hold *message* until the login being checked is decided (bounded)."""
        max_requests, max_bytes = self.factory.app.api.pending_limits
        if len(self.parked) + 1 > max_requests or self.parked_bytes + size > max_bytes:
            self.session.close(f"more than {max_requests} messages or {max_bytes} bytes sent while the login was "
                               "being checked (AUTH_PENDING_MAX_REQUESTS/AUTH_PENDING_MAX_BYTES); wait for its "
                               "result", CLOSE_POLICY)
            return
        self.parked.append((size, message))
        self.parked_bytes += size

    def unpark(self) -> None:
        while self.parked and self.login_in_flight is None and not self.session.closed:
            size, message = self.parked.popleft()
            self.parked_bytes -= size
            self.dispatch(message)

    def dispatch(self, message: Dict[str, Any]) -> None:
        kind = message.get("msg")
        if kind == "connect":
            if message.get("version") != "1":
                self.send({"msg": "failed", "version": "1"})
                return
            if not self.seed_session_id:
                self.seed_session_id = str(uuid.uuid4())
            self.handshake_done = True
            self.send({"msg": "connected", "session": self.seed_session_id})
            return
        if not self.handshake_done:
            self.send({"msg": "failed", "version": "1"})
            return
        if kind == "ping":
            pong = {"msg": "pong"}
            if "id" in message:
                pong["id"] = message["id"] if self.usable_id(message["id"]) else None
            self.send(pong)
        elif kind == "method":
            self.method(message)
        elif kind == "sub":
            self.subscribe(message)
        elif kind == "unsub":
            sub_id = message.get("id")
            if self.usable_id(sub_id):
                self.subs.pop(self.id_key(sub_id), None)
                if not self.subs:
                    self.factory.watchers.discard(self)
        else:
            shown = kind if isinstance(kind, str) and len(kind) <= 32 else envelope.type_name(kind)
            self.send_error(self.message_id(message), "400",
                            f"unknown msg {shown!r} (expected connect, ping, method, sub or unsub)")

    # --- calls ---------------------------------------------------------------------
    @staticmethod
    def usable_id(value: Any) -> bool:
        if isinstance(value, str):
            return 0 < len(value) <= MAX_ID_CHARS
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2 ** 63

    def message_id(self, message: Dict[str, Any]) -> Any:
        value = message.get("id")
        return value if self.usable_id(value) else None

    @staticmethod
    def id_key(value: Any) -> str:
        return value if isinstance(value, str) else f"#{value}"

    def method(self, message: Dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            if not self.usable_id(call_id):
                raise _Refusal("400", f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters "
                                      "or an integer")
            method = message.get("method")
            if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_CHARS or "." not in method.strip("."):
                raise _Refusal("400", "'method' must be a string \"namespace.name\" (such as \"core.get_jobs\")")
            params = message.get("params")
            if params is None:
                params = []
            if not isinstance(params, list):
                raise _Refusal("400", f"'params' must be an array, got {envelope.type_name(params)}")
            if self.session.identity is None and method not in AUTH_ROUTES:
                raise _Refusal("401", "log in first: auth.login [username, password] or auth.login_with_token "
                                      "[token]")
            if self.calls >= MAX_PENDING_CALLS:
                raise _Refusal("429", f"more than {MAX_PENDING_CALLS} calls in progress on this connection; wait "
                                      "for their results", errno.ETOOMANYREFS)
            request = self.request_for(method, params, call_id)
        except _Refusal as refusal:
            self.send({"msg": "result", "id": call_id if self.usable_id(call_id) else None, "error": refusal.error})
            return
        is_auth = method in AUTH_ROUTES
        if is_auth:
            self.end_subscriptions(None)  # every auth.* starts by logging out
        self.calls += 1
        d = self.factory.app.api.handle(self.session, request)
        d.addCallback(self.reply, call_id, method)
        d.addErrback(lambda f: self._log.failure("answering {method} failed", f, method=method))
        if is_auth and not d.called:
            # Later messages wait for the login's result (sent by reply above), then run.
            gate = self.login_in_flight = d

            def release(_):
                if self.login_in_flight is gate:
                    self.login_in_flight = None
                self.unpark()

            d.addBoth(release)

    def request_for(self, method: str, params: list, call_id: Any) -> Request:
        rid = call_id if isinstance(call_id, str) else str(call_id)
        if method in AUTH_ROUTES:
            name = AUTH_ROUTES[method]
            if method == "auth.login":
                if len(params) not in (2, 3) or (len(params) == 3 and params[2] is not None):
                    raise _Refusal("400", "auth.login takes [username, password] (no one-time password)")
                args: Any = {"username": params[0], "password": params[1]}
            elif method == "auth.login_with_token":
                if len(params) != 1:
                    raise _Refusal("400", "auth.login_with_token takes [token]")
                args = {"token": params[0]}
            else:
                args = {}
            return Request(namespace="rpc", name=name, id=rid, args=args)
        namespace, name = method.rsplit(".", 1)
        return Request(namespace=namespace, name=name, id=rid, args=args_for(method, params))

    def reply(self, answer: Optional[Dict[str, Any]], call_id: Any, method: str) -> None:
        self.calls -= 1
        if answer is not None and answer.get("namespace") == "error":
            details = answer.get("args") or {}
            code = str(details.get("code", "500"))
            if method in ("auth.login", "auth.login_with_token") and code == "401":
                self.send({"msg": "result", "id": call_id, "result": False})
                return
            reason = details.get("detail") or details.get("message") or "error"
            self.send({"msg": "result", "id": call_id, "error": error_object(code, reason)})
            return
        if method in AUTH_ROUTES:
            result: Any = True
        else:
            result = None if answer is None else answer.get("args")
            if method in JOB_RESULTS:
                result = [seed_job(j) for j in result] if isinstance(result, list) else seed_job(result)
        self.send({"msg": "result", "id": call_id, "result": result})

    # --- subscriptions -------------------------------------------------------------
    def subscribe(self, message: Dict[str, Any]) -> None:
        sub_id = message.get("id")
        name = message.get("name")
        if not self.usable_id(sub_id):
            self.send({"msg": "nosub", "id": None, "error": error_object(
                "400", f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters or an integer")})
            return
        refusal = None
        if self.session.identity is None:
            refusal = error_object("401", "log in first: subscriptions need a login")
        elif name != JOBS_COLLECTION:
            shown = name if isinstance(name, str) and len(name) <= 64 else envelope.type_name(name)
            refusal = error_object("404", f"no collection {shown!r} to subscribe to (expected {JOBS_COLLECTION!r})")
        elif self.id_key(sub_id) not in self.subs and len(self.subs) >= MAX_SUBSCRIPTIONS:
            refusal = error_object("429", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        if refusal is not None:
            self.send({"msg": "nosub", "id": sub_id, "error": refusal})
            return
        self.subs[self.id_key(sub_id)] = name
        self.factory.watchers.add(self)
        self.send({"msg": "ready", "subs": [sub_id]})

    def end_subscriptions(self, error: Optional[Dict[str, Any]]) -> None:
        if error is not None and self.subs:
            self.send({"msg": "nosub", "collection": JOBS_COLLECTION, "error": error})
        self.subs.clear()
        self.factory.watchers.discard(self)

    def deliver(self, text: str) -> None:
        """One ``jobs`` event, already encoded, if this connection is still logged in."""
        session = self.session
        if session is None or session.closed or not self.subs:
            self.factory.watchers.discard(self)
            return
        if session.identity is None:
            self.end_subscriptions(error_object("401", "logged out (the login ended or its token expired)"))
            return
        session.send_text(text)

    # --- writing ---------------------------------------------------------------------
    def send(self, message: Dict[str, Any]) -> None:
        if self.session is not None:
            self.session.send(message)

    def send_error(self, call_id: Any, code: str, reason: str) -> None:
        self.send({"msg": "result", "id": call_id, "error": error_object(code, reason)})

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.watchers.discard(self)
        self.parked.clear()
        super().onClose(wasClean, code, reason)


class SeedServerFactory(SysadmServerFactory):
    """Connections on ``/websocket``; fans ``jobs`` events out to their subscribers."""

    protocol = SeedServerProtocol

    def __init__(self, server: Any, *, reactor: Any = None):
        super().__init__(server, "wss", reactor=reactor)
        self.watchers: Set[SeedServerProtocol] = set()
        self.stop_listening = server.events.listen("jobs", self.job_event, wanted=lambda: bool(self.watchers))

    def job_event(self, args: Any) -> None:
        if not self.watchers or not isinstance(args, dict):
            return
        kind = args.get("kind")
        job = args.get("job")
        if kind not in ("added", "changed") or not isinstance(job, dict):
            return
        text = envelope.encode({"msg": kind, "collection": JOBS_COLLECTION, "id": job.get("id"),
                                "fields": seed_job(job)})
        for protocol in list(self.watchers):
            protocol.deliver(text)

