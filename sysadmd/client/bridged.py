"""Reaching servers through a bridge: ``sysadm --bridge URL --key FILE [--server ID] …``.

What goes over the wire (upstream-bridge-wire.md §2.3, §3.3), with B the bridge, S a
server behind it and ``<S>`` its connection ID (``::{uuid}``)::

    B → us  {"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}
    us → B  {"args":{"hostname":H,"type":"client"},"id":"sysadm_bridge_request_ident","name":"response","namespace":"rpc"}
    us → B  rpc/auth_ssl ""  → {"test_string":T}  → rpc/auth_ssl {"encrypted_string":sig(T, bridge key)} → [token, 0]
    B → us  {"args":{"action":"list_ssl_checksums"},"id":"bridge_request_list_keys",…}
    us → B  {"args":{"md5_keys":[md5(server key)]},"id":"bridge_request_list_keys","name":"response","namespace":"rpc"}
    B → us  {"args":{"available_connections":[<S>,…]},"id":"","name":"bridge","namespace":"events"}

    then per server, as relay frames "<S>\\n<payload>" (B delivers S's answers as "<S>\\n…"):
    us → S  plain JSON rpc/identify                     → {"hostname":…,"type":"server"}
    us → S  plain JSON rpc/auth_ssl {"md5_key":M}       → plain {"new_ssl_key":b64(PEM),"test_string":b64(T)}
    us → S  base64(JSON rpc/auth_ssl {"encrypted_string":sig(T, server key)}) → base64([token, ttl])
    from then on every payload both ways is base64(compact JSON); events arrive the same way.

``M`` is ``base64(MD5(PEM))`` of the ``--key`` public key; the ``--bridge-key`` (default
``--key``) is the one the bridge knows.  A :class:`BridgedConnection` per server offers
the ``call()``/``event_listeners``/``closed``/``close()`` surface of
:class:`~sysadmd.client.wsclient.ApiConnection`, so every verb works through a bridge.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import socket
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer

from sysadmd import crypto
from sysadmd.client import tables
from sysadmd.client.connect import BRIDGE_PORT, load_key, open_tls, parse_url, request
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_AUTH, EXIT_CONNECT, EXIT_OK, EXIT_USAGE, ClientError, error_fields, is_error
from sysadmd.client.knownhosts import KnownHosts
from sysadmd.client.wsclient import ConnectionLost
from sysadmd.envelope import encode

IDENT_ID = "sysadm_bridge_request_ident"
LIST_KEYS_ID = "bridge_request_list_keys"


class BridgedConnection:
    """One server behind the bridge, with the request/event surface of ApiConnection."""

    def __init__(self, bridge: "BridgeSession", server_id: str):
        self.bridge = bridge
        self.server_id = server_id
        self.base64 = False  # after the md5_key stage 1, payloads are base64(JSON)
        self.pending: Dict[str, defer.Deferred] = {}
        self.event_listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.close_reason: Optional[str] = None
        self.hostname: Optional[str] = None
        self._ids = itertools.count(1)

    def call(self, namespace: str, name: str, args: Any = None, request_id: Optional[str] = None) -> defer.Deferred:
        if request_id is None:
            request_id = f"b{next(self._ids)}"
        d: defer.Deferred = defer.Deferred()
        if self.closed.called:
            d.errback(ConnectionLost(self.close_reason or "the server left the bridge"))
            return d
        self.pending[request_id] = d
        text = encode({"namespace": namespace, "name": name, "id": request_id, "args": {} if args is None else args})
        if self.base64:
            text = base64.b64encode(text.encode("utf-8")).decode("ascii")
        self.bridge.send_frame(self.server_id, text)
        return d

    def received(self, body: str) -> None:
        """A payload from this server (plain JSON, or base64 of it)."""
        text = body
        if not body.startswith("{"):
            try:
                text = base64.b64decode(body.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        request_id = message.get("id")
        if isinstance(request_id, str) and request_id in self.pending:
            self.pending.pop(request_id).callback(message)
        elif message.get("namespace") == "events":
            for listener in list(self.event_listeners):
                listener(message)

    def lost(self, reason: str) -> None:
        if self.closed.called:
            return
        self.close_reason = reason
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionLost(reason))
        self.closed.callback((None, reason))

    def close(self) -> defer.Deferred:
        return self.bridge.close()

    @property
    def transport(self) -> Any:
        return self.bridge.conn.transport


class BridgeSession:
    """Our one socket to the bridge: its handshake, its peer list, relay frames."""

    def __init__(self, ctx: Context, conn: Any, server_key: Any, bridge_key: Any, bridge_key_path: str):
        self.ctx = ctx
        self.conn = conn
        self.server_key = server_key
        self.bridge_key = bridge_key
        self.bridge_key_path = bridge_key_path
        self.available: Optional[List[str]] = None
        self._available_waiters: List[defer.Deferred] = []
        self.servers: Dict[str, BridgedConnection] = {}
        conn.unsolicited_listeners.append(self._unsolicited)
        conn.event_listeners.append(self._event)
        conn.closed.addBoth(self._bridge_closed)

    # --- the bridge's own messages ------------------------------------------------------
    def _unsolicited(self, text: str) -> None:
        if not text.startswith("{"):
            source, sep, body = text.partition("\n")
            if sep and source in self.servers:
                self.servers[source].received(body)
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("name") in ("response", "error"):
            return
        if message.get("id") == IDENT_ID:
            self._answer(IDENT_ID, {"hostname": socket.gethostname() or "sysadm-client", "type": "client"})
        elif message.get("id") == LIST_KEYS_ID:
            self._answer(LIST_KEYS_ID, {"md5_keys": [crypto.md5_checksum(crypto.public_pem(self.server_key))]})

    def _answer(self, request_id: str, args: Any) -> None:
        self.conn.send_text(encode({"args": args, "id": request_id, "name": "response", "namespace": "rpc"}))

    def _event(self, message: dict) -> None:
        if message.get("name") != "bridge":
            return
        ids = (message.get("args") or {}).get("available_connections") if isinstance(message.get("args"), dict) else None
        if not isinstance(ids, list):
            return
        self.available = [i for i in ids if isinstance(i, str)]
        for server_id, server in list(self.servers.items()):
            if server_id not in self.available:
                server.lost(f"server {server.hostname or server_id} left the bridge")
        waiters, self._available_waiters = self._available_waiters, []
        for d in waiters:
            d.callback(self.available)

    def _bridge_closed(self, reason: Any) -> Any:
        why = f"the bridge closed the connection ({self.conn.close_reason or 'closed'})"
        for server in list(self.servers.values()):
            server.lost(why)
        waiters, self._available_waiters = self._available_waiters, []
        for d in waiters:
            d.errback(ConnectionLost(why))
        return reason

    def send_frame(self, destination: str, payload: str) -> None:
        self.conn.send_text(f"{destination}\n{payload}")

    def close(self) -> defer.Deferred:
        return self.conn.close()

    # --- steps ---------------------------------------------------------------------------
    async def authenticate(self) -> None:
        ctx = self.ctx
        first = await request(self.conn, ctx.reactor, "rpc", "auth_ssl", "", ctx.timeout, ctx.target)
        challenge = first.get("args", {}).get("test_string") if isinstance(first.get("args"), dict) else None
        if is_error(first) or not isinstance(challenge, str):
            raise ClientError(f"the bridge {ctx.target} sent no auth_ssl challenge ({first.get('args')!r})", EXIT_AUTH)
        answer = crypto.sign_challenge(self.bridge_key, challenge)
        reply = await request(self.conn, ctx.reactor, "rpc", "auth_ssl", {"encrypted_string": answer}, ctx.timeout, ctx.target)
        if is_error(reply) or not isinstance(reply.get("args"), list):
            md5 = crypto.md5_checksum(crypto.public_pem(self.bridge_key))
            raise ClientError(
                f"the bridge {ctx.target} refused key {self.bridge_key_path} (md5 {md5}): {reply.get('args')!r}\n"
                "  hint: the bridge's administrator registers it with `sysadm-bridge import NICK FILE`", EXIT_AUTH)

    async def wait_available(self) -> List[str]:
        if self.available is not None:
            return self.available
        d: defer.Deferred = defer.Deferred()
        self._available_waiters.append(d)
        if self.ctx.timeout:
            d.addTimeout(self.ctx.timeout, self.ctx.reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise ClientError(f"the bridge {self.ctx.target} announced no servers within {self.ctx.timeout:g} s", EXIT_CONNECT) from None
        except ConnectionLost as e:
            raise ClientError(str(e), EXIT_CONNECT) from None

    async def open_server(self, server_id: str) -> BridgedConnection:
        """identify + the md5_key login with one server; raises ClientError on refusal."""
        server = BridgedConnection(self, server_id)
        self.servers[server_id] = server
        ctx = self.ctx
        label = f"server {server_id} via {ctx.target}"
        ident = await request(server, ctx.reactor, "rpc", "identify", "", ctx.timeout, label)
        if isinstance(ident.get("args"), dict):
            server.hostname = ident["args"].get("hostname")
        md5 = crypto.md5_checksum(crypto.public_pem(self.server_key))
        first = await request(server, ctx.reactor, "rpc", "auth_ssl", {"md5_key": md5}, ctx.timeout, label)
        if is_error(first):
            raise ClientError(f"{label} refused the key: {_reason(first)}", EXIT_AUTH)
        encoded = first.get("args", {}).get("test_string") if isinstance(first.get("args"), dict) else None
        try:
            challenge = base64.b64decode(encoded or "", validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            challenge = ""
        if not challenge:
            raise ClientError(f"{label} sent an unusable challenge ({first.get('args')!r})", EXIT_AUTH)
        server.base64 = True
        answer = crypto.sign_challenge(self.server_key, challenge)
        reply = await request(server, ctx.reactor, "rpc", "auth_ssl", {"encrypted_string": answer}, ctx.timeout, label)
        if is_error(reply):
            raise ClientError(f"{label} refused the login: {_reason(reply)}", EXIT_AUTH)
        return server


def _reason(envelope: dict) -> str:
    code, message, detail = error_fields(envelope)
    return f"{code} {message}" + (f": {detail}" if detail else "")


async def open_bridge(ctx: Context) -> BridgeSession:
    """Connect to and authenticate with the bridge; wait for its first peer list."""
    opts = ctx.options
    if opts.user or opts.token:
        raise ClientError("through a bridge only key logins work: use --key FILE (not --user or --token)", EXIT_USAGE)
    if not opts.key:
        raise ClientError("--bridge needs --key FILE (the key your servers know; --bridge-key for the bridge's)", EXIT_USAGE)
    server_key = load_key(opts.key)
    bridge_key_path = opts.bridge_key or opts.key
    bridge_key = load_key(bridge_key_path) if opts.bridge_key else server_key
    endpoint = parse_url(opts.bridge, BRIDGE_PORT)
    ctx.target = f"bridge {endpoint.name}"
    conn = await open_tls(ctx.reactor, endpoint, ctx.timeout, KnownHosts(opts.known_hosts), opts.fingerprint, ctx.err,
                          service="the bridge")
    ctx.extras["bridge_conn"] = conn
    session = BridgeSession(ctx, conn, server_key, bridge_key, bridge_key_path)
    await session.authenticate()
    await session.wait_available()
    return session


async def open_bridged(ctx: Context) -> None:
    """``--bridge``: authenticate with the bridge, then with ``--server`` (unless listing peers)."""
    session = await open_bridge(ctx)
    ctx.extras["bridge"] = session
    if ctx.options.verb == "peers":
        ctx.conn = _BridgeOnly(session)
        return
    wanted = ctx.options.server
    available = session.available or []
    if not wanted:
        if len(available) == 1:
            wanted = available[0]
        else:
            raise ClientError(f"--server ID is needed: the bridge offers {len(available)} servers (`sysadm … peers` lists them)",
                              EXIT_USAGE)
    if wanted not in available:
        wanted = await _find_by_hostname(session, wanted, available)
    ctx.conn = await session.open_server(wanted)
    ctx.target = f"{ctx.conn.hostname or wanted} via {ctx.target}"


async def _find_by_hostname(session: BridgeSession, name: str, available: List[str]) -> str:
    for server_id in available:
        probe = BridgedConnection(session, server_id)
        session.servers[server_id] = probe
        try:
            reply = await request(probe, session.ctx.reactor, "rpc", "identify", "", session.ctx.timeout, server_id)
        except ClientError:
            continue
        finally:
            session.servers.pop(server_id, None)
        if isinstance(reply.get("args"), dict) and reply["args"].get("hostname") == name:
            return server_id
    raise ClientError(f"the bridge offers no server {name!r} (IDs and host names: `sysadm --bridge … peers`)", EXIT_USAGE)


class _BridgeOnly:
    """``ctx.conn`` for ``peers``: nothing to call, closing closes the bridge socket."""

    def __init__(self, session: BridgeSession):
        self.session = session
        self.transport = session.conn.transport

    def close(self) -> defer.Deferred:
        return self.session.close()


async def peers(ctx: Context) -> int:
    """Log in to every server the bridge offers; print ID, host name, authorized."""
    session: BridgeSession = ctx.extras["bridge"]
    rows = []
    for server_id in session.available or []:
        try:
            server = await session.open_server(server_id)
            rows.append({"id": server_id, "hostname": server.hostname, "authorized": True, "error": None})
        except ClientError as e:
            hostname = session.servers.get(server_id).hostname if server_id in session.servers else None
            rows.append({"id": server_id, "hostname": hostname, "authorized": False, "error": e.message})
    if ctx.json_output:
        ctx.emit_json(rows)
        return EXIT_OK
    if not rows:
        ctx.say("the bridge offers no servers for this key")
        return EXIT_OK
    table = [[r["id"], r["hostname"] or "?", "yes" if r["authorized"] else "no", r["error"] or ""] for r in rows]
    for line in tables.render(["id", "hostname", "authorized", "why not"], table, max_width=90):
        ctx.say(line)
    return EXIT_OK
