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
owns it): SysV init scripts (:mod:`sysadmd.sysclasses.sysv`) when systemd does not run
the host.  This is the seam for more: the programs of sysadmd's own supervisor are meant
to join as another backend with the methods of :class:`ServiceBackend` (``list``,
``owns``, ``act``, ``logs``), added to :func:`backends_for`.  There is no systemd or OpenRC
backend yet: on a host run by systemd the class is not routed (absent from
``rpc/query``) rather than listing scripts systemd ignores.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Protocol, Tuple

from twisted.internet import defer

from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable, names_arg
from sysadmd.sysclasses.sysv import SysvBackend

SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,127}\Z")
SYSTEMD_RUNNING = "/run/systemd/system"
VERBS = {"start": "services_started", "stop": "services_stopped", "restart": "services_restarted",
         "enable": "services_enabled", "disable": "services_disabled"}
MAX_SERVICES = 64
LOG_LINES = 200
MAX_LOG_LINES = 5000
LOG_REPLY_BYTES = 2 * 1024 * 1024


class ServiceBackend(Protocol):
    """What a backend gives :class:`Services` (SysV scripts now; supervisor programs next)."""

    name: str  # shown in logs and tests: "sysv", …

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


def systemd_runs() -> bool:
    return os.path.isdir(SYSTEMD_RUNNING)


def backends_for(reactor: Any, config: Any) -> List[Any]:
    """The backends this host has, in the order they are asked."""
    found: List[Any] = []
    if not systemd_runs() and SysvBackend.present(config.services_initd_dir):
        found.append(SysvBackend(reactor, config.services_initd_dir, config.services_log_dir))
    return found


def available(config: Any) -> bool:
    """Routed when at least one backend serves this host."""
    return bool(backends_for(None, config))


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


class Services:
    def __init__(self, backends: List[ServiceBackend]):
        self.backends = backends

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
