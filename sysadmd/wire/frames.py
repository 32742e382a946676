"""A lean RFC 6455 frame codec for our servers' open connections (pure, no I/O).

autobahn does the opening handshake; after it sysadmd and the bridge read frames with
:class:`FrameReader` and write them with :func:`frame_header`, because autobahn's
per-frame machinery (frame objects, callbacks, futures, maskers) cost more CPU than
handling the message itself (see :class:`sysadmd.wire.wsbase.LeanServerMixin`).

Wire format (RFC 6455 §5.2), as read from a client:

* byte 0: FIN (0x80), RSV1-3 (0x70, must be 0: we negotiate no extension), opcode
  (low 4 bits): 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong; any
  other opcode is an error.
* byte 1: MASK (0x80, must be set: clients mask every frame) and a 7-bit length;
  126 means a 16-bit big-endian length follows, 127 a 64-bit one (top bit 0).
* then the 4-byte masking key, then the payload XORed with that key repeated.
* A message is one text/binary frame, or one without FIN followed by continuation
  frames up to the one with FIN; control frames (close, ping, pong) may come between
  the fragments, are never fragmented and carry at most 125 bytes.
* A close payload is empty, or a 16-bit code followed by a UTF-8 reason.

Errors raise :class:`FrameError` with the close code to answer: 1002 for a protocol
error (after which the reader ignores everything), 1009 for a message over
``max_message`` bytes (after which it drops data frames unbuffered but still returns
control frames, so the peer's close reply is seen).

Frames we send are unmasked (servers never mask), unfragmented, with the shortest
length encoding; :func:`encode_frame` also masks, for tests that play the client.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from sysadmd.wire.close import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG

_nvx_masker: "object | None" = None  # autobahn's vectorised XOR masker, looked up on first use


def _vector_masker() -> "object | bool":
    """autobahn's vectorised XOR masker (C, from autobahn 24.4), or False without it.

    Imported on the first large payload, not with this module: the ``sysadm`` client
    uses this codec and must start without importing autobahn (about 0.1 s)."""
    global _nvx_masker
    if _nvx_masker is None:
        try:
            from autobahn.websocket import USES_NVX
            from autobahn.websocket.xormasker import create_xor_masker
        except ImportError:
            USES_NVX = False
        _nvx_masker = create_xor_masker if USES_NVX else False
    return _nvx_masker

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

_KNOWN = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
# Above this size a vectorised XOR (autobahn's NVX, in C) or, without it, byte-translation
# of the four strided slices beats one big-int XOR; below it their set-up costs more.
_BIG_FROM = 2048
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]
# Data frames this big are unmasked chunk by chunk as they arrive, not buffered whole.
_STREAM_FROM = 64 * 1024
# Frames one message may span.  Real clients send a handful (Qt splits at 512 KiB, so a
# 16 MiB message is 32 frames); the cap bounds the per-fragment bookkeeping.
MAX_FRAGMENTS = 1024
# Data frames a peer may still send after its message was refused (1009) before the
# connection is dropped without waiting for its close reply: skipping them one by one
# costs as much as reading them.
MAX_DROPPED_FRAMES = 1024


class FrameError(Exception):
    """The peer broke the protocol; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unmask(payload: "bytes | memoryview", key: bytes) -> bytes:
    """XOR *payload* with the 4-byte *key* repeated (masking and unmasking alike)."""
    n = len(payload)
    if n < _BIG_FROM:
        if not n:
            return b""
        stream = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")
    masker = _nvx_masker if _nvx_masker is not None else _vector_masker()
    if masker:
        return bytes(masker(key, n).process(payload))
    src = bytes(payload)
    out = bytearray(src)
    for i in range(4):
        out[i::4] = src[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(out)


def frame_header(opcode: int, length: int, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """The header of one frame (with the masking key at its end when *mask* is given)."""
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((b0, m | length))
    elif length < 0x10000:
        head = bytes((b0, m | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + length.to_bytes(8, "big")
    return head + mask if mask is not None else head


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """One whole frame; unmasked unless a 4-byte *mask* is given."""
    head = frame_header(opcode, len(payload), fin, mask)
    return head + (unmask(payload, mask) if mask is not None else payload)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def parse_close(payload: bytes) -> Tuple[Optional[int], Optional[bytes]]:
    """``(code, reason bytes)`` of a close frame; both ``None`` when it is empty."""
    if not payload:
        return None, None
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    return int.from_bytes(payload[:2], "big"), (payload[2:] or None)


class FrameReader:
    """Incremental parser of frames: :meth:`feed` bytes, :meth:`pop` frames.

    ``masked=True`` (a server reading a client) requires every frame to be masked;
    ``masked=False`` (a client reading a server) requires none to be, as RFC 6455 says.

    :meth:`pop` returns ``(opcode, payload)`` — a whole message (``TEXT``/``BINARY``,
    fragments joined) or a control frame (``CLOSE``/``PING``/``PONG``) — or ``None``
    until more bytes arrive.  Bytes are buffered as received and joined only once a
    whole frame is there; a data frame of ``_STREAM_FROM`` bytes or more is unmasked
    piece by piece as it arrives instead, so it is never held masked and joined twice.
    """

    def __init__(self, max_message: int, masked: bool = True, max_fragments: int = MAX_FRAGMENTS):
        self.max_message = max_message  # may be changed between pops (e.g. after a login)
        self.max_fragments = max_fragments
        self.masked = masked
        self._key_len = 4 if masked else 0
        self.failed = False  # after a protocol error: ignore everything
        self.dropping = False  # after an oversized message: skip data frames
        self.dropped_frames = 0  # data frames skipped since (see MAX_DROPPED_FRAMES)
        self._chunks: List[bytes] = []
        self._pos = 0  # offset of unread bytes in _chunks[0]
        self._avail = 0  # unread bytes in _chunks
        self._need = 2  # bytes needed before parsing can go on
        self._discard = 0  # bytes of a dropped frame still to skip as they arrive
        self._parts: Optional[List[bytes]] = None  # fragments of the message in progress
        self._opcode = 0
        self._size = 0  # payload bytes of the message in progress
        self._fragments = 0  # frames of the message in progress
        # a large data frame being streamed: payload bytes still to come, the masking
        # key rotated to where they start, the unmasked pieces so far, its opcode and FIN
        self._left = 0
        self._key = b""
        self._pieces: List[bytes] = []
        self._streamed: Optional[Tuple[int, int]] = None

    def feed(self, data: bytes) -> None:
        if self.failed or not data:
            return
        if self._discard:
            cut = min(self._discard, len(data))
            self._discard -= cut
            data = data[cut:]
            if not data:
                return
        if self._left:
            take = min(self._left, len(data))
            self._stream_piece(memoryview(data)[:take] if take < len(data) else data)
            data = data[take:]
            if not data:
                return
        self._chunks.append(data)
        self._avail += len(data)

    def pop(self) -> Optional[Tuple[int, bytes]]:
        if self._streamed is not None and not self._left and not self.failed:
            (opcode, fin), self._streamed = self._streamed, None
            pieces, self._pieces = self._pieces, []
            frame = self._data_frame(opcode, fin, b"".join(pieces))
            if frame is not None:
                return frame
        while not self.failed and not self._left and self._avail >= self._need:
            chunks = self._chunks
            if len(chunks) > 1:
                chunks[:] = [b"".join([chunks[0][self._pos:], *chunks[1:]])]
                self._pos = 0
            buf = chunks[0]
            pos = self._pos
            avail = self._avail
            b0 = buf[pos]
            if (b0 == 0x81 or b0 == 0x82) and self.masked and self._parts is None and not self.dropping:
                # The common case inline: a whole masked text/binary message in one frame,
                # under _BIG_FROM bytes and already all here.  Everything else (and any
                # error) goes through _parse.
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                head = 6
                if length == 126 and avail >= 8:
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 8
                end = head + length
                if b1 & 0x80 and length < _BIG_FROM and avail >= end and length <= self.max_message \
                        and (length < 126 or head == 8):
                    if length:
                        key = buf[pos + head - 4:pos + head]
                        payload = (int.from_bytes(buf[pos + head:pos + end], "little")
                                   ^ int.from_bytes((key * ((length >> 2) + 1))[:length], "little")
                                   ).to_bytes(length, "little")
                    else:
                        payload = b""
                    self._need = 2
                    if avail > end:
                        self._avail = avail - end
                        self._pos = pos + end
                    else:
                        self._avail = 0
                        self._chunks = []
                        self._pos = 0
                    return b0 & 0x0F, payload
            frame = self._parse(buf, pos, avail)
            if frame is not None:
                return frame
        return None

    def front(self) -> Optional[Tuple[bytes, int, int]]:
        """``(buffer, start, end)``: the bytes read but not yet parsed, as one buffer, when
        nothing but whole-frame parsing is under way (no fragmented message, no large frame
        streaming, nothing being dropped, no error); else ``None``.

        For a caller with its own path for the common case (the bridge's relay): it parses
        whole frames from ``start`` and reports the bytes it took with :meth:`skip`; the
        rest stays here for :meth:`pop`, so no byte is lost or read twice."""
        if self.failed or self.dropping or self._left or self._discard or self._parts is not None \
                or self._streamed is not None or not self._avail:
            return None
        chunks = self._chunks
        if len(chunks) > 1:
            chunks[:] = [b"".join([chunks[0][self._pos:], *chunks[1:]])]
            self._pos = 0
        return chunks[0], self._pos, self._pos + self._avail

    def skip(self, n: int) -> None:
        """*n* bytes at the front (whole frames, see :meth:`front`) were handled by the caller."""
        if n:
            self._consume(n)

    # --- internals -------------------------------------------------------------------
    def _fail(self, reason: str) -> FrameError:
        self.failed = True
        self._chunks = []
        self._avail = 0
        return FrameError(CLOSE_PROTOCOL_ERROR, reason)

    def _consume(self, n: int) -> None:
        self._avail -= n
        self._need = 2
        if self._avail:
            self._pos += n
        else:
            self._chunks = []
            self._pos = 0

    def _parse(self, buf: bytes, pos: int, avail: int) -> Optional[Tuple[int, bytes]]:
        """Parse at most one frame; return a finished message/control frame or None."""
        b0 = buf[pos]
        b1 = buf[pos + 1]
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x70:
            raise self._fail("reserved bits set (no extension was negotiated)")
        if opcode not in _KNOWN:
            raise self._fail(f"unknown opcode {opcode}")
        if bool(b1 & 0x80) != self.masked:
            raise self._fail("unmasked client frame" if self.masked else "masked server frame")
        length = b1 & 0x7F
        head = 2 + self._key_len
        if length == 126:
            head = 4 + self._key_len
            if avail < head:
                self._need = head
                return None
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
        elif length == 127:
            head = 10 + self._key_len
            if avail < head:
                self._need = head
                return None
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if length >> 63:
                raise self._fail("frame length has its top bit set")
        control = opcode & 0x8
        if control:
            if not fin:
                raise self._fail("fragmented control frame")
            if length > 125:
                raise self._fail(f"control frame of {length} bytes (at most 125)")
        elif opcode == CONTINUATION:
            if self._parts is None and not self.dropping:
                raise self._fail("continuation frame outside a message")
        elif self._parts is not None:
            raise self._fail("new message before the previous one ended")
        end = head + length
        if not control:
            too_many = self._parts is not None and self._fragments >= self.max_fragments
            if self.dropping or too_many or self._size + length > self.max_message:
                self._drop_frame(bool(fin), end, avail)
                if not self.dropping:
                    self.dropping = True
                    size = self._size + length
                    self._size = 0
                    self._parts = None
                    if too_many:
                        raise FrameError(CLOSE_TOO_BIG, f"message in more than {self.max_fragments} frames")
                    raise FrameError(CLOSE_TOO_BIG, f"message of {size}+ bytes (at most {self.max_message})")
                return None
            if self._parts is not None:
                self._fragments += 1
        if avail < end:
            if length >= _STREAM_FROM and not control and avail >= head:
                self._left = length
                self._key = buf[pos + head - self._key_len:pos + head]
                self._streamed = (opcode, fin)
                rest = avail - head
                self._consume(avail)
                if rest:
                    self._stream_piece(memoryview(buf)[pos + head:pos + avail])
                return None
            self._need = end
            return None
        if not self.masked:
            payload = buf[pos + head:pos + end]
        elif length < _BIG_FROM:
            payload = unmask(buf[pos + head:pos + end], buf[pos + head - 4:pos + head])
        else:
            # no copy of the masked bytes
            payload = unmask(memoryview(buf)[pos + head:pos + end], buf[pos + head - 4:pos + head])
        self._consume(end)
        if control:
            if opcode == CLOSE and length == 1:
                raise self._fail("close frame with a 1-byte payload")
            return opcode, payload
        return self._data_frame(opcode, fin, payload)

    def _stream_piece(self, piece: "bytes | memoryview") -> None:
        n = len(piece)
        key = self._key
        if key:
            self._pieces.append(unmask(piece, key))
            self._key = key[n % 4:] + key[:n % 4]
        else:
            self._pieces.append(bytes(piece))
        self._left -= n

    def _data_frame(self, opcode: int, fin: int, payload: bytes) -> Optional[Tuple[int, bytes]]:
        """A data frame's unmasked payload: a whole message, or a fragment to keep."""
        length = len(payload)
        if fin and self._parts is None:
            return opcode, payload
        if self._parts is None:
            self._parts = [payload]
            self._opcode = opcode
            self._size = length
            self._fragments = 1
            return None
        if length:
            self._parts.append(payload)
            self._size += length
        if not fin:
            return None
        parts, self._parts = self._parts, None
        self._size = 0
        self._fragments = 0
        return self._opcode, b"".join(parts)

    def _drop_frame(self, fin: bool, end: int, avail: int) -> None:
        """Skip a data frame of an oversized message without buffering it."""
        if avail >= end:
            self._consume(end)
        else:
            self._discard = end - avail
            self._consume(avail)
        self.dropped_frames += 1
        if fin:
            # The oversized message ended; a new one would still be dropped (we are closing).
            self._parts = None
