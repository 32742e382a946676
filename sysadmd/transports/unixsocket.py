"""The local Unix socket: the WebSocket protocol without TLS.

The peer's uid (``SO_PEERCRED``) decides its rights at connect time: root or a member
of a full-access group is logged in with full access, a limited-group member with
limited access, anyone else must log in like a remote client.  This replaces
upstream's password-less localhost logins.

The socket file itself is mode 0666: who may reach it is decided by its directory.  The
system daemon's ``/run/sysadmd`` is 0755, so the access groups' members use it without
sudo (and other local users get no more than the TCP port gives them: a login prompt);
a socket in the 0700 state directory is reachable by its owner only.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import endpoints

from sysadmd.auth.rights import user_for_uid
from sysadmd.runtime.listeners import ConnectionGuard, Listener
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
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
        os.chmod(directory, 0o755)  # whatever the umask: local users must reach the socket
    # A larger backlog than the default 50: local tools and tests open bursts of connections.
    endpoint = endpoints.UNIXServerEndpoint(reactor, path, backlog=1024, mode=0o666, wantPID=True)
    return Listener(reactor, f"unix:{path}", factory, label="local socket", endpoint=endpoint, guard=guard)
