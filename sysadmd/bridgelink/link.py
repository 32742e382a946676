"""One bridge link: a reconnecting outgoing connection and what is known about it.

Each link is a :class:`ClientService` that dials the bridge again after every failure
or disconnect, with exponential backoff and jitter: the first retry comes within about
a second, later ones double up to ``BRIDGE_RETRY_MAX``.  The count restarts only once
the bridge has accepted our key, so a bridge that refuses it is not hammered.  While
the link is up, :class:`~.clients.BridgedClients` holds a session per client ID; all
of them end when the link drops.
"""

from __future__ import annotations

import random
import socket
from typing import Any, Callable, Dict, Optional
from urllib.parse import urlsplit

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from sysadmd.bridgelink.clients import BridgedClients
from sysadmd.bridgelink.protocol import BridgeLinkFactory, describe_failure
from sysadmd.bridgelink.store import BridgeLinkRow, BridgeLinkStore
from sysadmd.bridgelink.tlsverify import certificate_fingerprint, connection_creator

log = Logger()

FIRST_RETRY = 1.0  # seconds; doubles after each failure up to BRIDGE_RETRY_MAX
CONNECT_TIMEOUT = 30


@implementer(IStreamClientEndpoint)
class _ObservedEndpoint:
    """An endpoint that reports failed connection attempts (ClientService keeps them)."""

    def __init__(self, endpoint: Any, on_failure: Callable[[Any], None]):
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory: Any):
        d = self._endpoint.connect(factory)

        def failed(failure):
            self._on_failure(failure)
            return failure

        d.addErrback(failed)
        return d


class BridgeLink(service.MultiService):
    def __init__(self, server: Any, row: BridgeLinkRow, store: BridgeLinkStore, bridge_key: Any, reactor: Any,
                 *, keys: Optional[Any] = None, jitter: Callable[[], float] = random.random,
                 key_login: Optional[Any] = None):
        super().__init__()
        self.server = server
        self.keys = keys  # the KeyStore whose checksums the bridge is told (None: none)
        self.key_login = key_login  # the KeyLogin end-to-end sessions log in through (None: no E2E)
        self.fleet: Optional[Any] = None  # the FleetAgent (sysadmd/bridgelink/fleet.py), when built
        self.row = row
        self.nickname = row.nickname
        self.url = row.url
        self.verify = row.verify
        self.fingerprint = row.fingerprint  # pinned (pin mode) or last seen (other modes)
        self.store = store
        self.bridge_key = bridge_key
        self.reactor = reactor
        self._jitter = jitter
        self.connected = False
        self.is_authenticated = False
        self.last_error: Optional[str] = None
        self.next_retry_at: Optional[float] = None
        self.clients: Optional[BridgedClients] = None
        self.protocol: Optional[Any] = None
        self._failures = 0
        self._pending_error: Optional[str] = None
        self._stopping = False

        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port
        creator = connection_creator(self.verify, host, self._expected_fingerprint, self._certificate_refused)
        endpoint = wrapClientTLS(creator, HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT))
        cfg = server.config
        factory = BridgeLinkFactory(self, self.url, reactor, max_message_bytes=cfg.max_message_bytes,
                                    ping_interval=cfg.bridge_ping_interval)
        self.client_service = ClientService(_ObservedEndpoint(endpoint, self._connect_failed), factory,
                                            retryPolicy=self.retry_delay, clock=reactor)
        self.client_service.setServiceParent(self)

    # --- status ---------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        """The ``list_bridges`` entry for this link."""
        next_retry = None
        if not self.connected and self.next_retry_at is not None:
            left = self.next_retry_at - self.reactor.seconds()
            next_retry = round(left, 1) if left > 0 else None
        return {
            "url": self.url,
            "verify": self.verify,
            "fingerprint": self.fingerprint,
            "connected": self.connected,
            "authenticated": self.is_authenticated,
            "peers": self.clients.ids() if self.clients is not None else [],
            "last_error": self.last_error,
            "next_retry_in": next_retry,
        }

    def retry_delay(self, attempt: int) -> float:
        """ClientService's retry policy: 1 s, 2 s, 4 s … up to BRIDGE_RETRY_MAX, minus up to 20 %."""
        cap = self.server.config.bridge_retry_max
        delay = min(cap, FIRST_RETRY * 2 ** min(self._failures, 32)) * (1 - 0.2 * self._jitter())
        self._failures += 1
        self.next_retry_at = self.reactor.seconds() + delay
        return delay

    # --- TLS --------------------------------------------------------------------------
    def _expected_fingerprint(self) -> Optional[str]:
        return self.fingerprint if self.verify == "pin" else None

    def _certificate_refused(self, seen: str, expected: str) -> None:
        self._pending_error = (
            f"the bridge's TLS certificate changed (now {seen}, pinned {expected}); connection refused. "
            f"If the change is expected, add the link again (sysadmd bridge_add {self.nickname} {self.url}) "
            f"to trust the new certificate"
        )
        log.error("bridge {nick}: {error}", nick=self.nickname, error=self._pending_error)

    # --- connection life ------------------------------------------------------------
    def _connect_failed(self, failure: Any) -> None:
        if not self._stopping:
            self.last_error = f"cannot connect to {self.url}: {describe_failure(failure)}"
            log.warn("bridge {nick}: {error}", nick=self.nickname, error=self.last_error)

    def attached(self, protocol: Any) -> None:
        """The WebSocket is open (TLS accepted); authentication starts."""
        self.protocol = protocol
        self.connected = True
        self.next_retry_at = None
        self.clients = BridgedClients(self.server, self.nickname, protocol.send_frame, key_login=self.key_login)
        getter = getattr(protocol.transport, "getPeerCertificate", None)
        cert = getter() if getter is not None else None
        if cert is not None:
            seen = certificate_fingerprint(cert)
            if self.verify != "pin":
                self.fingerprint = seen
            elif self.fingerprint is None:
                # Trust on first use; later handshakes must present this certificate.
                self.store.pin(self.nickname, seen)
                self.fingerprint = seen
                log.info("bridge {nick}: pinned TLS certificate {fp}", nick=self.nickname, fp=seen)
        log.info("bridge {nick}: connected to {url}", nick=self.nickname, url=self.url)

    def authenticated_ok(self) -> None:
        self.is_authenticated = True
        self.last_error = None
        self._failures = 0
        log.info("bridge {nick}: the bridge accepted our key", nick=self.nickname)
        self.server.logs.hostinfo(f"New Bridge Connection: {self.url}")

    def refused(self, args: Any) -> None:
        self._pending_error = (
            f"bridge refused our key (import it on the bridge with: sysadm-bridge import_ssl_file "
            f"{socket.gethostname() or 'NICK'} FILE, FILE written by: sysadmd bridge_export_key FILE.key)"
        )
        log.error("bridge {nick}: {error} (reply: {args!r})", nick=self.nickname, error=self._pending_error, args=args)

    def refused_silently(self, seconds: float) -> None:
        self._pending_error = f"the bridge did not answer our auth_ssl within {seconds:g} s; is {self.url} a sysadm bridge?"
        log.warn("bridge {nick}: {error}", nick=self.nickname, error=self._pending_error)

    def detached(self, protocol: Any, why: str) -> None:
        """The connection ended (or never got past TLS): forget its clients."""
        why, self._pending_error = self._pending_error or why, None
        if self.protocol is protocol:
            self.protocol = None
            clients, self.clients = self.clients, None
            if clients is not None:
                clients.close_all("the bridge link was lost" if not self._stopping else "the bridge link was removed")
        was_up = self.connected
        self.connected = False
        self.is_authenticated = False
        if self._stopping:
            return
        self.last_error = why
        if was_up:
            log.warn("bridge {nick}: link lost: {why}", nick=self.nickname, why=why)
        else:
            log.warn("bridge {nick}: connection failed: {why}", nick=self.nickname, why=why)

    def checksums(self) -> Dict[str, Any]:
        return self.keys.checksums() if self.keys is not None else {"md5_keys": []}

    def stopService(self):
        self._stopping = True
        if self.protocol is not None:
            self.protocol.shutdown("link removed")
        return super().stopService()
