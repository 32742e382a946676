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

This is the mechanism; each daemon lists its live keys and appliers itself
(:mod:`sysadmd.reload`, :mod:`bridge.reload`).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple

from twisted.application import service
from twisted.logger import Logger

from sysadmd.runtime.configfile import ConfigError

log = Logger()

Applier = Callable[[Any], None]  # applier(new_settings): push a changed value where it was copied

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


BLACKLIST_KEYS = ("BLACKLIST_BLOCK_MINUTES", "BLACKLIST_AUTH_FAIL_LIMIT", "BLACKLIST_AUTH_FAIL_RESET_MINUTES",
                  "BLACKLIST_EXEMPT_LOOPBACK")


def apply_blacklist(blacklist: Any, cfg: Any) -> None:
    """The blacklist's limits from *cfg* (same for both daemons)."""
    set_attribute(blacklist, "limit", cfg.blacklist_auth_fail_limit)
    set_attribute(blacklist, "reset_seconds", cfg.blacklist_auth_fail_reset_minutes * 60)
    set_attribute(blacklist, "block_seconds", cfg.blacklist_block_minutes * 60)
    set_attribute(blacklist, "exempt_loopback", cfg.blacklist_exempt_loopback)
