"""Fleet through the bridge (issue 13): agents with a stable identity, commands stored
and forwarded to them, events emitted to them (docs/protocol.md §8.5).

An *agent* is one of our sysadmd servers that said ``fleet/hello`` after authenticating.
Its id is the SHA-256 of its bridge key's SubjectPublicKeyInfo DER: the key the bridge
authenticated it with, so it is stable across reconnects and cannot be claimed.  A client
may address an agent when the client's proved key checksums share one with the key list
the agent last reported (the pairing rule of :mod:`bridge.relay`, remembered while the
agent is offline).

Commands: a client stores ``{id, agent, payload, signature, key}``; the bridge keeps the
row ``PENDING``, sends it to the agent when it is online (at once or at its next hello),
the agent's ``ack`` makes it ``ACTIVE`` and its ``result`` ``COMPLETE``.  ``payload``,
``signature`` and ``result`` are opaque text here (our clients and agents seal them end to
end, docs/protocol.md §8.6; nothing here parses them): the agent checks the signature
against its own registered keys and runs the command as that key's user.  ``fleet/agents``
lists each agent's key (the one it authenticated with, kept while it is offline) so clients
can seal to it.  Emitted events are stored the same way, one sealed payload and signature
per agent.  A ``PENDING`` command past its ttl is ``EXPIRED``; a final row is kept until
a client fetched it (``fleet/wait``) or its ttl ended once more.  Agents are pinged every
``ping_interval``; one silent for ``pong_timeout`` is announced offline until it answers.

Every write goes through :class:`FleetStore` (SQLite here, :class:`SqliteFleetStore`); a
write that fails makes the store *failed*: new commands and emits are refused with 503,
every fleet client gets a ``store`` event, the agents' acks and results are not confirmed
(so they send them again), and a probe write each second clears the state.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Set, Tuple

from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.logger import Logger

from bridge.relay import CLIENT, SERVER, Peer
from sysadmd.runtime import crypto
from sysadmd.wire.envelope import encode, event

log = Logger()

PENDING, ACTIVE, COMPLETE, EXPIRED, CANCELLED = "PENDING", "ACTIVE", "COMPLETE", "EXPIRED", "CANCELLED"
FINAL = (COMPLETE, EXPIRED, CANCELLED)
ID_RE = re.compile(r"^[0-9a-f]{32}$")
AGENT_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PAYLOAD = 1024 * 1024
MAX_SIGNATURE = 2048
MAX_BATCH = 500
MAX_TTL = 30 * 86400.0
DEFAULT_TTL = 3600.0
MAX_WAIT = 3600.0
MAX_WAITS_PER_PEER = 1000
MAX_NAME = 255
EVENT = "fleet"


class StoreFailed(Exception):
    """The fleet store could not be written; the message says why."""


@dataclass
class CommandRow:
    id: str
    agent_id: str
    owner_md5: str
    status: str
    ts: float
    updated: float
    expires: float
    ttl: float
    payload: str
    signature: str
    signer: str
    result: Optional[str] = None

    def listing(self) -> Dict[str, Any]:
        """The seed's ``listPendingCommands`` fields."""
        return {"id": self.id, "agentId": self.agent_id, "status": self.status, "ts": self.ts}


@dataclass
class AgentRow:
    id: str
    name: str
    md5s: Tuple[str, ...]
    first_seen: float
    last_seen: float
    rtt: Optional[float]
    key: str = ""  # b64 SPKI DER of the key it authenticated with (clients seal to it)


class FleetStore(Protocol):
    """What the fleet needs from storage; a shared engine for several bridge nodes can
    implement the same methods.  Every write raises :class:`StoreFailed` on failure."""

    def save_agent(self, agent: AgentRow) -> None: ...
    def agents(self) -> List[AgentRow]: ...
    def add_commands(self, rows: List[CommandRow]) -> None: ...
    def command(self, command_id: str) -> Optional[CommandRow]: ...
    def commands_for(self, agent_id: str, statuses: Iterable[str]) -> List[CommandRow]: ...
    def set_status(self, command_id: str, status: str, now: float, expires: float, result: Optional[str] = None) -> None: ...
    def delete_command(self, command_id: str) -> None: ...
    def sweep(self, now: float) -> Tuple[List[str], int]: ...
    def pending_counts(self) -> Dict[str, int]: ...
    def add_events(self, event_id: str, items: List[Tuple[str, str, str, str]], owner_md5: str, now: float,
                   ttl: float) -> None: ...
    def event_exists(self, event_id: str) -> bool: ...
    def events_for(self, agent_id: str) -> List[Tuple[str, str, str, str, float]]: ...
    def event_delivered(self, event_id: str, agent_id: str) -> Optional[str]: ...
    def probe(self, now: float) -> None: ...


def _command(r: sqlite3.Row) -> CommandRow:
    return CommandRow(r["id"], r["agent_id"], r["owner_md5"], r["status"], r["ts"], r["updated"], r["expires"],
                      r["ttl"], r["payload"], r["signature"], r["signer"], r["result"])


class SqliteFleetStore:
    """:class:`FleetStore` on the bridge's own database (tables of bridge/migrations/m0003)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def _write(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                result = fn()
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return result
        except sqlite3.Error as e:
            try:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreFailed(f"{what}: {e}") from None

    def save_agent(self, agent: AgentRow) -> None:
        self._write("saving agent " + agent.id[:12], lambda: self.db.execute(
            "INSERT INTO fleet_agents (id, name, md5s, first_seen, last_seen, rtt, key) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET name = excluded.name, md5s = excluded.md5s,"
            " last_seen = excluded.last_seen, rtt = excluded.rtt, key = excluded.key",
            (agent.id, agent.name, " ".join(agent.md5s), agent.first_seen, agent.last_seen, agent.rtt, agent.key)))

    def agents(self) -> List[AgentRow]:
        rows = self.db.execute("SELECT * FROM fleet_agents ORDER BY name, id").fetchall()
        return [AgentRow(r["id"], r["name"], tuple(r["md5s"].split()), r["first_seen"], r["last_seen"], r["rtt"],
                         r["key"]) for r in rows]

    def add_commands(self, rows: List[CommandRow]) -> None:
        def insert() -> None:
            self.db.executemany(
                "INSERT INTO fleet_commands (id, agent_id, owner_md5, status, ts, updated, expires, ttl, payload,"
                " signature, signer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.agent_id, r.owner_md5, r.status, r.ts, r.updated, r.expires, r.ttl, r.payload,
                  r.signature, r.signer) for r in rows])
        self._write(f"storing {len(rows)} command(s)", insert)

    def command(self, command_id: str) -> Optional[CommandRow]:
        r = self.db.execute("SELECT * FROM fleet_commands WHERE id = ?", (command_id,)).fetchone()
        return _command(r) if r is not None else None

    def commands_for(self, agent_id: str, statuses: Iterable[str]) -> List[CommandRow]:
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT * FROM fleet_commands WHERE agent_id = ? AND status IN ({marks}) ORDER BY ts, id",
                               (agent_id, *statuses)).fetchall()
        return [_command(r) for r in rows]

    def set_status(self, command_id: str, status: str, now: float, expires: float, result: Optional[str] = None) -> None:
        self._write(f"setting command {command_id} {status}", lambda: self.db.execute(
            "UPDATE fleet_commands SET status = ?, updated = ?, expires = ?, result = COALESCE(?, result) WHERE id = ?",
            (status, now, expires, result, command_id)))

    def delete_command(self, command_id: str) -> None:
        self._write(f"deleting command {command_id}",
                    lambda: self.db.execute("DELETE FROM fleet_commands WHERE id = ?", (command_id,)))

    def sweep(self, now: float) -> Tuple[List[str], int]:
        """PENDING past its ttl → EXPIRED (kept one more ttl); final rows past theirs go."""
        def run() -> Tuple[List[str], int]:
            expired = [r[0] for r in self.db.execute(
                "SELECT id FROM fleet_commands WHERE status = 'PENDING' AND expires <= ?", (now,))]
            self.db.execute("UPDATE fleet_commands SET status = 'EXPIRED', updated = ?, expires = ? + ttl"
                            " WHERE status = 'PENDING' AND expires <= ?", (now, now, now))
            gone = self.db.execute("DELETE FROM fleet_commands WHERE status IN ('COMPLETE','EXPIRED','CANCELLED')"
                                   " AND expires <= ?", (now,)).rowcount
            gone += self.db.execute("DELETE FROM fleet_events WHERE expires <= ?", (now,)).rowcount
            return expired, gone
        return self._write("expiring commands", run)

    def pending_counts(self) -> Dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT agent_id, COUNT(*) FROM fleet_commands WHERE status IN ('PENDING','ACTIVE') GROUP BY agent_id")}

    def add_events(self, event_id: str, items: List[Tuple[str, str, str, str]], owner_md5: str, now: float,
                   ttl: float) -> None:
        """*items*: ``(agent id, payload, signature, signer)`` per agent."""
        self._write(f"storing event {event_id}", lambda: self.db.executemany(
            "INSERT INTO fleet_events (id, agent_id, owner_md5, status, ts, expires, payload, signature, signer)"
            " VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?, ?)",
            [(event_id, a, owner_md5, now, now + ttl, payload, signature, signer)
             for a, payload, signature, signer in items]))

    def event_exists(self, event_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM fleet_events WHERE id = ? LIMIT 1", (event_id,)).fetchone() is not None

    def events_for(self, agent_id: str) -> List[Tuple[str, str, str, str, float]]:
        """``(id, payload, signature, signer, ts)`` of the events waiting for *agent_id*."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self.db.execute(
            "SELECT id, payload, signature, signer, ts FROM fleet_events WHERE agent_id = ? AND status = 'PENDING'"
            " ORDER BY ts, id", (agent_id,))]

    def event_delivered(self, event_id: str, agent_id: str) -> Optional[str]:
        """Mark delivered (the row goes); the owner's checksum, or None if unknown."""
        def run() -> Optional[str]:
            r = self.db.execute("SELECT owner_md5 FROM fleet_events WHERE id = ? AND agent_id = ?",
                                (event_id, agent_id)).fetchone()
            self.db.execute("DELETE FROM fleet_events WHERE id = ? AND agent_id = ?", (event_id, agent_id))
            return r[0] if r is not None else None
        return self._write(f"resolving event {event_id}", run)

    def probe(self, now: float) -> None:
        self._write("probe write", lambda: self.db.execute(
            "INSERT INTO fleet_health (k, v) VALUES ('probe', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (now,)))


def spki_der(pem: str) -> bytes:
    """The key's SubjectPublicKeyInfo DER."""
    return crypto.load_public_key(pem).public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)


def agent_id_of(pem: str) -> str:
    """SHA-256 hex of the key's SubjectPublicKeyInfo DER (what sysadmd.wire.bound.fingerprint computes)."""
    return hashlib.sha256(spki_der(pem)).hexdigest()


class FleetError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Fleet:
    """The fleet's state on one bridge: online agents, fleet clients, waiters."""

    def __init__(self, store: FleetStore, clock: Any, *, key_pem: Callable[[str], Optional[str]],
                 ping_interval: float = 1.0, pong_timeout: float = 2.0, sweep_interval: float = 1.0):
        self.store = store
        self.clock = clock
        self.key_pem = key_pem  # key nickname -> its PEM (the key the peer authenticated with)
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.unanswered: Dict[str, float] = {}  # agent id -> when its oldest unanswered ping went out
        self.silent: Dict[str, Peer] = {}  # agents announced offline for silence, still connected
        self.sweep_interval = sweep_interval
        self.online: Dict[str, Peer] = {}  # agent id -> its connection
        self.agent_of: Dict[str, str] = {}  # peer id -> agent id
        self.clients: Dict[str, Peer] = {}  # peer id -> clients that spoke fleet
        self.rtt: Dict[str, float] = {}
        self.failed: Optional[str] = None
        self._waits: Dict[str, List[Tuple[Peer, Any, Any]]] = {}
        self._wait_count: Dict[str, int] = {}
        self._loops: List[task.LoopingCall] = []

    # --- timers ---------------------------------------------------------------------------
    def start(self) -> None:
        for fn, interval in ((self.sweep, self.sweep_interval), (self.ping_agents, self.ping_interval)):
            if interval > 0:
                loop = task.LoopingCall(self._guarded, fn)
                loop.clock = self.clock
                loop.start(interval, now=False)
                self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []

    @staticmethod
    def _guarded(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.failure("fleet task {name} failed", name=fn.__name__)

    def now(self) -> float:
        return self.clock.seconds()

    # --- store failure --------------------------------------------------------------------
    def _store_failed(self, e: StoreFailed) -> None:
        first = self.failed is None
        self.failed = str(e)
        log.error("fleet store write failed: {error}", error=self.failed)
        if first:
            self._tell_clients({"kind": "store", "ok": False, "error": self.failed})

    def _write(self, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except StoreFailed as e:
            self._store_failed(e)
            raise FleetError("503", f"the bridge cannot write its fleet store ({e}); nothing new is accepted until "
                                    "it can, and what it already accepted is kept") from None
        return result

    def sweep(self) -> None:
        now = self.now()
        if self.failed is not None:
            try:
                self.store.probe(now)
            except StoreFailed as e:
                self.failed = str(e)
                return
            log.info("fleet store writable again")
            self.failed = None
            self._tell_clients({"kind": "store", "ok": True})
            for agent_id in list(self.online):
                self.deliver(agent_id)  # the agents send what we could not record again
        try:
            expired, _ = self.store.sweep(now)
        except StoreFailed as e:
            self._store_failed(e)
            return
        for command_id in expired:
            self._release(command_id)

    # --- connections ----------------------------------------------------------------------
    def disconnected(self, peer: Peer) -> None:
        self.clients.pop(peer.id, None)
        for waits in self._waits.values():
            waits[:] = [w for w in waits if w[0] is not peer]
        self._wait_count.pop(peer.id, None)
        agent_id = self.agent_of.pop(peer.id, None)
        if agent_id is not None and self.silent.get(agent_id) is peer:
            del self.silent[agent_id]  # announced offline already
            self.unanswered.pop(agent_id, None)
        if agent_id is not None and self.online.get(agent_id) is peer:
            del self.online[agent_id]
            self.unanswered.pop(agent_id, None)
            self._seen(agent_id, peer)
            self._agent_event(agent_id, False)

    def _seen(self, agent_id: str, peer: Peer) -> None:
        for agent in self.store.agents():
            if agent.id == agent_id:
                agent.last_seen = self.now()
                agent.rtt = self.rtt.get(agent_id, agent.rtt)
                try:
                    self.store.save_agent(agent)
                except StoreFailed as e:
                    self._store_failed(e)
                return

    def _agent_event(self, agent_id: str, online: bool) -> None:
        name = next((a.name for a in self.store.agents() if a.id == agent_id), "")
        md5s = self._agent_md5s(agent_id)
        self._tell_clients({"kind": "agent", "agent": agent_id, "name": name, "online": online, "ts": self.now()},
                           lambda client: bool(client.provable & md5s))

    def _agent_md5s(self, agent_id: str) -> Set[str]:
        peer = self.online.get(agent_id)
        if peer is not None:
            return set(peer.md5s)
        for agent in self.store.agents():
            if agent.id == agent_id:
                return set(agent.md5s)
        return set()

    def _tell_clients(self, args: Dict[str, Any], only: Optional[Callable[[Peer], bool]] = None) -> None:
        text = encode(event(EVENT, args))
        for client in list(self.clients.values()):
            if only is None or only(client):
                client.link.send_text(text)

    # --- messages -------------------------------------------------------------------------
    def handle(self, peer: Peer, name: str, request_id: Any, args: Any) -> None:
        """One ``fleet/*`` message from an authenticated peer."""
        if not isinstance(args, dict):
            args = {}
        try:
            if peer.role == SERVER:
                reply = self._from_agent(peer, name, args)
            elif peer.role == CLIENT:
                self.clients[peer.id] = peer
                reply = self._from_client(peer, name, request_id, args)
            else:
                raise FleetError("400", "identify as a server or a client first")
        except FleetError as e:
            peer.link.send_text(encode({"args": {"code": int(e.code), "message": _MESSAGES.get(e.code, "Error"),
                                                 "detail": e.detail},
                                        "id": request_id if isinstance(request_id, str) else "",
                                        "name": "error", "namespace": "fleet"}))
            return
        if reply is not None:
            peer.link.send_text(encode({"args": reply, "id": request_id, "name": "response", "namespace": "fleet"}))

    # --- agents ---------------------------------------------------------------------------
    def _from_agent(self, peer: Peer, name: str, args: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if name == "hello":
            return self._hello(peer, args)
        agent_id = self.agent_of.get(peer.id)
        if agent_id is None:
            raise FleetError("400", "send fleet/hello first")
        self._heard(agent_id, peer)
        if name == "ack":
            self._ack(agent_id, _id(args, "id"))
        elif name == "result":
            self._result(peer, agent_id, _id(args, "id"), args.get("result"))
        elif name == "event_ack":
            self._event_ack(agent_id, _id(args, "id"))
        elif name == "pong":
            sent = args.get("t")
            if isinstance(sent, (int, float)):
                self.rtt[agent_id] = max(0.0, self.now() - float(sent))
        else:
            raise FleetError("404", f"an agent sends fleet/hello, ack, result, event_ack or pong, not {name!r}")
        return None

    def _hello(self, peer: Peer, args: Dict[str, Any]) -> Dict[str, Any]:
        pem = self.key_pem(peer.key_nickname or "")
        if pem is None:
            raise FleetError("401", "the key this connection authenticated with is no longer registered")
        der = spki_der(pem)
        agent_id = hashlib.sha256(der).hexdigest()
        name = args.get("name")
        name = name[:MAX_NAME] if isinstance(name, str) and name else peer.id
        old = self.online.get(agent_id) or self.silent.get(agent_id)
        if old is not None and old is not peer:
            self.agent_of.pop(old.id, None)  # the newest connection of an agent wins
        self.silent.pop(agent_id, None)
        self.unanswered.pop(agent_id, None)
        self.online[agent_id] = peer
        self.agent_of[peer.id] = agent_id
        now = self.now()
        known = next((a for a in self.store.agents() if a.id == agent_id), None)
        agent = AgentRow(agent_id, name, tuple(sorted(peer.md5s)), known.first_seen if known else now, now,
                         self.rtt.get(agent_id), base64.b64encode(der).decode("ascii"))
        try:
            self.store.save_agent(agent)
        except StoreFailed as e:
            self._store_failed(e)
        self._agent_event(agent_id, True)
        self.clock.callLater(0, self.deliver, agent_id)
        return {"agent_id": agent_id}

    def keys_changed(self, peer: Peer) -> None:
        """An agent's key list changed: remember it for pairing while it is offline."""
        agent_id = self.agent_of.get(peer.id)
        if agent_id is None:
            return
        for agent in self.store.agents():
            if agent.id == agent_id:
                agent.md5s = tuple(sorted(peer.md5s))
                try:
                    self.store.save_agent(agent)
                except StoreFailed as e:
                    self._store_failed(e)

    def deliver(self, agent_id: str) -> int:
        """Send an online agent everything waiting for it (ACTIVE again too: its ack or
        result may have been lost; it never runs a command twice)."""
        peer = self.online.get(agent_id)
        if peer is None:
            return 0
        sent = 0
        for row in self.store.commands_for(agent_id, (PENDING, ACTIVE)):
            peer.link.send_text(encode({"args": {"id": row.id, "agent": row.agent_id, "payload": row.payload,
                                                 "signature": row.signature, "key": row.signer, "ts": row.ts},
                                        "id": "", "name": "command", "namespace": "fleet"}))
            sent += 1
        for event_id, payload, signature, signer, ts in self.store.events_for(agent_id):
            args: Dict[str, Any] = {"id": event_id, "payload": payload, "ts": ts}
            if signature:
                args.update(signature=signature, key=signer)
            peer.link.send_text(encode({"args": args, "id": "", "name": "event", "namespace": "fleet"}))
            sent += 1
        return sent

    def _ack(self, agent_id: str, command_id: str) -> None:
        row = self.store.command(command_id)
        if row is None or row.agent_id != agent_id or row.status != PENDING:
            return
        try:
            self.store.set_status(command_id, ACTIVE, self.now(), row.expires)
        except StoreFailed as e:
            self._store_failed(e)  # still PENDING: sent again, the agent acks again
            return
        self._notify_owner(row, ACTIVE)

    def _result(self, peer: Peer, agent_id: str, command_id: str, result: Any) -> None:
        if not isinstance(result, str) or len(result) > MAX_PAYLOAD:
            raise FleetError("400", f"result must be text of at most {MAX_PAYLOAD} characters")
        row = self.store.command(command_id)
        if row is not None and row.agent_id == agent_id and row.status in (PENDING, ACTIVE):
            now = self.now()
            try:
                self.store.set_status(command_id, COMPLETE, now, now + row.ttl, result)
            except StoreFailed as e:
                self._store_failed(e)  # not confirmed: the agent sends it again
                return
            self._notify_owner(row, COMPLETE)
            self._release(command_id)
        # Confirmed (also for one we no longer have: cancelled, fetched or expired).
        peer.link.send_text(encode({"args": {"id": command_id}, "id": "", "name": "result_stored", "namespace": "fleet"}))

    def _event_ack(self, agent_id: str, event_id: str) -> None:
        try:
            owner = self.store.event_delivered(event_id, agent_id)
        except StoreFailed as e:
            self._store_failed(e)
            return
        if owner is not None:
            self._tell_clients({"kind": "delivered", "event": event_id, "agent": agent_id},
                               lambda client: owner in client.provable)

    def ping_agents(self) -> None:
        """Ping every connected agent; one whose ping went unanswered for ``pong_timeout``
        (a link gone silent without a FIN, a stopped process) is announced offline at
        once and gets no commands; its next fleet message makes it online again."""
        now = self.now()
        for agent_id, peer in list(self.online.items()):
            sent = self.unanswered.get(agent_id)
            if sent is None:
                self.unanswered[agent_id] = now
            elif self.pong_timeout > 0 and now - sent >= self.pong_timeout:
                log.warn("fleet agent {id} silent for {s:.1f} s: announced offline", id=agent_id[:12], s=now - sent)
                del self.online[agent_id]
                self.silent[agent_id] = peer
                self._seen(agent_id, peer)
                self._agent_event(agent_id, False)
        text = encode({"args": {"t": now}, "id": "", "name": "ping", "namespace": "fleet"})
        for peer in list(self.online.values()) + list(self.silent.values()):
            peer.link.send_text(text)

    def _heard(self, agent_id: str, peer: Peer) -> None:
        """Any fleet message from an agent answers its pings; a silent one is back."""
        self.unanswered.pop(agent_id, None)
        if self.silent.get(agent_id) is peer:
            del self.silent[agent_id]
            self.online[agent_id] = peer
            log.info("fleet agent {id} answers again", id=agent_id[:12])
            self._agent_event(agent_id, True)
            self.deliver(agent_id)

    def _notify_owner(self, row: CommandRow, status: str) -> None:
        self._tell_clients({"kind": "command", "id": row.id, "agent": row.agent_id, "status": status},
                           lambda client: row.owner_md5 in client.provable)

    # --- clients --------------------------------------------------------------------------
    def _from_client(self, peer: Peer, name: str, request_id: Any, args: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if name == "agents":
            return {"agents": self.agents_for(peer), "store_ok": self.failed is None}
        if name == "execute":
            return self._execute(peer, args)
        if name == "pending":
            agent_id = _agent(args, "agent")
            self._may_address(peer, agent_id)
            return {"commands": [r.listing() for r in self.store.commands_for(agent_id, (PENDING, ACTIVE))]}
        if name == "wait":
            return self._wait(peer, request_id, args)
        if name == "cancel":
            return self._cancel(peer, _id(args, "id"))
        if name == "emit":
            return self._emit(peer, args)
        raise FleetError("404", f"a client sends fleet/agents, execute, pending, wait, cancel or emit, not {name!r}")

    def agents_for(self, peer: Peer) -> List[Dict[str, Any]]:
        counts = self.store.pending_counts()
        result = []
        for agent in self.store.agents():
            if not (peer.provable & self._agent_md5s(agent.id)):
                continue
            online = agent.id in self.online
            row = {"id": agent.id, "name": agent.name, "key": agent.key, "online": online,
                   "last_seen": self.now() if online else agent.last_seen,
                   "rtt": self.rtt.get(agent.id, agent.rtt), "pending": counts.get(agent.id, 0)}
            if online:
                # Its relay connection ID now: a client opens a live session there, and only there.
                row["connection"] = self.online[agent.id].id
            result.append(row)
        return result

    def _may_address(self, peer: Peer, agent_id: str) -> None:
        if not (peer.provable & self._agent_md5s(agent_id)):
            raise FleetError("404", f"no agent {agent_id} is paired with your key")

    def _execute(self, peer: Peer, args: Dict[str, Any]) -> Dict[str, Any]:
        if self.failed is not None:
            raise FleetError("503", f"the bridge cannot write its fleet store ({self.failed}); commands are refused "
                                    "until it can")
        commands = args.get("commands")
        if not isinstance(commands, list) or not 0 < len(commands) <= MAX_BATCH:
            raise FleetError("400", f"commands must be a list of 1 to {MAX_BATCH} objects")
        ttl = _ttl(args)
        now = self.now()
        rows, seen = [], set()
        for i, c in enumerate(commands):
            if not isinstance(c, dict):
                raise FleetError("400", f"commands[{i}] must be an object")
            command_id = _id(c, "id", f"commands[{i}].")
            agent_id = _agent(c, "agent", f"commands[{i}].")
            payload, signature, signer = c.get("payload"), c.get("signature"), c.get("key")
            if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
                raise FleetError("400", f"commands[{i}].payload must be text of at most {MAX_PAYLOAD} characters")
            if not isinstance(signature, str) or not 0 < len(signature) <= MAX_SIGNATURE:
                raise FleetError("400", f"commands[{i}].signature must be base64 text")
            if not isinstance(signer, str) or not 0 < len(signer) <= 256:
                raise FleetError("400", f"commands[{i}].key must be the signing key's md5 checksum")
            if command_id in seen or self.store.command(command_id) is not None:
                raise FleetError("409", f"commands[{i}].id {command_id} is already used")
            seen.add(command_id)
            self._may_address(peer, agent_id)
            rows.append(CommandRow(command_id, agent_id, peer.key_md5 or "", PENDING, now, now, now + ttl, ttl,
                                   payload, signature, signer))
        self._write(lambda: self.store.add_commands(rows))
        for agent_id in sorted({r.agent_id for r in rows}):
            self.deliver(agent_id)
        return {"accepted": [r.id for r in rows]}

    def _owned(self, peer: Peer, command_id: str) -> CommandRow:
        row = self.store.command(command_id)
        if row is None or row.owner_md5 not in peer.provable:
            raise FleetError("404", f"no command {command_id} of yours is stored (fetched results are removed)")
        return row

    def _wait(self, peer: Peer, request_id: Any, args: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        command_id = _id(args, "id")
        row = self._owned(peer, command_id)
        timeout = args.get("timeout", 0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= MAX_WAIT:
            raise FleetError("400", f"timeout must be 0 to {MAX_WAIT:g} seconds")
        if row.status in FINAL or timeout == 0:
            return self._fetched(row)
        count = self._wait_count.get(peer.id, 0)
        if count >= MAX_WAITS_PER_PEER:
            raise FleetError("429", f"at most {MAX_WAITS_PER_PEER} waits per connection")
        self._wait_count[peer.id] = count + 1
        timer = self.clock.callLater(timeout, self._wait_expired, command_id, peer, request_id)
        self._waits.setdefault(command_id, []).append((peer, request_id, timer))
        return None

    def _fetched(self, row: CommandRow) -> Dict[str, Any]:
        reply = dict(row.listing(), result=row.result)
        if row.status in FINAL:
            try:
                self.store.delete_command(row.id)  # fetched: the client has it now
            except StoreFailed as e:
                self._store_failed(e)  # kept until its ttl ends instead
        return reply

    def _wait_expired(self, command_id: str, peer: Peer, request_id: Any) -> None:
        waits = self._waits.get(command_id, [])
        for w in list(waits):
            if w[0] is peer and w[1] == request_id:
                waits.remove(w)
                self._answer_wait(peer, request_id, command_id)

    def _release(self, command_id: str) -> None:
        for peer, request_id, timer in self._waits.pop(command_id, []):
            if timer.active():
                timer.cancel()
            self._answer_wait(peer, request_id, command_id)

    def _answer_wait(self, peer: Peer, request_id: Any, command_id: str) -> None:
        left = self._wait_count.get(peer.id, 1) - 1
        if left > 0:
            self._wait_count[peer.id] = left
        else:
            self._wait_count.pop(peer.id, None)
        row = self.store.command(command_id)
        if row is None:
            reply: Dict[str, Any] = {"id": command_id, "status": "UNKNOWN", "result": None}
        else:
            reply = self._fetched(row)
        peer.link.send_text(encode({"args": reply, "id": request_id, "name": "response", "namespace": "fleet"}))

    def _cancel(self, peer: Peer, command_id: str) -> Dict[str, Any]:
        row = self._owned(peer, command_id)
        if row.status != PENDING:
            raise FleetError("409", f"command {command_id} is {row.status}; only a PENDING command can be cancelled")
        now = self.now()
        self._write(lambda: self.store.set_status(command_id, CANCELLED, now, now + row.ttl))
        self._release(command_id)
        return {"id": command_id, "status": CANCELLED}

    def _emit(self, peer: Peer, args: Dict[str, Any]) -> Dict[str, Any]:
        if self.failed is not None:
            raise FleetError("503", f"the bridge cannot write its fleet store ({self.failed}); events are refused "
                                    "until it can")
        agents = args.get("agents")
        if not isinstance(agents, list) or not 0 < len(agents) <= MAX_BATCH:
            raise FleetError("400", f"agents must be a list of 1 to {MAX_BATCH} agent ids")
        ids: List[str] = []
        for i, a in enumerate(agents):
            agent_id = _agent({"a": a}, "a", f"agents[{i}]")
            self._may_address(peer, agent_id)
            if agent_id not in ids:
                ids.append(agent_id)
        ttl = _ttl(args)
        if "payloads" in args:  # one sealed, signed payload per agent (§8.6)
            event_id = _id(args, "id")
            payloads, signatures, signer = args.get("payloads"), args.get("signatures"), args.get("key")
            if not isinstance(payloads, dict) or not isinstance(signatures, dict):
                raise FleetError("400", "payloads and signatures must be objects keyed by agent id")
            if not isinstance(signer, str) or not 0 < len(signer) <= 256:
                raise FleetError("400", "key must be the signing key's md5 checksum")
            items = []
            for agent_id in ids:
                payload, signature = payloads.get(agent_id), signatures.get(agent_id)
                if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
                    raise FleetError("400", f"payloads[{agent_id[:12]}…] must be text of at most {MAX_PAYLOAD} "
                                            "characters")
                if not isinstance(signature, str) or not 0 < len(signature) <= MAX_SIGNATURE:
                    raise FleetError("400", f"signatures[{agent_id[:12]}…] must be base64 text")
                items.append((agent_id, payload, signature, signer))
            if len(payloads) != len(ids) or len(signatures) != len(ids):
                raise FleetError("400", "payloads and signatures must have exactly one entry per agent")
            if self.store.event_exists(event_id):
                raise FleetError("409", f"id {event_id} is already used")
        else:  # the old form: one plaintext payload (agents publish it only with FLEET_ALLOW_PLAINTEXT)
            payload = args.get("payload")
            if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
                raise FleetError("400", f"payload must be text of at most {MAX_PAYLOAD} characters")
            event_id = uuid.uuid4().hex
            items = [(agent_id, payload, "", "") for agent_id in ids]
        self._write(lambda: self.store.add_events(event_id, items, peer.key_md5 or "", self.now(), ttl))
        for agent_id in ids:
            self.deliver(agent_id)
        return {"id": event_id, "agents": ids}


_MESSAGES = {"400": "Bad Request", "401": "Unauthorized", "404": "Not Found", "409": "Conflict",
             "429": "Too Many Requests", "503": "Service Unavailable"}


def _id(args: Dict[str, Any], field: str, prefix: str = "") -> str:
    value = args.get(field)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise FleetError("400", f"{prefix}{field} must be 32 lower-case hex digits (a uuid4 without dashes)")
    return value


def _agent(args: Dict[str, Any], field: str, prefix: str = "") -> str:
    value = args.get(field)
    if not isinstance(value, str) or not AGENT_RE.match(value):
        raise FleetError("400", f"{prefix}{field} must be an agent id (64 lower-case hex digits; `sysadm fleet agents`)")
    return value


def _ttl(args: Dict[str, Any]) -> float:
    ttl = args.get("ttl", DEFAULT_TTL)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL:
        raise FleetError("400", f"ttl must be 1 to {MAX_TTL:g} seconds")
    return float(ttl)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
