"""``wss://`` addresses as people type them: the scheme and the port may be left out.

Used by the ``sysadm`` client (servers, bridges) and by bridge links.  Only ``wss://``
is accepted: every listener of ours (and upstream's) speaks TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class WssAddress:
    host: str  # without brackets, even for an IPv6 literal
    port: int
    path: str  # as given ("" or "/..." )

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_wss(text: str, default_port: int) -> WssAddress:
    """Parse *text*; raises ValueError with the reason (callers add which field)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected an address such as host.example.org or wss://host:port")
    raw = text.strip()
    if "://" not in raw:
        raw = "wss://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{text!r} is not a valid address ({e})") from None
    if parts.scheme.lower() != "wss":
        raise ValueError(f"scheme {parts.scheme!r} is not supported; only wss:// (TLS) is spoken")
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{text!r} must be just wss://host[:port][/path]")
    return WssAddress(parts.hostname, port if port is not None else default_port, parts.path)
