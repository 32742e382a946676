"""The bridge's own API: identify, auth_ssl and the replies it reads from peers.

Everything a peer sends that starts with ``{`` (and everything before it has
authenticated) lands here; relay frames go to :mod:`bridge.relay`.  The message shapes
are upstream's (docs/protocol.md §8.1); what we changed is listed in
:mod:`bridge.protocol`; and since issue 7: a key has one role (an unbound key is bound to
the role of its first login, :meth:`bridge.keys.KeyStore.bind_role`), a client is paired
only on keys it proved (:mod:`bridge.relay`), and ``rpc/identify`` from an authenticated
peer also tells it its own ``connection_id`` (our servers bind their identity proofs to
it, :mod:`sysadmd.wire.bound`).  No reactor and no WebSockets: time comes from an injected clock
and replies go out through :class:`~bridge.relay.PeerLink`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.logger import Logger

from bridge.keys import BOTH, KeyStore
from bridge.relay import CLIENT, SERVER, Peer, PeerDirectory, role_from_identify
from sysadmd.runtime.blacklist import normalize_address
from sysadmd.runtime.crypto import random_token
from sysadmd.wire.envelope import encode, error
from sysadmd.wire.close import CLOSE_POLICY

log = Logger()

IDENT_ID = "sysadm_bridge_request_ident"
LIST_KEYS_ID = "bridge_request_list_keys"
IDENTIFY_REQUEST = encode({"args": "", "id": IDENT_ID, "name": "identify", "namespace": "rpc"})
LIST_KEYS_REQUEST = encode({"args": {"action": "list_ssl_checksums"}, "id": LIST_KEYS_ID, "name": "settings", "namespace": "rpc"})

CHALLENGE_LENGTH = 40
TOKEN_LENGTH = 40
# The bridge token is bound to the connection and never expires while it is open, so
# the TTL element of the auth reply is 0, as upstream sends (Qt peers read only [0]).
TOKEN_TTL = 0
MAX_REPORTED_KEYS = 10000
MAX_CHECKSUM_LENGTH = 256
ENVELOPE_KEYS = ("namespace", "name", "args", "id")
# Our second answer to the bridge's challenge, for peers (a browser's WebCrypto) that can
# only make digest signatures: RSASSA-PKCS1-v1_5 with SHA-256 over this prefix + the
# test_string (docs/protocol.md §8.1).  The prefix keeps such a signature from being
# usable for anything else.
SCHEME_PKCS1_SHA256 = "pkcs1-sha256"
LOGIN_SIGNED_PREFIX = "sysadm-bridge-login/1\n"


class BridgeApi:
    def __init__(self, directory: PeerDirectory, keys: KeyStore, blacklist: Any, clock: Any, *,
                 hostname: str, challenge_ttl: float,
                 on_authenticated: Optional[Callable[[Peer], None]] = None, fleet: Optional[Any] = None):
        self.directory = directory
        self.keys = keys
        self.blacklist = blacklist
        self.clock = clock
        self.hostname = hostname
        self.challenge_ttl = challenge_ttl
        self.on_authenticated = on_authenticated
        self.fleet = fleet  # bridge.fleet.Fleet: fleet/* messages (issue 13)
        self._challenges: Dict[str, Tuple[str, float]] = {}

    def greet(self, peer: Peer) -> None:
        """The bridge speaks first: ask the new peer who it is."""
        peer.link.send_text(IDENTIFY_REQUEST)

    def forget(self, peer: Peer) -> None:
        self._challenges.pop(peer.id, None)

    def handle(self, peer: Peer, text: str) -> None:
        """Handle one API message from *peer*."""
        if not text.startswith("{"):
            peer.link.send_text(encode(error("401", "relay frames need an authenticated connection: answer rpc/auth_ssl first")))
            return
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            peer.link.send_text(encode(error("400", f"invalid JSON: {e}")))
            return
        if not isinstance(obj, dict):
            peer.link.send_text(encode(error("400", "a message to the bridge must be a JSON object")))
            return
        missing = [k for k in ENVELOPE_KEYS if k not in obj]
        if missing:
            request_id = obj.get("id", "")
            peer.link.send_text(encode(error("400", f"missing '{missing[0]}': bridge messages carry namespace, name, args and id",
                                             request_id if isinstance(request_id, str) else "")))
            return
        namespace, name, request_id = obj["namespace"], obj["name"], obj["id"]
        ns = namespace.lower() if isinstance(namespace, str) else ""
        verb = name.lower() if isinstance(name, str) else ""
        if verb == "error":
            return  # never answer an error (no ping-pong with a peer that does the same)
        if verb == "response":
            self._response(peer, request_id, obj["args"])
        elif ns == "rpc" and verb == "identify":
            ident = {"hostname": self.hostname, "type": "bridge"}
            if peer.authenticated:
                # Ours: the peer's own connection ID, which peers never learn otherwise.  Our
                # servers bind their identity proofs to it (sysadmd/wire/bound.py).
                ident["connection_id"] = peer.id
            self._reply(peer, ident, request_id, "response", namespace)
        elif ns == "rpc" and verb == "auth_ssl":
            self._auth_ssl(peer, request_id, namespace, obj["args"])
        elif ns == "fleet" and peer.authenticated and self.fleet is not None:
            self.fleet.handle(peer, verb, request_id, obj["args"])
        else:
            # Upstream's answer to everything else: args null; "error" until authenticated.
            self._reply(peer, None, request_id, "response" if peer.authenticated else "error", namespace)

    def request_keys(self, peer: Peer) -> None:
        peer.link.send_text(LIST_KEYS_REQUEST)

    # --- replies from peers --------------------------------------------------------------
    def _response(self, peer: Peer, request_id: Any, args: Any) -> None:
        if request_id == IDENT_ID:
            if not isinstance(args, dict) or not isinstance(args.get("type"), str):
                log.info("{peer}: identify reply without a type string ignored", peer=peer.id)
                return
            role = role_from_identify(args["type"])
            if not self.directory.set_role(peer, role):
                log.warn("{peer}: identify reply claims {role} after authenticating as {was}; ignored",
                         peer=peer.id, role=role, was=peer.role)
        elif request_id == LIST_KEYS_ID:
            if not peer.authenticated:
                log.info("{peer}: key list from an unauthenticated peer ignored", peer=peer.id)
                return
            md5s = _checksums(args)
            if md5s is None:
                log.warn("{peer}: malformed list_ssl_checksums reply ignored (expected args.md5_keys, a list of strings)", peer=peer.id)
                return
            self.directory.set_keys(peer, md5s)
            if self.fleet is not None and peer.role == SERVER:
                self.fleet.keys_changed(peer)
        # Any other response is not for us (upstream read every id as a key list).

    # --- auth_ssl ------------------------------------------------------------------------
    def _auth_ssl(self, peer: Peer, request_id: Any, namespace: Any, args: Any) -> None:
        if self._refused_when_blocked(peer, request_id):
            return
        if isinstance(args, dict) and "encrypted_string" in args:
            self._auth_stage2(peer, request_id, args["encrypted_string"], args.get("scheme"))
            return
        challenge = random_token(CHALLENGE_LENGTH)
        # One outstanding challenge per connection; a new stage 1 replaces the old one.
        self._challenges[peer.id] = (challenge, self.clock.seconds() + self.challenge_ttl)
        self._reply(peer, {"test_string": challenge}, request_id, "response", namespace)

    def _auth_stage2(self, peer: Peer, request_id: Any, signature: Any, scheme: Any = None) -> None:
        pending = self._challenges.pop(peer.id, None)
        if pending is None:
            return self._auth_failed(peer, request_id, "no test_string was issued on this connection (or it was already used)")
        challenge, expires = pending
        if self.clock.seconds() > expires:
            return self._auth_failed(peer, request_id, "the test_string expired")
        if not isinstance(signature, str) or not signature:
            return self._auth_failed(peer, request_id, "encrypted_string is not a base64 string")
        if scheme is None:
            key = self.keys.verify(challenge, signature)
        elif scheme == SCHEME_PKCS1_SHA256:
            key = self.keys.verify_sha256(LOGIN_SIGNED_PREFIX + challenge, signature)
        else:
            shown = repr(scheme)[:40] if isinstance(scheme, str) else type(scheme).__name__
            return self._auth_failed(peer, request_id, f"auth_ssl scheme {shown} is unknown "
                                                       f"(expected none, or {SCHEME_PKCS1_SHA256!r})")
        if key is None:
            return self._auth_failed(peer, request_id, "the signature matches no registered key")
        role = peer.role
        if role is None:
            if key.role in (SERVER, CLIENT):
                role = key.role
            elif key.role == BOTH:
                role = CLIENT  # upstream: anything but "server" is a client
            else:
                return self._auth_failed(peer, request_id, f"key {key.nickname!r} has no role yet and the peer has not "
                                                           "answered rpc/identify: its first login must say server or client")
        if not key.allows(role):
            log.warn("{peer}: key {nick} is bound to role {bound}; refused as {role}",
                     peer=peer.id, nick=key.nickname, bound=key.role, role=role)
            return self._auth_failed(peer, request_id, f"key {key.nickname!r} is bound to role {key.role}, not {role}")
        if not key.bound:
            bound = self.keys.bind_role(key, role)
            if bound is None:
                return self._auth_failed(peer, request_id, f"key {key.nickname!r} was removed or replaced during the login")
            if bound.role != role and bound.role != BOTH:
                return self._auth_failed(peer, request_id, f"key {key.nickname!r} is bound to role {bound.role}, not {role}")
            if bound.role == role:
                log.info("key {nick} bound to role {role} on first use (by {peer} from {address})",
                         nick=key.nickname, role=role, peer=peer.id, address=peer.address)
            key = bound
        self.directory.authenticate(peer, key.nickname, key.md5, role, key.pairing_checksums())
        if self.blacklist is not None:
            self.blacklist.success(peer.address)
        log.info("{peer} authenticated as {role} with key {nick} from {address}",
                 peer=peer.id, role=role, nick=key.nickname, address=peer.address)
        self._reply(peer, [random_token(TOKEN_LENGTH), TOKEN_TTL], request_id, "response", "rpc")
        self.request_keys(peer)
        if self.on_authenticated is not None:
            self.on_authenticated(peer)

    def _auth_failed(self, peer: Peer, request_id: Any, why: str) -> None:
        log.warn("{peer}: auth_ssl failed from {address}: {why}", peer=peer.id, address=peer.address, why=why)
        peer.link.send_text(encode({"args": "unauthorized", "id": request_id, "name": "error", "namespace": "rpc"}))
        if self.blacklist is not None and self.blacklist.failure(peer.address):
            log.warn("blocked {address} after repeated failed auth_ssl tries", address=peer.address)
            # Every open connection from the address goes, not only new ones.
            key = normalize_address(peer.address)
            for other in list(self.directory.peers.values()):
                if normalize_address(other.address) == key:
                    self._challenges.pop(other.id, None)
                    other.link.close(CLOSE_POLICY, "address blocked after repeated failed auth_ssl tries")

    def _refused_when_blocked(self, peer: Peer, request_id: Any) -> bool:
        """The blacklist is asked at every auth_ssl, not only at connect: a connection
        opened before its address was blocked gets no further try."""
        if self.blacklist is None or self.blacklist.blocked_for(peer.address) <= 0:
            return False
        self._challenges.pop(peer.id, None)
        peer.link.send_text(encode({"args": "unauthorized", "id": request_id, "name": "error", "namespace": "rpc"}))
        peer.link.close(CLOSE_POLICY, "address blocked after repeated failed auth_ssl tries")
        return True

    def _reply(self, peer: Peer, args: Any, request_id: Any, name: str, namespace: Any) -> None:
        peer.link.send_text(encode({"args": args, "id": request_id, "name": name, "namespace": namespace}))


def _checksums(args: Any) -> Optional[list]:
    if not isinstance(args, dict):
        return None
    md5s = args.get("md5_keys")
    if not isinstance(md5s, list) or len(md5s) > MAX_REPORTED_KEYS:
        return None
    if not all(isinstance(m, str) and 0 < len(m) <= MAX_CHECKSUM_LENGTH for m in md5s):
        return None
    return md5s
