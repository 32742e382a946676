"""Listening sockets as services, from port numbers or Twisted endpoint strings.

A bare port number listens on ``LISTEN_INTERFACE``; an endpoint string is used as
given.  TLS is wrapped around every TCP listener here (``ssl:`` strings bring their own).
Each listener logs one ``listening`` line with the real address once it is bound, which
operators, the smoke tests and the benchmarks read.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

log = Logger()


def endpoint_text(spec: str, interface: str) -> str:
    if spec.isdigit():
        escaped = interface.replace(":", "\\:")
        kind = "tcp6" if ":" in interface else "tcp"
        return f"{kind}:{spec}:interface={escaped}"
    return spec


class Listener(service.Service):
    """Listen on *spec* with *factory* while running; TLS unless *tls* is ``None``."""

    def __init__(self, reactor: Any, spec: str, factory: Any, *, label: str, interface: str = "::",
                 tls: Optional[Any] = None, endpoint: Optional[Any] = None):
        self.reactor = reactor
        self.spec = spec
        self.label = label
        self.endpoint_description = endpoint_text(spec, interface)
        self.endpoint = endpoint or endpoints.serverFromString(reactor, self.endpoint_description)
        if tls is not None and not self.endpoint_description.startswith("ssl:"):
            factory = TLSMemoryBIOFactory(tls, False, factory)
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

        def failed(failure):
            log.failure("{label} could not listen on {spec}", failure, label=self.label, spec=self.endpoint_description)
            self.ready.errback(failure)
            # A daemon that cannot open its port must not sit there looking healthy.
            if self.reactor.running:
                self.reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
