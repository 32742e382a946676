"""``rpc/identify`` (no authentication) and ``rpc/query`` (the availability map)."""

from __future__ import annotations

import socket

from sysadmd.api import Api


def route(api: Api) -> None:
    """Route ``rpc/identify`` (public) and ``rpc/query``."""

    def identify(session, request):
        return {"hostname": socket.gethostname(), "type": "server"}

    def query(session, request):
        return api.availability(session.identity)

    api.add("rpc", "identify", identify, public=True, listed=False)
    api.add("rpc", "query", query, listed=False)
