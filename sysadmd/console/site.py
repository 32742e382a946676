"""Serve the web console's static files on the daemon's HTTPS listener.

``GET /`` answers ``static/index.html``; ``GET /console/<file>`` answers the other files of
``static/`` (scripts, styles, images).  Everything is read once, when the daemon is built,
into memory (the console is a few tens of KiB), so a request never touches the file system
and no path from a request is ever joined to a directory: a path is either a key of that
table or a 404.

Every answer carries a strict Content-Security-Policy (scripts, styles and images only
from this origin, no inline code, connections only to this origin's ``https:``/``wss:``
and to the bridges the fleet view may use: the ``wss://`` origins of the bridges this
server links to, read at each request, and ``CONSOLE_CONNECT_SRC``; never a bare ``wss:``;
no framing), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
The page talks to the ordinary WebSocket API on the same listener; nothing here answers
API calls.  ``CONSOLE=false`` leaves this resource out: ``/`` is then REST's JSON 404.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Dict, Iterable, Optional, Tuple
from urllib.parse import urlsplit

from twisted.web import resource

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
ASSET_PREFIX = b"/console/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
# A Host header we may repeat in the policy: a name or address and a port, nothing else.
HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def load_files(directory: str = STATIC_DIR) -> Dict[bytes, Tuple[bytes, str]]:
    """Every servable file under *directory*: ``{url path: (content, content type)}``."""
    files: Dict[bytes, Tuple[bytes, str]] = {}
    for root, _dirs, names in os.walk(directory):
        for name in sorted(names):
            kind = TYPES.get(os.path.splitext(name)[1].lower())
            if kind is None:
                continue
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            with open(full, "rb") as f:
                files[ASSET_PREFIX + rel.encode()] = (f.read(), kind)
    index = files.pop(ASSET_PREFIX + b"index.html", None)
    if index is None:
        raise FileNotFoundError(f"the console's index.html is missing from {directory}")
    files[b"/"] = index
    return files


# A connect-src entry we add: a wss origin, host and optional port, nothing that could
# widen the policy (no wildcard, no scheme alone, no quote, no space).
WSS_SOURCE_RE = re.compile(r"^wss://(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def bridge_origin(url: str) -> Optional[str]:
    """The ``wss://host[:port]`` origin of a stored bridge URL, or ``None`` if it has none
    we may write into a policy."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "wss" or not parts.hostname:
        return None
    host = parts.hostname.lower()
    origin = f"wss://[{host}]" if ":" in host else f"wss://{host}"
    if port is not None and port != 443:
        origin += f":{port}"
    return origin if WSS_SOURCE_RE.match(origin) else None


def content_security_policy(host: Optional[bytes], extra: Iterable[str] = ()) -> str:
    connect = "'self'"
    text = (host or b"").decode("ascii", "replace")
    if HOST_RE.match(text):
        connect += f" wss://{text}"
    seen = set(connect.split())
    for origin in extra:
        if WSS_SOURCE_RE.match(origin) and origin not in seen:
            seen.add(origin)
            connect += f" {origin}"
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; font-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'; object-src 'none'")


class ConsoleResource(resource.Resource):
    """The console's files; :meth:`serves` says whether a request path is one of them."""

    isLeaf = True

    def __init__(self, directory: str = STATIC_DIR, connect_sources: Callable[[], Iterable[str]] = tuple):
        super().__init__()
        self.connect_sources = connect_sources  # the wss origins the fleet view may reach
        self.files = load_files(directory)
        self.etags = {path: b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
                      for path, (body, _kind) in self.files.items()}

    def serves(self, path: bytes) -> bool:
        return path == b"/" or path.startswith(ASSET_PREFIX)

    def render(self, request) -> bytes:
        policy = content_security_policy(request.getHeader(b"host"), self.connect_sources())
        request.setHeader(b"Content-Security-Policy", policy.encode())
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"the console's files are read with GET or HEAD.\n"
        found = self.files.get(request.path)
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"no such console file.\n"
        body, kind = found
        etag = self.etags[request.path]
        request.setHeader(b"Content-Type", kind.encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return body
