"""The HTTPS site on PORT: WebSocket upgrades go to the WebSocket factory, everything
else is REST.  Any path upgrades (upstream accepts any URL path)."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource, server as web_server

from sysadmd.transports.rest import limit_request_bodies


class SysadmRoot(resource.Resource):
    isLeaf = True

    def __init__(self, ws_factory: Any, rest: resource.Resource):
        super().__init__()
        self.ws = WebSocketResource(ws_factory) if ws_factory is not None else None
        self.rest = rest

    def render(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if self.ws is not None and upgrade == b"websocket":
            return self.ws.render(request)
        return self.rest.render(request)


class QuietSite(web_server.Site):
    """A Site that does not write an access-log line per request (the daemon logs
    connections and logins itself)."""

    def log(self, request):
        pass


def make_site(ws_factory: Any, rest: resource.Resource, *, timeout: float = 60) -> web_server.Site:
    site = QuietSite(SysadmRoot(ws_factory, rest), timeout=timeout)
    site.noisy = False
    site.displayTracebacks = False
    max_body = getattr(rest, "max_body_bytes", None)
    if max_body is not None:
        limit_request_bodies(site, max_body)
    return site
