"""``GET /_download/<job>?auth_token=…`` and ``POST /_upload`` on the HTTPS site.

Download: the token alone authorises (the seed's form); a request that also carries an
Authorization header must be the same user, else 401.  While the job still runs the
request waits for it (at most :data:`DOWNLOAD_WAIT` seconds), then answers 425 with
``Retry-After``.  The spool file is served by twisted.web's ``static.File`` producers
(64 KiB at a time, never whole in memory) with ``Content-Length``, ``Accept-Ranges``,
single ``Range`` requests (206; 416 when unsatisfiable; a multi-range request gets the
whole file), ``Content-Disposition: attachment`` with the sanitised file name,
``X-Content-SHA256`` (hex SHA-256 of the whole file) and ``ETag`` (the same digest).

Upload: :class:`TransferRequest` diverts the body of ``POST /_upload`` from memory: it
is parsed as it arrives (:mod:`sysadmd.transfers.multipart`); ``data`` (JSON, at most
:data:`DATA_MAX` bytes) must come first, ``file`` is written straight to a spool file.
Bodies over ``UPLOAD_MAX_BYTES`` are answered 413 at once.  The login is checked as soon
as the headers are in, through the REST transport's own login path (blacklist, password
check limits, tokens), with the connection's reading paused meanwhile: a client that
cannot log in (or lacks full access, which every upload method needs) is answered
401/403 before any byte of its body is spooled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server as web_server, static

from sysadmd.wire import envelope
from sysadmd.api import require_full_access
from sysadmd.wire.envelope import ApiError
from sysadmd.runtime.listeners import handshake_finished
from sysadmd.transfers.multipart import MultipartError, MultipartParser, boundary_of
from sysadmd.transfers.service import MAX_UPLOADS
from sysadmd.transports.rest import JSON_TYPE, RestChannel, RestRequest, RestResource, _error_body, _finish_error, \
    _status, _write_error, _write_json

log = Logger()

DOWNLOAD_WAIT = 30.0
RETRY_AFTER = b"5"
DATA_MAX = 64 * 1024
SPOOL_BUFFER = 256 * 1024  # write buffer of an upload's spool file
UPLOAD_PATHS = (b"/_upload", b"/_upload/")


def is_transfer_path(path: bytes) -> bool:
    return path.startswith(b"/_download/") or path in UPLOAD_PATHS


class SpoolFull(Exception):
    pass


class _DataSink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, block: bytes) -> None:
        if len(self.data) + len(block) > DATA_MAX:
            raise MultipartError(f"field 'data' is larger than {DATA_MAX} bytes")
        self.data += block


class UploadBody:
    """Stands in for ``request.content`` of an upload: parses the multipart body as it
    arrives and spools the ``file`` part; never holds the body."""

    def __init__(self, transfers: Any, boundary: bytes):
        self.transfers = transfers
        self.parser = MultipartParser(boundary, self._part)
        self.data: Optional[_DataSink] = None
        self.file = None
        self.spool: Optional[str] = None
        self.size = 0
        self.error: Optional[str] = None
        self.error_code = "400"
        self.handed_over = False
        self.room = transfers.spool_max - transfers.spool_used()  # a body without Content-Length is bounded here

    def _part(self, name: str, filename: Optional[str], headers: dict) -> Any:
        if name == "data":
            if self.data is not None:
                raise MultipartError("field 'data' appears twice")
            if self.file is not None:
                raise MultipartError("field 'data' must come before field 'file' (the order is data, then file)")
            self.data = _DataSink()
            return self.data
        if name == "file":
            if self.data is None:
                raise MultipartError("field 'file' came before field 'data'; send data first, then file "
                                     "(curl -F 'data=…' -F 'file=@…')")
            if self.file is not None:
                raise MultipartError("field 'file' appears twice")
            self.spool = self.transfers.spool_path("up")
            fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = os.fdopen(fd, "wb", buffering=SPOOL_BUFFER)
            return _FileSink(self)
        raise MultipartError(f"unknown field {name[:40]!r} (expected data, then file)")

    def write(self, block: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.parser.feed(block)
        except SpoolFull as e:
            self.error, self.error_code = str(e), "507"
            self.discard()
        except MultipartError as e:
            self.error = str(e)
            self.discard()
        except OSError as e:
            self.error = f"the upload could not be spooled: {e.strerror}"
            self.discard()

    # the sink of the 'file' part
    def _file_write(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self.room:
            raise SpoolFull(f"the upload does not fit in the spool ({self.room} bytes free; TRANSFER_SPOOL_MAX_BYTES)")
        self.file.write(block)

    def finish(self) -> None:
        """The body is complete: check the multipart framing, close the spool file."""
        if self.error is None:
            try:
                self.parser.close()
                if self.data is None:
                    raise MultipartError("no field 'data' (expected data, then file)")
                if self.file is None:
                    raise MultipartError("no field 'file' (expected data, then file)")
            except MultipartError as e:
                self.error = str(e)
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.error is not None:
            self.discard()

    def discard(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.spool is not None and not self.handed_over:
            try:
                os.unlink(self.spool)
            except FileNotFoundError:
                pass
            self.spool = None

    # what twisted.web does with request.content
    def seek(self, *args: Any) -> int:
        return 0

    def tell(self) -> int:
        return 0  # "no content": twisted.web then does not try to parse the form itself

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        self.discard()


class _FileSink:
    def __init__(self, body: UploadBody):
        self.body = body

    def write(self, block: bytes) -> None:
        self.body._file_write(block)


class TransferRequest(RestRequest):
    """The site's request class: REST's body limit, except for ``POST /_upload``,
    whose body goes to :class:`UploadBody` up to ``UPLOAD_MAX_BYTES``."""

    upload: Optional[UploadBody] = None
    upload_session: Any = None  # the upload's logged-in one-shot session (TransferResource closes it)
    _auth_pending = False
    _waiting: Any = None  # requestReceived's arguments while the login is being checked

    def _limit(self) -> Optional[int]:
        if self.upload is not None:
            return self.channel.site.transfers.upload_max
        return super()._limit()

    def gotLength(self, length: Optional[int]) -> None:
        channel = self.channel
        transfers = getattr(channel.site, "transfers", None)
        path = getattr(channel, "_path", b"").split(b"?", 1)[0]
        command = getattr(channel, "_command", b"").upper()
        if transfers is None or command != b"POST" or path not in UPLOAD_PATHS:
            return super().gotLength(length)
        self._received = 0
        self._discarded = 0
        self._parsePOSTFormSubmission = False
        refusal = self._precheck(transfers, length)
        if refusal is not None:
            self.content = _Discard()
            self._reject(*refusal)
            return
        self.upload = UploadBody(transfers, self._boundary)
        transfers.uploads_receiving += 1
        self._transfers = transfers
        self._counted = True
        self.content = self.upload
        # The login is checked before the body is read: no byte of it reaches the disk
        # for a client that cannot log in.  Bytes that came with the headers are parsed;
        # the request waits for the check (requestReceived) if they were all of it.
        self._auth_pending = True
        channel.transport.pauseProducing()
        d = self._log_in(transfers)
        d.addErrback(lambda f: log.failure("checking the login of an upload failed", f))

    @defer.inlineCallbacks
    def _log_in(self, transfers: Any):
        server = transfers.server
        peer = self.getClientAddress().host
        session = server.open_session("rest", peer, RestChannel(4096), timers=False)
        try:
            yield RestResource(server)._authenticate(self, session)
            if session.identity is None:
                raise ApiError("401", "POST /_upload needs Authorization: Basic (user:password) or Bearer (token)")
            require_full_access(session, "uploading files")
        except Exception as e:
            session.token = None
            session.lost()
            self._auth_pending = False
            if not isinstance(e, ApiError):
                log.failure("checking the login of an upload from {peer} failed", peer=peer)
                e = ApiError("500", "internal error while checking the login; the server log has the details")
            self.upload.discard()
            self._uncount()
            if self.channel is None or self.channel.transport is None:
                return
            status = _status(e.code)
            self._reject(status, http.RESPONSES.get(status, b"Error").decode("latin-1"), e.code, e.detail)
            self._resume()
            return
        self._auth_pending = False
        if self.channel is None or self.channel.transport is None:
            session.token = None
            session.lost()
            return
        self.upload_session = session
        handshake_finished(self.channel.transport)  # a long body is no slow handshake; the idle timeout still runs
        self._resume()

    def _resume(self) -> None:
        self.channel.transport.resumeProducing()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self.requestReceived(*waiting)

    def _precheck(self, transfers: Any, length: Optional[int]):
        server = transfers.server
        peer = self.channel.transport.getPeer().host if self.channel.transport is not None else ""
        if server.blacklist.blocked_for(peer) > 0:
            return 403, "Forbidden", "403", server.connection_allowed(peer) or "address blocked"
        refusal = server.connection_allowed(peer)
        if refusal is not None:
            return 503, "Service Unavailable", "503", refusal
        cross_site, _ = RestResource(server)._check_origin(self)
        if cross_site is not None:
            return 403, "Forbidden", "403", cross_site
        raw = (self.requestHeaders.getRawHeaders(b"authorization") or [b""])[0].decode("latin-1").strip()
        scheme, _, credentials = raw.partition(" ")
        if scheme.lower() not in ("basic", "bearer"):
            return 401, "Unauthorized", "401", "POST /_upload needs Authorization: Basic (user:password) or Bearer (token)"
        try:
            self._boundary = boundary_of((self.requestHeaders.getRawHeaders(b"content-type") or [None])[0])
        except MultipartError as e:
            return 400, "Bad Request", "400", f"POST /_upload: {e}"
        limit = transfers.upload_max
        if length is not None and length > limit:
            return 413, "Payload Too Large", "413", f"upload is {length} bytes; the limit is {limit} (UPLOAD_MAX_BYTES)"
        if transfers.uploads_receiving >= MAX_UPLOADS:
            return 503, "Service Unavailable", "503", f"too many uploads at once ({MAX_UPLOADS}); try again shortly"
        room = transfers.spool_max - transfers.spool_used()
        if length is not None and length > room:
            return 507, "Insufficient Storage", "507", (f"upload is {length} bytes; the spool has room for {room} "
                                                         "(TRANSFER_SPOOL_MAX_BYTES)")
        return None

    def _reject(self, status: int, reason: str, code: str, detail: str) -> None:
        self.too_large = True
        self._refused = True
        payload = envelope.encode(_error_body(code, detail)).encode("utf-8")
        extra = b'WWW-Authenticate: Basic realm="sysadmd"\r\n' if status == 401 else b""
        extra += b"Retry-After: " + RETRY_AFTER + b"\r\n" if status == 503 else b""
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: " % (status, reason.encode()) + JSON_TYPE + b"\r\n" + extra
                + b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n")
        self.channel.transport.write(head + payload)
        expects = self.requestHeaders.getRawHeaders(b"expect") or []
        if any(e.lower() == b"100-continue" for e in expects):
            self.requestHeaders.removeHeader(b"expect")
            self.channel.loseConnection()

    def _refuse(self, length: Optional[int], limit: int, close: bool = False) -> None:
        if self.upload is None:
            return super()._refuse(length, limit, close)
        self.upload.discard()
        self._uncount()
        self._reject(413, "Payload Too Large", "413", f"upload is more than {limit} bytes (UPLOAD_MAX_BYTES)")
        if close:
            self.channel.loseConnection()

    _counted = False

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._transfers.uploads_receiving -= 1

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._auth_pending:
            self._waiting = (command, path, version)  # the whole body came with the headers
            return
        if self.upload is not None and not self._refused:
            self.upload.finish()
            self._uncount()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self.upload is not None and self._counted:
            self.upload.discard()  # cut off mid-body: the spool goes
            self._uncount()
        if self.upload_session is not None and not getattr(self, "upload_done", False):
            self.upload_session.token = None
            self.upload_session.lost()
            self.upload_session = None
        super().connectionLost(reason)


class _Discard:
    def write(self, block: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


class TransferResource(resource.Resource):
    """``/_download/<job>`` and ``/_upload``."""

    isLeaf = True

    def __init__(self, transfers: Any):
        super().__init__()
        self.transfers = transfers
        self.server = transfers.server
        self.rest = RestResource(transfers.server)

    def render(self, request: web_server.Request):
        request.setHeader(b"cache-control", b"no-store")
        peer = request.getClientAddress().host
        if self.server.blacklist.blocked_for(peer) > 0:
            return _finish_error(request, "403", self.server.connection_allowed(peer) or "address blocked")
        method = request.method.upper()
        if request.path in UPLOAD_PATHS:
            # Uploads log in like REST, so they get REST's cross-site checks.  Downloads do
            # not: the token in the URL is the only credential (nothing ambient), and a GET
            # changes nothing, so a link followed from another site works.
            refusal, _ = self.rest._check_origin(request)
            if refusal is not None:
                return _finish_error(request, "403", refusal)
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _finish_error(request, "405", "POST /_upload takes multipart/form-data (fields data, then file)")
            d = defer.maybeDeferred(self._upload, request, peer)
        else:
            if method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                return _finish_error(request, "405", "GET /_download/<job id>?auth_token=<token>")
            d = self._download(request, peer)
        d.addErrback(lambda f: log.failure("transfer request from {peer} failed", f, peer=peer))
        return web_server.NOT_DONE_YET

    # --- download -------------------------------------------------------------------------
    @defer.inlineCallbacks
    def _download(self, request: web_server.Request, peer: str):
        transfers = self.transfers
        tail = request.path[len(b"/_download/"):]
        token = (request.args.get(b"auth_token") or [b""])[0].decode("latin-1")
        job_id = int(tail) if tail.isdigit() and len(tail) < 18 else None
        grant = transfers.tokens.check(token, job_id) if job_id is not None else None
        if grant is None:
            self._failed(peer, "download token")
            return self._error(request, "401", "download token unknown, expired or not for this job; "
                                               "ask core/download for a new one")
        if request.getHeader(b"authorization"):
            session = self.server.open_session("rest", peer, RestChannel(4096), timers=False)
            try:
                yield self.rest._authenticate(request, session)
                user = session.identity.user if session.identity is not None else None
            except ApiError as e:
                return self._error(request, e.code, e.detail)
            finally:
                session.token = None
                session.lost()
            if user != grant.user:
                self._failed(peer, "download token")
                return self._error(request, "401", "this download token belongs to another user")
        dl = transfers.downloads.get(job_id)
        if dl is None:
            return self._error(request, "410", f"job {job_id}'s download is gone (the daemon restarted)")
        if not dl.done:
            yield transfers.wait_download(dl, DOWNLOAD_WAIT)
            if request.channel is None or getattr(request, "_disconnected", False):
                return
            if not dl.done:
                request.setHeader(b"retry-after", RETRY_AFTER)
                return self._error(request, "425", f"job {job_id} is still preparing the file; try again "
                                                   "(core/job_wait tells when it is done)")
        if dl.error is not None:
            return self._error(request, "409", f"job {job_id} failed: {dl.error}")
        if request.channel is None or getattr(request, "_disconnected", False):
            return
        ranges = request.getHeader(b"range")
        if ranges is not None and b"," in ranges:
            request.requestHeaders.removeHeader(b"range")  # single ranges only: send the whole file
        request.setHeader(b"content-disposition", _disposition(dl.filename))
        request.setHeader(b"x-content-sha256", dl.sha256.encode("ascii"))
        request.setHeader(b"etag", b'"' + dl.sha256.encode("ascii") + b'"')
        body = _SpoolFile(dl.path, defaultType="application/octet-stream").render(request)
        if body is not web_server.NOT_DONE_YET:
            if body:
                request.write(body)
            request.finish()

    def _failed(self, peer: str, method: str) -> None:
        session = self.server.open_session("rest", peer, RestChannel(4096), timers=False)
        try:
            self.server.login_failed(session, "", method, "unknown, expired or foreign download token")
        finally:
            session.lost()

    @staticmethod
    def _error(request: web_server.Request, code: str, detail: str) -> None:
        if request.channel is None or getattr(request, "_disconnected", False):
            return
        _write_error(request, envelope.error(code, detail)["args"])

    # --- upload -----------------------------------------------------------------------------
    def _upload(self, request: web_server.Request, peer: str) -> None:
        body = getattr(request, "upload", None)
        if body is None:
            return self._error(request, "400", "POST /_upload needs a multipart/form-data body (fields data, then file)")
        try:
            if body.error is not None:
                return self._error(request, body.error_code, f"POST /_upload: {body.error}")
            try:
                data = json.loads(bytes(body.data.data).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                return self._error(request, "400", f"field 'data' is not valid JSON: {e}")
            session = request.upload_session
            if session is None:
                return self._error(request, "401", "POST /_upload needs Authorization: Basic or Bearer")
            try:
                job_id = self.transfers.start_upload(session, data, body.spool, body.size)
                body.handed_over = True
            except ApiError as e:
                return self._error(request, e.code, e.detail)
            if request.channel is not None:
                _write_json(request, 200, {"job_id": job_id})
        finally:
            body.discard()
            request.upload_done = True
            if request.upload_session is not None:
                request.upload_session.token = None
                request.upload_session.lost()
                request.upload_session = None


class _SpoolFile(static.File):
    contentTypes: dict = {}  # never guess a type from the name: application/octet-stream


def _disposition(filename: str) -> bytes:
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}".encode("ascii")
