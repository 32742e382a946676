"""The last lines of a log file, read backwards in bounded chunks (``sysadm/services``
``logs``, docs/protocol.md §6.10).

:func:`tail_lines` never holds the whole file: it reads :data:`CHUNK_BYTES` at a time from
the end, stops after *max_scan* bytes, and keeps at most *line_bytes* of any line (a line
longer than that is cut and ends with ``…``), so a request costs at most *max_scan* bytes
of reading and ``lines × line_bytes`` of memory whatever the file holds.  Only regular
files are opened (``O_NONBLOCK``, so a FIFO planted in a log directory cannot hang the
daemon).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, List, Optional

CHUNK_BYTES = 64 * 1024
LINE_BYTES = 4096  # a longer line is cut to this many bytes
MAX_SCAN_BYTES = 64 * 1024 * 1024  # bytes read backwards from one request's files, at most
CUT_MARK = "…"

# "Nov 26 05:30:00 host tag[123]: text" (RFC 3164) or "2026-11-26T05:30:00.1+00:00 host tag: text"
SYSLOG_TAG = re.compile(rb"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ ([^\s\[:]{1,64})(?:\[\d+\])?: ")


@dataclass
class Tail:
    lines: List[str] = field(default_factory=list)  # oldest first
    scanned: int = 0  # bytes read
    complete: bool = True  # False: the scan stopped at max_scan before the file's start


def open_regular(path: str) -> Optional[int]:
    """A read descriptor of *path* if it is a regular file (None otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def syslog_tag(line: bytes) -> Optional[bytes]:
    m = SYSLOG_TAG.match(line)
    return m.group(1) if m else None


def tail_lines(path: str, count: int, *, keep: Optional[Callable[[bytes], bool]] = None,
               max_scan: int = MAX_SCAN_BYTES, line_bytes: int = LINE_BYTES,
               chunk: int = CHUNK_BYTES) -> Optional[Tail]:
    """The last *count* lines of *path* that *keep* accepts (all without *keep*), oldest
    first; None when *path* is not a readable regular file.  *keep* sees each line's
    first *line_bytes* bytes."""
    fd = open_regular(path)
    if fd is None:
        return None
    found: List[bytes] = []  # newest first
    tail = Tail()
    try:
        pos = os.fstat(fd).st_size
        # the bytes after the newest newline seen so far: the start of a line whose
        # beginning is not read yet; only its first line_bytes (+1 to know it is longer) kept
        partial = b""
        partial_long = False
        first = True
        while pos > 0 and len(found) < count:
            if tail.scanned >= max_scan:
                tail.complete = False
                break
            size = min(chunk, pos, max_scan - tail.scanned)
            pos -= size
            data = os.pread(fd, size, pos)
            if len(data) < size:  # the file shrank under us: stop at what was read
                break
            tail.scanned += size
            pieces = data.split(b"\n")
            # pieces[-1] continues `partial`; pieces[0] may continue further back
            joined = pieces[-1] + partial
            if len(pieces) == 1:
                partial_long = partial_long or len(joined) > line_bytes
                partial = joined[:line_bytes + 1]
                continue
            lines = [joined] + pieces[-2:0:-1]  # newest first: complete lines of this chunk
            long_flags = [partial_long or len(joined) > line_bytes] + [len(p) > line_bytes for p in pieces[-2:0:-1]]
            if first:
                first = False
                if joined == b"" and not partial:  # the file ends with a newline: no empty last line
                    lines, long_flags = lines[1:], long_flags[1:]
            for line, long in zip(lines, long_flags):
                _take(found, line, long, keep, line_bytes)
                if len(found) >= count:
                    break
            partial = pieces[0][:line_bytes + 1]
            partial_long = len(pieces[0]) > line_bytes
        else:
            if pos == 0 and len(found) < count and tail.scanned > 0:  # the file's first line (maybe empty)
                _take(found, partial, partial_long, keep, line_bytes)
    finally:
        os.close(fd)
    tail.lines = [line.decode("utf-8", "replace") for line in reversed(found[:count])]
    return tail


def split_lines(data: bytes, count: int, line_bytes: int = LINE_BYTES) -> List[str]:
    """The last *count* lines of a tool's output *data*, oldest first, each cut as
    :func:`tail_lines` cuts them."""
    found: List[bytes] = []
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    for line in pieces[-count:] if count > 0 else []:
        _take(found, line, len(line) > line_bytes, None, line_bytes)
    return [line.decode("utf-8", "replace") for line in found]


def _take(found: List[bytes], line: bytes, long: bool, keep: Optional[Callable[[bytes], bool]],
          line_bytes: int) -> None:
    line = line[:line_bytes]
    if line.endswith(b"\r"):
        line = line[:-1]
    if keep is not None and not keep(line):
        return
    if long or len(line) > line_bytes:
        line = _cut(line, line_bytes) + CUT_MARK.encode()
    found.append(line)


def _cut(line: bytes, limit: int) -> bytes:
    """*line* to at most *limit* bytes, not inside a UTF-8 sequence."""
    line = line[:limit]
    end = len(line)
    while end > 0 and end > len(line) - 4 and 0x80 <= line[end - 1] <= 0xBF:
        end -= 1
    if end > 0 and line[end - 1] >= 0xC0:  # a lead byte whose sequence was cut
        return line[:end - 1]
    return line
