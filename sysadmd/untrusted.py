"""Showing values a peer chose (user names, reasons, paths) in log lines and rows.

:func:`shown` makes any value safe to put in one log line or one database row: it is
cut to *limit* characters with a marker saying how much was dropped, and every
character that could forge a line, hide text or fail to encode (newlines and other
control characters, lone UTF-16 surrogates, Unicode line/paragraph separators and
format characters such as bidi overrides, and the backslash itself so escapes stay
unambiguous) is written as a Python-style escape (``\\n``, ``\\x00``, ``\\u202e``,
``\\ud800``).  Printable text, including non-ASCII letters, passes unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

DEFAULT_LIMIT = 128  # characters of the value kept; enough for any real user name or host
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _escape(ch: str, backslash: bool = True) -> str:
    if ch == "\\" and not backslash:
        return ch
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(value: Any, limit: int = DEFAULT_LIMIT, *, backslash: bool = True) -> str:
    """*value* as one escaped line of at most *limit* characters (bytes for ``bytes``)
    of the original, followed by a marker when something was cut.

    ``bytes`` are read as UTF-8, invalid bytes shown as ``\\xNN``; anything else that
    is not a string goes through ``str()`` and is bounded the same way.
    ``backslash=False`` leaves backslashes alone: for whole messages whose untrusted
    parts already went through :func:`shown` (they are not escaped twice).
    """
    if isinstance(value, (bytes, bytearray)):
        cut_bytes = bytes(value[:limit])
        out = "".join(
            f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else _escape(ch, backslash)
            for ch in cut_bytes.decode("utf-8", "surrogateescape")
        )
        total, kept, unit = len(value), len(cut_bytes), "bytes"
    else:
        text = value if isinstance(value, str) else str(value)
        cut = text[:limit]
        out = "".join(_escape(ch, backslash) for ch in cut)
        total, kept, unit = len(text), len(cut), "chars"
    if kept < total:
        out += f"…[{total - kept} more {unit} cut, {total} in all]"
    return out


def has_surrogate(text: str) -> bool:
    """``True`` if *text* holds a lone UTF-16 surrogate (it cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """*text* with every lone surrogate replaced by U+FFFD (so it can be stored and sent)."""
    return _SURROGATES.sub("\ufffd", text) if has_surrogate(text) else text


def clean_value(value: Any) -> Any:
    """:func:`clean` applied to every string inside a JSON-shaped *value*."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_value(v) for k, v in value.items()}
    return value
