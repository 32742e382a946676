"""Progress lines a command writes to its progress pipe, parsed and bounded.

Every dispatcher command gets an extra pipe, announced in its environment as
``SYSADM_PROGRESS_FD`` (the number of the inherited descriptor it writes to).  Two line
formats are understood, one report per line:

* ``PERCENT DESCRIPTION``: a number from 0 to 100 (``42``, ``42.5``, ``42%``), then
  optional free text, e.g. ``echo "50 copying files" >&$SYSADM_PROGRESS_FD``.
* apt's ``APT::Status-Fd`` lines, so ``apt-get -o APT::Status-Fd=$SYSADM_PROGRESS_FD …``
  reports its real progress: ``pmstatus:PKG:PERCENT:DESCRIPTION`` (dpkg stage),
  ``dlstatus:ITEM:PERCENT:DESCRIPTION`` (downloads), ``pmerror:PKG:PERCENT:MESSAGE`` and
  ``pmconffile:FILE:PERCENT:…`` (an error, a configuration file question: noted in
  ``extra``, and their percent counts).  A package name may hold colons
  (``libc6:amd64``): the percent is the first field after the name that is a number.

A report is ``{"percent": float | None, "description": str, "extra": dict}``;
``extra`` may hold ``source`` (``"apt"``), ``stage`` (``"download"``/``"install"``),
``package``, ``errors`` and ``conffiles`` (the last :data:`NOTES_MAX` of each),
``ignored_lines`` (lines in neither format) and ``long_lines`` (lines over
:data:`LINE_MAX` bytes, dropped unread).  Bounded: a line is at most :data:`LINE_MAX`
bytes (longer ones are dropped whole and counted), a description at most
:data:`DESCRIPTION_MAX` characters, control characters become spaces, bytes that are not
UTF-8 become U+FFFD.  The parser never raises on any input.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional

ENV_NAME = "SYSADM_PROGRESS_FD"
LINE_MAX = 4096  # bytes per line; a longer line is dropped and counted
DESCRIPTION_MAX = 256  # characters kept of a description or an apt note
NOTES_MAX = 8  # apt errors and conffile questions kept in extra (the last ones)

_PLAIN = re.compile(r"\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)\s*%?(?:\s+(.*))?\Z", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_APT_KINDS = {b"pmstatus": "install", b"dlstatus": "download", b"pmerror": "install", b"pmconffile": "install"}

Report = Dict[str, Any]


def _text(raw: bytes, limit: int = DESCRIPTION_MAX) -> str:
    # Cut before decoding (bounded work), then again in characters.
    text = raw[: limit * 4].decode("utf-8", "replace")
    return _CONTROL.sub(" ", text).strip()[:limit]


def _percent(raw: bytes) -> Optional[float]:
    try:
        value = float(raw.strip()) if len(raw) <= 32 else math.nan
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value > 100:
        return None
    return value


class ProgressParser:
    """Turns the bytes of one command's progress pipe into reports (the latest state)."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than LINE_MAX: drop it up to its end
        self.percent: Optional[float] = None
        self.description = ""
        self.source = ""
        self.stage = ""
        self.package = ""
        self.errors: List[Dict[str, str]] = []
        self.conffiles: List[str] = []
        self.ignored = 0
        self.long_lines = 0

    def feed(self, data: bytes) -> Optional[Report]:
        """Take a chunk of the pipe; the report after its complete lines, or ``None`` when
        they changed nothing."""
        changed = False
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if len(self._partial) + len(piece) > LINE_MAX:
                self._partial.clear()
                self.long_lines += 1
                changed = True
                continue
            line = bytes(self._partial) + piece if self._partial else piece
            self._partial.clear()
            changed = self.line(line) or changed
        rest = data[start:]
        if rest and not self._skipping:
            if len(self._partial) + len(rest) > LINE_MAX:
                self._partial.clear()
                self._skipping = True
                self.long_lines += 1
                changed = True
            else:
                self._partial += rest
        return self.report() if changed else None

    def finish(self) -> Optional[Report]:
        """The pipe has closed: a last line without a newline still counts."""
        if self._skipping or not self._partial:
            self._skipping = False
            self._partial.clear()
            return None
        line = bytes(self._partial)
        self._partial.clear()
        return self.report() if self.line(line) else None

    def line(self, line: bytes) -> bool:
        """Apply one line (without its newline); whether the state changed."""
        line = line.rstrip(b"\r")
        if not line.strip():
            return False
        kind, sep, _ = line.partition(b":")
        if sep and kind in _APT_KINDS:
            if self._apt(kind, line.split(b":")):
                return True
        else:
            match = _PLAIN.match(line.decode("utf-8", "replace"))
            if match is not None:
                value = _percent(match.group(1).encode())
                if value is not None:
                    self.percent = value
                    self.description = _text((match.group(2) or "").encode("utf-8"))
                    return True
        self.ignored += 1
        return True

    def _apt(self, kind: bytes, fields: List[bytes]) -> bool:
        # fields: kind, name[:more name], percent, description[:more description]
        for at in range(2, len(fields)):
            value = _percent(fields[at])
            if value is not None:
                break
        else:
            return False
        name = _text(b":".join(fields[1:at]))
        message = _text(b":".join(fields[at + 1:]))
        self.percent = value
        self.source = "apt"
        self.stage = _APT_KINDS[kind]
        if kind == b"pmerror":
            self.errors = (self.errors + [{"package": name, "message": message}])[-NOTES_MAX:]
            self.package = name
            self.description = _text(f"error: {name}: {message}".encode("utf-8"))
        elif kind == b"pmconffile":
            self.conffiles = (self.conffiles + [name])[-NOTES_MAX:]
            self.description = _text(f"configuration file {name} needs an answer".encode("utf-8"))
        else:
            if kind == b"pmstatus":
                self.package = name
            self.description = message
        return True

    def report(self) -> Report:
        extra: Dict[str, Any] = {}
        if self.source:
            extra.update(source=self.source, stage=self.stage)
        if self.package:
            extra["package"] = self.package
        if self.errors:
            extra["errors"] = [dict(e) for e in self.errors]
        if self.conffiles:
            extra["conffiles"] = list(self.conffiles)
        if self.ignored:
            extra["ignored_lines"] = self.ignored
        if self.long_lines:
            extra["long_lines"] = self.long_lines
        return {"percent": self.percent, "description": self.description, "extra": extra}


def in_chain(report: Report, index: int, count: int) -> Report:
    """A command's report as the job's progress: command *index* of *count* covers the
    job's percent range ``[index, index + 1] * 100 / count``; which command it is goes
    into ``extra`` (``command``: 1-based, ``commands``, ``command_percent``)."""
    percent = report.get("percent")
    extra = dict(report.get("extra") or {})
    if count > 1:
        extra.update(command=index + 1, commands=count, command_percent=percent)
        if percent is not None:
            percent = (index + percent / 100.0) * 100.0 / count
    return {"percent": percent, "description": report.get("description", ""), "extra": extra}
