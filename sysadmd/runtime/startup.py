"""What both twistd plugins (sysadmd and sysadm-bridge) do when they start.

Settings are loaded, and the service tree built, or the process exits with one line
naming the problem (exit code 1, no traceback); TLS files are the configured ones or a
self-signed pair made once in the state directory.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Tuple

from twisted.logger import Logger

from sysadmd.runtime import tls
from sysadmd.runtime.configfile import ConfigError
from sysadmd.runtime.db import SchemaError
from sysadmd.runtime.listeners import raise_descriptor_limit

log = Logger()


def config_path(given: Optional[str], default: str) -> Optional[str]:
    """The file named on the command line, else *default* if it exists, else none."""
    if given:
        return given
    return default if os.path.exists(default) else None


def load_or_exit(program: str, settings_cls: Any, path: Optional[str], overrides: Mapping[str, str]) -> Any:
    try:
        return settings_cls.load(path, overrides)
    except ConfigError as e:
        raise SystemExit(f"{program}: configuration error: {e}")


def build_or_exit(program: str, build: Callable[[Any, Any], Any], cfg: Any, reactor: Any) -> Any:
    # Every connection is a descriptor: use what the hard limit allows (often 1,024 soft
    # against 512Ki hard), so MAX_CONNECTIONS is not cut short by the default.
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("raised the open-file limit from {before} to {after}", before=before, after=after)
    try:
        return build(cfg, reactor)
    except ConfigError as e:
        raise SystemExit(f"{program}: configuration error: {e}")
    except (OSError, SchemaError) as e:
        raise SystemExit(f"{program}: cannot start: {e}")


def tls_files(cfg: Any, basename: str) -> Tuple[str, str]:
    """``(cert, key)`` from TLS_CERT/TLS_KEY, or ``<state_dir>/<basename>.crt/.key``
    (generated once). The certificate's fingerprint is logged so clients can pin it."""
    if cfg.tls_cert:
        for path in (cfg.tls_cert, cfg.tls_key):
            if not os.path.exists(path):
                raise OSError(f"TLS file {path} does not exist (TLS_CERT / TLS_KEY)")
        cert, key = cfg.tls_cert, cfg.tls_key
    else:
        cert, key, created = tls.ensure_certificate(cfg.state_dir, basename)
        if created:
            log.info("generated a self-signed TLS certificate in {path}", path=cert)
    with open(cert, "rb") as f:
        fingerprint = tls.fingerprint_sha256(f.read())
    log.info("TLS certificate {path} SHA-256 fingerprint {fp}", path=cert, fp=fingerprint)
    return cert, key
