"""sysadm-bridge's side of SIGHUP reloads: its live keys and appliers (the mechanism:
:mod:`sysadmd.runtime.reload`)."""

from __future__ import annotations

from typing import Any, Dict

from sysadmd.runtime.reload import BLACKLIST_KEYS, Applier, apply_blacklist, set_attribute

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
