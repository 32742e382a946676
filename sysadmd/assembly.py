"""Build the sysadmd service tree from a :class:`~sysadmd.config.Config`.

Used by ``twistd`` (through :mod:`sysadmd.tap`) and by the tests, which build a real
daemon in-process on loopback ports.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger

from sysadmd import bridgelink, dispatcher, tls
from sysadmd.config import Config
from sysadmd import migrations
from sysadmd.db import database_path, open_database
from sysadmd.events import subscriptions as event_subscriptions
from sysadmd.jobs import rpc as jobs_rpc
from sysadmd.listeners import Listener, guard_for
from sysadmd.rpc import logs as rpc_logs
from sysadmd.rpc import keyauth
from sysadmd.server import Server
from sysadmd.startup import tls_files
from sysadmd.transfers import backup as transfers_backup
from sysadmd.transfers import service as transfers_service
from sysadmd.transfers import wsapi as transfers_wsapi
from sysadmd.statedir import ensure_private_dir
from sysadmd.transports.rest import RestResource
from sysadmd.transports.site import make_site
from sysadmd.transports.unixsocket import make_unix_listener
from sysadmd.transports.websocket import SysadmServerFactory

log = Logger()


class Daemon(service.MultiService):
    """The whole daemon: the server state, its subsystems and its listeners."""

    def __init__(self, server: Server):
        super().__init__()
        self.server = server
        self.listeners = {}

    def add_listener(self, name: str, listener: Listener) -> None:
        self.listeners[name] = listener
        listener.setServiceParent(self)


def build(cfg: Config, reactor: Any, **server_kwargs: Any) -> Daemon:
    ensure_private_dir(cfg.state_dir)
    # A restore staged by config.upload (issue 10, helper G) is applied before the database opens.
    restored = transfers_backup.apply_pending(cfg.state_dir, getattr(cfg, "source", "") or "")
    if restored:
        log.info("applied the restore staged by config.upload; the replaced files are in {path}", path=restored)
    db = open_database(database_path(cfg.state_dir), migrations.SCHEMA)
    server = Server(cfg, db, reactor, **server_kwargs)
    daemon = Daemon(server)
    server.setServiceParent(daemon)
    install_subsystems(server, reactor)

    guard = guard_for(cfg, reactor, "sysadmd")  # connection limits shared by every listener
    if not cfg.bridge_connections_only:
        cert, key = tls_files(cfg, "server")
        context = tls.server_context(cert, key)
        ws_factory = SysadmServerFactory(server, "wss", reactor=reactor)
        rest = RestResource(server)
        daemon.add_listener("wss", Listener(reactor, cfg.port, make_site(ws_factory, rest), label="sysadmd wss+https",
                                            interface=cfg.listen_interface, tls=context, guard=guard))
        if cfg.port_rest:
            daemon.add_listener("rest", Listener(reactor, cfg.port_rest, make_site(None, RestResource(server)), label="sysadmd rest",
                                                 interface=cfg.listen_interface, tls=context, guard=guard))
    else:
        log.info("BRIDGE_CONNECTIONS_ONLY=true: no TCP listener")
    if cfg.socket:
        daemon.add_listener("unix", make_unix_listener(server, reactor, cfg.socket, guard=guard))
    return daemon


def install_subsystems(server: Server, reactor: Any) -> None:
    """Attach the subsystems (settings, dispatcher, events, logs, bridge links)."""
    # --- the job table and core/* (issue 10, helper D): built first, the dispatcher writes into it.
    jobs = jobs_rpc.install(server, reactor)
    jobs.dispatcher = dispatcher.install(server, reactor, jobs=jobs.table)
    transfers = transfers_service.install(server, reactor, jobs.table)  # core/download, /_download, /_upload (helper G)
    transfers_wsapi.install(server, reactor, transfers)  # core/upload_*, core/download_* in chunks (helper wsxfer)
    event_subscriptions.install(server)
    rpc_logs.install(server)
    keyauth.install(server)
    bridgelink.install(server, reactor)
