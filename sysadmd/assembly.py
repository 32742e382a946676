"""Build the sysadmd service tree from a :class:`~sysadmd.config.Config`: the one place
that constructs every part, hands each its collaborators and registers the routes.

Read top to bottom, :func:`build` is the whole daemon::

    Daemon (MultiService)
    └── Server: sessions and logins                                  build_server
        ├─ TokenStore, Rights, passwords (PAM), SessionRegistry
        ├─ LogStore, Blacklist (on_block → Server.blocked), FairCheckQueue
        ├─ EventHub with DAEMON_EVENT_TYPES registered (their logs in the LogStore)
        ├─ Api router: rpc/identify, rpc/query, rpc/auth, auth_token, auth_clear
        ├─ Dispatcher (JobStore) → rpc/dispatcher                    add_dispatcher
        ├─ events/subscribe|unsubscribe, SystemStateService,
        │  LifePreserverWatcher                                      add_event_producers
        ├─ LogRetention → rpc/logs                                   add_logs
        ├─ SettingsActions → rpc/settings                            add_settings
        ├─ KeyStore, SignatureChecker, KeyLogin → rpc/auth_ssl,
        │  key actions, RevokedKeyWatcher                            add_key_login
        ├─ BridgeLinks (BridgeLinkStore, KeyStore) → bridge actions  add_bridge_links
        ├─ sysadm/* classes available on this host (HostReadings)  add_sysadm_classes
        └─ sysadm/pkg, sysadm/update (apt; jobs in pkg_queue)       add_package_classes
    └── listeners: wss+https, rest, unix socket                      add_listeners
    └── the supervisor's ;; wire: 127.0.0.1:7777 + its socket        add_supervisor_wire

Every part is also an attribute of the :class:`Daemon` (``daemon.dispatcher``,
``daemon.keys``…): subsystems reach each other through constructor arguments, never
by name.  Used by ``twistd`` (through :mod:`sysadmd.tap`) and by the tests, which build
a real daemon in-process on loopback ports, or only its server state on a Clock
(:func:`build_server`, :func:`add_key_login`).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Optional, Sequence, Tuple

from twisted.application import service
from twisted.logger import Logger

from sysadmd import migrations
from sysadmd.runtime import tls
from sysadmd.api import Api
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.auth.keys import KeyStore, SignatureChecker
from sysadmd.auth.passwords import FairCheckQueue, PamPasswordChecker
from sysadmd.auth.revocation import RevokedKeyWatcher
from sysadmd.auth.rights import Rights
from sysadmd.auth.tokens import TokenStore
from sysadmd.bridgelink import settings as bridge_settings
from sysadmd.bridgelink.fleet import FleetAgent
from sysadmd.bridgelink.links import BridgeLinks
from sysadmd.bridgelink.store import BridgeLinkStore
from sysadmd.config import Config
from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher import rpc as dispatcher_rpc
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from sysadmd.wire.envelope import encode
from sysadmd.events import subscriptions
from sysadmd.events.hub import DAEMON_EVENT_TYPES, EventHub, EventType
from sysadmd.events.lifepreserver import LifePreserverWatcher
from sysadmd.events.systemstate import SystemStateService, Thresholds, ZpoolReader
from sysadmd.runtime.listeners import Listener, guard_for
from sysadmd.logstore import LogRetention, LogStore
from sysadmd.rpc import basic, keyauth, login
from sysadmd.jobs import rpc as jobs_rpc
from sysadmd.jobs.service import JobsService
from sysadmd.jobs.store import JobTable
from sysadmd.rpc import logs as rpc_logs
from sysadmd.rpc import settings as rpc_settings
from sysadmd.rpc.settings import SettingsActions
from sysadmd.server import Server
from sysadmd.session import SessionRegistry
from sysadmd.runtime.startup import tls_files
from sysadmd.runtime.statedir import ensure_private_dir
from sysadmd.supervisor import seedwire
from sysadmd.sysclasses import fs as sys_fs
from sysadmd.sysclasses import network as sys_network
from sysadmd.sysclasses import pkg as sys_pkg
from sysadmd.sysclasses import update as sys_update
from sysadmd.sysclasses import services as sys_services
from sysadmd.sysclasses import users as sys_users
from sysadmd.sysclasses import systemmanager as sys_systemmanager
from sysadmd.sysclasses import firewall as sys_firewall
from sysadmd.sysclasses import zfs as sys_zfs
from sysadmd.sysclasses.readings import HostReadings
from sysadmd.transfers import backup as transfers_backup
from sysadmd.transfers import service as transfers_service
from sysadmd.transfers import wsapi as transfers_wsapi
from sysadmd.supervisor import rpc as supervisor_rpc
from sysadmd.supervisor.core import Supervisor
from sysadmd.supervisor.services import SupervisorBackend
from sysadmd.supervisor.spawn import ProgramRunner
from sysadmd.supervisor.store import ProgramStore
from sysadmd.transports.rest import RestResource
from sysadmd.transports.site import make_site
from sysadmd.console.site import ConsoleResource, bridge_origin
from sysadmd.transports.unixsocket import make_unix_listener
from sysadmd.transports.websocket import SysadmServerFactory

log = Logger()

class Daemon(service.MultiService):
    """The whole daemon: the server state, every subsystem by name, the listeners."""

    def __init__(self, server: Server):
        super().__init__()
        self.server = server
        self.listeners: Dict[str, Listener] = {}
        self.jobs: Optional[JobsService] = None
        self.dispatcher: Optional[Dispatcher] = None
        self.transfers: Optional[transfers_service.TransferService] = None
        self.chunk_transfers: Optional[transfers_wsapi.WsTransfers] = None
        self.system_state: Optional[SystemStateService] = None
        self.life_preserver: Optional[LifePreserverWatcher] = None
        self.log_retention: Optional[LogRetention] = None
        self.settings: Optional[SettingsActions] = None
        self.keys: Optional[KeyStore] = None
        self.key_login: Optional[keyauth.KeyLogin] = None
        self.bridge_links: Optional[BridgeLinks] = None
        self.fleet_agent: Optional[FleetAgent] = None
        self.sysclasses: Dict[str, Any] = {}  # sysadm/<class> name -> its actions object
        self.supervisor: Optional[Supervisor] = None

    def add_listener(self, name: str, listener: Listener) -> None:
        self.listeners[name] = listener
        listener.setServiceParent(self)


def build(cfg: Config, reactor: Any, *, passwords: Optional[Any] = None,
          event_types: Optional[Sequence[EventType]] = None) -> Daemon:
    """The whole daemon (not started).  *passwords* replaces PAM (tests); *event_types*
    replaces the event vocabulary (:data:`sysadmd.events.hub.DAEMON_EVENT_TYPES`)."""
    ensure_private_dir(cfg.state_dir)
    # A restore staged by config.upload (issue 10, helper G) is applied before the database opens.
    restored = transfers_backup.apply_pending(cfg.state_dir, getattr(cfg, "source", "") or "")
    if restored:
        log.info("applied the restore staged by config.upload; the replaced files are in {path}", path=restored)
    db = open_database(database_path(cfg.state_dir), migrations.SCHEMA)
    server = build_server(cfg, db, reactor, passwords=passwords, event_types=event_types)
    daemon = Daemon(server)
    server.setServiceParent(daemon)
    # The order below is the order the subsystems start in (and the reverse of their stop).
    daemon.jobs = add_jobs(server)  # before the dispatcher, whose jobs are rows of its table
    daemon.dispatcher = add_dispatcher(server, daemon.jobs)
    daemon.transfers, daemon.chunk_transfers = add_transfers(server, daemon.jobs)
    daemon.system_state, daemon.life_preserver = add_event_producers(server)
    daemon.log_retention = add_logs(server)
    daemon.settings = add_settings(server)
    daemon.keys, daemon.key_login = add_key_login(server, daemon.settings)
    daemon.bridge_links = add_bridge_links(server, daemon.key_login, daemon.settings)
    daemon.sysclasses = add_sysadm_classes(server)  # sysadm/* classes this host has a backend for
    daemon.sysclasses.update(add_package_classes(server, daemon.dispatcher))  # their changes are dispatcher jobs
    daemon.fleet_agent = add_fleet_agent(server, daemon.jobs, daemon.keys, daemon.bridge_links)  # fleet (issue 13)
    daemon.supervisor = add_supervisor(server, daemon.jobs, daemon.sysclasses.get("services"))  # issue 11
    add_listeners(daemon)
    daemon.supervisor_wire = add_supervisor_wire(daemon)  # S2: the seed's wire on 7777 (issue 11)
    return daemon


def build_server(cfg: Config, db: sqlite3.Connection, reactor: Any, *, passwords: Optional[Any] = None,
                 event_types: Optional[Sequence[EventType]] = None) -> Server:
    """The server state with its stores, its event vocabulary (each type registered
    once: subscribable, cached or not, logged) and the login routes."""
    tokens = TokenStore(reactor, cfg.token_ttl, cfg.token_max_lifetime)
    rights = Rights(cfg.full_access_groups, cfg.limited_access_groups, clock=reactor,
                    cache_seconds=cfg.rights_cache_seconds)
    sessions = SessionRegistry()
    logs = LogStore(db, reactor)
    blacklist = Blacklist(db, reactor, limit=cfg.blacklist_auth_fail_limit,
                          reset_minutes=cfg.blacklist_auth_fail_reset_minutes,
                          block_minutes=cfg.blacklist_block_minutes, exempt_loopback=cfg.blacklist_exempt_loopback)
    password_checks = FairCheckQueue(cfg.password_check_workers, cfg.password_checks_per_address,
                                     budget=blacklist.remaining)
    api = Api(tokens, pending_limits=(cfg.auth_pending_max_requests, cfg.auth_pending_max_bytes))
    events = EventHub(sessions, logs)
    for kind in (DAEMON_EVENT_TYPES if event_types is None else event_types):
        events.register(kind)
    server = Server(cfg, db, reactor, tokens=tokens, rights=rights,
                    passwords=passwords or PamPasswordChecker(reactor, cfg.pam_service),
                    sessions=sessions, logs=logs, blacklist=blacklist, password_checks=password_checks,
                    api=api, events=events)
    blacklist.on_block = server.blocked  # drop its queued checks, close its connections
    api.login_gate = server.login_gate
    api.recheck = server.recheck_rights
    api.on_logout = server.end_subscriptions
    basic.route(api)
    login.route(api, server)
    return server


def add_jobs(server: Server) -> JobsService:
    """The job table every long-running piece of work is a row of, its service (events,
    waiters, log followers, retention) and ``core/*``."""
    table = JobTable(server.db, server.state_dir, server.reactor)
    publish = server.events.publisher("jobs")
    jobs = JobsService(table, server.reactor, lambda name, args: publish(args, store=False),
                       server.events.subscriber_count, retention_days=server.config.job_retention_days,
                       max_bytes=server.config.job_store_max_bytes)
    jobs.setServiceParent(server)
    jobs_rpc.route(server.api, jobs_rpc.CoreApi(jobs))
    return jobs


def add_dispatcher(server: Server, jobs: JobsService) -> Dispatcher:
    """The job dispatcher (a child service of *server*) and ``rpc/dispatcher``; its jobs
    are rows of the job table too."""
    store = JobStore(server.db, server.state_dir, jobs.table)
    publish = server.events.publisher("dispatcher")
    dispatcher = Dispatcher(
        server.config, store, server.reactor,
        publish=lambda args, keep: publish(args, store=keep),
        finished_log_sink=lambda event: server.logs.append("dispatcher", encode(event)),
        on_progress=jobs.dispatcher_progress,  # SYSADM_PROGRESS_FD lines → the job's row and jobs events
    )
    dispatcher.setServiceParent(server)
    jobs.dispatcher = dispatcher  # core/job_abort of a dispatcher job kills it there
    dispatcher_rpc.route(server.api, dispatcher_rpc.DispatcherApi(server, dispatcher))
    return dispatcher


def add_transfers(server: Server, jobs: JobsService) -> Tuple[transfers_service.TransferService,
                                                               transfers_wsapi.WsTransfers]:
    """File transfers as jobs: ``core/download``, and ``core/upload_*`` / ``core/download_*``
    in chunks over the API (so through a bridge too); the HTTPS site serves
    ``/_download/<id>`` and ``/_upload`` with it (:func:`add_listeners`)."""
    transfers = transfers_service.TransferService(server, jobs.table, server.reactor)
    transfers.setServiceParent(server)
    transfers_service.route(server.api, transfers)
    chunks = transfers_wsapi.WsTransfers(transfers, server.reactor)  # the same, in chunks over the API
    chunks.setServiceParent(server)
    transfers_wsapi.route(server.api, chunks)
    return transfers, chunks


def add_event_producers(server: Server) -> Tuple[SystemStateService, LifePreserverWatcher]:
    """``events/subscribe|unsubscribe`` and the services that publish system events."""
    hub, reactor = server.events, server.reactor
    subscriptions.route(server.api, hub)
    state = SystemStateService(
        hub.publisher("system-state"), reactor,
        interval=server.config.system_state_interval,
        thresholds=Thresholds.from_config(server.config),
        zpools=ZpoolReader.if_installed(reactor),
    )
    state.setServiceParent(server)
    life_preserver = LifePreserverWatcher(hub.publisher("life-preserver"), reactor)
    life_preserver.setServiceParent(server)
    return state, life_preserver


def add_logs(server: Server) -> LogRetention:
    """``rpc/logs`` and the pruning of entries older than LOG_RETENTION_DAYS."""
    rpc_logs.route(server.api, server.logs, server.reactor)
    retention = LogRetention(server.logs, server.reactor, server.config.log_retention_days)
    retention.setServiceParent(server)
    return retention


def add_settings(server: Server) -> SettingsActions:
    """``rpc/settings``; subsystems add their actions to the table returned."""
    actions = SettingsActions()
    rpc_settings.route(server.api, actions)
    return actions


def add_key_login(server: Server, settings: SettingsActions) -> Tuple[KeyStore, keyauth.KeyLogin]:
    """Key logins (``rpc/auth_ssl``), the key actions of ``rpc/settings`` and the watcher
    that ends the logins of keys revoked elsewhere."""
    config = server.config
    keys = KeyStore(server.db, clock=server.clock)
    checker = SignatureChecker(keyauth.thread_reactor(server.reactor), threads=config.key_check_threads,
                               cache_size=max(4096, 2 * config.key_login_max_tried))
    checker.setServiceParent(server)
    key_login = keyauth.KeyLogin(server, keys, checker, keyauth.ExchangeKey(server.state_dir))
    keyauth.route(server.api, key_login)
    rpc_settings.add_key_actions(settings, server, keys)
    RevokedKeyWatcher(server, keys, server.clock).setServiceParent(server)
    return keys, key_login


def add_bridge_links(server: Server, key_login: keyauth.KeyLogin, settings: SettingsActions) -> BridgeLinks:
    """One reconnecting link per stored bridge (its end-to-end sessions log in through
    *key_login*), and the bridge actions of ``rpc/settings``."""
    store = BridgeLinkStore(server.db, clock=server.reactor)
    links = BridgeLinks(server, store, server.reactor, keys=key_login.keys, key_login=key_login)
    links.setServiceParent(server)
    bridge_settings.add_actions(settings, server, links, store)
    return links


# --- J: the sysadm/* classes (issue 12) ------------------------------------------------------
def add_fleet_agent(server: Server, jobs: JobsService, keys: KeyStore, links: BridgeLinks) -> FleetAgent:
    """This server as a fleet agent on its bridges: stored commands run as jobs, emitted
    events published as ``fleet`` events (sysadmd/bridgelink/fleet.py)."""
    publish = server.events.publisher("fleet")
    agent = FleetAgent(server, jobs, keys, lambda args: publish(args, store=False))
    links.fleet = agent
    return agent


def add_sysadm_classes(server: Server) -> Dict[str, Any]:
    """``sysadm/<class>`` for each class whose backend this host has (``available``);
    the others stay out of ``rpc/query`` and answer 404."""
    config, reactor = server.config, server.reactor
    routed: Dict[str, Any] = {}
    if sys_systemmanager.available(config):
        host = HostReadings(reactor, config.sysinfo_cache_seconds)
        routed["systemmanager"] = sys_systemmanager.route(server.api, host, reactor, config)
    if sys_fs.available(config):
        routed["fs"] = sys_fs.route(server.api, reactor, config)
    for name, module in (("users", sys_users), ("services", sys_services), ("network", sys_network)):
        if module.available(config):
            routed[name] = module.route(server.api, reactor, config)
    if "services" in routed:  # helper D: starts and closes the backends' connections (systemd's bus)
        routed["services"].setServiceParent(server)
    # W: sysadm/firewall (nftables; a child service: applies the rules at start when enabled), sysadm/zfs
    if sys_firewall.available(config):
        routed["firewall"] = sys_firewall.route(server.api, reactor, config)
        routed["firewall"].setServiceParent(server)
    if sys_zfs.available(config):
        routed["zfs"] = sys_zfs.route(server.api, reactor, config)
    return routed


def add_console(cfg: Config, bridges: Optional[BridgeLinkStore] = None) -> Optional[ConsoleResource]:
    """The web console's files for the HTTPS listener (``CONSOLE=false``: none); its policy
    lets the fleet view connect to the linked *bridges* and ``CONSOLE_CONNECT_SRC``."""
    if not cfg.console:
        return None
    configured = tuple(cfg.console_connect_src.split())

    def connect_sources() -> Tuple[str, ...]:
        linked = tuple(bridge_origin(row.url) for row in bridges.list()) if bridges is not None else ()
        return tuple(origin for origin in linked if origin) + configured
    return ConsoleResource(connect_sources=connect_sources)
# --- P: sysadm/pkg and sysadm/update (issue 12) -------------------------------------------
def add_package_classes(server: Server, dispatcher: Dispatcher) -> Dict[str, Any]:
    """``sysadm/pkg`` and ``sysadm/update`` where apt is installed; their changes are jobs
    of *dispatcher*'s ``pkg_queue``."""
    routed: Dict[str, Any] = {}
    for name, module in (("pkg", sys_pkg), ("update", sys_update)):
        if module.available(server.config):
            routed[name] = module.route(server.api, server.reactor, server.config, dispatcher)
    return routed


# --- S1: supervised programs (issue 11) --------------------------------------------------------
def add_supervisor(server: Server, jobs: JobsService, services: Optional[Any] = None) -> Supervisor:
    """The supervisor (its definitions in ``supervisor_programs``, each run a job of the job
    table, ``supervisor`` events) and ``sysadm/supervisor``; its programs join
    ``sysadm/services`` as a backend when that class is routed (*services*)."""
    publish = server.events.publisher("supervisor")
    supervisor = Supervisor(ProgramStore(server.db, server.reactor.seconds), jobs.table,
                            ProgramRunner(server.reactor), server.reactor, lambda args: publish(args, store=True),
                            job_path=server.config.job_path)
    supervisor.setServiceParent(server)
    supervisor_rpc.route(server.api, supervisor)
    if services is not None:
        services.backends.append(SupervisorBackend(supervisor, server.reactor))
    return supervisor


def add_listeners(daemon: Daemon) -> None:
    """The TLS WebSocket + HTTPS port, the REST-only port and the local socket."""
    server = daemon.server
    cfg, reactor = server.config, server.reactor
    guard = guard_for(cfg, reactor, "sysadmd")  # connection limits shared by every listener
    if not cfg.bridge_connections_only:
        cert, key = tls_files(cfg, "server")
        context = tls.server_context(cert, key)
        ws_factory = SysadmServerFactory(server, "wss", reactor=reactor)
        rest = RestResource(server)
        daemon.add_listener("wss", Listener(reactor, cfg.port, make_site(ws_factory, rest, transfers=daemon.transfers,
                                                                          console=add_console(cfg, daemon.bridge_links.store)),
                                            label="sysadmd wss+https",
                                            interface=cfg.listen_interface, tls=context, guard=guard))
        if cfg.port_rest:
            daemon.add_listener("rest", Listener(reactor, cfg.port_rest, make_site(None, RestResource(server), transfers=daemon.transfers),
                                                 label="sysadmd rest", interface=cfg.listen_interface, tls=context,
                                                 guard=guard))
    else:
        log.info("BRIDGE_CONNECTIONS_ONLY=true: no TCP listener")
    if cfg.socket:
        daemon.add_listener("unix", make_unix_listener(server, reactor, cfg.socket, guard=guard))


# --- S2: the seed's supervisor wire (issue 11) -------------------------------------------
def add_supervisor_wire(daemon: Daemon) -> Tuple[Listener, ...]:
    """The seed's ``;;`` wire to ``daemon.supervisor`` on 127.0.0.1:SUPERVISOR_PORT and on
    SUPERVISOR_SOCKET; the peer's uid gets the rights the main local socket would give it."""
    server = daemon.server
    cfg = server.config
    listeners = seedwire.build_listeners(
        daemon.supervisor, server.rights.for_uid, server.reactor, port=cfg.supervisor_port,
        socket_path=cfg.supervisor_socket, max_connections=cfg.supervisor_max_connections,
        max_message=cfg.supervisor_max_message_bytes, idle_timeout=cfg.supervisor_idle_timeout)
    for name, listener in listeners:
        daemon.add_listener(name, listener)
    return tuple(listener for _, listener in listeners)
