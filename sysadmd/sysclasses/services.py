"""``sysadm/services``: the host's services in upstream's shapes.

Actions and replies (unwrapped, as upstream's services class answers)::

    {"action":"list_services"} → {"services":{name:{name,tag,path,description,is_enabled,is_running}}}
    {"action":"start","services":"cron" | ["cron","ssh"]} → {"services_started":["cron","ssh"]}
    stop → services_stopped, restart → services_restarted,
    enable → services_enabled, disable → services_disabled
    {"action":"logs","service":"cron"[,"lines":200]} → {"service":"cron","lines":[...],"source":"..."}

Flags are the strings ``"true"``/``"false"``.  ``list_services`` is open to every
authenticated user; the five changes and ``logs`` (logs can hold secrets) need full
access.  Each named service is acted on
in order; if one fails, the reply is an error (400) carrying the failing tool's message
and naming the services already done (upstream answered success listing only the ones
that worked).

``logs``: the last ``lines`` (default :data:`LOG_LINES`, at most :data:`MAX_LOG_LINES`)
lines of the service's log, oldest first, each cut at 4 KiB, the whole at most
:data:`LOG_REPLY_BYTES` (the oldest lines dropped beyond); ``source`` says where they
came from.  The backend that owns the service reads them (its ``logs`` method).

**Backends** (:data:`Services.backends`, tried in order; the first that has a service
owns it): the host's init system, chosen by :func:`choose` (``SERVICES_INIT``, ``auto``
by default: :func:`init_system`) — systemd over D-Bus (:mod:`sysadmd.sysclasses.systemd`),
OpenRC's tools (:mod:`sysadmd.sysclasses.openrc`) or SysV init scripts
(:mod:`sysadmd.sysclasses.sysv`) — then the programs of sysadmd's own supervisor
(appended by :func:`sysadmd.assembly.add_supervisor`).  Each has the methods of
:class:`ServiceBackend` (``list``, ``owns``, ``act``, ``logs``).  Where no init backend can run (systemd without a reachable bus
or without dbus-fast, OpenRC without its tools, no init script directory) the class is
not routed (absent from ``rpc/query``) and the log says why.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Dict, List, Optional, Protocol, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable, names_arg
from sysadmd.sysclasses.openrc import OpenrcBackend
from sysadmd.sysclasses.systemd import DEFAULT_BUS, SystemdBackend, dbus_fast_missing, socket_path
from sysadmd.sysclasses.sysv import SysvBackend

log = Logger()

SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,127}\Z")
SYSTEMD_RUNNING = "/run/systemd/system"
OPENRC_RUNNING = "/run/openrc"
VERBS = {"start": "services_started", "stop": "services_stopped", "restart": "services_restarted",
         "enable": "services_enabled", "disable": "services_disabled"}
MAX_SERVICES = 64
LOG_LINES = 200
MAX_LOG_LINES = 5000
LOG_REPLY_BYTES = 2 * 1024 * 1024


class ServiceBackend(Protocol):
    """What a backend gives :class:`Services` (systemd, OpenRC, SysV scripts, supervisor programs)."""

    name: str  # shown in logs and tests: "systemd", "openrc", "sysv", "supervisor"

    def list(self) -> defer.Deferred:
        """Fires with ``{name: {name,tag,path,description,is_enabled,is_running}}``."""

    def owns(self, name: str) -> bool:
        """Whether *name* is one of this backend's services (asked before any change)."""

    def act(self, verb: str, name: str) -> defer.Deferred:
        """Run *verb* (start, stop, restart, enable, disable); fails with an ApiError
        carrying the tool's message."""

    def logs(self, name: str, lines: int) -> defer.Deferred:
        """Fires with ``{"lines": [the last *lines* lines, oldest first], "source": text}``;
        a line is at most 4 KiB (:data:`sysadmd.sysclasses.logtail.LINE_BYTES`)."""


INIT_SYSTEMS = ("systemd", "openrc", "sysv")


def init_system(root: str = "/") -> Optional[str]:
    """Which init system runs the host whose file system is at *root*: ``systemd`` when
    ``run/systemd/system`` is a directory (systemd is PID 1); ``openrc`` when ``run/openrc``
    exists or PID 1 is ``openrc-init`` (``proc/1/comm``); ``sysv`` when ``etc/init.d``
    exists; otherwise ``None``."""
    if os.path.isdir(os.path.join(root, SYSTEMD_RUNNING.lstrip("/"))):
        return "systemd"
    if os.path.exists(os.path.join(root, OPENRC_RUNNING.lstrip("/"))) or _pid1_comm(root) == "openrc-init":
        return "openrc"
    if os.path.isdir(os.path.join(root, "etc/init.d")):
        return "sysv"
    return None


def _pid1_comm(root: str) -> str:
    try:
        with open(os.path.join(root, "proc/1/comm"), "rb") as f:
            return f.read(64).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def systemd_runs() -> bool:
    return init_system() == "systemd"


def choose(config: Any, root: str = "/") -> Tuple[Optional[str], str]:
    """``(backend kind or None, why)``: the host's init backend (``SERVICES_INIT``, or the
    init system found under *root* for ``auto``) when this daemon can drive it."""
    wanted = config.services_init
    kind = init_system(root) if wanted == "auto" else wanted
    origin = "SERVICES_INIT" if wanted != "auto" else f"the init system under {root}"
    if kind is None:
        return None, f"no init system found under {root} (no run/systemd/system, run/openrc or etc/init.d)"
    if kind == "systemd":
        missing = dbus_fast_missing()
        if missing:
            return None, f"systemd ({origin}) needs D-Bus, but {missing}"
        try:
            path = socket_path(config.services_systemd_bus or DEFAULT_BUS)
        except ValueError as e:
            return None, f"SERVICES_SYSTEMD_BUS: {e}"
        refused = _unreachable(path)
        if refused:
            return None, f"systemd ({origin}) runs the host, but its bus {path!r} cannot be reached: {refused}"
        return "systemd", f"systemd ({origin}) over {config.services_systemd_bus or DEFAULT_BUS}"
    if kind == "openrc":
        if not OpenrcBackend.present():
            return None, f"OpenRC ({origin}), but rc-service/rc-update/rc-status are not installed"
        return "openrc", f"OpenRC ({origin})"
    if not SysvBackend.present(config.services_initd_dir):
        return None, f"SysV init scripts ({origin}), but {config.services_initd_dir} is not a directory"
    return "sysv", f"SysV init scripts in {config.services_initd_dir} ({origin})"


def _unreachable(path: str) -> str:
    """Why nothing accepts connections on the Unix socket *path* ('' when something does)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(path)
        return ""
    except OSError as e:
        return e.strerror or str(e)
    finally:
        sock.close()


def backends_for(reactor: Any, config: Any, root: str = "/") -> List[Any]:
    """The backends this host has, in the order they are asked (the supervisor's programs
    are appended later, by :func:`sysadmd.assembly.add_supervisor`)."""
    kind, _why = choose(config, root)
    if kind == "systemd":
        return [SystemdBackend(reactor, config.services_systemd_bus or DEFAULT_BUS,
                               job_timeout=config.services_systemd_job_timeout)]
    if kind == "openrc":
        return [OpenrcBackend(reactor, log_dir=config.services_log_dir)]
    if kind == "sysv":
        return [SysvBackend(reactor, config.services_initd_dir, config.services_log_dir)]
    return []


def available(config: Any) -> bool:
    """Routed when the host's init system has a backend here (logged either way)."""
    kind, why = choose(config)
    log.info("sysadm/services: {state}: {why}", state="routed" if kind else "not routed", why=why)
    return kind is not None


def service_names(args: Dict[str, Any]) -> List[str]:
    names = names_arg(args, "services", max_items=MAX_SERVICES, max_chars=128)
    for i, name in enumerate(names):
        if not SERVICE_NAME.match(name):
            raise ApiError("400", f"'services'[{i}] {name[:40]!r} is not a service name (letters, digits and _ . @ : + -, "
                                  "not starting with '.' or '-')")
    return names


def log_request(args: Dict[str, Any]) -> Tuple[str, int]:
    """``(service, lines)`` of a ``logs`` request; 400 naming the field otherwise."""
    name = args.get("service")
    if not isinstance(name, str) or not name:
        raise ApiError("400", f"logs needs 'service': a service name (a string), got {type_name(name)}")
    if not SERVICE_NAME.match(name):
        raise ApiError("400", f"'service' {name[:40]!r} is not a service name (letters, digits and _ . @ : + -, "
                              "not starting with '.' or '-')")
    lines = args.get("lines", LOG_LINES)
    if isinstance(lines, bool) or not isinstance(lines, int):
        raise ApiError("400", f"'lines' must be an integer from 1 to {MAX_LOG_LINES}, got {type_name(lines)}")
    if not 1 <= lines <= MAX_LOG_LINES:
        raise ApiError("400", f"'lines' is {lines}; it must be from 1 to {MAX_LOG_LINES}")
    return name, lines


def bounded(lines: List[str], max_bytes: int = LOG_REPLY_BYTES) -> List[str]:
    """The newest of *lines* that fit in *max_bytes* (UTF-8, a newline each)."""
    total = 0
    start = len(lines)
    while start > 0:
        size = len(lines[start - 1].encode("utf-8", "replace")) + 1
        if total + size > max_bytes:
            break
        total += size
        start -= 1
    return lines[start:]


class Services(service.Service):
    """The class's handlers; as a child service of the daemon it starts and closes the
    backends that hold connections (``start``/``close``, the systemd one)."""

    def __init__(self, backends: List[ServiceBackend]):
        self.backends = backends

    def startService(self) -> None:
        super().startService()
        for backend in self.backends:
            if hasattr(backend, "start"):
                backend.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        closing = [defer.maybeDeferred(backend.close) for backend in self.backends if hasattr(backend, "close")]
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def list_services(self, session: Session, args: Dict[str, Any]):
        merged: Dict[str, Any] = {}
        for backend in self.backends:
            listing = yield backend.list()
            for name, entry in listing.items():
                merged.setdefault(name, entry)  # an earlier backend owns a name
        return {"services": merged}

    def _backend(self, name: str) -> Any:
        for backend in self.backends:
            if backend.owns(name):
                return backend
        raise ApiError("400", f"no service named {name} on this host (see list_services)")

    @defer.inlineCallbacks
    def logs(self, session: Session, args: Dict[str, Any]):
        name, lines = log_request(args)
        backend = self._backend(name)
        reader = getattr(backend, "logs", None)
        if reader is None:
            raise ApiError("400", f"{name} is a {backend.name} service, and that backend cannot read logs")
        found = yield reader(name, lines)
        kept = bounded(list(found.get("lines", []))[-lines:])
        return {"service": name, "lines": kept, "source": found.get("source", backend.name)}

    def action(self, verb: str):
        @defer.inlineCallbacks
        def handler(session: Session, args: Dict[str, Any]):
            names = service_names(args)
            owners = [(name, self._backend(name)) for name in names]  # all known before any change
            done: List[str] = []
            for name, backend in owners:
                try:
                    yield backend.act(verb, name)
                except ApiError as e:
                    so_far = f" ({', '.join(done)} already {VERBS[verb].split('_', 1)[1]})" if done else ""
                    raise ApiError(e.code, f"{verb} {name} failed{so_far}: {e.detail}") from None
                done.append(name)
            return {VERBS[verb]: done}

        return handler


def route(api: Any, reactor: Any, config: Any) -> Services:
    services = Services(backends_for(reactor, config))
    table = ActionTable("services")
    table.add("list_services", services.list_services, wrap=False)
    for verb in VERBS:
        table.add(verb, services.action(verb), full_access=True, wrap=False)
    table.add("logs", services.logs, full_access=True, wrap=False)  # E: logs can hold secrets
    table.route(api, limited="read")
    return services
