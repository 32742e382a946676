"""The running bridge: its state, its timers, and the service tree ``twistd`` starts.

:class:`Bridge` owns the peer directory, the key store, the blacklist and the API, and
the two periodic jobs: re-asking authenticated peers for their key lists, and noticing
keys removed by the ``sysadm-bridge`` command (their live connections are closed).
:func:`build` adds the TLS listener.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Tuple

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from bridge import migrations
from bridge.api import BridgeApi
from bridge.config import BridgeConfig
from bridge.fleet import Fleet, SqliteFleetStore
from bridge.keys import KeyStore, database_path
from bridge.protocol import BridgeServerFactory
from bridge import relayscan, tlsfast
from bridge.relay import CLIENT, Peer, PeerDirectory
from sysadmd.runtime import tls
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.runtime.db import open_database
from sysadmd.runtime.listeners import Listener, endpoint_text, guard_for
from sysadmd.runtime.statedir import ensure_private_dir
from sysadmd.runtime.startup import tls_files
from sysadmd.runtime.shutdown import wait_until
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN

SHUTDOWN_GRACE = 2.0  # seconds peers get to answer our close frames at shutdown
log = Logger()


def open_blacklist(db: Any, clock: Any, cfg: BridgeConfig) -> Blacklist:
    return Blacklist(db, clock, limit=cfg.blacklist_auth_fail_limit,
                     reset_minutes=cfg.blacklist_auth_fail_reset_minutes,
                     block_minutes=cfg.blacklist_block_minutes,
                     exempt_loopback=cfg.blacklist_exempt_loopback, schema=migrations.SCHEMA)


class Bridge(service.Service):
    """Bridge state shared by every connection."""

    def __init__(self, cfg: BridgeConfig, db: Any, clock: Any, *, hostname: Optional[str] = None):
        self.config = cfg
        self.db = db
        self.clock = clock
        self.keys = KeyStore(db)
        self.blacklist = open_blacklist(db, clock, cfg)
        self.directory = PeerDirectory()
        self.fleet = Fleet(SqliteFleetStore(db), clock, key_pem=self._key_pem, ping_interval=cfg.fleet_ping_interval,
                           pong_timeout=cfg.fleet_pong_timeout)
        self.api = BridgeApi(self.directory, self.keys, self.blacklist, clock,
                             hostname=hostname or socket.gethostname() or "localhost",
                             challenge_ttl=cfg.challenge_ttl, fleet=self.fleet)
        self._loops = []

    # --- service ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._start_loop(self.check_revocations, self.config.revocation_poll_interval)
        if self.config.keys_refresh_interval > 0:
            self._start_loop(self.refresh_key_lists, self.config.keys_refresh_interval)
        self.fleet.start()

    def stopService(self):
        super().stopService()
        self.fleet.stop()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        peers = list(self.directory.peers.values())
        for peer in peers:
            peer.link.close(CLOSE_GOING_AWAY, "bridge shutting down")
        if peers:
            return wait_until(self.clock, lambda: not self.directory.peers, SHUTDOWN_GRACE)
        return None

    def _start_loop(self, fn, interval: float) -> None:
        loop = task.LoopingCall(self._guarded, fn)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    @staticmethod
    def _guarded(fn) -> None:
        try:
            fn()
        except Exception:
            log.failure("periodic bridge task {name} failed", name=fn.__name__)

    # --- connections -----------------------------------------------------------------------
    def refusal(self, address: str) -> Optional[Tuple[int, str]]:
        """``None`` if a new connection from *address* may proceed, else ``(code, reason)``."""
        left = self.blacklist.blocked_for(address)
        if left > 0:
            return CLOSE_POLICY, f"address blocked after repeated failed auth_ssl tries; try again in {int(left // 60) + 1} min"
        if len(self.directory) >= self.config.max_connections:
            return CLOSE_TRY_AGAIN, f"too many connections (MAX_CONNECTIONS={self.config.max_connections})"
        return None

    def connected(self, peer: Peer) -> None:
        self.directory.add(peer)
        log.info("{peer} connected from {address}", peer=peer.id, address=peer.address)
        self.api.greet(peer)

    def disconnected(self, peer: Peer, code: Any = None, reason: Any = None) -> None:
        self.api.forget(peer)
        self.fleet.disconnected(peer)
        self.directory.remove(peer)
        log.info("{peer} ({role}) disconnected: {code} {reason}", peer=peer.id, role=peer.role or "no role",
                 code=code, reason=reason or "")

    def _key_pem(self, nickname: str) -> Optional[str]:
        key = self.keys.get(nickname)
        return key.pem if key is not None else None

    # --- periodic jobs ---------------------------------------------------------------------
    def refresh_key_lists(self) -> None:
        """Ask every authenticated peer for its key checksums again (upstream asked once)."""
        for peer in self.directory.authenticated():
            self.api.request_keys(peer)

    def check_revocations(self) -> int:
        """Close connections whose key was removed, replaced or re-bound; returns how many."""
        if not self.keys.changed():
            return 0
        current = {key.nickname: key for key in self.keys.all()}
        closed = 0
        for peer in self.directory.authenticated():
            key = current.get(peer.key_nickname)
            if (key is None or key.md5 != peer.key_md5 or not key.allows(peer.role)
                    or (peer.role == CLIENT and key.pairing_checksums() != peer.provable)):
                log.info("{peer}: key {nick} was removed or replaced; closing", peer=peer.id, nick=peer.key_nickname)
                peer.link.close(CLOSE_POLICY, f"key {peer.key_nickname!r} was revoked on the bridge")
                closed += 1
        return closed


class BridgeDaemon(service.MultiService):
    """The whole bridge: :class:`Bridge` plus its TLS listener."""

    def __init__(self, bridge: Bridge, listener: Listener):
        super().__init__()
        self.bridge = bridge
        self.listener = listener
        bridge.setServiceParent(self)
        listener.setServiceParent(self)


def build(cfg: BridgeConfig, reactor: Any) -> BridgeDaemon:
    """The service tree for *cfg*: state dir, database, TLS, listener."""
    ensure_private_dir(cfg.state_dir)
    db = open_database(database_path(cfg.state_dir), migrations.SCHEMA)
    bridge = Bridge(cfg, db, reactor)
    cert, key = tls_files(cfg, "bridge")
    factory = BridgeServerFactory(bridge, reactor=reactor)
    log.info("relay step (bridge/relayscan.py): {impl}", impl=relayscan.IMPLEMENTATION)
    # helper G: the TLS engine (BRIDGE_TLS_ENGINE); see bridge/tlsfast.py
    description = endpoint_text(cfg.port, cfg.listen_interface)
    endpoint, tls_options = None, None
    if cfg.bridge_tls_engine == "stdlib" and description.split(":", 1)[0] in ("tcp", "tcp6"):
        endpoint = tlsfast.TLSEndpoint(reactor, description, tlsfast.server_context(cert, key))
    else:
        if cfg.bridge_tls_engine == "stdlib":
            log.info("BRIDGE_TLS_ENGINE=stdlib serves tcp: and tcp6: ports only; {port} uses pyopenssl",
                     port=description)
        tls_options = tls.server_context(cert, key)
    listener = Listener(reactor, cfg.port, factory, label="sysadm-bridge wss",
                        interface=cfg.listen_interface, tls=tls_options, endpoint=endpoint,
                        guard=guard_for(cfg, reactor, "sysadm-bridge"))
    return BridgeDaemon(bridge, listener)
