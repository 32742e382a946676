# REST transport: the same API calls as the WebSocket, one HTTPS request each.
#
#   GET|POST|PUT /<namespace>/<name>         (exactly two path segments)
#   Authorization: Basic base64(user:password)   checked against PAM on every request
#   Authorization: Bearer <token>                a token from rpc/auth (over REST or not)
#   body: the args as JSON (empty body = {}), or a whole envelope when it is a JSON object
#         holding "args" (its args are used; the URI names the API, as upstream)
#
#   200 {"args": <result>}                      success
#   <code> {"args": {"code","message","detail"}} error; the HTTP status is the API code
#                                                (401 adds WWW-Authenticate, see below)
#   204 (no body)                               the API sends no reply (rpc/auth_clear)
#   403 blocked address or foreign Origin, 415 body not application/json, 404 other paths, 405 other verbs (Allow lists the verbs),
#   413 body over MAX_MESSAGE_BYTES, 400 bad JSON / UTF-8 and events/* (events need a
#   connection that stays open), 503 over MAX_CONNECTIONS.  OPTIONS answers 200 + Allow.
#
# Browsers (cross-site request forgery):
#   * a request body needs Content-Type: application/json (charset, if any, utf-8), else
#     415 -- the types a page may send cross-origin without asking first (text/plain, forms)
#     are refused before anything runs; an empty body needs no type;
#   * a request whose Origin is a web origin (http(s)://...) other than the server's own
#     (https://<Host header>) and not listed in REST_ALLOWED_ORIGINS is refused with 403,
#     as is "Origin: null" and a Sec-Fetch-Site: cross-site|same-site request without an
#     Origin; requests without these headers (curl, scripts) are not affected. Listed
#     origins get CORS headers (no Access-Control-Allow-Credentials: pages must send the
#     Authorization header themselves; a browser's cached Basic login is never used);
#   * a 401 offers WWW-Authenticate: Basic only to clients that do not look like a browser
#     (no Origin, no Sec-Fetch-* header, Accept without text/html, User-Agent not
#     "Mozilla/..."); browsers get WWW-Authenticate: Bearer, so they show no login prompt
#     and never cache Basic credentials for the server.
#   The WebSocket upgrade (transports/site.py) is routed before any of this and accepts
#   every Origin: it carries no ambient credentials.
#
# Every body is compact JSON with sorted keys, Content-Type application/json; charset=utf-8.
# Each request is a one-shot session through the same pipeline as the other transports;
# tokens outlive it (they end with rpc/auth_clear or their TTL).
"""REST over HTTPS: each request becomes a one-shot session (wire format above)."""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server as web_server

from sysadmd.wire import envelope
from sysadmd.config import normalize_origin
from sysadmd.wire.envelope import ApiError, Request
from sysadmd.session import Session

log = Logger()

ALLOWED_METHODS = (b"GET", b"POST", b"PUT")
ALLOW_HEADER = b"GET, POST, PUT, OPTIONS"
JSON_TYPE = b"application/json; charset=utf-8"
WWW_AUTHENTICATE = b'Basic realm="sysadmd"'
WWW_AUTHENTICATE_BROWSER = b'Bearer realm="sysadmd"'
REST_MESSAGES = {"415": "Unsupported Media Type"}  # codes only REST answers
CORS_ALLOW_METHODS = b"GET, POST, PUT"
CORS_ALLOW_HEADERS = b"Authorization, Content-Type"
PATH_HELP = "REST requests go to /<namespace>/<name>, for example /rpc/query"

# Bytes of an oversized body we read and drop after answering 413, so the client gets to
# read the answer (closing while it still sends would reset the connection); past this
# the connection is closed.
DISCARD_LIMIT = 1024 * 1024


class RestChannel:
    """The one-shot session's way out: collects anything pushed while the request runs."""

    def __init__(self, limit: int):
        self.limit = limit
        self.texts: List[str] = []
        self.size = 0
        self.closed: Optional[Tuple[int, str]] = None

    def send_text(self, text: str) -> None:
        # Only the reply goes back over HTTP; keep pushed messages bounded all the same.
        if self.size + len(text) <= self.limit:
            self.texts.append(text)
            self.size += len(text)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)


class RestRequest(web_server.Request):
    """A request that refuses a body over ``site.max_body_bytes`` without storing it.

    Content-Length is checked as soon as the headers are in, a chunked body as it
    arrives; either way 413 is answered at once and the rest of the body is dropped.
    """

    too_large = False
    _refused = False

    def _limit(self) -> Optional[int]:
        return getattr(self.channel.site, "max_body_bytes", None)

    def gotLength(self, length: Optional[int]) -> None:
        self._received = 0
        self._discarded = 0
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.content = io.BytesIO()  # stays empty: chunks are dropped
            expects = self.requestHeaders.getRawHeaders(b"expect") or []
            if any(e.lower() == b"100-continue" for e in expects):
                # The client waits for "100 Continue" before sending: answer instead of it.
                self.requestHeaders.removeHeader(b"expect")
                self._refuse(length, limit, close=True)
            else:
                self._refuse(length, limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            self._discarded += len(data)
            if self._discarded > DISCARD_LIMIT and self.channel is not None:
                self.channel.loseConnection()
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self.content.close()
            self.content = io.BytesIO()  # stays empty: chunks are dropped
            self._refuse(None, limit)
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        if self._refused:
            # The 413 went out already; the body is now fully read, so closing is safe.
            if self.channel is not None:
                self.channel.loseConnection()
            return
        super().process()

    def _refuse(self, length: Optional[int], limit: int, close: bool = False) -> None:
        self.too_large = True
        self._refused = True
        size = f"{length} bytes" if length is not None else f"more than {limit} bytes"
        body = envelope.encode(_error_body("413", f"request body is {size}; the limit is {limit} (MAX_MESSAGE_BYTES)"))
        payload = body.encode("utf-8")
        head = (
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: " + JSON_TYPE + b"\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        self.channel.transport.write(head + payload)
        if close:
            self.channel.loseConnection()


def limit_request_bodies(site: web_server.Site, max_body_bytes: int) -> None:
    """Make *site* refuse request bodies over *max_body_bytes* (see :class:`RestRequest`)."""
    site.requestFactory = RestRequest
    site.max_body_bytes = max_body_bytes


class RestResource(resource.Resource):
    """Every path of the HTTPS site that is not a WebSocket upgrade."""

    isLeaf = True

    def __init__(self, server: Any):
        super().__init__()
        self.server = server

    @property
    def max_body_bytes(self) -> int:
        return self.server.config.max_message_bytes

    def render(self, request: web_server.Request):
        request.setHeader(b"cache-control", b"no-store")
        method = request.method.upper()
        peer = request.getClientAddress().host
        blocked = self.server.address_refusal(peer)
        if blocked is not None:
            return _finish_error(request, blocked.http_status, blocked.reason)
        refusal, cors_origin = self._check_origin(request)
        if refusal is not None:
            return _finish_error(request, "403", refusal)
        if cors_origin is not None:
            request.setHeader(b"access-control-allow-origin", cors_origin.encode("ascii"))
            request.setHeader(b"vary", b"Origin")
        if method == b"OPTIONS":
            request.setHeader(b"allow", ALLOW_HEADER)
            if cors_origin is not None and request.getHeader(b"access-control-request-method"):
                request.setHeader(b"access-control-allow-methods", CORS_ALLOW_METHODS)
                request.setHeader(b"access-control-allow-headers", CORS_ALLOW_HEADERS)
                request.setHeader(b"access-control-max-age", b"600")
            request.setHeader(b"content-length", b"0")
            return b""
        route = _route(request.path)
        if route is None:
            return _finish_error(request, "404", PATH_HELP)
        if method not in ALLOWED_METHODS:
            request.setHeader(b"allow", ALLOW_HEADER)
            return _finish_error(request, "405", f"method {method.decode('latin-1')} not allowed; use GET, POST or PUT")
        namespace, name = route
        if namespace.lower() == "events":
            return _finish_error(request, "400", "events need a WebSocket or the local socket")
        if namespace.lower() == "rpc" and name.lower() == "auth_ssl":
            return _finish_error(request, "400", "rpc/auth_ssl needs a WebSocket (its challenge belongs to one connection); log in with Basic or a token")
        if getattr(request, "too_large", False):
            return _finish_error(request, "413", f"request body over the limit of {self.max_body_bytes} bytes (MAX_MESSAGE_BYTES)")
        try:
            api_request = self._read_body(request, namespace, name)
        except ApiError as e:
            return _finish_error(request, e.code, e.detail)
        refused = self.server.connection_allowed(peer)
        if refused is not None:
            if refused.retry_after is not None:
                request.setHeader(b"retry-after", str(refused.retry_after).encode("ascii"))
            return _finish_error(request, refused.http_status, refused.reason)
        d = self._run(request, peer, api_request)
        d.addErrback(lambda f: log.failure("answering a REST request from {peer} failed", f, peer=peer))
        return web_server.NOT_DONE_YET

    # --- browsers -----------------------------------------------------------------------
    def _check_origin(self, request: web_server.Request) -> Tuple[Optional[str], Optional[str]]:
        """``(refusal, cors_origin)``: why a browser request from another site is refused,
        or the configured origin to answer with CORS headers (``None`` for neither)."""
        origins = request.requestHeaders.getRawHeaders(b"origin") or []
        allowed = self.server.config.rest_allowed_origins
        own = _own_origin(request)
        cors: Optional[str] = None
        for raw in origins:
            text = raw.decode("latin-1").strip()
            origin = normalize_origin(text)
            if origin is None:
                if text.lower().startswith(("http:", "https:")):
                    return f"malformed Origin header {_shorten(text)}", None
                continue  # not a web origin: no browser page sent this (upstream's clients send "sysadm-client")
            if origin == own:
                continue
            if origin in allowed:
                cors = origin
                continue
            if origin == "null":
                return ("requests from pages without an origin (Origin: null: sandboxed or local pages) are refused; "
                        "call the API from the server's own origin or without a browser"), None
            return (f"requests from the web origin {_shorten(origin)} are refused; only {own or 'the server itself'} "
                    "and the origins listed in REST_ALLOWED_ORIGINS may call the API from a browser"), None
        if not origins:
            site = (request.getHeader(b"sec-fetch-site") or b"").strip().lower()
            if site in (b"cross-site", b"same-site"):
                return (f"a browser request from another site (Sec-Fetch-Site: {site.decode('latin-1')}) without an "
                        "Origin header is refused"), None
        return None, cors

    # --- body ---------------------------------------------------------------------------
    def _read_body(self, request: web_server.Request, namespace: str, name: str) -> Request:
        limit = self.max_body_bytes
        request.content.seek(0)
        raw = request.content.read(limit + 1)
        if len(raw) > limit:
            raise ApiError("413", f"request body over the limit of {limit} bytes (MAX_MESSAGE_BYTES)")
        if raw:
            problem = _json_type_problem(request.getHeader(b"content-type"))
            if problem is not None:
                raise ApiError("415", f"{problem}; send the body as JSON with Content-Type: application/json "
                                      "(a request without a body needs no type)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError("400", f"request body is not valid UTF-8 (byte {e.start})") from None
        obj: Any = {}
        if text.strip():
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise ApiError("400", f"request body is not valid JSON: {e}") from None
        if isinstance(obj, dict) and "args" in obj:
            request_id = obj.get("id") if isinstance(obj.get("id"), str) else ""
            return Request(namespace=namespace, name=name, id=request_id, args=obj["args"], raw=obj)
        return Request(namespace=namespace, name=name, id="", args=obj, raw=obj if isinstance(obj, dict) else {})

    # --- the call -------------------------------------------------------------------------
    @defer.inlineCallbacks
    def _run(self, request: web_server.Request, peer: str, api_request: Request):
        server = self.server
        channel = RestChannel(server.config.max_session_buffer_bytes)
        session = server.open_session("rest", peer, channel, timers=False)
        try:
            try:
                yield self._authenticate(request, session)
                message = yield defer.maybeDeferred(server.api.handle, session, api_request)
            except ApiError as e:
                message = envelope.error(e.code, e.detail)
            except Exception:
                log.failure("REST {ns}/{name} from {peer} failed", ns=api_request.namespace, name=api_request.name, peer=peer)
                message = envelope.error("500", "internal error while handling the request; the server log has the details")
        finally:
            # A token issued or presented here belongs to the client, not to this one-shot
            # session: detach it so closing the session does not revoke it.
            session.token = None
            session.lost()
        if request.channel is None or getattr(request, "_disconnected", False):
            return  # the client went away; nothing to answer
        if message is None:
            request.setResponseCode(204)
            request.finish()
            return
        if message.get("name") == "error" and message.get("namespace") == "error":
            _write_error(request, message["args"])
        else:
            _write_json(request, 200, {"args": message.get("args")})

    @defer.inlineCallbacks
    def _authenticate(self, request: web_server.Request, session: Session):
        """Log *session* in from the Authorization header, if there is one."""
        raw = request.getHeader(b"authorization")
        if not raw:
            return
        scheme, _, credentials = raw.decode("latin-1").strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        server = self.server
        if scheme == "basic":
            user, password = _basic_credentials(credentials)
            identity = yield server.password_identity(session, user, password)
            session.login(identity, None)
            server.blacklist.success(session.peer)
        elif scheme == "bearer":
            identity = server.tokens.check(credentials) if credentials else None
            if identity is None:
                server.login_failed(session, "", "token")
                raise ApiError("401", "Bearer token unknown or expired; get one with rpc/auth")
            # Keeping the token on the session lets rpc/auth_clear revoke it.
            session.login(identity, credentials)
        else:
            raise ApiError("401", "unsupported Authorization scheme; use Basic (user:password) or Bearer (token)")


def _shorten(text: str, limit: int = 100) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _own_origin(request: web_server.Request) -> Optional[str]:
    """``https://<Host header>`` in canonical form, or ``None`` without a usable Host."""
    host = request.getHeader(b"host")
    if not host:
        return None
    origin = normalize_origin("https://" + host.decode("latin-1").strip())
    return origin if origin not in (None, "null") else None


def _json_type_problem(raw: Optional[bytes]) -> Optional[str]:
    """``None`` when *raw* (a Content-Type value) is JSON in UTF-8, else what is wrong."""
    if raw is None:
        return "the request body has no Content-Type"
    text = raw.decode("latin-1")
    media, *params = text.split(";")
    if media.strip().lower() != "application/json":
        return f"Content-Type {_shorten(text.strip(), 60)} is not application/json"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"charset {_shorten(value.strip(), 30)} is not supported (only utf-8)"
    return None


def _looks_like_browser(request: web_server.Request) -> bool:
    headers = request.requestHeaders
    if headers.hasHeader(b"origin"):
        return True
    if any(name.lower().startswith(b"sec-fetch-") for name, _ in headers.getAllRawHeaders()):
        return True
    accept = b",".join(headers.getRawHeaders(b"accept") or []).lower()
    if b"text/html" in accept:
        return True
    agent = request.getHeader(b"user-agent") or b""
    return agent.startswith(b"Mozilla/")


def _challenge(request: web_server.Request) -> None:
    """The WWW-Authenticate header of a 401: Basic only for clients that are no browser."""
    header = WWW_AUTHENTICATE_BROWSER if _looks_like_browser(request) else WWW_AUTHENTICATE
    request.setHeader(b"www-authenticate", header)


def _route(path: bytes) -> Optional[Tuple[str, str]]:
    """``(namespace, name)`` from ``/<namespace>/<name>`` (a trailing slash is tolerated)."""
    if not path.startswith(b"/"):
        return None
    segments = path[1:].split(b"/")
    if len(segments) == 3 and segments[2] == b"":
        segments = segments[:2]
    if len(segments) != 2:
        return None
    try:
        namespace, name = (unquote_to_bytes(s).decode("utf-8") for s in segments)
    except UnicodeDecodeError:
        return None
    if not namespace or not name:
        return None
    return namespace, name


def _basic_credentials(credentials: str) -> Tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise ApiError("401", "Authorization: Basic needs base64 of user:password") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise ApiError("401", "Authorization: Basic needs base64 of user:password") from None
    return user, password


def _error_body(code: str, detail: str) -> dict:
    args = envelope.error(code, detail)["args"]
    if code in REST_MESSAGES:
        args["message"] = REST_MESSAGES[code]
    return {"args": args}


def _status(code: str) -> int:
    try:
        status = int(code)
    except ValueError:
        return 500
    return status if 200 <= status <= 599 else 500


def _write_json(request: web_server.Request, status: int, body: Any) -> None:
    request.setResponseCode(status)
    if status == 204:
        request.finish()
        return
    payload = envelope.encode(body).encode("utf-8")
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", str(len(payload)).encode())
    request.write(payload)
    request.finish()


def _write_error(request: web_server.Request, args: dict) -> None:
    status = _status(args.get("code", "500"))
    if status == 401:
        _challenge(request)
    _write_json(request, status, {"args": args})


def _finish_error(request: web_server.Request, code: str, detail: str) -> bytes:
    """Synchronous error answer, returned from ``render``."""
    status = _status(code)
    if status == 401:
        _challenge(request)
    request.setResponseCode(status)
    payload = envelope.encode(_error_body(code, detail)).encode("utf-8")
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", str(len(payload)).encode())
    return payload
