"""``twistd -n sysadmd``: command-line options and the service tree."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict

from twisted.application import service
from twisted.python import usage
from twisted.logger import Logger

from sysadmd import config as configmod
from sysadmd.configfile import ConfigError

log = Logger()

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
        if self["config"]:
            return self["config"]
        return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load_config(options: Options) -> configmod.Config:
    try:
        return configmod.load(options.config_path(), options.overrides())
    except ConfigError as e:
        raise SystemExit(f"sysadmd: configuration error: {e}")


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    cfg = load_config(options)
    from sysadmd.assembly import build

    try:
        return build(cfg, reactor)
    except ConfigError as e:
        raise SystemExit(f"sysadmd: configuration error: {e}")
    except OSError as e:
        raise SystemExit(f"sysadmd: cannot start: {e}")
