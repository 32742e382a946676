"""This server as a fleet agent of the bridges it links to (issue 13; docs/protocol.md §8.5).

After the bridge accepted our key and asked our key list, each link says
``fleet/hello {"name": <hostname>}``; the bridge then sends what it stored for us:

* ``fleet/command {id, agent, payload, signature, key, ts}``: the client signed
  (:mod:`sysadmd.wire.fleetsig`) with ``key`` (an md5 checksum of one of our registered
  keys) and sealed ``payload`` to our bridge key (:mod:`sysadmd.wire.seal`, context
  ``command``).  We check the signature and the key's user's rights as a bridged login
  would, open the payload (a plaintext one only with ``FLEET_ALLOW_PLAINTEXT``), record
  the id in ``fleet_accepted`` (our database) *before* we ``ack``, run the command as a
  row of the job table, keep the result there and send ``fleet/result`` until the bridge
  confirms it (``fleet/result_stored``).  The result of a sealed command is encrypted
  under a key derived from the command's content key (:func:`seal.seal_keyed`: only its
  client and we know it); a refusal before the payload opened is plaintext.  An id we
  already accepted is never run again: we ack again, send the kept result, or, if this
  process was stopped while it ran (``kill -9``), report it ``interrupted``.
* ``fleet/event {id, payload, signature, key, ts}``: signed by the client
  (``sysadm-fleet-event/1``) and sealed to us (context ``event``); published once to our
  subscribers as a ``fleet`` event with the sender's user (recorded in the same table),
  then ``fleet/event_ack``.  An unsigned plaintext event (the old form) only with
  ``FLEET_ALLOW_PLAINTEXT``; a refused event is acknowledged and not published.
* ``fleet/ping {t}`` → ``fleet/pong {t}`` (the bridge's round-trip time).

``payload`` (JSON text) is read here only; the bridge never parses it:

    {"kind":"api","namespace":NS,"name":NAME,"args":ARGS[,"timeout":S]}   one API request
    {"kind":"job","commands":[CMD,…][,"timeout":S]}                       one dispatcher job (a chain)
    {"key":K,"data":D}                                                     an emitted event

(those are the opened texts: on the wire each is sealed).  ``result`` is JSON text
``{"ok":bool,"outcome":…,"reply":…,"error":…,"job_id":N,"host":H}`` (keyed on the wire).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from typing import Any, Callable, Dict, Optional

from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.jobs.model import Owner
from sysadmd.runtime import crypto
from sysadmd.session import Identity
from sysadmd.wire import bound, envelope, fleetsig, seal

log = Logger()

MAX_TIMEOUT = 7 * 86400.0
DEFAULT_TIMEOUT = 3600.0
MAX_COMMANDS = 64


class _Quiet:
    """The channel of a fleet command's session: replies come back as values, and events
    it might subscribe to have nowhere to go."""

    def send_text(self, text: str) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


def _result(ok: bool, outcome: str, *, reply: Any = None, error: Optional[str] = None,
            job_id: Optional[int] = None) -> str:
    return json.dumps({"ok": ok, "outcome": outcome, "reply": reply, "error": error, "job_id": job_id,
                       "host": socket.gethostname()}, separators=(",", ":"), sort_keys=True)


class Refused(Exception):
    """A fleet item this agent will not run or publish; the message says why."""


class FleetAgent:
    """The fleet side of every bridge link of this server (one object, links call in)."""

    def __init__(self, server: Any, jobs: Any, keys: Any, publish: Callable[..., Any]):
        self.server = server
        self.db: sqlite3.Connection = server.db
        self.jobs = jobs
        self.keys = keys
        self.publish = publish
        self.running: Dict[str, Any] = {}  # command id -> the protocol to answer on (this process)
        self._dispatcher_waits: Dict[str, defer.Deferred] = {}
        server.events.listen("dispatcher", self._dispatcher_event, wanted=lambda: bool(self._dispatcher_waits))

    # --- from the link ---------------------------------------------------------------------
    @property
    def allow_plaintext(self) -> bool:
        return bool(self.server.config.fleet_allow_plaintext)

    def name(self) -> str:
        return self.server.config.fleet_agent_name or socket.gethostname()

    def hello(self, protocol: Any) -> None:
        protocol.send_json({"args": {"name": self.name()}, "id": "fleet_hello", "name": "hello",
                            "namespace": "fleet"})

    def from_bridge(self, protocol: Any, name: str, args: Any) -> None:
        if not isinstance(args, dict):
            return
        try:
            if name == "command":
                self._command(protocol, args)
            elif name == "event":
                self._event(protocol, args)
            elif name == "ping":
                protocol.send_json({"args": {"t": args.get("t")}, "id": "", "name": "pong", "namespace": "fleet"})
            elif name == "result_stored" and isinstance(args.get("id"), str):
                self.db.execute("UPDATE fleet_accepted SET confirmed = 1 WHERE id = ?", (args["id"],))
        except sqlite3.Error as e:
            # Not acknowledged: the bridge sends it again when we reconnect.
            log.error("fleet: cannot record {name} from bridge {nick}: {error}", name=name,
                      nick=protocol.link.nickname, error=str(e))

    @staticmethod
    def _send(protocol: Any, name: str, args: Dict[str, Any]) -> None:
        protocol.send_json({"args": args, "id": "", "name": name, "namespace": "fleet"})

    def own_id(self, protocol: Any) -> str:
        return bound.fingerprint(protocol.link.bridge_key)

    # --- commands --------------------------------------------------------------------------
    def _command(self, protocol: Any, args: Dict[str, Any]) -> None:
        command_id, payload = args.get("id"), args.get("payload")
        if not isinstance(command_id, str) or not command_id or len(command_id) > 64 or not isinstance(payload, str):
            log.warn("fleet: malformed command from bridge {nick} ignored", nick=protocol.link.nickname)
            return
        row = self.db.execute("SELECT * FROM fleet_accepted WHERE id = ?", (command_id,)).fetchone()
        if row is not None:
            self._again(protocol, row, args)
            return
        refusal, key = self._check(protocol, args)
        spec_text, sealer = "", None
        if refusal is None:
            try:
                spec_text, content_key = self._open(protocol, "command", command_id, payload)
                sealer = self._sealer(command_id, args["agent"], content_key)
            except Refused as e:
                refusal = str(e)
        self.db.execute("INSERT INTO fleet_accepted (id, kind, bridge, accepted, state) VALUES (?, 'command', ?, ?, ?)",
                        (command_id, protocol.link.nickname, self.server.reactor.seconds(),
                         "done" if refusal else "running"))
        self._send(protocol, "ack", {"id": command_id})
        if refusal is not None:
            log.warn("fleet: command {id} refused: {why}", id=command_id, why=refusal)
            self._finish(protocol, command_id, _result(False, "refused", error=refusal))
            return
        self.running[command_id] = protocol
        d = defer.maybeDeferred(self._run, command_id, key, spec_text)
        d.addErrback(lambda f: (log.failure("fleet command {id} failed", f, id=command_id),
                                _result(False, "failed", error="the agent failed to run it; its log has the details"))[1])
        d.addCallback(lambda result: self._finish(self.running.pop(command_id, protocol), command_id, result, sealer))

    @staticmethod
    def _sealer(command_id: str, agent_id: str, content_key: Optional[bytes]) -> Optional[Callable[[str], str]]:
        """How a command's result goes out: keyed by the command's content key (only its
        client and we know it), or plaintext (None) for a plaintext command."""
        if content_key is None:
            return None
        key = seal.result_key(content_key)
        context = seal.fleet_context("result", command_id, agent_id)
        return lambda result: seal.seal_keyed(key, result.encode("utf-8"), context)

    def _open(self, protocol: Any, kind: str, item_id: str, payload: str):
        """``(plaintext, content key)`` of a stored item's *payload* (key None for an allowed
        plaintext one), or :class:`Refused`."""
        if not seal.is_sealed(payload):
            if self.allow_plaintext:
                return payload, None
            raise Refused(f"a plaintext {kind} is refused: clients seal it to this agent's key "
                          "(FLEET_ALLOW_PLAINTEXT is false here)")
        try:
            opened, content_key = seal.open_sealed_key(protocol.link.bridge_key, payload,
                                                       seal.fleet_context(kind, item_id, self.own_id(protocol)))
            return opened.decode("utf-8"), content_key
        except seal.SealError as e:
            raise Refused(f"the {kind} does not open with this agent's key: {e}") from None
        except UnicodeDecodeError:
            raise Refused(f"the opened {kind} is not UTF-8 text") from None

    def _again(self, protocol: Any, row: sqlite3.Row, args: Dict[str, Any]) -> None:
        """A command we already accepted: never run it twice."""
        command_id = row["id"]
        self._send(protocol, "ack", {"id": command_id})
        if row["state"] == "done":
            self._send(protocol, "result", {"id": command_id, "result": row["result"]})
        elif command_id in self.running:
            self.running[command_id] = protocol  # answer on the newest link
        else:
            # Accepted by an earlier run of this daemon that stopped while it ran.
            refusal, _key = self._check(protocol, args)
            sealer = None
            if refusal is None:
                try:
                    sealer = self._sealer(command_id, args["agent"],
                                          self._open(protocol, "command", command_id, args["payload"])[1])
                except Refused:
                    pass
            self._finish(protocol, command_id, _result(
                False, "interrupted", job_id=row["job_id"],
                error="the agent stopped while this command ran; it was not run again"), sealer)

    def _check(self, protocol: Any, args: Dict[str, Any]):
        """``(refusal or None, registered key)``: the same key and rights a bridged login needs."""
        if args.get("agent") != self.own_id(protocol):
            return "the command is addressed to another agent", None
        md5 = args.get("key")
        key = self.keys.find_by_md5(md5) if isinstance(md5, str) else None
        if key is None:
            return "the signing key is not registered on this agent", None
        try:
            public = crypto.load_public_key(key.pem)
        except crypto.KeyFormatError:
            return "the signing key is not usable", None
        if not fleetsig.verify_command(public, args.get("signature"), args["id"], args["agent"], args["payload"]):
            return "the signature does not match the command and the registered key", None
        if self.server.rights.for_user(key.user) is None:
            return self.server.no_rights_message(key.user), None
        return None, key

    def _finish(self, protocol: Any, command_id: str, result: str,
                sealer: Optional[Callable[[str], str]] = None) -> None:
        if sealer is not None:
            result = sealer(result)
        self.db.execute("UPDATE fleet_accepted SET state = 'done', result = ? WHERE id = ?", (result, command_id))
        if protocol is not None and protocol.authenticated:
            self._send(protocol, "result", {"id": command_id, "result": result})

    @defer.inlineCallbacks
    def _run(self, command_id: str, key: Any, payload: str):
        """Run the opened *payload* (JSON text) as *key*'s user."""
        try:
            spec = json.loads(payload)
        except ValueError as e:
            return _result(False, "refused", error=f"payload is not JSON: {e}")
        if not isinstance(spec, dict) or spec.get("kind") not in ("api", "job"):
            return _result(False, "refused", error='payload.kind must be "api" or "job"')
        timeout = spec.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT:
            return _result(False, "refused", error=f"payload.timeout must be 0 to {MAX_TIMEOUT:g} seconds")
        full = self.server.rights.for_user(key.user)
        if full is None:
            return _result(False, "refused", error=self.server.no_rights_message(key.user))
        identity = Identity(key.user, full, "key", key_checksum=key.md5)
        session = self.server.open_session("fleet", f"fleet:{command_id}", _Quiet(), identity=identity, timers=False)
        table = self.jobs.table
        job_id = table.create("fleet/command", {"command": command_id, "kind": spec["kind"]}, Owner.of(session))
        self.db.execute("UPDATE fleet_accepted SET job_id = ? WHERE id = ?", (job_id, command_id))
        table.started(job_id)
        try:
            if spec["kind"] == "api":
                ok, outcome, reply, error = yield self._api(session, command_id, spec, timeout)
            else:
                ok, outcome, reply, error = yield self._job(session, command_id, spec, timeout)
        finally:
            session.lost()
        table.finish(job_id, "succeeded" if ok else ("killed" if outcome == "timeout" else "failed"),
                     result=reply, error=error)
        return _result(ok, outcome, reply=reply, error=error, job_id=job_id)

    def _call(self, session: Any, command_id: str, namespace: str, name: str, args: Any) -> defer.Deferred:
        request = envelope.Request(namespace, name, f"fleet-{command_id}", args,
                                   {"namespace": namespace, "name": name, "id": f"fleet-{command_id}", "args": args})
        return self.server.api.handle(session, request)

    @defer.inlineCallbacks
    def _api(self, session: Any, command_id: str, spec: Dict[str, Any], timeout: float):
        namespace, name = spec.get("namespace"), spec.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
            return False, "refused", None, "payload.namespace and payload.name must be non-empty text"
        d = self._call(session, command_id, namespace, name, spec.get("args", {}))
        d.addTimeout(timeout, self.server.reactor)
        try:
            message = yield d
        except defer.TimeoutError:
            return False, "timeout", None, f"no reply within {timeout:g} s"
        if message is None:
            return True, "succeeded", None, None
        if message.get("name") == "error":
            args = message.get("args")
            detail = args.get("detail") if isinstance(args, dict) else None
            return False, "failed", args, detail or "the request failed"
        return True, "succeeded", message.get("args"), None

    @defer.inlineCallbacks
    def _job(self, session: Any, command_id: str, spec: Dict[str, Any], timeout: float):
        commands = spec.get("commands")
        if not isinstance(commands, list) or not 0 < len(commands) <= MAX_COMMANDS \
                or not all(isinstance(c, str) and c for c in commands):
            return False, "refused", None, f"payload.commands must be a list of 1 to {MAX_COMMANDS} command lines"
        job_name = f"fleet-{command_id}"
        done: defer.Deferred = defer.Deferred()
        self._dispatcher_waits[job_name] = done
        try:
            started = yield self._call(session, command_id, "rpc", "dispatcher",
                                       {"action": "run", job_name: commands if len(commands) > 1 else commands[0]})
            if started is None or started.get("name") == "error" or job_name not in (started.get("args") or {}).get("started", []):
                args = started.get("args") if started else None
                detail = args.get("detail") if isinstance(args, dict) else None
                return False, "failed", args, detail or "the dispatcher did not start the job"
            timer = self.server.reactor.callLater(timeout, lambda: done.called or done.callback(None))
            finished = yield done
            if finished is None:
                yield self._call(session, command_id, "rpc", "dispatcher", {"action": "kill", "job_id": job_name})
                return False, "timeout", None, f"the job did not finish within {timeout:g} s; it was killed"
            if timer.active():
                timer.cancel()
        finally:
            self._dispatcher_waits.pop(job_name, None)
        codes = [v for k, v in finished.items() if k.startswith("return_codes/")]
        ok = bool(codes) and all(c == "0" for c in codes) and len(codes) == len(commands) \
            and "killed" not in finished and "interrupted" not in finished
        return ok, "succeeded" if ok else "failed", finished, None if ok else "a command failed"

    def _dispatcher_event(self, args: Any) -> None:
        if isinstance(args, dict) and args.get("state") == "finished":
            d = self._dispatcher_waits.get(args.get("process_id"))
            if d is not None and not d.called:
                d.callback(args)

    # --- emitted events --------------------------------------------------------------------
    def _event(self, protocol: Any, args: Dict[str, Any]) -> None:
        event_id, payload = args.get("id"), args.get("payload")
        if not isinstance(event_id, str) or not event_id or len(event_id) > 64 or not isinstance(payload, str):
            return
        seen = self.db.execute("SELECT 1 FROM fleet_accepted WHERE id = ?", ("event:" + event_id,)).fetchone()
        if seen is None:
            try:
                user, body = self._open_event(protocol, event_id, args)
            except Refused as e:
                log.warn("fleet: event {id} from bridge {nick} refused: {why}", id=event_id,
                         nick=protocol.link.nickname, why=str(e))
                user, body = None, None
            self.db.execute("INSERT INTO fleet_accepted (id, kind, bridge, accepted, state, confirmed)"
                            " VALUES (?, 'event', ?, ?, 'done', 1)",
                            ("event:" + event_id, protocol.link.nickname, self.server.reactor.seconds()))
            if body is not None:
                self.publish({"id": event_id, "key": body.get("key"), "data": body.get("data"), "user": user,
                              "bridge": protocol.link.nickname, "ts": args.get("ts")})
        self._send(protocol, "event_ack", {"id": event_id})

    def _open_event(self, protocol: Any, event_id: str, args: Dict[str, Any]):
        """``(sender's user or None, {"key","data"})`` of an emitted event, or :class:`Refused`."""
        payload = args["payload"]
        user = None
        if args.get("signature") is None and not seal.is_sealed(payload):
            if not self.allow_plaintext:
                raise Refused("an unsigned plaintext event is refused (FLEET_ALLOW_PLAINTEXT is false here)")
            text = payload
        else:
            md5 = args.get("key")
            key = self.keys.find_by_md5(md5) if isinstance(md5, str) else None
            if key is None:
                raise Refused("the signing key is not registered on this agent")
            try:
                public = crypto.load_public_key(key.pem)
            except crypto.KeyFormatError:
                raise Refused("the signing key is not usable") from None
            if not fleetsig.verify_event(public, args.get("signature"), event_id, self.own_id(protocol), payload):
                raise Refused("the signature does not match the event and the registered key")
            if self.server.rights.for_user(key.user) is None:
                raise Refused(self.server.no_rights_message(key.user))
            text = self._open(protocol, "event", event_id, payload)[0]
            user = key.user
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("key"), str):
            raise Refused('the event is not {"key":…,"data":…}')
        return user, body
