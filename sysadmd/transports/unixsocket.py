"""The local Unix socket: the WebSocket protocol without TLS, mode 0600.

The peer's uid (``SO_PEERCRED``) decides its rights at connect time: root or a member
of a full-access group is logged in with full access, a limited-group member with
limited access, anyone else must log in like a remote client.  This replaces
upstream's password-less localhost logins.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import endpoints

from sysadmd.auth.rights import user_for_uid
from sysadmd.listeners import ConnectionGuard, Listener
from sysadmd.session import Identity
from sysadmd.transports.websocket import SysadmServerFactory, unix_peer_credentials


def make_unix_listener(server: Any, reactor: Any, path: str, guard: Optional[ConnectionGuard] = None) -> Listener:
    def identify_peer(protocol):
        pid, uid, gid = unix_peer_credentials(protocol)
        full = server.rights.for_uid(uid)
        user = user_for_uid(uid)
        identity = None if full is None else Identity(user, full, "peer-uid")
        return f"uid:{uid}({user})", identity

    factory = SysadmServerFactory(server, "unix", reactor=reactor, identify_peer=identify_peer)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # A larger backlog than the default 50: local tools and tests open bursts of connections.
    endpoint = endpoints.UNIXServerEndpoint(reactor, path, backlog=1024, mode=0o600, wantPID=True)
    return Listener(reactor, f"unix:{path}", factory, label="local socket", endpoint=endpoint, guard=guard)
