"""The HTTPS site on PORT: WebSocket upgrades go to the WebSocket factory, everything
else is REST, but for the web console's ``/`` and ``/console/…`` when it is on
(:mod:`sysadmd.console.site`).  Any path upgrades (upstream accepts any URL path), except ``/websocket``:
upgrades there speak the seed's wire (:mod:`sysadmd.transports.seedws`).

Its HTTP channel (:class:`SysadmHTTPChannel`) adds two limits to twisted.web's:

* the connection guard's handshake deadline (:mod:`sysadmd.runtime.listeners`) runs until a
  request has been received whole, and again from the end of each request to the next
  one on a kept-alive connection, so trickled bytes cannot hold a connection;
* a request or header line over 16 KiB is answered ``431 Request Header Fields Too
  Large`` and the connection closed (twisted.web dropped it without an answer).
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http, resource, server as web_server

from sysadmd.runtime.listeners import handshake_finished, handshake_started
from sysadmd.transports.seedws import PATH as SEED_PATH, SeedServerFactory
from sysadmd.transfers.web import TransferRequest, TransferResource, is_transfer_path
from sysadmd.transports.rest import limit_request_bodies

TOO_LARGE_HEAD = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 44\r\nConnection: close\r\n\r\n"
                  b"request or header line longer than 16384 B.\n")


class SysadmRoot(resource.Resource):
    isLeaf = True

    def __init__(self, ws_factory: Any, rest: resource.Resource, console: Optional[Any] = None):
        super().__init__()
        self.console = console  # the web console's files (sysadmd.console.site), or None
        self.ws = WebSocketResource(ws_factory) if ws_factory is not None else None
        # The seed's wire on /websocket, next to ours (one registration, here).
        self.seed_factory = (SeedServerFactory(ws_factory.app, reactor=ws_factory.reactor)
                             if ws_factory is not None else None)
        self.seed = WebSocketResource(self.seed_factory) if self.seed_factory is not None else None
        self.rest = rest
        self.transfers: Any = None  # /_download/<id> and /_upload (issue 10, helper G; see make_site)

    def render(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if self.ws is not None and upgrade == b"websocket":
            if self.seed is not None and request.path == SEED_PATH:
                return self.seed.render(request)
            return self.ws.render(request)
        if self.transfers is not None and is_transfer_path(request.path):
            return self.transfers.render(request)
        if self.console is not None and self.console.serves(request.path):
            return self.console.render(request)
        return self.rest.render(request)


class SysadmHTTPChannel(http.HTTPChannel):
    MAX_LENGTH = 16 * 1024  # one request or header line (twisted.web's default too)

    def allContentReceived(self) -> None:
        if self.transport is not None:
            handshake_finished(self.transport)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.transport is not None and self.persistent:
            handshake_started(self.transport)  # the next request has the same deadline
        super().requestDone(request)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.transport is None:
            return
        self.transport.write(TOO_LARGE_HEAD)
        self.dataReceived = lambda data: None  # ignore the rest of the request
        self.loseConnection()


class QuietSite(web_server.Site):
    """A Site that does not write an access-log line per request (the daemon logs
    connections and logins itself)."""

    protocol = SysadmHTTPChannel

    def log(self, request):
        pass


def make_site(ws_factory: Any, rest: resource.Resource, *, timeout: float = 60,
              transfers: Any = None, console: Optional[Any] = None) -> web_server.Site:
    site = QuietSite(SysadmRoot(ws_factory, rest, console), timeout=timeout)
    site.noisy = False
    site.displayTracebacks = False
    max_body = getattr(rest, "max_body_bytes", None)
    if max_body is not None:
        limit_request_bodies(site, max_body)
    # --- transfers (issue 10 items 5-6, helper G): GET /_download/<id>, POST /_upload; the
    # request class streams upload bodies to the spool instead of memory.
    if transfers is not None:
        site.resource.transfers = TransferResource(transfers)
        site.requestFactory = TransferRequest
        site.transfers = transfers
    return site
