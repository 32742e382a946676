"""Attach the bridge links to a :class:`~sysadmd.server.Server`: the link table, the
service that keeps one reconnecting connection per link, and the ``rpc/settings``
actions ``list_bridges``, ``add_bridge`` and ``remove_bridge``."""

from __future__ import annotations

from typing import Any

from sysadmd.bridgelink import settings
from sysadmd.bridgelink.links import BridgeLinks
from sysadmd.bridgelink.store import BridgeLinkStore


def install(server: Any, reactor: Any) -> BridgeLinks:
    store = BridgeLinkStore(server.db, clock=reactor)
    links = BridgeLinks(server, store, reactor)
    links.setServiceParent(server)
    server.subsystems["bridge_links"] = links
    settings.install(server, links, store)
    return links
