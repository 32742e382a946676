"""``twistd -n sysadmd``: command-line options and the service tree."""

from __future__ import annotations

from typing import Any, Dict

from twisted.application import service
from twisted.python import usage

from sysadmd import config as configmod
from sysadmd.runtime import startup

DEFAULT_CONFIG = "/etc/sysadmd.conf"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the SysAdm JSON RPC API for this machine over TLS WebSockets, REST and a local "
        "Unix socket. Every option overrides the config file key named in brackets."
    )
    optParameters = [
        ["config", "c", None, f"Config file (KEY=VALUE); default {DEFAULT_CONFIG} if it exists."],
        ["port", "p", None, "[PORT] WebSocket/REST listener: port number or endpoint string."],
        ["rest-port", None, None, "[PORT_REST] extra REST-only listener: port number or endpoint string."],
        ["state-dir", "d", None, "[STATE_DIR] state directory."],
        ["socket", "s", None, "[SOCKET] local Unix socket path, or 'none'."],
        ["interface", None, None, "[LISTEN_INTERFACE] address for bare port numbers."],
    ]

    def overrides(self) -> Dict[str, str]:
        mapping = {"port": "PORT", "rest-port": "PORT_REST", "state-dir": "STATE_DIR", "socket": "SOCKET", "interface": "LISTEN_INTERFACE"}
        return {key: self[opt] for opt, key in mapping.items() if self[opt] is not None}

    def config_path(self):
        return startup.config_path(self["config"], DEFAULT_CONFIG)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    from sysadmd.assembly import build

    from sysadmd.reload import SYSADMD_LIVE_KEYS, sysadmd_appliers
    from sysadmd.runtime.reload import ConfigReloader

    cfg = startup.load_or_exit("sysadmd", configmod.Config, options.config_path(), options.overrides())
    daemon = startup.build_or_exit("sysadmd", build, cfg, reactor)
    # SIGHUP re-reads the same file (or /etc/sysadmd.conf if it appeared) with the same
    # command-line overrides and applies what can change live.
    ConfigReloader(reactor, daemon.server.config, configmod.Config, options.config_path, options.overrides(),
                   SYSADMD_LIVE_KEYS, sysadmd_appliers(daemon)).setServiceParent(daemon)
    return daemon
