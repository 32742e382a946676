"""Every bridge link of this server, kept in step with the database.

Links are added and removed at run time through ``rpc/settings`` (which calls
:meth:`BridgeLinks.sync` at once) or by the ``sysadmd`` admin command, whose edits are
noticed by polling SQLite's ``data_version`` every couple of seconds.  A link whose
URL or verify mode changed, or that was added again (which also forgets its pinned
certificate), is restarted.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from sysadmd.bridgelink import key as bridgekey
from sysadmd.bridgelink.link import BridgeLink
from sysadmd.bridgelink.store import BridgeLinkRow, BridgeLinkStore
from sysadmd.runtime.db import data_version

log = Logger()

POLL_INTERVAL = 2.0


def _identity(row: BridgeLinkRow) -> tuple:
    return (row.url, row.verify, row.created)


class BridgeLinks(service.MultiService):
    def __init__(self, server: Any, store: BridgeLinkStore, reactor: Any, *, keys: Optional[Any] = None,
                 poll_interval: float = POLL_INTERVAL, key_login: Optional[Any] = None):
        super().__init__()
        self.server = server
        self.store = store
        self.keys = keys  # the KeyStore each link reports checksums of
        self.key_login = key_login  # KeyLogin: end-to-end bridged sessions log in through it
        self.reactor = reactor
        self.poll_interval = poll_interval
        self.links: Dict[str, BridgeLink] = {}
        self.bridge_key: Optional[Any] = None
        self.fleet: Optional[Any] = None  # FleetAgent: every link is a fleet agent (issue 13)
        self._loop: Optional[task.LoopingCall] = None
        self._version: Optional[int] = None

    def startService(self) -> None:
        super().startService()
        self.bridge_key, created = bridgekey.load_or_create(self.server.state_dir)
        if created:
            log.info("generated the bridge key {path} (export its public key with: sysadmd bridge_export_key FILE)",
                     path=bridgekey.key_path(self.server.state_dir))
        self._version = data_version(self.server.db)
        self.sync()
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = self.reactor
        self._loop.start(self.poll_interval, now=False).addErrback(
            lambda f: log.failure("bridge link watcher stopped", f))

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _poll(self) -> None:
        try:
            version = data_version(self.server.db)
            if version != self._version:
                self._version = version
                self.sync()
            self._push_key_lists()
        except Exception:
            # A busy database must not stop the watcher for good.
            log.failure("checking the bridge links failed; trying again in {interval} s", interval=self.poll_interval)

    def _push_key_lists(self) -> None:
        """Send each connected bridge our registered keys' checksums if they changed
        (keys registered or revoked through the API or the admin command)."""
        checksums = None
        for link in self.links.values():
            protocol = link.protocol
            if protocol is not None and protocol.authenticated:
                if checksums is None:
                    checksums = link.checksums()
                protocol.offer_checksums(checksums)

    def sync(self) -> None:
        """Start links that are new, stop those removed, restart those changed."""
        if not self.running:
            return
        rows = {row.nickname: row for row in self.store.list()}
        for nickname, link in list(self.links.items()):
            row = rows.get(nickname)
            if row is None or _identity(row) != _identity(link.row):
                self._stop(nickname, "removed" if row is None else "changed")
        for nickname, row in rows.items():
            if nickname not in self.links:
                self._start(row)

    def _start(self, row: BridgeLinkRow) -> None:
        link = BridgeLink(self.server, row, self.store, self.bridge_key, self.reactor, keys=self.keys,
                          key_login=self.key_login)
        link.fleet = self.fleet
        self.links[row.nickname] = link
        log.info("bridge {nick}: linking to {url} (verify {verify})", nick=row.nickname, url=row.url, verify=row.verify)
        link.setServiceParent(self)

    def _stop(self, nickname: str, why: str) -> None:
        link = self.links.pop(nickname)
        log.info("bridge {nick}: link {why}, disconnecting", nick=nickname, why=why)
        d = link.disownServiceParent()
        if d is not None:
            d.addErrback(lambda f: log.failure("stopping bridge link {nick} failed", f, nick=nickname))

    def status(self) -> Dict[str, Any]:
        """``{nickname: status}`` for every stored link (running or not yet started)."""
        result = {}
        for row in self.store.list():
            link = self.links.get(row.nickname)
            if link is not None and _identity(link.row) == _identity(row):
                result[row.nickname] = link.status()
            else:
                result[row.nickname] = {"url": row.url, "verify": row.verify, "fingerprint": row.fingerprint,
                                        "connected": False, "authenticated": False, "peers": [],
                                        "last_error": None, "next_retry_in": None}
        return result
