"""Reaching servers through a bridge: ``sysadm --bridge URL --key FILE [--server ID] …``.

What goes over the wire (docs/protocol.md §8), with B the bridge, S a
server behind it and ``<S>`` its connection ID (``::{uuid}``)::

    B → us  {"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}
    us → B  {"args":{"hostname":H,"type":"client"},"id":"sysadm_bridge_request_ident","name":"response","namespace":"rpc"}
    us → B  rpc/auth_ssl ""  → {"test_string":T}  → rpc/auth_ssl {"encrypted_string":sig(T, bridge key)} → [token, 0]
    B → us  {"args":{"action":"list_ssl_checksums"},"id":"bridge_request_list_keys",…}
    us → B  {"args":{"md5_keys":[md5(server key)]},"id":"bridge_request_list_keys","name":"response","namespace":"rpc"}
    B → us  {"args":{"available_connections":[<S>,…]},"id":"","name":"bridge","namespace":"events"}

    then per server, as relay frames "<S>\n<payload>" (B delivers S's answers as "<S>\n…"):
    us → S  plain JSON rpc/identify                     → {"hostname":…,"type":"server"}   (a claim only)
    us → S  plain JSON rpc/auth_ssl {"md5_key":M,"client_nonce":N}
            → plain {"new_ssl_key":b64(PEM),"test_string":b64(T),
                     "server_key":PEM,"server_connection_id":<S>,"server_proof":sig(N,T,M,<S>)}
    (we check the proof, that it names <S>, and the key against known_servers; nothing is
     signed for a server that fails, or whose key differs from the one pinned for its name)
    us → S  base64(JSON rpc/auth_ssl {"encrypted_string":sig(fp(server key),<S>,T),"bound":1}) → base64([token, ttl])
    from then on every payload both ways is base64(compact JSON); events arrive the same way.

By default the bound login above is replaced by an end-to-end encrypted session
(docs/protocol.md §8.6, :mod:`sysadmd.wire.e2e`)::

    us → S  plain JSON rpc/e2e {"step":"hello","v":1,"key":M,"eph":…,"nonce":…}
            → plain {"step":"accept","eph":…,"nonce":…,"server_key":b64(SPKI DER),"sig":…}
    (the server key is checked against known_servers exactly as the proven key above, and the
     connection ID the accept binds (server_connection_id, connection_tag) must be <S>)
    us → S  "!" frame of rpc/e2e {"step":"finish","sig":…}   → "!" frame of [token, ttl]
    from then on every payload both ways is a "!" frame (ChaCha20-Poly1305, counter nonces).

A server that answers the hello with an error lacking ``"e2e"`` does not know the call
(upstream, or ours from before): we fall back to the bound login with a note on stderr,
unless ``--require-e2e`` is given or known_servers records that it did E2E before (a
downgrade).  ``--no-e2e`` skips the handshake.  Any plain frame from a server once the
session is encrypted, or a frame that does not open, ends that session here.

See :mod:`sysadmd.wire.bound` for the exact signed texts, and the README ("Servers behind a
bridge: who you sign for") for why.  Upstream servers send no proof; they are used only
with ``--allow-upstream-server`` (then T is signed raw, as upstream does).

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
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer

from sysadmd.runtime import crypto
from sysadmd.wire import bound, e2e
from sysadmd.client import knownservers, tables
from sysadmd.client.connect import BRIDGE_PORT, load_key, open_tls, parse_url, request
from sysadmd.client.context import Context
from sysadmd.client.errors import (EXIT_AUTH, EXIT_CERTIFICATE, EXIT_CONNECT, EXIT_OK, EXIT_USAGE, ClientError,
                                   error_fields, is_error)
from sysadmd.client.knownhosts import KnownHosts
from sysadmd.client.wsclient import ConnectionLost
from sysadmd.wire.envelope import encode

IDENT_ID = "sysadm_bridge_request_ident"
LIST_KEYS_ID = "bridge_request_list_keys"


class BridgedConnection:
    """One server behind the bridge, with the request/event surface of ApiConnection."""

    def __init__(self, bridge: "BridgeSession", server_id: str):
        self.bridge = bridge
        self.server_id = server_id
        self.base64 = False  # after the md5_key stage 1, payloads are base64(JSON)
        self.e2e: Optional[e2e.Session] = None  # after the server's accept, payloads are "!" frames
        self.pending: Dict[str, defer.Deferred] = {}
        self.event_listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.close_reason: Optional[str] = None
        self.hostname: Optional[str] = None
        self.probe: Optional["Probe"] = None
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
        if self.e2e is not None:
            text = self.e2e.seal(text.encode("utf-8"))
        elif self.base64:
            text = base64.b64encode(text.encode("utf-8")).decode("ascii")
        self.bridge.send_frame(self.server_id, text)
        return d

    def received(self, body: str) -> None:
        """A payload from this server (plain JSON, base64 of it, or a "!" frame)."""
        text = body
        if self.e2e is not None:
            text = self._opened(body)
            if text is None:
                return
        elif not body.startswith("{"):
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

    def _opened(self, body: str) -> Optional[str]:
        """The plaintext of an encrypted payload; anything else ends the session."""
        if not e2e.is_frame(body):
            self.e2e = None
            self.lost("the encrypted session ended: the server (or a peer in the middle; plain frames are not "
                      f"authenticated) sent a plain frame: {_plain_detail(body)}")
            return None
        try:
            return self.e2e.open(body).decode("utf-8")
        except (e2e.E2EError, UnicodeDecodeError) as e:
            self.e2e = None
            self.lost(f"the encrypted session ended: {e}")
            return None

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
        self.known = knownservers.KnownServers(getattr(ctx.options, "known_servers", None))
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
            # The bridge pairs us only on the key we proved to it (plus keys its administrator
            # vouched for with --pairs-with): report the server key and, if different, that one.
            md5s = [crypto.md5_checksum(crypto.public_pem(self.server_key))]
            bridge_md5 = crypto.md5_checksum(crypto.public_pem(self.bridge_key))
            if bridge_md5 not in md5s:
                md5s.append(bridge_md5)
            self._answer(LIST_KEYS_ID, {"md5_keys": md5s})

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
                "  hint: the bridge's administrator registers it with `sysadm-bridge import-key NICK FILE --role client`", EXIT_AUTH)

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

    async def probe(self, server_id: str) -> "Probe":
        """identify + stage 1 with a fresh nonce: who the server claims to be and which key
        it proves it holds.  Nothing is signed; raises ClientError on a refusal."""
        existing = self.servers.get(server_id)
        if existing is not None and existing.probe is not None:
            return existing.probe
        server = BridgedConnection(self, server_id)
        self.servers[server_id] = server
        ctx = self.ctx
        label = f"server {server_id} via {ctx.target}"
        probe = Probe(server_id, server)
        ident = await request(server, ctx.reactor, "rpc", "identify", "", ctx.timeout, label)
        if isinstance(ident.get("args"), dict) and isinstance(ident["args"].get("hostname"), str):
            server.hostname = probe.claimed = ident["args"]["hostname"][:253]
        md5 = crypto.md5_checksum(crypto.public_pem(self.server_key))
        if not getattr(ctx.options, "no_e2e", False):
            if await self._probe_e2e(probe, md5, label):
                return probe
        nonce = bound.new_nonce()
        first = await request(server, ctx.reactor, "rpc", "auth_ssl", {"md5_key": md5, "client_nonce": nonce},
                              ctx.timeout, label)
        if is_error(first):
            probe.error = f"refused the key: {_reason(first)}"
            server.probe = probe
            return probe
        args = first.get("args")
        encoded = args.get("test_string") if isinstance(args, dict) else None
        try:
            challenge = base64.b64decode(encoded or "", validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            challenge = ""
        if not challenge:
            probe.error = f"sent an unusable challenge ({_short(args)})"
            server.probe = probe
            return probe
        server.base64 = True  # the server switched to base64 payloads with its reply
        probe.challenge = challenge
        try:
            _, probe.fingerprint = bound.check_server_proof(args, nonce, challenge, md5, server_id)
        except bound.ProofError as e:
            probe.proof_error = str(e)
            probe.upstream = bool(getattr(e, "missing", False))
            if getattr(e, "unbound_channel", False) and self.ctx.options.allow_upstream_server:
                # Our server behind a bridge that does not tell connection IDs: its key is
                # proven, the channel is not; accepted only on the same opt-in as upstream.
                probe.fingerprint, probe.bind_id = e.fingerprint, ""
                self.ctx.note(f"sysadm: warning: server {server_id} proved its key but not its bridge connection; "
                              "continuing as --allow-upstream-server asks")
        pinned = self.known.by_fingerprint(probe.fingerprint) if probe.fingerprint else []
        probe.pinned = pinned[0] if pinned else None
        if probe.e2e_missing is not None and any(entry.e2e for entry in pinned):
            probe.error = (f"did not start an end-to-end session ({probe.e2e_missing}), but as {pinned[0].name} it did "
                           "before: refusing the downgrade (a peer in the middle may have answered for it)")
        server.probe = probe
        return probe

    async def _probe_e2e(self, probe: "Probe", md5: str, label: str) -> bool:
        """The rpc/e2e hello.  True when the probe is settled (an accept, or a refusal);
        False to fall back to the base64 login (the server does not know rpc/e2e)."""
        server = probe.connection
        handshake = e2e.ClientHandshake(self.server_key, md5)
        reply = await request(server, self.ctx.reactor, "rpc", "e2e", handshake.hello(), self.ctx.timeout, label)
        if is_error(reply):
            args = reply.get("args")
            if isinstance(args, dict) and args.get("e2e"):
                probe.error = f"refused the end-to-end session: {_reason(reply)}"
            elif getattr(self.ctx.options, "require_e2e", False):
                probe.error = f"does not do end-to-end sessions ({_reason(reply)}) and --require-e2e was given"
            else:
                probe.e2e_missing = _reason(reply)
                return False
            server.probe = probe
            return True
        try:
            channel, probe.fingerprint, finish = handshake.accept(reply.get("args"))
        except e2e.E2EError as e:
            probe.error = f"sent an unusable end-to-end accept: {e}"
            server.probe = probe
            return True
        bound_to = handshake.server_connection_id
        if bound_to and bound_to != probe.server_id:
            # The real server answered, but to another connection: the peer we asked relays it.
            # (It could not read the session; we still sign nothing for a peer that lies.)
            probe.proof_error = (f"the accept comes from the server at bridge connection {bound_to[:80]}, not "
                                 f"{probe.server_id}: the peer we asked is relaying another connection's answers")
            probe.fingerprint = None
            server.probe = probe
            return True
        probe.e2e = (channel, finish)
        probe.encrypted = True
        pinned = self.known.by_fingerprint(probe.fingerprint)
        probe.pinned = pinned[0] if pinned else None
        server.probe = probe
        return True

    async def login(self, probe: "Probe", pin_as: Optional[str] = None) -> BridgedConnection:
        """Stage 2 for a probed server: only once its key is proven and pinned (or pinned now
        as *pin_as*), and bound to that key; raw for an upstream server only on opt-in."""
        ctx = self.ctx
        label = f"server {probe.label()} via {ctx.target}"
        if probe.error:
            raise ClientError(f"{label} {probe.error}", EXIT_AUTH)
        if probe.fingerprint is None:
            if probe.upstream and ctx.options.allow_upstream_server:
                ctx.note(f"sysadm: warning: {label} did not prove its identity (an upstream server?); signing an "
                         "unbound login as --allow-upstream-server asks. Another bridge tenant could relay it.")
                answer = crypto.sign_challenge(self.server_key, probe.challenge)
                return await self._stage2(probe, {"encrypted_string": answer}, label)
            if probe.upstream:
                raise ClientError(
                    f"{label} did not prove its identity (no server_key/server_proof: an upstream server, or a peer "
                    "posing as one). Refusing to sign a login it could relay to another server.\n"
                    "  If you trust this bridge's tenants, pass --allow-upstream-server.", EXIT_CERTIFICATE)
            raise ClientError(f"{label} failed to prove its identity: {probe.proof_error}. Refusing to sign.\n"
                              "  (--allow-upstream-server accepts a server whose bridge cannot bind the proof to a "
                              "connection; nothing accepts a wrong proof)", EXIT_CERTIFICATE)
        if probe.pinned is None:
            name = pin_as or probe.claimed
            if not knownservers.valid_name(name):
                name = "key-" + probe.fingerprint[:16]  # it claims no name we can store: name it by its key
            holder = self.known.by_name(name)
            if holder is not None and holder.fingerprint != probe.fingerprint:
                raise server_key_changed(name, holder, probe, self.known.path)
            probe.pinned = self.known.pin(name, probe.fingerprint)
            ctx.note(f"Pinned server {name} key {bound.display_fingerprint(probe.fingerprint)} ({self.known.path})")
        if probe.e2e is not None:
            return await self._finish(probe, label)
        if probe.e2e_missing is not None:
            ctx.note(f"sysadm: note: {label} does not do end-to-end sessions ({probe.e2e_missing}); using the "
                     "base64 mode (--require-e2e refuses)")
        answer = bound.sign_bound_login(self.server_key, probe.fingerprint, probe.bind_id, probe.challenge)
        return await self._stage2(probe, {"encrypted_string": answer, "bound": 1}, label)

    async def _finish(self, probe: "Probe", label: str) -> BridgedConnection:
        """The encrypted finish: our signature of the handshake, which logs us in."""
        server = probe.connection
        channel, finish = probe.e2e
        probe.e2e = None  # single use
        server.base64, server.e2e = False, channel
        reply = await request(server, self.ctx.reactor, "rpc", "e2e", finish, self.ctx.timeout, label)
        if is_error(reply):
            raise ClientError(f"{label} refused the login: {_reason(reply)}", EXIT_AUTH)
        if not probe.pinned.e2e:
            probe.pinned = self.known.mark_e2e(probe.pinned.name) or probe.pinned
        server.hostname = probe.pinned.name
        return server

    async def _stage2(self, probe: "Probe", args: dict, label: str) -> BridgedConnection:
        server = probe.connection
        probe.challenge = ""  # single use
        reply = await request(server, self.ctx.reactor, "rpc", "auth_ssl", args, self.ctx.timeout, label)
        if is_error(reply):
            raise ClientError(f"{label} refused the login: {_reason(reply)}", EXIT_AUTH)
        server.hostname = probe.pinned.name if probe.pinned is not None else server.hostname
        return server


class Probe:
    """What stage 1 told us about one server behind the bridge."""

    def __init__(self, server_id: str, connection: BridgedConnection):
        self.server_id = server_id
        self.connection = connection
        self.claimed: Optional[str] = None      # the host name it claims (unverified)
        self.fingerprint: Optional[str] = None  # proven key (hex), None if no valid proof
        self.pinned: Optional[knownservers.KnownServer] = None
        self.challenge = ""
        self.bind_id = server_id                # the connection ID the proof and our signature name
        self.error: Optional[str] = None        # stage 1 failed
        self.proof_error: Optional[str] = None
        self.upstream = False                   # sent no proof at all
        self.e2e: Optional[Tuple[e2e.Session, Dict[str, Any]]] = None  # accepted: (keys, finish args)
        self.e2e_missing: Optional[str] = None  # the hello's error from a server without rpc/e2e
        self.encrypted = False                  # it accepted our hello (sessions with it are E2E)

    def label(self) -> str:
        if self.pinned is not None:
            return f"{self.pinned.name} ({self.server_id})"
        return f"{self.server_id} (claims {self.claimed or '?'})"

    def row(self) -> Dict[str, Any]:
        return {"id": self.server_id, "hostname": self.claimed, "hostname_verified": False,
                "fingerprint": bound.display_fingerprint(self.fingerprint) if self.fingerprint else None,
                "pinned_as": self.pinned.name if self.pinned is not None else None,
                "e2e": self.encrypted,
                "error": self.error or self.proof_error}


def server_key_changed(name: str, holder: "knownservers.KnownServer", probe: Probe, path: str) -> ClientError:
    got = bound.display_fingerprint(probe.fingerprint) if probe.fingerprint else "none"
    return ClientError(
        f"WARNING: server {probe.server_id} claims to be {name}, but its key is not the one pinned for {name}!\n"
        f"  pinned {holder.display} (since {holder.first_seen})\n"
        f"  got    {got}\n"
        "Another bridge tenant may be posing as that server. Refusing to sign anything for it.\n"
        f"If {name} really has a new bridge key, remove the old entry with\n"
        f"  sysadm known-servers forget {name}\n"
        f"(file {path}) and connect again.", EXIT_CERTIFICATE)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _plain_detail(body: str) -> str:
    try:
        message = json.loads(body)
    except ValueError:
        return "(not JSON)"
    if isinstance(message, dict) and is_error(message):
        return _reason(message)
    return _short(message)


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
    """``--bridge``: authenticate with the bridge, then with the server ``--server`` names
    (unless listing peers)."""
    session = await open_bridge(ctx)
    ctx.extras["bridge"] = session
    if ctx.options.verb == "peers":
        ctx.conn = _BridgeOnly(session)
        return
    if not session.available and ctx.options.bridge_key:
        ctx.note("sysadm: note: the bridge pairs a client only on the key it proved to the bridge (--bridge-key); "
                 "its administrator can add your --key with `sysadm-bridge import-key NICK BRIDGE.pub --role client "
                 "--pairs-with KEY.pub`")
    probe, pin_as = await choose_server(session, ctx.options.server)
    ctx.conn = await session.login(probe, pin_as)
    ctx.target = f"{ctx.conn.hostname or probe.server_id} via {ctx.target}"


async def _probe_all(session: BridgeSession) -> List[Probe]:
    """Stage 1 with every server on offer, side by side (no signing)."""

    async def one(server_id: str) -> Probe:
        try:
            return await session.probe(server_id)
        except ClientError as e:
            connection = session.servers.get(server_id) or BridgedConnection(session, server_id)
            probe = Probe(server_id, connection)
            probe.claimed = connection.hostname
            probe.error = e.message
            return probe

    ids = list(session.available or [])
    return list(await defer.gatherResults([defer.ensureDeferred(one(i)) for i in ids]))


async def choose_server(session: BridgeSession, wanted: Optional[str]) -> Tuple[Probe, Optional[str]]:
    """The server ``--server`` means, and the name to pin it as if it is new.

    Pinned identities first (a pinned name, or a fingerprint prefix); a name nobody
    pinned yet matches the host name servers *claim* only when exactly one claims it.
    Several candidates are never resolved by picking one: the user gets the list.
    """
    available = session.available or []
    known = session.known
    if wanted and wanted in available:
        probe = await session.probe(wanted)
        if probe.fingerprint and probe.pinned is None and probe.claimed:
            holder = known.by_name(probe.claimed)
            if holder is not None and holder.fingerprint != probe.fingerprint:
                raise server_key_changed(probe.claimed, holder, probe, known.path)
        return probe, None
    probes = await _probe_all(session)
    if not wanted:
        if len(probes) == 1:
            probe = probes[0]
            if probe.fingerprint and probe.pinned is None and probe.claimed:
                holder = known.by_name(probe.claimed)
                if holder is not None and holder.fingerprint != probe.fingerprint:
                    raise server_key_changed(probe.claimed, holder, probe, known.path)
            return probe, None
        raise ClientError(f"--server NAME is needed: the bridge offers {len(probes)} servers\n"
                          + _candidates(probes) + "\n(`sysadm … peers` lists them)", EXIT_USAGE)
    pinned = known.matching(wanted)
    if pinned:
        fps = {entry.fingerprint for entry in pinned}
        found = [p for p in probes if p.fingerprint in fps]
        if len(found) == 1:
            return found[0], None
        names = ", ".join(f"{e.name} {e.display}" for e in pinned)
        if not found:
            impostors = [p for p in probes if p.claimed == wanted]
            warning = ""
            if impostors:
                warning = (f"\nWARNING: {len(impostors)} server(s) claim the name {wanted} with another key; "
                           "not trusted:\n" + _candidates(impostors))
            raise ClientError(f"the bridge offers no server with the key pinned for {wanted!r} ({names})"
                              + warning, EXIT_CERTIFICATE if impostors else EXIT_USAGE)
        raise ClientError(f"{wanted!r} is ambiguous: {len(found)} servers on offer match the pinned {names}; "
                          "name one by its ID:\n" + _candidates(found), EXIT_USAGE)
    claiming = [p for p in probes if p.claimed == wanted]
    if len(claiming) == 1:
        return claiming[0], wanted
    if not claiming:
        raise ClientError(f"the bridge offers no server {wanted!r}: no pinned server has that name or fingerprint, "
                          "and no server claims that host name (`sysadm --bridge … peers` lists them)", EXIT_USAGE)
    raise ClientError(f"{len(claiming)} servers claim the host name {wanted!r} (host names are not verified); refusing "
                      "to guess. Name one by its ID or fingerprint:\n" + _candidates(claiming), EXIT_USAGE)


def _candidates(probes: List[Probe]) -> str:
    lines = []
    for p in probes:
        fp = bound.display_fingerprint(p.fingerprint) if p.fingerprint else f"no proven key ({p.error or p.proof_error})"
        pinned = f", pinned as {p.pinned.name}" if p.pinned is not None else ""
        lines.append(f"  {p.server_id}  claims {p.claimed or '?'!s}  key {fp}{pinned}")
    return "\n".join(lines)


class _BridgeOnly:
    """``ctx.conn`` for ``peers``: nothing to call, closing closes the bridge socket."""

    def __init__(self, session: BridgeSession):
        self.session = session
        self.transport = session.conn.transport

    def close(self) -> defer.Deferred:
        return self.session.close()


async def peers(ctx: Context) -> int:
    """List the servers the bridge offers: ID, claimed host name (unverified), proven key,
    pinned name; log in (bound) only to pinned ones, to say whether the key is accepted."""
    session: BridgeSession = ctx.extras["bridge"]
    rows = []
    for probe in await _probe_all(session):
        row = probe.row()
        row["authorized"] = None
        if probe.pinned is not None and not probe.error:
            try:
                await session.login(probe)
                row["authorized"] = True
            except ClientError as e:
                row["authorized"], row["error"] = False, e.message
        elif probe.error:
            row["authorized"] = False
        rows.append(row)
    if ctx.json_output:
        ctx.emit_json(rows)
        return EXIT_OK
    if not rows:
        ctx.say("the bridge offers no servers for this key")
        return EXIT_OK
    yes_no = {True: "yes", False: "no", None: "not tried"}
    table = [[r["id"], (r["hostname"] or "?") + " (unverified)", r["fingerprint"] or "-", r["pinned_as"] or "not pinned",
              yes_no[r["authorized"]], r["error"] or ""] for r in rows]
    for line in tables.render(["id", "claims host name", "key", "pinned as", "authorized", "note"], table, max_width=160):
        ctx.say(line)
    if any(r["pinned_as"] is None and r["fingerprint"] for r in rows):
        ctx.say("Servers not pinned yet were not logged in to; pin one with --server NAME|ID on a first connection.")
    return EXIT_OK
