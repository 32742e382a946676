"""``core/download``, the download and upload methods, and the spool directory.

Every transfer is a job of the job table (:mod:`sysadmd.jobs.store`).  A download job
writes its output to a spool file ``<state_dir>/transfers/dl-<job>-<random>`` (in a
thread, hashing as it goes), so it never waits for the client and a slow client never
holds the job; ``GET /_download/<job>`` then serves that file (:mod:`sysadmd.transfers.web`).
An upload's ``file`` part is spooled to ``<state_dir>/transfers/up-<random>`` while the
request arrives; the upload job then applies it and deletes the spool.

The spool holds at most ``TRANSFER_SPOOL_MAX_BYTES`` (a download job that would go past
it fails, naming the key; uploads in flight count too).  A download's spool file is
deleted once no live token serves it (``DOWNLOAD_TOKEN_TTL`` after ``core/download``);
at start the whole spool is emptied (tokens do not survive a restart).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from sysadmd import migrations
from sysadmd.api import require_full_access
from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.jobs.model import Owner
from sysadmd.jobs.store import JobTable
from sysadmd.runtime.statedir import ensure_private_dir
from sysadmd.transfers import backup
from sysadmd.transfers.tokens import DownloadTokens, TooManyTokens

log = Logger()

CHUNK = 1024 * 1024
SWEEP_INTERVAL = 60.0
MAX_UPLOADS = 4  # uploads being received at once (more: 503)
FILENAME_MAX = 255
PROGRESS_INTERVAL = 0.25

DOWNLOAD_METHODS = ("filesystem.get", "config.save", "job.log")
UPLOAD_METHODS = ("filesystem.put", "config.upload")


class Aborted(Exception):
    pass


class TransferFailed(Exception):
    """A transfer method's failure, with the words the job's ``error`` gets."""


@dataclass
class Download:
    job_id: int
    path: str
    filename: str
    size: int = 0
    sha256: str = ""
    done: bool = False
    error: Optional[str] = None
    waiters: List[defer.Deferred] = field(default_factory=list)


def new_box() -> Dict[str, Any]:
    """What a transfer job's worker thread shares with the reactor: its job id, the event
    ``core/job_abort`` (or the daemon's stop) sets, and the SHA-256 of what it wrote."""
    return {"job": None, "abort": threading.Event(), "hash": hashlib.sha256()}


class Copier:
    """Copies in a worker thread, hashing, bounded, abortable, reporting progress."""

    def __init__(self, reactor: Any, table: JobTable, box: Dict[str, Any], total: Optional[int], limit: int, what: str):
        self.reactor, self.table, self.job_id = reactor, table, box["job"]
        self.total, self.limit, self.what = total, limit, what
        self.abort = box["abort"]
        self.hash = box["hash"]
        self.copied = 0
        self._last = 0.0

    def copy(self, src: Any, dst: Any) -> None:
        h = self.hash
        while True:
            if self.abort.is_set():
                raise Aborted()
            block = src.read(CHUNK)
            if not block:
                return
            self.copied += len(block)
            if self.copied > self.limit:
                raise TransferFailed(f"{self.what} is larger than the {self.limit} bytes the spool has room for "
                                     "(TRANSFER_SPOOL_MAX_BYTES)")
            h.update(block)
            dst.write(block)
            now = time.monotonic()
            if now - self._last >= PROGRESS_INTERVAL:
                self._last = now
                percent = None if not self.total else min(100.0, 100.0 * self.copied / self.total)
                self.reactor.callFromThread(self._progress, percent, f"{self.copied} bytes")

    def _progress(self, percent: Optional[float], text: str) -> None:
        try:
            self.table.set_progress(self.job_id, percent, text)
        except Exception:
            pass


def sanitize_filename(name: str) -> str:
    """A file name safe in a Content-Disposition header and on the client's disk."""
    name = os.path.basename(name.replace("\\", "/"))
    name = re.sub(r"[\x00-\x1f\x7f\"]", "_", name).strip(" .")
    return name[:FILENAME_MAX] or "download"


def _split(args: Any, names: tuple, what: str) -> Dict[str, Any]:
    if isinstance(args, dict):
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise ApiError("400", f"{what}: unknown key {unknown[0][:32]!r} (expected {', '.join(names)})")
        return dict(args)
    if not isinstance(args, list):
        raise ApiError("400", f"{what} must be a list [{', '.join(names)}] or an object, got {type_name(args)}")
    if len(args) > len(names):
        raise ApiError("400", f"{what}: at most {len(names)} elements ({', '.join(names)}), got {len(args)}")
    return dict(zip(names, args))


def _abs_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or len(value) > 4096:
        raise ApiError("400", f"{what} must be an absolute path (a string starting with /), got {type_name(value)}")
    return value


class TransferService(service.Service):
    name = "transfers"

    def __init__(self, server: Any, table: JobTable, reactor: Any):
        self.server = server
        self.table = table
        self.reactor = reactor
        cfg = server.config
        self.spool_dir = os.path.join(server.state_dir, "transfers")
        ensure_private_dir(self.spool_dir)
        self.spool_max = cfg.transfer_spool_max_bytes
        self.upload_max = cfg.upload_max_bytes
        self.config_path = getattr(cfg, "source", "") or ""
        self.tokens = DownloadTokens(reactor, cfg.download_token_ttl)
        self.downloads: Dict[int, Download] = {}
        self.uploads_receiving = 0
        self.stopping = False
        self.active: List[Dict[str, Any]] = []  # boxes of transfer jobs whose worker thread runs
        self._sweep: Optional[task.LoopingCall] = None

    # --- service --------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        for name in os.listdir(self.spool_dir):
            try:
                os.unlink(os.path.join(self.spool_dir, name))
            except OSError:
                pass
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = self.reactor
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self.stopping = True
        for box in self.active:
            box["abort"].set()  # worker threads end within a chunk; their jobs end "interrupted" at the next start

    def sweep(self) -> None:
        """Delete spool files no live token serves any more."""
        live = self.tokens.live_jobs()
        for job_id, dl in list(self.downloads.items()):
            if job_id not in live and dl.done:
                del self.downloads[job_id]
                _unlink(dl.path)

    def spool_used(self) -> int:
        total = 0
        with os.scandir(self.spool_dir) as it:
            for entry in it:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
        return total

    def spool_path(self, prefix: str) -> str:
        return os.path.join(self.spool_dir, f"{prefix}-{secrets.token_hex(8)}")

    # --- core/download ----------------------------------------------------------------------
    def download(self, session: Any, request: Any) -> List[Any]:
        params = _split(request.args, ("method", "params", "filename"), "core/download args")
        method = params.get("method")
        if method not in DOWNLOAD_METHODS:
            raise ApiError("400", f"'method' must be one of {', '.join(DOWNLOAD_METHODS)}, got "
                                  f"{type_name(method)}" + (f" {method[:64]!r}" if isinstance(method, str) else ""))
        margs = params.get("params", [])
        if not isinstance(margs, list):
            raise ApiError("400", f"'params' must be a list, got {type_name(margs)}")
        filename = params.get("filename")
        if filename is None:
            filename = method.replace(".", "-")
        if not isinstance(filename, str) or not filename or len(filename) > 1024:
            raise ApiError("400", f"'filename' must be a non-empty string, got {type_name(filename)}")
        run = self._prepare_download(session, method, margs)
        identity = session.identity
        path = self.spool_path("dl")
        copier_box = new_box()
        job_id = self.table.create(method, margs, Owner.of(session), abort=copier_box["abort"].set)
        copier_box["job"] = job_id
        try:
            token = self.tokens.issue(job_id, identity.user)
        except TooManyTokens as e:
            self.table.finish(job_id, "not_started", error=str(e))
            raise ApiError("429", str(e)) from None
        dl = Download(job_id, path, sanitize_filename(filename))
        self.downloads[job_id] = dl
        self.table.started(job_id)
        self.active.append(copier_box)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._produce, run, dl, copier_box)
        d.addBoth(lambda r: (self.active.remove(copier_box), r)[1])
        d.addBoth(self._download_done, dl)
        return [job_id, f"/_download/{job_id}?auth_token={token}"]

    def _prepare_download(self, session: Any, method: str, margs: List[Any]) -> Callable[..., Any]:
        if method == "filesystem.get":
            require_full_access(session, "filesystem.get")
            if len(margs) != 1:
                raise ApiError("400", f"filesystem.get params must be [path], got {len(margs)} elements")
            path = _abs_path(margs[0], "filesystem.get params[0]")
            return lambda out, box: self._get_file(path, out, box)
        if method == "config.save":
            require_full_access(session, "config.save")
            if margs not in ([], [{}]):
                raise ApiError("400", "config.save params must be [] or [{}] (it takes no options)")
            return lambda out, box: self._config_save(out, box)
        # job.log: every user who may read jobs' output (core/job_log) may download it.
        if len(margs) != 1 or isinstance(margs[0], bool) or not isinstance(margs[0], int) or margs[0] < 1:
            raise ApiError("400", "job.log params must be [job_id] (a whole number of at least 1)")
        row = self.table.row(margs[0])
        if row is None:
            raise ApiError("404", f"no job {margs[0]}")
        source = row["logs_path"]
        return lambda out, box: self._get_log(margs[0], source, out, box)

    def _produce(self, run: Callable[..., Any], dl: Download, box: Dict[str, Any]) -> Dict[str, Any]:
        """In a worker thread: write the spool file, then hash it."""
        fd = os.open(dl.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            extra = run(out, box) or {}
            out.flush()
        if box["abort"].is_set():
            raise Aborted()
        dl.sha256 = box["hash"].hexdigest()
        dl.size = os.path.getsize(dl.path)
        return dict(extra, size=dl.size, sha256=dl.sha256, filename=dl.filename)

    def _room(self) -> int:
        return max(0, self.spool_max - self.spool_used())

    def _get_file(self, path: str, out: Any, box: Dict[str, Any]) -> Dict[str, Any]:
        try:
            # O_NOFOLLOW: a symbolic link as the last component is refused (ELOOP); links in
            # the directories above are followed.  O_NONBLOCK: opening a FIFO never hangs.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise TransferFailed(f"{path} is a symbolic link; give the path of the file itself") from None
            raise TransferFailed(f"cannot open {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TransferFailed(f"{path} is not a regular file (filesystem.get sends regular files only)")
            room = self._room()
            if st.st_size > room:
                raise TransferFailed(f"{path} is {st.st_size} bytes; the spool has room for {room} "
                                     "(TRANSFER_SPOOL_MAX_BYTES)")
            os.set_blocking(fd, True)
            Copier(self.reactor, self.table, box, st.st_size, room, path).copy(src, out)
        return {"path": path}

    def _get_log(self, job_id: int, source: Optional[str], out: Any, box: Dict[str, Any]) -> Dict[str, Any]:
        if source:
            try:
                src = open(source, "rb")
            except FileNotFoundError:
                src = None
            if src is not None:
                with src:
                    Copier(self.reactor, self.table, box, None, self._room(), f"job {job_id}'s output").copy(src, out)
        return {"job": job_id}

    def _config_save(self, out: Any, box: Dict[str, Any]) -> Dict[str, Any]:
        from sysadmd.runtime.db import database_path

        tmp = self.spool_path("bk")
        try:
            info = backup.save(database_path(self.server.state_dir), self.server.state_dir, self.config_path, tmp,
                               self.spool_dir)
            with open(tmp, "rb") as src:
                Copier(self.reactor, self.table, box, os.path.getsize(tmp), self._room(), "the backup").copy(src, out)
        finally:
            _unlink(tmp)
        return info

    def _download_done(self, outcome: Any, dl: Download) -> None:
        from twisted.python.failure import Failure

        dl.done = True
        try:
            if isinstance(outcome, Failure):
                _unlink(dl.path)
                if outcome.check(Aborted):
                    dl.error = "aborted"
                    self._aborted(dl.job_id)
                elif outcome.check(TransferFailed):
                    dl.error = str(outcome.value)
                    self.table.finish(dl.job_id, "failed", error=dl.error)
                else:
                    log.failure("download job {id} failed", outcome, id=dl.job_id)
                    dl.error = f"internal error: {outcome.getErrorMessage()[:200]}"
                    self.table.finish(dl.job_id, "failed", error=dl.error, exception=type(outcome.value).__name__)
            else:
                self.table.set_progress(dl.job_id, 100.0, f"{dl.size} bytes ready")
                self.table.finish(dl.job_id, "succeeded", result=outcome)
        finally:
            waiters, dl.waiters = dl.waiters, []
            for d in waiters:
                d.callback(dl)

    def _aborted(self, job_id: int) -> None:
        if self.stopping:
            self.table.finish(job_id, "interrupted", error="interrupted: the daemon stopped while it ran")
        else:
            self.table.finish(job_id, "killed", error="aborted by core/job_abort")

    def wait_download(self, dl: Download, timeout: float) -> defer.Deferred:
        """Fires with *dl* when its job has finished, or after *timeout* seconds."""
        d: defer.Deferred = defer.Deferred()
        dl.waiters.append(d)

        def expire() -> None:
            if d in dl.waiters:
                dl.waiters.remove(d)
                d.callback(dl)

        timer = self.reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    # --- uploads ------------------------------------------------------------------------------
    def start_upload(self, session: Any, data: Any, spool: str, size: int) -> int:
        """Validate the upload's ``data`` and start its job (the spool file is then the
        job's, deleted when it ends); the job id.  :class:`ApiError` on bad data (the
        caller deletes the spool)."""
        if not isinstance(data, dict):
            raise ApiError("400", f"field 'data' must be a JSON object {{\"method\":…,\"params\":…}}, got {type_name(data)}")
        unknown = sorted(set(data) - {"method", "params"})
        if unknown:
            raise ApiError("400", f"field 'data': unknown key {unknown[0][:32]!r} (expected method, params)")
        method = data.get("method")
        if method not in UPLOAD_METHODS:
            raise ApiError("400", f"field 'data': 'method' must be one of {', '.join(UPLOAD_METHODS)}, got "
                                  f"{type_name(method)}" + (f" {method[:64]!r}" if isinstance(method, str) else ""))
        margs = data.get("params", [])
        if not isinstance(margs, list):
            raise ApiError("400", f"field 'data': 'params' must be a list, got {type_name(margs)}")
        require_full_access(session, method)
        if method == "filesystem.put":
            run = self._prepare_put(margs)
        else:
            if margs not in ([], [{}]):
                raise ApiError("400", "config.upload params must be [] or [{}] (it takes no options)")
            run = self._config_upload
        box = new_box()
        job_id = self.table.create(method, margs, Owner.of(session), abort=box["abort"].set)
        box["job"] = job_id
        self.table.started(job_id)
        self.active.append(box)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), run, spool, size, box)
        d.addBoth(lambda r: (self.active.remove(box), r)[1])
        d.addBoth(self._upload_done, job_id, spool)
        return job_id

    def _prepare_put(self, margs: List[Any]) -> Callable[..., Any]:
        if not 1 <= len(margs) <= 2:
            raise ApiError("400", f"filesystem.put params must be [path, {{\"mode\": 420, \"append\": false}}], "
                                  f"got {len(margs)} elements")
        path = _abs_path(margs[0], "filesystem.put params[0]")
        options = margs[1] if len(margs) == 2 else {}
        if not isinstance(options, dict):
            raise ApiError("400", f"filesystem.put params[1] must be an object, got {type_name(options)}")
        unknown = sorted(set(options) - {"mode", "append"})
        if unknown:
            raise ApiError("400", f"filesystem.put params[1]: unknown key {unknown[0][:32]!r} (expected mode, append)")
        mode = options.get("mode", 0o644)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ApiError("400", f"filesystem.put 'mode' must be a number from 0 to 4095 (0o7777), got {type_name(mode)}")
        append = options.get("append", False)
        if not isinstance(append, bool):
            raise ApiError("400", f"filesystem.put 'append' must be true or false, got {type_name(append)}")
        parent = os.path.dirname(path.rstrip("/")) or "/"
        if not os.path.isdir(parent):
            raise ApiError("400", f"filesystem.put: the directory {parent} does not exist")
        return lambda spool, size, box: self._put(path, mode, append, spool, size, box)

    def _put(self, path: str, mode: int, append: bool, spool: str, size: int, box: Dict[str, Any]) -> Dict[str, Any]:
        copier = Copier(self.reactor, self.table, box, size, size + 1, "the upload")
        h = box["hash"]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise TransferFailed(f"{path} exists and is not a regular file (filesystem.put writes regular files only)")
        with open(spool, "rb") as src:
            if append:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                except OSError as e:
                    raise TransferFailed(f"cannot open {path} for appending: {e.strerror}") from None
                with os.fdopen(fd, "ab") as out:
                    copier.copy(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                return {"path": path, "size": size, "sha256": h.hexdigest(), "appended": True}
            parent = os.path.dirname(path) or "/"
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:100]}.", suffix=".sysadmd-upload",
                                           dir=parent)
            except OSError as e:
                raise TransferFailed(f"cannot create a temporary file in {parent}: {e.strerror}") from None
            try:
                with os.fdopen(fd, "wb") as out:
                    copier.copy(src, out)
                    out.flush()
                    os.fchmod(out.fileno(), mode)
                    os.fsync(out.fileno())
                os.rename(tmp, path)
            except BaseException:
                _unlink(tmp)
                raise
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return {"path": path, "size": size, "sha256": h.hexdigest(), "appended": False}

    def _config_upload(self, spool: str, size: int, box: Dict[str, Any]) -> Dict[str, Any]:
        stage = os.path.join(self.server.state_dir, "restore", "pending")
        ensure_private_dir(os.path.dirname(stage))
        try:
            info = backup.validate_and_stage(spool, stage, self.upload_max, migrations.SCHEMA.latest)
        except backup.BackupError as e:
            raise TransferFailed(f"config.upload: {e}") from None
        return dict(info, applied="at the next start of sysadmd (restart it to apply)", staged=stage)

    def _upload_done(self, outcome: Any, job_id: int, spool: str) -> None:
        from twisted.python.failure import Failure

        _unlink(spool)
        if isinstance(outcome, Failure):
            if outcome.check(Aborted):
                self._aborted(job_id)
            elif outcome.check(TransferFailed):
                self.table.finish(job_id, "failed", error=str(outcome.value))
            else:
                log.failure("upload job {id} failed", outcome, id=job_id)
                self.table.finish(job_id, "failed", error=f"internal error: {outcome.getErrorMessage()[:200]}",
                                  exception=type(outcome.value).__name__)
        else:
            self.table.finish(job_id, "succeeded", result=outcome)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def route(api: Any, transfers: TransferService) -> None:
    """Route ``core/download`` (limited users may fetch what they may read, e.g. ``job.log``)."""
    api.add("core", "download", transfers.download, limited="read")
