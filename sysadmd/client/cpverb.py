"""``sysadm cp FILE server:PATH`` and ``sysadm cp server:PATH FILE``: files over the API.

Uses ``core/upload_open|write|close`` and ``core/download_open|read|close``
(docs/protocol.md §6.17), so it works wherever the other verbs do: ``--url``, the local
socket, and ``--bridge … --server NAME``.  At most :data:`WINDOW` chunks of
:data:`CHUNK` bytes are in flight at once (that window is the flow control: a slow end
never makes the other buffer more); 32 × 64 KiB = 2 MiB, about 3.6 MiB with the bridge's
extra base64 layer, stays under a bridge's 4 MiB per-peer buffer.  Many small chunks
rather than a few large ones: each hop (client, bridge, server) handles a message whole
before passing it on, so small messages keep all three busy at once
(bench/ws_transfer_bench.py measured 512 KiB chunks at about half the bridged rate).

Resume: an interrupted upload stays open on the server (for its idle timeout), and
running the same ``sysadm cp`` again continues at the offset the server reports.  A
download is written to ``FILE.sysadm-partial`` and continues from that file's size; the
finished file is checked against the server's SHA-256 before it is renamed to ``FILE``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import stat
import time
from collections import deque
from typing import Any, Deque, Dict, Optional

from twisted.internet import defer

from sysadmd.client.connect import request
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError, ErrorReply, is_error

PREFIX = "server:"
CHUNK = 64 * 1024
WINDOW = 32
PARTIAL = ".sysadm-partial"
BAR_WIDTH = 30
REDRAW = 0.1


def register(verb: Any) -> None:
    p = verb("cp", copy, "copy a file to or from the server: cp FILE server:PATH, cp server:PATH FILE "
             "(resumes an interrupted copy when run again)")
    p.add_argument("source", metavar="SOURCE", help="a local file, or server:PATH")
    p.add_argument("dest", metavar="DEST", help="server:PATH, or a local file or directory")
    p.add_argument("--mode", metavar="OCTAL", type=_octal, default=None,
                   help="permissions of an uploaded file (default: the local file's)")
    p.add_argument("--append", action="store_true", help="upload: append to the server's file instead of replacing it")


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mode is an octal number such as 644, got {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"--mode must be from 0 to 7777 (octal), got {text!r}")
    return value


async def copy(ctx: Context) -> int:
    source, dest = ctx.options.source, ctx.options.dest
    up, down = dest.startswith(PREFIX), source.startswith(PREFIX)
    if up == down:
        raise ClientError("cp needs exactly one side written server:PATH (cp FILE server:PATH or cp server:PATH FILE)",
                          EXIT_USAGE)
    if up:
        return await upload(ctx, source, dest[len(PREFIX):])
    return await download(ctx, source[len(PREFIX):], dest)


class Progress:
    """A one-line progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, ctx: Context, label: str, total: int, start: int):
        self.err = ctx.err
        self.on = bool(getattr(ctx.err, "isatty", lambda: False)()) and not ctx.json_output
        self.label, self.total, self.start = label, total, start
        self.t0 = time.monotonic()
        self.drawn = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not final and now - self.drawn < REDRAW):
            return
        self.drawn = now
        frac = done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * frac)
        rate = (done - self.start) / max(now - self.t0, 1e-6)
        self.err.write(f"\r{self.label[:30]} [{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {100 * frac:5.1f}% "
                       f"{_size(done)}/{_size(self.total)} {_size(rate)}/s ")
        if final:
            self.err.write("\n")
        self.err.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _send(ctx: Context, name: str, args: Dict[str, Any]) -> defer.Deferred:
    return defer.ensureDeferred(request(ctx.conn, ctx.reactor, "core", name, args, ctx.timeout, ctx.target))


async def _ask(ctx: Context, name: str, args: Dict[str, Any], what: str) -> Any:
    reply = await _send(ctx, name, args)
    if is_error(reply):
        raise ErrorReply(reply, what)
    return reply.get("args")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                return h.hexdigest()
            h.update(block)


async def _drain(window: Deque[defer.Deferred]) -> None:
    """Let every request still in flight end (their errors are not the first error)."""
    while window:
        try:
            await window.popleft()
        except Exception:
            pass


# --- upload ---------------------------------------------------------------------------------

async def upload(ctx: Context, local: str, remote: str) -> int:
    try:
        st = os.stat(local)
    except OSError as e:
        raise ClientError(f"cannot read {local}: {e.strerror}", EXIT_USAGE) from None
    if not stat.S_ISREG(st.st_mode):
        raise ClientError(f"{local} is not a regular file (cp sends regular files only)", EXIT_USAGE)
    if not remote.startswith("/"):
        raise ClientError(f"server:PATH must be an absolute path, got server:{remote}", EXIT_USAGE)
    if remote.endswith("/"):
        remote += os.path.basename(local)
    size = st.st_size
    mode = ctx.options.mode if ctx.options.mode is not None else stat.S_IMODE(st.st_mode)
    digest = _sha256(local)
    opened = await _ask(ctx, "upload_open", {"path": remote, "mode": mode, "append": ctx.options.append, "size": size},
                        f"opening server:{remote} for writing")
    upload_id, offset = opened["upload_id"], int(opened.get("offset", 0))
    if offset > 0:
        ctx.note(f"sysadm: resuming the upload to server:{remote} at byte {offset} of {size}")
    chunk = min(CHUNK, int(opened.get("chunk_max", CHUNK)))
    bar = Progress(ctx, os.path.basename(local), size, offset)
    window: Deque[defer.Deferred] = deque()
    with open(local, "rb") as f:
        f.seek(offset)
        sent = offset
        try:
            while sent < size or window:
                while sent < size and len(window) < WINDOW:
                    block = f.read(min(chunk, size - sent))
                    if not block:
                        raise ClientError(f"{local} shrank to {sent} bytes while it was being sent", EXIT_ERROR_REPLY)
                    window.append(_send(ctx, "upload_write", {"upload_id": upload_id, "offset": sent,
                                                              "data": base64.b64encode(block).decode("ascii")}))
                    sent += len(block)
                reply = await window.popleft()
                if is_error(reply):
                    raise ErrorReply(reply, f"writing server:{remote}")
                bar.update(int(reply["args"]["received"]))
        except BaseException:
            await _drain(window)
            raise
    bar.update(size, final=True)
    job = await _ask(ctx, "upload_close", {"upload_id": upload_id, "sha256": digest}, f"finishing server:{remote}")
    return _report(ctx, job, f"{local} -> server:{remote}")


def _report(ctx: Context, job: Dict[str, Any], what: str) -> int:
    if ctx.json_output:
        ctx.emit_json(job)
    if job.get("state") != "SUCCESS":
        raise ClientError(f"{what}: job {job.get('id')} {job.get('state')}: {job.get('error') or job.get('outcome')}",
                          EXIT_ERROR_REPLY)
    return EXIT_OK


# --- download -------------------------------------------------------------------------------

async def download(ctx: Context, remote: str, local: str) -> int:
    if not remote.startswith("/"):
        raise ClientError(f"server:PATH must be an absolute path, got server:{remote}", EXIT_USAGE)
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")) or "download")
    partial = local + PARTIAL
    opened = await _ask(ctx, "download_open", {"path": remote}, f"reading server:{remote}")
    job_id, size, digest = opened["job_id"], int(opened["size"]), opened["sha256"]
    chunk = min(CHUNK, int(opened.get("chunk_max", CHUNK)))
    try:
        have = os.path.getsize(partial)
    except OSError:
        have = 0
    if have > size:
        have = 0
    if have:
        ctx.note(f"sysadm: resuming the download of server:{remote} at byte {have} of {size} (from {partial})")
    bar = Progress(ctx, os.path.basename(remote), size, have)
    window: Deque[defer.Deferred] = deque()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ClientError(f"cannot write {partial}: {e.strerror}", EXIT_USAGE) from None
    with os.fdopen(fd, "wb") as out:
        out.truncate(have)
        out.seek(have)
        asked = got = have
        try:
            while got < size:
                while asked < size and len(window) < WINDOW:
                    length = min(chunk, size - asked)
                    window.append(_send(ctx, "download_read", {"job_id": job_id, "offset": asked, "length": length}))
                    asked += length
                reply = await window.popleft()
                if is_error(reply):
                    raise ErrorReply(reply, f"reading server:{remote}")
                block = base64.b64decode(reply["args"]["data"], validate=True)
                if not block:
                    raise ClientError(f"server:{remote}: the server sent no data at byte {got} of {size}",
                                      EXIT_ERROR_REPLY)
                out.write(block)
                got += len(block)
                bar.update(got)
        except BaseException:
            await _drain(window)
            raise
        out.flush()
        os.fsync(out.fileno())
    bar.update(size, final=True)
    await _close_download(ctx, job_id)
    mine = _sha256(partial)
    if mine != digest:
        os.unlink(partial)
        raise ClientError(f"server:{remote}: the copy's SHA-256 {mine} differs from the server's {digest} (the "
                          f"file changed on the server since {partial} was begun, or it was damaged); the partial "
                          "file was removed: run the same sysadm cp again", EXIT_ERROR_REPLY)
    os.replace(partial, local)
    if ctx.json_output:
        ctx.emit_json({"job_id": job_id, "path": local, "size": size, "sha256": digest})
    return EXIT_OK


async def _close_download(ctx: Context, job_id: int) -> Optional[dict]:
    """Free the server's copy now rather than at its idle timeout (best effort)."""
    try:
        return await _send(ctx, "download_close", {"job_id": job_id})
    except ClientError:
        return None
