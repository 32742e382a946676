"""Listening sockets as services, from port numbers or Twisted endpoint strings.

A bare port number listens on ``LISTEN_INTERFACE``; an endpoint string is used as
given.  TLS is wrapped around every TCP listener here (``ssl:`` strings bring their own).
Each listener logs one ``listening`` line with the real address once it is bound, which
operators, the smoke tests and the benchmarks read.

Connection limits (:class:`ConnectionGuard`, one per daemon, shared by its listeners)
apply from the moment a connection is accepted, below TLS, so idle or half-open
connections count as much as sessions do:

* at most ``max_total`` connections at once over all listeners (see
  :func:`accept_cap`: ``MAX_CONNECTIONS`` plus a little room so that connections over
  ``MAX_CONNECTIONS`` can still be told 1013/503 after their handshake, and never more
  than the open-file limit leaves room for);
* at most ``per_address`` at once from one IP address (``MAX_CONNECTIONS_PER_ADDRESS``,
  0 for no cap; loopback is not exempt: local users are users too — raise or disable
  the cap for load tests from one host).  Unix-socket peers have no address and only
  count toward the total;
* a connection must finish its handshake (TLS, then the WebSocket upgrade or a whole
  HTTP request) within ``handshake_timeout`` seconds of being accepted, however slowly
  its bytes trickle in; on the HTTPS site each further request on a kept-alive
  connection gets the same deadline from the end of the previous one.

A connection over a cap is closed at once, before TLS; each refusal kind is logged at
most once every ``LOG_EVERY`` seconds with how many were refused since.
"""

from __future__ import annotations

import ipaddress
import resource
from collections import Counter
from typing import Any, Dict, Optional

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

log = Logger()

# Descriptors kept free for everything but connections (database, logs, job pipes,
# listening sockets, the TLS files).
RESERVED_DESCRIPTORS = 128
LOG_EVERY = 10.0


def accept_cap(max_connections: int, descriptor_limit: Optional[int] = None) -> int:
    """Connections a daemon holds open at most: MAX_CONNECTIONS plus 1/16 (at least 8)
    for polite refusals, within what the open-file limit leaves after the reserve."""
    cap = max_connections + max(8, max_connections // 16)
    if descriptor_limit is None:
        descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptor_limit != resource.RLIM_INFINITY:
        cap = min(cap, max(16, descriptor_limit - RESERVED_DESCRIPTORS))
    return cap


def raise_descriptor_limit() -> tuple:
    """Raise the soft open-file limit to the hard one where allowed; ``(before, after)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or hard > soft:
        target = hard
        if hard == resource.RLIM_INFINITY:
            target = 1 << 20  # Linux refuses "unlimited" descriptors; a million is plenty
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            return soft, soft
    return soft, soft


class ConnectionGuard:
    """Counts a daemon's connections from accept on; see the module docstring."""

    def __init__(self, clock: Any, *, max_total: int, per_address: int, handshake_timeout: float,
                 label: str = "connections"):
        self.clock = clock
        self.max_total = max_total
        self.per_address = per_address
        self.handshake_timeout = handshake_timeout
        self.label = label
        self.total = 0
        self.by_address: Counter = Counter()
        self.refused: Counter = Counter()  # kind -> refusals not yet logged
        self.refused_total: Counter = Counter()  # kind -> all refusals (tests, operators)
        self._logged_at: Dict[str, float] = {}

    def admit(self, address: Optional[str]) -> Optional[str]:
        """Count a new connection, or return why it is refused ("total", "address")."""
        if self.total >= self.max_total:
            return self._refuse("total", f"{self.total} connections open (at most {self.max_total})")
        if address is not None and self.per_address and self.by_address[address] >= self.per_address:
            return self._refuse("address", f"{address} has {self.by_address[address]} connections open "
                                           f"(MAX_CONNECTIONS_PER_ADDRESS={self.per_address})")
        self.total += 1
        if address is not None:
            self.by_address[address] += 1
        return None

    def release(self, address: Optional[str]) -> None:
        self.total -= 1
        if address is not None:
            left = self.by_address[address] - 1
            if left > 0:
                self.by_address[address] = left
            else:
                del self.by_address[address]

    def note(self, kind: str, detail: str) -> None:
        """Count a limit that bit; log it unless the same kind was logged lately."""
        self.refused[kind] += 1
        self.refused_total[kind] += 1
        now = self.clock.seconds()
        last = self._logged_at.get(kind)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged_at[kind] = now
        count, self.refused[kind] = self.refused[kind], 0
        more = f" ({count - 1} more since the last report)" if count > 1 else ""
        log.warn("{label}: {detail}{more}", label=self.label, detail=detail, more=more)

    def _refuse(self, kind: str, detail: str) -> str:
        self.note(kind, f"refused a connection: {detail}")
        return kind


def guard_for(cfg: Any, clock: Any, label: str) -> ConnectionGuard:
    """The connection guard for a daemon's settings (MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS, HANDSHAKE_TIMEOUT); says so when the open-file limit
    lowers the cap."""
    cap = accept_cap(cfg.max_connections)
    if cap < cfg.max_connections:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        log.warn("{label}: the open-file limit ({soft}) allows only {cap} connections, below "
                 "MAX_CONNECTIONS={n}; raise the limit (ulimit -n, LimitNOFILE=) to use them all",
                 label=label, soft=soft, cap=cap, n=cfg.max_connections)
    return ConnectionGuard(clock, max_total=cap, per_address=cfg.max_connections_per_address,
                           handshake_timeout=cfg.handshake_timeout, label=label)


def _address_key(peer: Any) -> Optional[str]:
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return None  # Unix sockets
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class GuardedProtocol(ProtocolWrapper):
    """The outermost layer of an accepted connection: counts it and keeps its deadline."""

    refused: Optional[str] = None
    _address: Optional[str] = None
    _deadline: Any = None
    _counted = False

    def makeConnection(self, transport: Any) -> None:
        guard: ConnectionGuard = self.factory.guard
        self._address = _address_key(transport.getPeer())
        self.refused = guard.admit(self._address)
        if self.refused is not None:
            self.transport = transport
            self.connected = 1
            transport.abortConnection()
            return
        self._counted = True
        # The guard only counts and times; keep it off the data path: bytes in go straight
        # to the wrapped protocol and bytes out straight to the transport (instance
        # attributes shadow ProtocolWrapper's forwarding methods).
        self.write = transport.write
        self.writeSequence = transport.writeSequence
        super().makeConnection(transport)
        if self._counted:  # not lost during connectionMade
            self.dataReceived = self.wrappedProtocol.dataReceived
            self.arm()

    def arm(self) -> None:
        """Start (or restart) the handshake deadline."""
        guard: ConnectionGuard = self.factory.guard
        self.disarm()
        if guard.handshake_timeout > 0 and self.transport is not None:
            self._deadline = guard.clock.callLater(guard.handshake_timeout, self._expired)

    def disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        guard: ConnectionGuard = self.factory.guard
        guard.note("handshake", f"closed a connection from {self._address or 'the local socket'}: "
                                f"no complete handshake within {guard.handshake_timeout:g} s of accepting it")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused is None:
            self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.disarm()
        if not self._counted:
            return
        self._counted = False
        self.factory.guard.release(self._address)
        super().connectionLost(reason)


class GuardedFactory(WrappingFactory):
    protocol = GuardedProtocol

    def __init__(self, wrapped: Any, guard: ConnectionGuard):
        super().__init__(wrapped)
        self.guard = guard
        self.noisy = False

    def registerProtocol(self, p: Any) -> None:
        pass  # the guard counts; no per-protocol dict needed

    def unregisterProtocol(self, p: Any) -> None:
        pass


def guard_of(transport: Any) -> Optional[GuardedProtocol]:
    """The :class:`GuardedProtocol` under *transport* (a few wrapping layers down), if any."""
    for _ in range(6):
        if transport is None:
            return None
        if isinstance(transport, GuardedProtocol):
            return transport
        transport = transport.__dict__.get("transport")
    return None


def handshake_finished(transport: Any) -> None:
    """The connection on *transport* is established: its handshake deadline stops."""
    guarded = guard_of(transport)
    if guarded is not None:
        guarded.disarm()


def handshake_started(transport: Any) -> None:
    """A new handshake begins on an established connection (HTTP keep-alive)."""
    guarded = guard_of(transport)
    if guarded is not None:
        guarded.arm()


def endpoint_text(spec: str, interface: str) -> str:
    if spec.isdigit():
        escaped = interface.replace(":", "\\:")
        kind = "tcp6" if ":" in interface else "tcp"
        return f"{kind}:{spec}:interface={escaped}"
    return spec


class ListenFailed(SystemExit):
    """A listener could not open its socket at start: the daemon exits 1 with this line."""

    def __init__(self, line: str):
        super().__init__(line)


class Listener(service.Service):
    """Listen on *spec* with *factory* while running; TLS unless *tls* is ``None``."""

    def __init__(self, reactor: Any, spec: str, factory: Any, *, label: str, interface: str = "::",
                 tls: Optional[Any] = None, endpoint: Optional[Any] = None,
                 guard: Optional[ConnectionGuard] = None):
        self.reactor = reactor
        self.spec = spec
        self.label = label
        self.endpoint_description = endpoint_text(spec, interface)
        self.endpoint = endpoint or endpoints.serverFromString(reactor, self.endpoint_description)
        if tls is not None and not self.endpoint_description.startswith("ssl:"):
            factory = TLSMemoryBIOFactory(tls, False, factory)
        if guard is not None:
            factory = GuardedFactory(factory, guard)
        self.guard = guard
        self.factory = factory
        self.port = None
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)

        def listening(port):
            self.port = port
            address = port.getHost()
            where = getattr(address, "port", None)
            if where is None:
                where = getattr(address, "name", address)
                if isinstance(where, bytes):
                    where = where.decode()
            log.info("{label} listening on {host} port {port}", label=self.label,
                     host=getattr(address, "host", "unix"), port=where)
            self.ready.callback(port)
            return port

        problems: list = []

        def failed(failure):
            why = failure.getErrorMessage() if failure.check(CannotListenError, OSError) else repr(failure.value)
            if "Cannot acquire lock" in why:  # Twisted's lock file next to a Unix socket
                why += " (a running daemon serves this socket already)"
            problems.append(f"{self.label} cannot listen on {self.endpoint_description}: {why}")
            if self.reactor.running:  # at start-up the SystemExit below says it, once
                log.critical("{problem}", problem=problems[-1])
            self.ready.errback(failure)
            self.ready.addErrback(lambda _: None)  # said above, once
            # A daemon that cannot open its port must not sit there looking healthy.
            if self.reactor.running:
                self.reactor.stop()

        d.addCallbacks(listening, failed)
        if problems:
            # At start-up (twistd starts the services before the reactor runs, and TCP and
            # Unix endpoints listen at once): end the process with that line and exit 1.
            raise ListenFailed(problems[0])

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
