"""``sysadmd check-config [FILE]``: validate a configuration without starting anything.

Reads the file the daemon would read (FILE, else ``--config``, else ``/etc/sysadmd.conf``
when it exists, else the embedded defaults), then checks what a start would trip over
before serving: every key's type and range, the cross-key rules, the listener endpoint
strings and the configured TLS certificate and key.  Nothing is bound, created or written.
"""

from __future__ import annotations

import os
from typing import Any, List, TextIO

from sysadmd import config as configmod
from sysadmd.admin.state import VerbFailed
from sysadmd.admin.verbs import UsageError, verb
from sysadmd.runtime.configfile import ConfigError


def _check_endpoint(key: str, spec: str, interface: str) -> None:
    if not spec:
        return
    from twisted.internet import endpoints, reactor

    from sysadmd.runtime.listeners import endpoint_text

    description = endpoint_text(spec, interface)
    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{key}: endpoint {description!r} is not usable: {e}") from None


def _check_tls(cfg: Any) -> None:
    if not cfg.tls_cert:
        return  # a self-signed pair is made in the state directory at the first start
    from OpenSSL import SSL, crypto as ossl

    from sysadmd.runtime import tls

    for key, path in (("TLS_CERT", cfg.tls_cert), ("TLS_KEY", cfg.tls_key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{key}: {path} does not exist or is not a file")
    try:
        tls.server_context(cfg.tls_cert, cfg.tls_key).getContext()
    except OSError as e:
        raise ConfigError(f"TLS_CERT: cannot read {e.filename}: {e.strerror}") from None
    except (SSL.Error, ossl.Error, ValueError) as e:
        raise ConfigError(f"TLS_CERT: {cfg.tls_cert} and TLS_KEY {cfg.tls_key} are not a usable PEM certificate "
                          f"and matching private key ({e})") from None


def check(path: Any, state_dir: Any = None) -> configmod.Config:
    """The loaded configuration, or :class:`ConfigError` naming the first bad key."""
    overrides = {"STATE_DIR": state_dir} if state_dir else None
    cfg = configmod.load(path, overrides)
    if not cfg.bridge_connections_only:
        _check_endpoint("PORT", cfg.port, cfg.listen_interface)
        _check_endpoint("PORT_REST", cfg.port_rest, cfg.listen_interface)
        _check_tls(cfg)
    return cfg


@verb("check-config", "[FILE]",
      "Validate a configuration file without starting the daemon: key names, types and\n"
      "ranges, cross-key rules, listener endpoints and TLS_CERT/TLS_KEY. Prints\n"
      "'configuration OK' (exit 0) or the key error (exit 1). FILE defaults to --config,\n"
      "else /etc/sysadmd.conf when it exists, else the embedded defaults are checked.",
      aliases=("check_config",), uses_state=False)
def check_config(options: Any, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) > 1:
        raise UsageError(f"expected at most one FILE, got {len(args)} arguments")
    path = args[0] if args else None
    if path and options.config_file and os.path.abspath(path) != os.path.abspath(options.config_file):
        raise UsageError(f"two files given: {path} and --config {options.config_file}; name one")
    path = path or options.config_file
    if path is None and os.path.exists(options.default_config):
        path = options.default_config
    try:
        check(path, options.state_dir)
    except ConfigError as e:
        where = f" ({path})" if path and not str(e).startswith("config file") else ""
        raise VerbFailed(f"configuration error{where}: {e}") from None
    if path:
        out.write(f"configuration OK: {path}\n")
    else:
        out.write(f"configuration OK: no file given and {options.default_config} does not exist; "
                  "the embedded defaults apply\n")
    return 0
