"""The bridge's per-frame relay step: one WebSocket frame in, the frame to send on out.

:func:`scan_one` is used by ``BridgeServerProtocol.inline_frames`` (:mod:`bridge.protocol`)
for every relay frame it takes.  It is written twice: here in Python (the reference, and
the fallback), and in C (``bridge/relayscan.c``, built by ``setup.py`` as the top-level
module ``_sysadm_relayscan`` when a compiler is there).  The two must give the same answer
for every input; ``tests/test_relayscan.py`` checks that.  :data:`IMPLEMENTATION` says
which one runs; the bridge logs it when it starts.

In C the step takes 80 to 160 ns for frames of 100 to 2,000 bytes, against 1.1 to 3.9 µs
in Python (measured with timeit on the development machine): the mask is applied eight
bytes at a time, with no big integers or slices, and the frame is one allocation.
``bench/bridge_bench.py --engines stdlib,stdlib/py`` compares the whole relay both ways.
"""

import os
import struct
from typing import Optional, Tuple

from sysadmd.wire.frames import unmask

__all__ = ["scan_one", "py_scan_one", "IMPLEMENTATION", "MAX_PAYLOAD"]

#: Longest payload taken here; longer frames go the general way (they are rare and their
#: cost is in the copy, not in the per-frame steps).
MAX_PAYLOAD = 2048

_HEADERS = [bytes((0x81, n)) for n in range(126)]
_header_16 = struct.Struct(">BBH").pack


def py_scan_one(data: bytes, pos: int, n: int, limit: int,
                prefix: bytes) -> Optional[Tuple[str, bytes, int]]:
    """The frame at ``data[pos:n]``, if the relay can take it as it is: ``(dest, frame,
    next_pos)``, else ``None``.

    Taken: a whole, masked, final text frame (``0x81``) with 1 to 2047 payload bytes and at
    most *limit*, whose unmasked payload is ASCII, does not start with ``{`` (a call for
    the bridge itself) and starts with a non-empty line ``<dest>\\n``.  *frame* is what
    the destination gets: an unmasked text frame of *prefix* (the sender's ID) followed by
    the payload from its first newline on.  Everything else (control frames, fragments,
    unmasked or 8-byte-length frames, a frame not all read yet, non-ASCII text) is
    ``None``: the caller's general path handles it."""
    if n > len(data):
        n = len(data)
    if pos < 0 or n - pos < 2 or data[pos] != 0x81:
        return None
    length = data[pos + 1] ^ 0x80  # masked (the top bit), as a peer must send
    if length < 126:
        start = pos + 6
    elif length == 126 and n - pos >= 4:
        length = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 8
    else:
        return None  # unmasked (a protocol error), 8-byte length, or not all here
    end = start + length
    if end > n or not 0 < length < MAX_PAYLOAD or length > limit:
        return None
    payload = unmask(data[start:end], bytes(data[start - 4:start]))
    newline = payload.find(b"\n")
    if newline <= 0 or payload[0] == 0x7B or not payload.isascii():
        return None
    size = len(prefix) + length - newline
    if size >= 65536:
        return None
    header = _HEADERS[size] if size < 126 else _header_16(0x81, 126, size)
    return payload[:newline].decode("ascii"), b"".join((header, prefix, payload[newline:])), end


def _load():
    if os.environ.get("SYSADM_BRIDGE_PURE_PYTHON") == "1":
        return py_scan_one, "python (SYSADM_BRIDGE_PURE_PYTHON=1)"
    try:
        from _sysadm_relayscan import scan_one as c_scan_one
    except ImportError as e:
        return py_scan_one, f"python (the C module is not built: {e})"
    return c_scan_one, "C (_sysadm_relayscan)"


scan_one, IMPLEMENTATION = _load()
