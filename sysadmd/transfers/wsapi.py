"""File transfers in chunks over the API itself: WebSockets, the local socket, the bridge.

``core/upload_open`` / ``upload_write`` / ``upload_close`` and ``core/download_open`` /
``download_read`` / ``download_close`` (docs/protocol.md §6.17).  Each chunk is one ordinary
request carrying at most :data:`CHUNK_MAX` bytes as base64, so a bridge relays it like
any other request and the client's window of requests in flight is the flow control:
neither end buffers more than that window.

The same primitives as ``/_upload`` and ``/_download`` (:mod:`sysadmd.transfers.service`):
an upload's chunks go to a spool file (counted against ``TRANSFER_SPOOL_MAX_BYTES``, and
at most ``UPLOAD_MAX_BYTES``), hashed as they arrive; ``upload_close`` with the matching
SHA-256 runs ``filesystem.put`` on it (temp file + rename, or append).  A download spools
the file first (``filesystem.get``: a consistent copy and its SHA-256), then serves byte
ranges of that copy.  Every transfer is a job: its progress is the percentage of bytes
received or sent.

An upload outlives its connection: ``upload_open`` of the same path by the same user
returns the open upload and the offset it has reached, which is how a client resumes.
An upload or download nobody touches for :data:`IDLE_TIMEOUT` seconds is discarded (its
spool file deleted, its job failed).  A wrong SHA-256 at ``upload_close`` discards the
upload (400): the bytes differ somewhere, and resuming at the end cannot repair that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from sysadmd.api import require_full_access
from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.jobs.model import Owner
from sysadmd.transfers import service as xfer
from sysadmd.transfers.service import Aborted, Download, TransferFailed, TransferService, new_box

log = Logger()

CHUNK_MAX = 1024 * 1024  # decoded bytes in one upload_write / download_read
B64_MAX = 4 * ((CHUNK_MAX + 2) // 3)
IDLE_TIMEOUT = 300.0  # seconds an open upload or download may go untouched
UPLOADS_PER_SESSION = 4
UPLOADS_TOTAL = 16
DOWNLOADS_PER_USER = 8
DOWNLOADS_TOTAL = 32
PROGRESS_INTERVAL = 0.25
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

NAMES: List[str] = ["upload_open", "upload_write", "upload_close", "download_open", "download_read",
                    "download_close"]


@dataclass
class _Upload:
    upload_id: str
    job_id: int
    user: str
    session: Any
    path: str
    mode: int
    append: bool
    size: Optional[int]
    spool: str
    fd: int
    run: Callable[..., Any]
    last_used: float
    received: int = 0
    hash: Any = field(default_factory=hashlib.sha256)
    closing: bool = False
    progress_at: float = 0.0


@dataclass
class _Download:
    job_id: int
    user: str
    path: str
    dl: Download
    fd: int
    last_used: float
    sent: int = 0
    finished: bool = False
    progress_at: float = 0.0


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError("400", f"{what} must be a whole number from {low} to {high}, got {type_name(value)}"
                              + (f" {value}" if isinstance(value, int) else ""))
    return value


class WsTransfers(service.Service):
    name = "ws-transfers"

    def __init__(self, transfers: TransferService, reactor: Any):
        self.transfers = transfers
        self.table = transfers.table
        self.reactor = reactor
        self.clock = reactor  # tests swap in a task.Clock for the idle timeout
        self.idle_timeout = IDLE_TIMEOUT
        self.uploads: Dict[str, _Upload] = {}
        self.by_path: Dict[tuple, str] = {}  # (user, path) -> upload_id, for resuming
        self.downloads: Dict[int, _Download] = {}
        self._sweep: Optional[task.LoopingCall] = None

    # --- service --------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = self.reactor
        self._sweep.start(min(60.0, self.idle_timeout / 4), now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        # Their jobs end "interrupted" at the next start; the spool is emptied then too.
        for up in list(self.uploads.values()):
            _close(up.fd)
        for down in list(self.downloads.values()):
            _close(down.fd)

    def sweep(self) -> None:
        """Discard uploads and downloads untouched for ``idle_timeout`` seconds."""
        limit = self.clock.seconds() - self.idle_timeout
        for up in list(self.uploads.values()):
            if not up.closing and up.last_used < limit:
                self._discard(up, "failed", f"no data for {self.idle_timeout:g} s: the partial upload "
                                            f"({up.received} bytes) was discarded")
        for down in list(self.downloads.values()):
            if down.last_used < limit:
                self._release(down, f"not read for {self.idle_timeout:g} s after {down.sent} of {down.dl.size} bytes")

    # --- uploads --------------------------------------------------------------------------
    def upload_open(self, session: Any, request: Any) -> Dict[str, Any]:
        require_full_access(session, "core/upload_open")
        params = xfer._split(request.args, ("path", "mode", "append", "size"), "core/upload_open args")
        options = {k: params[k] for k in ("mode", "append") if k in params}
        run = self.transfers._prepare_put([params.get("path"), options])  # validates path, mode, append
        path, mode, append = params["path"], options.get("mode", 0o644), options.get("append", False)
        size = params.get("size")
        if size is not None:
            size = _whole(size, "'size'", 0, 2 ** 62)
            if size > self.transfers.upload_max:
                raise ApiError("413", f"'size' {size} is over the limit of {self.transfers.upload_max} bytes "
                                      "(UPLOAD_MAX_BYTES)")
        user = session.identity.user
        existing = self.uploads.get(self.by_path.get((user, path), ""))
        if existing is not None and not existing.closing:
            if (existing.mode, existing.append) != (mode, append) or (size is not None and existing.size != size):
                raise ApiError("409", f"an upload to {path} is already open with other options "
                                      f"(mode {existing.mode:o}, append {str(existing.append).lower()}, size "
                                      f"{existing.size}); finish it or abort job {existing.job_id} (core/job_abort)")
            existing.session = session
            existing.last_used = self.clock.seconds()
            return self._opened(existing)
        mine = sum(1 for u in self.uploads.values() if u.session is session)
        if mine >= UPLOADS_PER_SESSION:
            raise ApiError("429", f"this connection already has {mine} uploads open (at most {UPLOADS_PER_SESSION}); "
                                  "close one first")
        if len(self.uploads) >= UPLOADS_TOTAL:
            raise ApiError("503", f"the server has {len(self.uploads)} uploads open (at most {UPLOADS_TOTAL}); "
                                  "try again later")
        if size is not None and size > self.transfers._room():
            raise ApiError("507", f"the upload of {size} bytes does not fit in the spool ({self.transfers._room()} "
                                  "bytes free; TRANSFER_SPOOL_MAX_BYTES)")
        spool = self.transfers.spool_path("ws")
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        upload_id = secrets.token_hex(12)
        holder: Dict[str, Any] = {}
        job_id = self.table.create("filesystem.put", [path, {"mode": mode, "append": append}], Owner.of(session),
                                   abort=lambda: self._abort_upload(holder["up"]))
        up = _Upload(upload_id, job_id, user, session, path, mode, append, size, spool, fd, run, self.clock.seconds())
        holder["up"] = up
        self.table.started(job_id)
        self.table.set_progress(job_id, 0.0 if size else None, "0 bytes received")
        self.uploads[upload_id] = up
        self.by_path[(user, path)] = upload_id
        return self._opened(up)

    @staticmethod
    def _opened(up: _Upload) -> Dict[str, Any]:
        return {"job_id": up.job_id, "upload_id": up.upload_id, "offset": up.received, "chunk_max": CHUNK_MAX}

    def _upload(self, session: Any, upload_id: Any, what: str) -> _Upload:
        require_full_access(session, what)
        up = self.uploads.get(upload_id) if isinstance(upload_id, str) else None
        if up is None or up.user != session.identity.user:
            raise ApiError("404", f"no open upload {str(upload_id)[:40]!r} (it finished, was discarded after "
                                  f"{self.idle_timeout:g} s idle, or the server restarted; open it again)")
        if up.closing:
            raise ApiError("409", f"upload {upload_id} is being closed")
        return up

    def upload_write(self, session: Any, request: Any) -> Dict[str, Any]:
        params = xfer._split(request.args, ("upload_id", "offset", "data"), "core/upload_write args")
        up = self._upload(session, params.get("upload_id"), "core/upload_write")
        up.last_used = self.clock.seconds()
        up.session = session
        offset = _whole(params.get("offset"), "'offset'", 0, 2 ** 62)
        if offset != up.received:
            raise ApiError("409", f"'offset' {offset} is not where upload {up.upload_id} stands: {up.received} "
                                  "bytes received (send from there)")
        data = params.get("data")
        if not isinstance(data, str):
            raise ApiError("400", f"'data' must be a base64 string, got {type_name(data)}")
        if len(data) > B64_MAX:
            raise ApiError("413", f"'data' holds more than {CHUNK_MAX} bytes (the chunk limit); send smaller chunks")
        try:
            block = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("400", "'data' is not valid base64") from None
        if len(block) > CHUNK_MAX:
            raise ApiError("413", f"'data' holds more than {CHUNK_MAX} bytes (the chunk limit); send smaller chunks")
        end = up.received + len(block)
        if up.size is not None and end > up.size:
            raise ApiError("400", f"this chunk ends at byte {end}, past the declared 'size' {up.size}")
        if end > self.transfers.upload_max:
            raise ApiError("413", f"the upload would pass {self.transfers.upload_max} bytes (UPLOAD_MAX_BYTES)")
        if len(block) > self.transfers._room():
            raise ApiError("507", f"the spool is full ({self.transfers._room()} bytes free; TRANSFER_SPOOL_MAX_BYTES)")
        view = memoryview(block)
        try:
            while view:
                view = view[os.write(up.fd, view):]
        except OSError as e:
            self._discard(up, "failed", f"the upload could not be spooled: {e.strerror}")
            raise ApiError("507", f"the upload could not be spooled: {e.strerror}; it was discarded") from None
        up.hash.update(block)
        up.received = end
        now = self.clock.seconds()
        if now - up.progress_at >= PROGRESS_INTERVAL or end == up.size:
            up.progress_at = now
            percent = min(100.0, 100.0 * end / up.size) if up.size else None
            self.table.set_progress(up.job_id, percent, f"{end} bytes received")
        return {"received": end}

    def upload_close(self, session: Any, request: Any):
        params = xfer._split(request.args, ("upload_id", "sha256"), "core/upload_close args")
        up = self._upload(session, params.get("upload_id"), "core/upload_close")
        up.last_used = self.clock.seconds()
        digest = params.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise ApiError("400", f"'sha256' must be 64 hex digits (the SHA-256 of the whole file), got {type_name(digest)}")
        if up.size is not None and up.received != up.size:
            raise ApiError("400", f"{up.received} of the declared {up.size} bytes received; send the rest from offset "
                                  f"{up.received}")
        mine = up.hash.hexdigest()
        if mine != digest.lower():
            self._discard(up, "failed", f"SHA-256 mismatch: the client sent {digest.lower()}, the {up.received} bytes "
                                        f"received hash to {mine}; the upload was discarded")
            raise ApiError("400", f"SHA-256 mismatch after {up.received} bytes (received {mine}); the upload was "
                                  "discarded: send the file again")
        up.closing = True
        _close(up.fd)
        self._forget(up)
        box = new_box()
        box["job"] = up.job_id
        self.table.abort_handlers[up.job_id] = box["abort"].set
        self.transfers.active.append(box)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), up.run, up.spool, up.received, box)
        d.addBoth(lambda r: (self.transfers.active.remove(box), r)[1])
        d.addCallback(self._written, up)
        d.addBoth(self.transfers._upload_done, up.job_id, up.spool)
        d.addCallback(lambda _: self.table.get(up.job_id))
        return d

    def _written(self, result: Any, up: _Upload) -> Any:
        self.table.set_progress(up.job_id, 100.0, f"{up.received} bytes written to {up.path}")
        return result

    def _abort_upload(self, up: _Upload) -> None:
        if not up.closing:
            self._discard(up, "killed", "aborted by core/job_abort; the partial upload was discarded")

    def _discard(self, up: _Upload, outcome: str, error: str) -> None:
        _close(up.fd)
        xfer._unlink(up.spool)
        self._forget(up)
        up.closing = True
        self.table.finish(up.job_id, outcome, error=error)

    def _forget(self, up: _Upload) -> None:
        self.uploads.pop(up.upload_id, None)
        if self.by_path.get((up.user, up.path)) == up.upload_id:
            del self.by_path[(up.user, up.path)]

    # --- downloads ------------------------------------------------------------------------
    def download_open(self, session: Any, request: Any):
        require_full_access(session, "core/download_open")
        params = xfer._split(request.args, ("path",), "core/download_open args")
        path = params.get("path")
        run = self.transfers._prepare_download(session, "filesystem.get", [path])  # validates the path
        user = session.identity.user
        mine = sum(1 for d in self.downloads.values() if d.user == user)
        if mine >= DOWNLOADS_PER_USER or len(self.downloads) >= DOWNLOADS_TOTAL:
            raise ApiError("429", f"too many downloads open ({mine} of yours, {len(self.downloads)} in all; at most "
                                  f"{DOWNLOADS_PER_USER} and {DOWNLOADS_TOTAL}); close one (core/download_close)")
        box = new_box()
        job_id = self.table.create("filesystem.get", [path], Owner.of(session), abort=box["abort"].set)
        box["job"] = job_id
        dl = Download(job_id, self.transfers.spool_path("wsdl"), xfer.sanitize_filename(path))
        self.table.started(job_id)
        self.transfers.active.append(box)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.transfers._produce, run, dl, box)
        d.addBoth(lambda r: (self.transfers.active.remove(box), r)[1])
        d.addBoth(self._spooled, dl, user, path)
        return d

    def _spooled(self, outcome: Any, dl: Download, user: str, path: str) -> Dict[str, Any]:
        if isinstance(outcome, Failure):
            xfer._unlink(dl.path)
            if outcome.check(Aborted):
                self.transfers._aborted(dl.job_id)
                raise ApiError("409", f"job {dl.job_id} was aborted")
            if outcome.check(TransferFailed):
                self.table.finish(dl.job_id, "failed", error=str(outcome.value))
                raise ApiError("409", str(outcome.value))
            log.failure("download job {id} failed", outcome, id=dl.job_id)
            self.table.finish(dl.job_id, "failed", error=f"internal error: {outcome.getErrorMessage()[:200]}",
                              exception=type(outcome.value).__name__)
            raise ApiError("500", "internal error while reading the file; the server log has the details")
        dl.done = True
        fd = os.open(dl.path, os.O_RDONLY | os.O_CLOEXEC)
        down = _Download(dl.job_id, user, path, dl, fd, self.clock.seconds())
        self.downloads[dl.job_id] = down
        self.table.abort_handlers[dl.job_id] = lambda: self._release(down, "aborted by core/job_abort", "killed")
        self.table.set_progress(dl.job_id, 0.0 if dl.size else 100.0, f"0 of {dl.size} bytes sent")
        if dl.size == 0:
            self._finish_download(down)
        return {"job_id": dl.job_id, "size": dl.size, "sha256": dl.sha256, "chunk_max": CHUNK_MAX}

    def _download(self, session: Any, job_id: Any, what: str) -> _Download:
        require_full_access(session, what)
        down = self.downloads.get(job_id) if isinstance(job_id, int) and not isinstance(job_id, bool) else None
        if down is None or down.user != session.identity.user:
            raise ApiError("404", f"no open download for job {str(job_id)[:40]} (closed, discarded after "
                                  f"{self.idle_timeout:g} s idle, or the server restarted; open it again)")
        down.last_used = self.clock.seconds()
        return down

    def download_read(self, session: Any, request: Any) -> Dict[str, Any]:
        params = xfer._split(request.args, ("job_id", "offset", "length"), "core/download_read args")
        down = self._download(session, params.get("job_id"), "core/download_read")
        size = down.dl.size
        offset = _whole(params.get("offset"), "'offset'", 0, size)
        length = _whole(params.get("length", CHUNK_MAX), "'length'", 1, CHUNK_MAX)
        block = os.pread(down.fd, min(length, size - offset), offset)
        end = offset + len(block)
        if end > down.sent:
            down.sent = end
            now = self.clock.seconds()
            if not down.finished and (now - down.progress_at >= PROGRESS_INTERVAL or end >= size):
                down.progress_at = now
                self.table.set_progress(down.job_id, 100.0 * end / size if size else 100.0,
                                        f"{end} of {size} bytes sent")
        if end >= size and not down.finished:
            self._finish_download(down)
        return {"offset": offset, "data": base64.b64encode(block).decode("ascii"), "eof": end >= size}

    def download_close(self, session: Any, request: Any) -> Dict[str, Any]:
        params = xfer._split(request.args, ("job_id",), "core/download_close args")
        down = self._download(session, params.get("job_id"), "core/download_close")
        self._release(down, f"closed by the client after {down.sent} of {down.dl.size} bytes")
        return {"job_id": down.job_id, "closed": True}

    def _finish_download(self, down: _Download) -> None:
        down.finished = True
        self.table.finish(down.job_id, "succeeded", result={"path": down.path, "size": down.dl.size,
                                                            "sha256": down.dl.sha256})

    def _release(self, down: _Download, why: str, outcome: str = "failed") -> None:
        self.downloads.pop(down.job_id, None)
        _close(down.fd)
        xfer._unlink(down.dl.path)
        if not down.finished:
            down.finished = True
            self.table.finish(down.job_id, outcome, error=why)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def route(api: Any, chunks: WsTransfers) -> None:
    """Route ``core/upload_*`` and ``core/download_{open,read,close}`` (full access: checked inside)."""
    for name in NAMES:
        api.add("core", name, getattr(chunks, name), limited="read")
