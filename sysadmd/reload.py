"""SIGHUP: re-read the configuration file and apply what can change while running.

Both daemons (sysadmd and sysadm-bridge) hold one settings object that everything reads
(``server.config`` / ``bridge.config``).  A reload loads the file again with the same
command-line overrides, validates it as a start would, and then updates that same object
in place -- so every reader sees the new value at its next use -- except for the keys that
only a restart can change (listeners, paths, TLS, loop intervals fixed at start; any key
not known to be live), which keep their running value.  Values some objects copied at start (token lifetime,
blacklist limits, access groups...) are pushed to them by *appliers*.  Every changed key
is logged, with "applied" or "needs a restart"; a file that does not load is logged and
the running configuration stays as it was.  SIGTERM is untouched (twistd stops cleanly).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from twisted.application import service
from twisted.logger import Logger

from sysadmd.runtime.configfile import ConfigError

log = Logger()

Applier = Callable[[Any], None]  # applier(new_settings): push a changed value where it was copied

# sysadmd keys read from ``server.config`` when they are used (every login, connection,
# request or job reads the current value); keys with an applier are live as well.  Any
# other key -- including keys added later that are not listed here -- is reported as
# needing a restart and keeps its running value, so the log never claims an effect that
# did not happen.
SYSADMD_LIVE_KEYS = frozenset({
    "ALLOW_PASSWORD_AUTH", "CHALLENGE_TTL", "AUTH_TIMEOUT", "IDLE_TIMEOUT", "MAX_SESSION_BUFFER_BYTES",
    "MAX_CONNECTIONS", "JOB_KILL_GRACE", "JOB_WORKDIR", "JOB_PATH", "BRIDGE_RETRY_MAX", "REST_ALLOWED_ORIGINS",
    "MAX_KEYS_PER_USER", "KEY_LOGIN_MAX_TRIED",
})

class NotApplied(Exception):
    """An applier found nothing to update; the key is reported as needing a restart."""


def set_attribute(obj: Any, name: str, value: Any) -> None:
    """Set *name* on *obj*, which must have it already (else :class:`NotApplied`)."""
    if obj is None or not hasattr(obj, name):
        raise NotApplied(f"{type(obj).__name__} has no {name}")
    setattr(obj, name, value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(empty)"
    if value == "":
        return "(empty)"
    return str(value)


def reload_settings(current: Any, settings_cls: Any, path: Optional[str], overrides: Mapping[str, str],
                    live_keys: Iterable[str], appliers: Mapping[str, Applier]) -> Tuple[List[str], List[str]]:
    """Load *path* and apply it to *current* in place; ``(applied, needs_restart)`` key names.

    Keys in *live_keys* or *appliers* change at once; other changed keys keep their running
    value.  Raises :class:`ConfigError` (and changes nothing) when the new file does not load.
    """
    new = settings_cls.load(path, overrides)
    old_values, new_values = current.as_dict(), new.as_dict()
    live_set = set(live_keys) | set(appliers)
    changed = [k for k in new_values if new_values[k] != old_values.get(k)]
    live = [k for k in changed if k in live_set]
    restart = [k for k in changed if k not in live_set]
    current.update_values({k: new_values[k] for k in live})
    applied: List[str] = []
    for key in live:
        applier = appliers.get(key)
        try:
            if applier is not None:
                applier(current)
        except NotApplied as e:
            log.warn("configuration reload: {key} changed from {old} to {new} but could not be applied ({why}); "
                     "it takes full effect after a restart", key=key, old=_show(old_values[key]),
                     new=_show(new_values[key]), why=str(e))
            restart.append(key)
            continue
        applied.append(key)
        log.info("configuration reload: {key} changed from {old} to {new} (applied)",
                 key=key, old=_show(old_values[key]), new=_show(new_values[key]))
    for key in restart:
        if key in live:
            continue  # logged above
        log.warn("configuration reload: {key} changed from {old} to {new}; needs a restart "
                 "(the running daemon keeps {old})", key=key, old=_show(old_values[key]), new=_show(new_values[key]))
    return applied, restart


class ConfigReloader(service.Service):
    """While running, SIGHUP reloads the configuration (see the module docstring)."""

    name = "config-reloader"

    def __init__(self, reactor: Any, current: Any, settings_cls: Any, path_of: Callable[[], Optional[str]],
                 overrides: Mapping[str, str], live_keys: Iterable[str], appliers: Mapping[str, Applier]):
        self.reactor = reactor
        self.current = current
        self.settings_cls = settings_cls
        self.path_of = path_of
        self.overrides = dict(overrides)
        self.live_keys = frozenset(live_keys)
        self.appliers = dict(appliers)
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self._installed = True
        log.info("SIGHUP re-reads the configuration")

    def stopService(self):
        super().stopService()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Signal handlers run between bytecodes; do the work in a reactor turn.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Optional[Tuple[List[str], List[str]]]:
        path = self.path_of()
        where = path or "no file (the embedded defaults and the command line)"
        log.info("configuration reload (SIGHUP): reading {where}", where=where)
        try:
            applied, restart = reload_settings(self.current, self.settings_cls, path, self.overrides,
                                               self.live_keys, self.appliers)
        except ConfigError as e:
            log.error("configuration reload failed, the running configuration stays in effect: {error}", error=str(e))
            return None
        except Exception:
            log.failure("configuration reload failed, the running configuration stays in effect")
            return None
        if not applied and not restart:
            log.info("configuration reload: nothing changed")
        else:
            log.info("configuration reload done: {applied} applied, {restart} need a restart",
                     applied=len(applied), restart=len(restart))
        return applied, restart


def sysadmd_appliers(server: Any) -> Dict[str, Applier]:
    """Push sysadmd keys whose values were copied at start to the objects holding them."""

    def token_ttl(cfg: Any) -> None:
        set_attribute(server.tokens, "ttl", cfg.token_ttl)

    def groups(cfg: Any) -> None:
        set_attribute(server.rights, "full_groups", set(cfg.full_access_groups))
        set_attribute(server.rights, "limited_groups", set(cfg.limited_access_groups))

    def pam_service(cfg: Any) -> None:
        set_attribute(server.passwords, "service", cfg.pam_service)

    def blacklist(cfg: Any) -> None:
        apply_blacklist(server.blacklist, cfg)

    def output_cap(cfg: Any) -> None:
        set_attribute(server.subsystems.get("dispatcher"), "cap", cfg.job_output_cap)

    def thresholds(cfg: Any) -> None:
        from sysadmd.events.systemstate import Thresholds

        set_attribute(server.subsystems.get("system-state"), "thresholds", Thresholds.from_config(cfg))

    def log_retention(cfg: Any) -> None:
        try:
            retention = server.getServiceNamed("log-retention")
        except KeyError:
            retention = None
        set_attribute(retention, "days", cfg.log_retention_days)

    appliers: Dict[str, Applier] = {
        "TOKEN_TTL": token_ttl,
        "FULL_ACCESS_GROUPS": groups,
        "LIMITED_ACCESS_GROUPS": groups,
        "PAM_SERVICE": pam_service,
        "JOB_OUTPUT_CAP": output_cap,
        "LOG_RETENTION_DAYS": log_retention,
    }
    for key in BLACKLIST_KEYS:
        appliers[key] = blacklist
    for key in ("STATE_LOAD_WARN", "STATE_LOAD_CRIT", "STATE_MEMORY_WARN", "STATE_MEMORY_CRIT",
                "STATE_DISK_WARN", "STATE_DISK_CRIT"):
        appliers[key] = thresholds
    return appliers


BLACKLIST_KEYS = ("BLACKLIST_BLOCK_MINUTES", "BLACKLIST_AUTH_FAIL_LIMIT", "BLACKLIST_AUTH_FAIL_RESET_MINUTES",
                  "BLACKLIST_EXEMPT_LOOPBACK")


def apply_blacklist(blacklist: Any, cfg: Any) -> None:
    """The blacklist's limits from *cfg* (same for both daemons)."""
    set_attribute(blacklist, "limit", cfg.blacklist_auth_fail_limit)
    set_attribute(blacklist, "reset_seconds", cfg.blacklist_auth_fail_reset_minutes * 60)
    set_attribute(blacklist, "block_seconds", cfg.blacklist_block_minutes * 60)
    set_attribute(blacklist, "exempt_loopback", cfg.blacklist_exempt_loopback)


# sysadm-bridge keys read from ``bridge.config`` at use time (each new connection).
BRIDGE_LIVE_KEYS = frozenset({"MAX_CONNECTIONS", "AUTH_TIMEOUT", "MAX_PEER_BUFFER_BYTES", "RECEIVER_STALL_TIMEOUT"})


def bridge_appliers(bridge: Any) -> Dict[str, Applier]:
    """Push sysadm-bridge keys copied at start to the objects holding them."""

    def blacklist(cfg: Any) -> None:
        apply_blacklist(bridge.blacklist, cfg)

    def challenge_ttl(cfg: Any) -> None:
        set_attribute(bridge.api, "challenge_ttl", cfg.challenge_ttl)

    appliers: Dict[str, Applier] = {key: blacklist for key in BLACKLIST_KEYS}
    appliers["CHALLENGE_TTL"] = challenge_ttl
    return appliers
