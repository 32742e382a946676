"""Search files and a live process's memory for a marker (the plaintext-absence tests, issue 13 item 6).

A test sends a unique marker through the bridge (in a fleet command, a live session…) and
then asserts that the marker is *not* in anything the bridge holds: every file under its
state directory (SQLite main database, ``-wal`` and ``-shm`` included) and every readable
region of its process memory.  An absence proves something only if the same search can
find a marker that is there, so every test using this module also plants a control marker
and asserts that it *is* found.

API (kept stable; other test files use it):

* :func:`search_files` ``(root, needle) -> [path, …]``
* :func:`search_process_memory` ``(pid, needle) -> [(start, end, perms, path), …]``
  (needs root, or the same user with ptrace allowed; regions that cannot be read are
  skipped and counted in :data:`SearchStats`)
* :func:`marker_forms` ``(marker) -> [bytes, …]`` the marker as raw UTF-8 and base64 at its
  three alignments, for searching a marker that may have crossed the bridge base64-encoded.
* :func:`search_files_many` / :func:`search_process_memory_many` ``(…, needles)`` one pass
  for several needles: ``{needle: [hits]}`` (every needle a key, in bytes).

Both searches read in chunks with an overlap of ``len(needle) - 1`` bytes, so a match that
straddles two chunks is found, and both are bounded: past *max_total* bytes they raise
:class:`SearchLimitError` rather than stop quietly (a search that gave up would be a false
"absent").
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Set, Tuple, Union

CHUNK = 1 << 20
#: Default bound on bytes read by one file search (all files together).
MAX_FILE_BYTES = 2 << 30
#: Default bound on bytes read from one process's memory.
MAX_MEMORY_BYTES = 8 << 30
#: Regions never read: kernel pages that fault (or mean nothing) when read through /proc/PID/mem.
SKIPPED_REGIONS = ("[vvar]", "[vvar_vclock]", "[vsyscall]")

Needle = Union[bytes, str]
Region = Tuple[int, int, str, str]


class SearchLimitError(RuntimeError):
    """The search would read more than its bound: it did not finish, so it proves nothing."""


@dataclass
class SearchStats:
    """What one search read (tests may assert it read something)."""

    bytes_read: int = 0
    items: int = 0
    skipped: List[str] = field(default_factory=list)


def _needle(needle: Needle) -> bytes:
    data = needle.encode("utf-8") if isinstance(needle, str) else bytes(needle)
    if not data:
        raise ValueError("the needle must not be empty")
    return data


def marker_forms(marker: Needle) -> List[bytes]:
    """*marker* as UTF-8 and as the text any base64 encoding of it must contain.

    A marker at byte offset k of a base64-encoded message shows up, for k mod 3 in
    0/1/2, as one of three character runs; each is computed here without the characters
    that depend on the neighbouring bytes.
    """
    raw = _needle(marker)
    forms = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # Drop the characters that mix the padding bytes or what follows the marker.
        start = (shift * 8 + 5) // 6 if shift else 0
        end = ((shift + len(raw)) * 8) // 6
        piece = encoded[start:end]
        if len(piece) >= 8:
            forms.append(piece)
    return forms


def _scan(read_at, start: int, length: int, needles: Sequence[bytes], stats: SearchStats,
          max_total: int) -> Set[bytes]:
    """The *needles* found in the *length* bytes at *start*; ``read_at(offset, size)`` reads."""
    overlap = max(len(n) for n in needles) - 1
    found: Set[bytes] = set()
    tail = b""
    pos = start
    end = start + length
    while pos < end:
        size = min(CHUNK, end - pos)
        if stats.bytes_read + size > max_total:
            raise SearchLimitError(f"search bound of {max_total} bytes reached after {stats.items} items")
        chunk = read_at(pos, size)
        if not chunk:
            break
        stats.bytes_read += len(chunk)
        window = tail + chunk
        found.update(n for n in needles if n not in found and n in window)
        if len(found) == len(needles):
            break
        tail = window[-overlap:] if overlap else b""
        pos += len(chunk)
    return found


def search_files(root: str, needle: Needle, max_total: int = MAX_FILE_BYTES,
                 stats: SearchStats | None = None) -> List[str]:
    """Paths of the regular files under *root* (recursively, symlinks not followed) containing *needle*."""
    data = _needle(needle)
    return search_files_many(root, [data], max_total, stats)[data]


def search_files_many(root: str, needles: Sequence[Needle], max_total: int = MAX_FILE_BYTES,
                      stats: SearchStats | None = None) -> Dict[bytes, List[str]]:
    """:func:`search_files` for several needles in one pass."""
    datas = [_needle(n) for n in needles]
    stats = stats if stats is not None else SearchStats()
    found: Dict[bytes, List[str]] = {d: [] for d in datas}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no directory {root!r} to search")
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue  # removed while walking (a -journal file, say)
            if not stat.S_ISREG(info.st_mode):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                stats.items += 1
                size = os.fstat(fd).st_size
                for hit in _scan(lambda off, n: os.pread(fd, n, off), 0, size, datas, stats, max_total):
                    found[hit].append(path)
            finally:
                os.close(fd)
    return found


def memory_regions(pid: int) -> List[Region]:
    """The readable regions of *pid* from /proc/PID/maps (private and shared)."""
    regions = []
    with open(f"/proc/{pid}/maps", "r", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            span, perms = parts[0], parts[1]
            path = parts[5].strip() if len(parts) == 6 else ""
            if not perms.startswith("r") or path in SKIPPED_REGIONS:
                continue
            lo, _, hi = span.partition("-")
            regions.append((int(lo, 16), int(hi, 16), perms, path))
    return regions


def search_process_memory(pid: int, needle: Needle, max_total: int = MAX_MEMORY_BYTES,
                          stats: SearchStats | None = None) -> List[Region]:
    """Regions ``(start, end, perms, path)`` of process *pid* whose memory contains *needle*."""
    data = _needle(needle)
    return search_process_memory_many(pid, [data], max_total, stats)[data]


def search_process_memory_many(pid: int, needles: Sequence[Needle], max_total: int = MAX_MEMORY_BYTES,
                               stats: SearchStats | None = None) -> Dict[bytes, List[Region]]:
    """:func:`search_process_memory` for several needles in one pass."""
    datas = [_needle(n) for n in needles]
    stats = stats if stats is not None else SearchStats()
    found: Dict[bytes, List[Region]] = {d: [] for d in datas}
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for region in memory_regions(pid):
            start, end, _perms, path = region
            stats.items += 1

            def read_at(offset: int, size: int) -> bytes:
                return os.pread(fd, size, offset)

            try:
                for hit in _scan(read_at, start, end - start, datas, stats, max_total):
                    found[hit].append(region)
            except OSError as exc:  # EIO: a guard page, a region unmapped since maps was read
                stats.skipped.append(f"{start:x}-{end:x} {path}: {exc.strerror}")
    finally:
        os.close(fd)
    return found


def search_everywhere(roots: Sequence[str], pids: Sequence[int], needle: Needle) -> List[str]:
    """Human-readable places (files, then ``pid:region``) where *needle* was found."""
    places = []
    for root in roots:
        places.extend(search_files(root, needle))
    for pid in pids:
        places.extend(f"pid {pid} {start:x}-{end:x} {perms} {path}"
                      for start, end, perms, path in search_process_memory(pid, needle))
    return places
