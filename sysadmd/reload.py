"""sysadmd's side of SIGHUP reloads: the keys that change live and the appliers that push
changed values to the objects that copied them at start (the mechanism:
:mod:`sysadmd.runtime.reload`)."""

from __future__ import annotations

from typing import Any, Dict

from sysadmd.runtime.reload import BLACKLIST_KEYS, Applier, apply_blacklist, set_attribute

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


def sysadmd_appliers(daemon: Any) -> Dict[str, Applier]:
    """Push sysadmd keys whose values were copied at start to the objects holding them
    (*daemon* is :class:`sysadmd.assembly.Daemon`: its server and subsystems)."""
    server = daemon.server

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
        set_attribute(daemon.dispatcher, "cap", cfg.job_output_cap)

    def thresholds(cfg: Any) -> None:
        from sysadmd.events.systemstate import Thresholds

        set_attribute(daemon.system_state, "thresholds", Thresholds.from_config(cfg))

    def log_retention(cfg: Any) -> None:
        set_attribute(daemon.log_retention, "days", cfg.log_retention_days)

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
