"""``rpc/settings`` actions for bridge links (ours; upstream had only the CLI).

Wire shapes (args → reply args)::

    {"action":"list_bridges"}   → {"bridges":{NICK:{"url","verify","fingerprint","connected",
                                   "authenticated","peers":[client IDs],"last_error","next_retry_in"}}}
    {"action":"add_bridge","nickname":N,"url":U[,"verify":"none"|"pin"|"ca"]}  → {"bridges":{N:{…}}}
    {"action":"remove_bridge","nickname":N}                                  → {"removed":N}

Listing needs any login; adding and removing need full access (403).  Changes take
effect at once: an added link starts dialing, a removed one disconnects.
"""

from __future__ import annotations

from typing import Any, Dict

from sysadmd.api import require_full_access
from sysadmd.bridgelink.links import BridgeLinks
from sysadmd.bridgelink.store import DEFAULT_VERIFY, BridgeLinkError, BridgeLinkStore
from sysadmd.wire.envelope import ApiError
from sysadmd.session import Session


def _field(args: Dict[str, Any], name: str, expected: str, required: bool = True) -> Any:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError("400", f"'{name}' is required: {expected}")
    return value


def add_actions(actions: Any, server: Any, links: BridgeLinks, store: BridgeLinkStore) -> None:
    """Add the bridge-link actions to *actions* (a :class:`sysadmd.rpc.settings.SettingsActions`);
    *server* is the server state, for its log."""

    def list_bridges(session: Session, args: Dict[str, Any]) -> dict:
        return {"bridges": links.status()}

    def add_bridge(session: Session, args: Dict[str, Any]) -> dict:
        identity = require_full_access(session, "adding a bridge link")
        nickname = _field(args, "nickname", "a name for the link (1-64 characters from A-Z a-z 0-9 _ . @ : -)")
        url = _field(args, "url", "the bridge address, e.g. bridge.example.org or wss://host:12149")
        verify = _field(args, "verify", "one of none, pin, ca", required=False) or DEFAULT_VERIFY
        try:
            row = store.add(nickname, url, verify)
        except BridgeLinkError as e:
            raise ApiError("400", str(e)) from None
        server.logs.hostinfo(f"Bridge Link Added: {row.nickname} {row.url} verify={row.verify}   By: {identity.user}")
        links.sync()
        return {"bridges": {row.nickname: links.status()[row.nickname]}}

    def remove_bridge(session: Session, args: Dict[str, Any]) -> dict:
        identity = require_full_access(session, "removing a bridge link")
        nickname = _field(args, "nickname", "the nickname of a link (see list_bridges)")
        if not store.remove(nickname):
            known = ", ".join(row.nickname for row in store.list()) or "none"
            raise ApiError("400", f"no bridge link named {nickname[:64]!r} (links: {known})")
        server.logs.hostinfo(f"Bridge Link Removed: {nickname}   By: {identity.user}")
        links.sync()
        return {"removed": nickname}

    actions.add("list_bridges", list_bridges)
    actions.add("add_bridge", add_bridge)
    actions.add("remove_bridge", remove_bridge)
