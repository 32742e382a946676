"""Pairing and routing: the bridge's core, pure Python (no reactor, no WebSockets).

A :class:`Peer` is one connection (a sysadm server or a client).  The
:class:`PeerDirectory` pairs every *authenticated* server with every *authenticated*
client whose reported key checksums (``list_ssl_checksums``) share at least one entry,
tells each authenticated peer its partners in an ``available_connections`` event
whenever that list changes (pairing, key-list change, disconnect, revocation; always
the whole list, sorted), and routes relay frames between partners only.

A client is paired only on the key it proved to the bridge (plus the keys the
administrator vouched for at import, ``--pairs-with``): the checksums it reports are cut
down to those, so nobody pairs with a server by claiming somebody else's key.  Upstream
trusted the reported list, which let a tenant relay a victim's login (issue 7 item 2).

Upstream also counted unauthenticated peers, relayed to any ID and never announced
disconnects; all three are fixed here (docs/protocol.md §9).  Each peer reaches its transport
through a small :class:`PeerLink` interface, so the tests drive this module with fakes.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Protocol, Set, Tuple

from twisted.logger import Logger

from sysadmd.wire.envelope import encode, event

log = Logger()

SERVER = "server"
CLIENT = "client"


class PeerLink(Protocol):
    """What the core needs from a connection."""

    def send_text(self, text: str) -> None:
        """Send one text frame (API replies, announcements)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection; the transport later calls :meth:`PeerDirectory.remove`."""


def new_peer_id() -> str:
    """Upstream's connection ID form, ``::{uuid}``: random and new on every connection."""
    return "::{" + str(uuid.uuid4()) + "}"


def announcement(ids: Iterable[str]) -> str:
    """The ``bridge`` event text: ``{"args":{"available_connections":[…]},…}``."""
    return encode(event("bridge", {"available_connections": list(ids)}))


def role_from_identify(kind: object) -> str:
    """Upstream's rule: ``type == "server"`` makes a server, anything else a client."""
    return SERVER if kind == SERVER else CLIENT


@dataclass(eq=False)
class Peer:
    id: str
    link: PeerLink
    address: str = ""
    role: Optional[str] = None
    authenticated: bool = False
    key_nickname: Optional[str] = None
    key_md5: Optional[str] = None
    md5s: FrozenSet[str] = frozenset()
    provable: FrozenSet[str] = frozenset()  # checksums a client proved it holds
    keys_reported: bool = False
    partners: Set[str] = field(default_factory=set)
    announced: Optional[Tuple[str, ...]] = None
    id_bytes: bytes = field(init=False, default=b"")  # the ID in front of the frames it sends (UTF-8)

    def __post_init__(self) -> None:
        self.id_bytes = self.id.encode("utf-8")

    def available(self) -> List[str]:
        return sorted(self.partners)

    def __repr__(self) -> str:
        state = "auth" if self.authenticated else "unauth"
        return f"<Peer {self.id} {self.role or '?'} {state} {self.address}>"


class PeerDirectory:
    """Every connected peer, the pairing between them and the routing rule."""

    def __init__(self) -> None:
        self.peers: Dict[str, Peer] = {}
        # md5 -> authenticated peers (with a role) that reported it
        self._by_md5: Dict[str, Set[Peer]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self.peers)

    def get(self, peer_id: str) -> Optional[Peer]:
        return self.peers.get(peer_id)

    def authenticated(self) -> List[Peer]:
        return [p for p in self.peers.values() if p.authenticated]

    def with_key(self, nickname: str) -> List[Peer]:
        return [p for p in self.peers.values() if p.authenticated and p.key_nickname == nickname]

    # --- life cycle --------------------------------------------------------------------
    def add(self, peer: Peer) -> None:
        if peer.id in self.peers:
            raise ValueError(f"peer ID {peer.id} is already connected")
        self.peers[peer.id] = peer

    def set_role(self, peer: Peer, role: str) -> bool:
        """Set the role from the identify reply; ``False`` once authenticated (role locked)."""
        if peer.authenticated:
            return peer.role == role
        peer.role = role
        return True

    def authenticate(self, peer: Peer, key_nickname: str, key_md5: str, role: str,
                     proven: Optional[Iterable[str]] = None) -> None:
        """Mark *peer* authenticated with the registered key *key_nickname*, as *role*.

        *proven*: the checksums a client may be paired on (default: its key's own); the
        list it reports later is cut down to these.
        """
        allowed = frozenset(proven) if proven is not None else frozenset((key_md5,))
        self._change(peer, lambda: self._set_auth(peer, key_nickname, key_md5, role, allowed))

    def set_keys(self, peer: Peer, md5s: Iterable[str]) -> None:
        """Record the peer's ``list_ssl_checksums`` reply (authenticated peers only)."""
        if not peer.authenticated:
            raise ValueError("key lists are accepted from authenticated peers only")
        new = frozenset(md5s)
        if peer.role == CLIENT:
            # A client is paired only on keys it proved to us (the bridge challenge);
            # what it claims beyond that is dropped.  A server's list is the keys
            # registered on it: that is the pairing itself, and stays as reported.
            claimed = new
            new = claimed & peer.provable
            if claimed - new:
                log.info("{peer}: ignored {n} checksum(s) the client reported for keys it did not prove to the bridge",
                         peer=peer.id, n=len(claimed - new))

        def apply() -> None:
            # The first list always gets an answer, even an empty one (``announced`` is
            # still None): it tells the peer that pairing is done; upstream stayed silent.
            peer.md5s = new
            peer.keys_reported = True

        self._change(peer, apply)

    def remove(self, peer: Peer) -> None:
        """Forget a closed connection and tell its former partners."""
        if self.peers.get(peer.id) is not peer:
            return
        former = set(peer.partners)
        self._unindex(peer)
        del self.peers[peer.id]
        peer.partners = set()
        peer.authenticated = False
        for partner_id in sorted(former):
            partner = self.peers.get(partner_id)
            if partner is not None:
                self._refresh(partner)

    # --- routing -----------------------------------------------------------------------
    def route(self, source: Peer, frame: str) -> Optional[Tuple[Peer, str]]:
        """``"<dest>\\n<payload>"`` → ``(dest, "<source>\\n<payload>")`` between partners
        (:meth:`relay` on text)."""
        routed = self.relay(source, frame.encode("utf-8", "surrogatepass"))
        if routed is None:
            return None
        dest, out = routed
        return dest, out.decode("utf-8", "surrogatepass")

    def relay(self, source: Peer, frame: bytes) -> Optional[Tuple[Peer, bytes]]:
        """``b"<dest>\\n<payload>"`` → ``(dest, b"<source>\\n<payload>")`` between partners.

        The payload is not looked at (the caller has checked that the frame is UTF-8).
        Anything else (no newline, unknown ID, a peer that is not a partner) is dropped
        and the sender gets its current ``available_connections`` again, so it learns
        the ID is gone instead of waiting for an answer that cannot come.
        """
        newline = frame.find(b"\n")
        if newline > 0 and source.authenticated:
            # IDs are ASCII: a destination with other bytes matches none (latin-1 never fails).
            dest = self.peers.get(frame[:newline].decode("latin-1"))
            if dest is not None and dest.id in source.partners:
                return dest, source.id_bytes + frame[newline:]
        if source.authenticated:
            self._announce(source, force=True)
        return None

    # --- pairing -----------------------------------------------------------------------
    def _set_auth(self, peer: Peer, key_nickname: str, key_md5: str, role: str, provable: FrozenSet[str]) -> None:
        peer.authenticated = True
        peer.role = role
        peer.key_nickname = key_nickname
        peer.key_md5 = key_md5
        peer.provable = provable
        if role == CLIENT:
            peer.md5s = peer.md5s & provable

    def _change(self, peer: Peer, apply) -> None:
        former = set(peer.partners)
        self._unindex(peer)
        apply()
        self._index(peer)
        self._refresh(peer)
        for partner_id in sorted(former | peer.partners):
            partner = self.peers.get(partner_id)
            if partner is not None and partner is not peer:
                self._refresh(partner)

    def _index(self, peer: Peer) -> None:
        if peer.authenticated and peer.role is not None and peer.id in self.peers:
            for md5 in peer.md5s:
                self._by_md5[md5].add(peer)

    def _unindex(self, peer: Peer) -> None:
        for md5 in peer.md5s:
            members = self._by_md5.get(md5)
            if members is not None:
                members.discard(peer)
                if not members:
                    del self._by_md5[md5]

    def _partners_of(self, peer: Peer) -> Set[str]:
        if not peer.authenticated or peer.role is None or peer.id not in self.peers:
            return set()
        found: Set[str] = set()
        for md5 in peer.md5s:
            for other in self._by_md5.get(md5, ()):
                if other is not peer and other.role != peer.role:
                    found.add(other.id)
        return found

    def _refresh(self, peer: Peer) -> None:
        peer.partners = self._partners_of(peer)
        self._announce(peer)

    def _announce(self, peer: Peer, force: bool = False) -> None:
        if not peer.authenticated or not (peer.keys_reported or force):
            return
        ids = tuple(peer.available())
        if force or ids != peer.announced:
            peer.announced = ids
            peer.link.send_text(announcement(ids))
