"""``twistd -n sysadm-bridge``: command-line options and the service tree."""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.application import service
from twisted.python import usage

from bridge import config as configmod
from sysadmd.runtime import startup


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Relay between sysadm servers (often behind NAT) and their remote clients over TLS "
        "WebSockets, wire-compatible with the upstream sysadm-bridge. Every option overrides "
        "the config file key named in brackets."
    )
    optParameters = [
        ["config", "c", None, f"Config file (KEY=VALUE); default {configmod.DEFAULT_CONFIG} if it exists."],
        ["port", "p", None, "[PORT] listener: port number or endpoint string."],
        ["state-dir", "d", None, "[STATE_DIR] state directory."],
        ["interface", None, None, "[LISTEN_INTERFACE] address for a bare port number."],
    ]

    def overrides(self) -> Dict[str, str]:
        mapping = {"port": "PORT", "state-dir": "STATE_DIR", "interface": "LISTEN_INTERFACE"}
        return {key: self[opt] for opt, key in mapping.items() if self[opt] is not None}

    def config_path(self) -> Optional[str]:
        return startup.config_path(self["config"], configmod.DEFAULT_CONFIG)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    from bridge.reload import BRIDGE_LIVE_KEYS, bridge_appliers
    from bridge.service import build
    from sysadmd.runtime.reload import ConfigReloader

    cfg = startup.load_or_exit("sysadm-bridge", configmod.BridgeConfig, options.config_path(), options.overrides())
    daemon = startup.build_or_exit("sysadm-bridge", build, cfg, reactor)
    # SIGHUP re-reads the configuration and applies what can change live (sysadmd.runtime.reload).
    ConfigReloader(reactor, daemon.bridge.config, configmod.BridgeConfig, options.config_path, options.overrides(),
                   BRIDGE_LIVE_KEYS, bridge_appliers(daemon.bridge)).setServiceParent(daemon)
    return daemon
