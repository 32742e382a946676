"""An incremental ``multipart/form-data`` parser (RFC 7578) for request bodies of any size.

Bytes are fed as they arrive (:meth:`MultipartParser.feed`); each part's headers are
parsed (at most :data:`MAX_HEADER_BYTES`) and handed to ``on_part(name, filename,
headers)``, which returns the part's sink (``write(bytes)``); the part's data is written
to it as it comes, holding back only ``len(delimiter) + 1`` bytes, so memory stays
bounded whatever the part size.  :meth:`close` says whether the body ended properly.
The stdlib's email parser (what twisted.web uses for forms) loads the whole body.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional

MAX_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY = 70  # RFC 2046


class MultipartError(ValueError):
    pass


def boundary_of(content_type: Optional[bytes]) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or :class:`MultipartError`."""
    if not content_type:
        raise MultipartError("the request has no Content-Type; send multipart/form-data (curl -F)")
    media, _, rest = content_type.partition(b";")
    if media.strip().lower() != b"multipart/form-data":
        raise MultipartError(f"Content-Type {media.strip()[:60].decode('latin-1')!r} is not multipart/form-data")
    m = re.search(rb'(?i)(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))', rest)
    if m is None:
        raise MultipartError("Content-Type multipart/form-data without a boundary (1 to 70 characters)")
    return m.group(1) or m.group(2)


def _params(value: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for m in re.finditer(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', value):
        out[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


class MultipartParser:
    def __init__(self, boundary: bytes, on_part: Callable[[str, Optional[str], Dict[str, str]], Any]):
        if not 1 <= len(boundary) <= MAX_BOUNDARY:
            raise MultipartError(f"multipart boundary must be 1 to {MAX_BOUNDARY} bytes")
        self.delimiter = b"\r\n--" + boundary
        self.on_part = on_part
        self.buffer = bytearray(b"\r\n")  # so the first delimiter needs no special case
        self.state = "preamble"
        self.sink: Any = None
        self.parts = 0

    def feed(self, data: bytes) -> None:
        delim = self.delimiter
        if self.state == "body" and len(self.buffer) < len(delim):
            # The hot path inside a large part: one copy (held-back tail + new bytes), one
            # search, and the part's bytes handed on as a view, not copied again.
            chunk = bytes(self.buffer) + data
            if chunk.find(delim) < 0:
                keep = len(delim) - 1
                if len(chunk) > keep:
                    self.sink.write(memoryview(chunk)[:-keep])
                    self.buffer = bytearray(chunk[-keep:])
                else:
                    self.buffer = bytearray(chunk)
                return
            self.buffer = bytearray(chunk)
        else:
            self.buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        buf, delim = self.buffer, self.delimiter
        if self.state in ("preamble", "body"):
            at = buf.find(delim)
            if at < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    if self.state == "body":
                        self.sink.write(bytes(buf[:-keep]))
                    elif len(buf) > 64 * 1024:
                        raise MultipartError("no multipart boundary in the first 64 KiB of the body")
                    del buf[:-keep]
                return False
            if self.state == "body":
                if at:
                    self.sink.write(bytes(buf[:at]))
                self.sink = None
            del buf[:at + len(delim)]
            self.state = "after"
            return True
        if self.state == "after":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self.state = "end"
                del buf[:]
                return False
            if buf[:2] != b"\r\n":
                raise MultipartError("malformed multipart body: a boundary line is followed by other bytes")
            del buf[:2]
            self.state = "headers"
            return True
        if self.state == "headers":
            at = buf.find(b"\r\n\r\n")
            if at < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError(f"a multipart part's headers exceed {MAX_HEADER_BYTES} bytes")
                return False
            headers = self._headers(bytes(buf[:at]))
            del buf[:at + 4]
            disposition = headers.get("content-disposition", "")
            if not disposition.lower().startswith("form-data"):
                raise MultipartError(f"multipart part {self.parts + 1} has no Content-Disposition: form-data")
            params = _params(disposition)
            if "name" not in params:
                raise MultipartError(f"multipart part {self.parts + 1} has no name")
            self.parts += 1
            self.sink = self.on_part(params["name"], params.get("filename"), headers)
            self.state = "body"
            return True
        if self.state == "end":
            del buf[:]  # the epilogue is ignored
            return False
        return False

    @staticmethod
    def _headers(raw: bytes) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                raise MultipartError("malformed multipart part header line")
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
        return out

    def close(self) -> None:
        if self.state != "end":
            raise MultipartError("the multipart body ended before its closing boundary (upload cut short?)")
