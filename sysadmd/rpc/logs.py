"""``rpc/logs`` ``read_logs``: the server's own logs by time range (any authenticated user).

Request args::

    {"action":"read_logs",
     "logs":"hostinfo" | ["hostinfo","events-state"],      # default: every log
     "time_format":"time_t_seconds", "start_time":"1700000000", "end_time":"1700003600"}

* ``logs``: ``hostinfo``, ``dispatcher``, ``events-dispatcher``, ``events-lifepreserver``,
  ``events-state`` (the store's registered logs, :attr:`sysadmd.logstore.LogStore.names`).  Unknown names are ignored as upstream does, unless every name is
  unknown (400 naming the valid ones).  An empty array means every log.
* Without ``time_format``: the last 12 hours (``start_time``/``end_time`` without a format
  are refused rather than silently ignored).  Formats: ``time_t_seconds``,
  ``epoch_mseconds``; ``relative_second|relative_day|relative_month`` (``end_time`` is now
  minus |value|, ``start_time`` is the end minus |value|); ``ISODate``; or a Qt date
  format such as ``yyyy-MM-ddThh:mm:ss`` (tokens yyyy yy MMMM MMM MM dddd ddd dd hh HH mm ss
  zzz, quoted 'literal' text; each field at most once), read in local time.  Times are
  JSON strings.  A missing end is now; a missing start is 12 hours before the end.
* Bounds (400 naming the field): ``time_format``, ``start_time`` and ``end_time`` at most
  ``MAX_FIELD_CHARS`` characters; ``logs`` at most ``MAX_LOG_NAMES`` names of at most
  ``MAX_FIELD_CHARS`` characters; numbers must be finite.  Parsing a time then costs a
  bounded, small amount whatever the request holds.

Reply::

    {"events-state":{"2026-11-23T17:00:01.123456":{…event args…}},
     "hostinfo":{"2026-11-23T17:00:02.000000":"New Connection: 127.0.0.1"},
     "truncated":{"hostinfo":120}}

Keys are local ISO 8601 times, always with microseconds.  Upstream lost entries written
in the same second; here two entries never share a key: a later duplicate moves forward by
one microsecond.  Logs without entries are omitted.  Each log returns at most its newest
``MAX_ENTRIES`` entries and ``MAX_BYTES`` of entry text; when entries were left out, the
top-level ``truncated`` object (never a log name) says how many per log — narrow the range
to read them.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sysadmd.api import Api
from sysadmd.wire.envelope import ApiError, require_action, require_object, type_name
from sysadmd.logstore import LogStore

DEFAULT_SPAN = 12 * 3600.0
MAX_ENTRIES = 5000
MAX_BYTES = 4 * 1024 * 1024
RELATIVE = {"relative_second": "second", "relative_day": "day", "relative_month": "month"}
# Longest time_format / start_time / end_time / log name accepted (a Qt format such as
# "dddd, dd MMMM yyyy 'at' hh:mm:ss.zzz" is 37), and most log names in one request.
MAX_FIELD_CHARS = 64
MAX_LOG_NAMES = 16

# Qt date-format tokens we can read, longest first within each letter.
QT_TOKENS = {
    "yyyy": "%Y", "yy": "%y", "MMMM": "%B", "MMM": "%b", "MM": "%m", "dddd": "%A", "ddd": "%a",
    "dd": "%d", "hh": "%H", "HH": "%H", "mm": "%M", "ss": "%S", "zzz": "%f",
}
QT_LETTERS = set("yMdhHmszaApPt")


def qt_format_to_strptime(fmt: str) -> str:
    """Translate a Qt date format to :func:`datetime.strptime`; ValueError names a bad token."""
    out: List[str] = []
    used: Dict[str, str] = {}  # strptime directive -> the token that asked for it
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "'":
            end = fmt.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated quoted text")
            out.append(fmt[i + 1:end].replace("%", "%%") if end > i + 1 else "'")
            i = end + 1
        elif ch in QT_LETTERS:
            run = _RUNS[ch].match(fmt, i).group(0)  # match at i: no copy of the rest
            if run not in QT_TOKENS:
                raise ValueError(f"format token {_short(run)} is not supported")
            directive = QT_TOKENS[run]
            if directive in used:
                # strptime cannot read one field twice (and used to fail with a crash).
                raise ValueError(f"format tokens {used[directive]!r} and {run!r} read the same field twice")
            used[directive] = run
            out.append(directive)
            i += len(run)
        else:
            out.append("%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


_RUNS = {ch: re.compile(re.escape(ch) + "+") for ch in QT_LETTERS}


def _short(text: str, limit: int = 24) -> str:
    """*text* for an error message: repr, cut to *limit* characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"


def months_before(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _number(field: str, text: str, fmt: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError("400", f"{field} {text!r} is not a number (time_format {fmt})") from None
    if not math.isfinite(value):
        raise ApiError("400", f"{field} {text!r} is not a finite number (time_format {fmt})")
    return value


def _bounded(field: str, value: str) -> str:
    if len(value) > MAX_FIELD_CHARS:
        raise ApiError("400", f"{field} is {len(value)} characters long; at most {MAX_FIELD_CHARS} are accepted")
    return value


def _text(args: Dict[str, Any], field: str) -> Optional[str]:
    value = args.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError("400", f"{field} must be a JSON string (e.g. \"1700000000\"), got {type_name(value)}")
    return _bounded(field, value)


def time_range(args: Dict[str, Any], now: float) -> Tuple[float, float]:
    """``(start, end)`` in epoch seconds from the request args."""
    fmt = args.get("time_format")
    start_text, end_text = _text(args, "start_time"), _text(args, "end_time")
    if fmt is None or fmt == "":
        if start_text is not None or end_text is not None:
            raise ApiError("400", "start_time/end_time need a time_format (time_t_seconds, epoch_mseconds, "
                                  "relative_day, relative_month, relative_second, ISODate or a Qt date format)")
        return now - DEFAULT_SPAN, now
    if not isinstance(fmt, str):
        raise ApiError("400", f"time_format must be a string, got {type_name(fmt)}")
    _bounded("time_format", fmt)

    if fmt in RELATIVE:
        unit = RELATIVE[fmt]

        def back(moment: float, field: str, text: str) -> float:
            amount = abs(_number(field, text, fmt))
            if unit == "second":
                return moment - amount
            if unit == "day":
                return moment - amount * 86400
            if amount != int(amount):
                raise ApiError("400", f"{field} {text!r}: relative_month takes whole months")
            try:
                return months_before(datetime.fromtimestamp(moment), int(amount)).timestamp()
            except (ValueError, OverflowError, OSError):
                raise ApiError("400", f"{field} {text!r}: that many months back is out of range") from None

        end = back(now, "end_time", end_text) if end_text is not None else now
        start = back(end, "start_time", start_text) if start_text is not None else end - DEFAULT_SPAN
        return start, end

    if fmt == "time_t_seconds":
        convert = lambda field, text: _number(field, text, fmt)  # noqa: E731
    elif fmt == "epoch_mseconds":
        convert = lambda field, text: _number(field, text, fmt) / 1000.0  # noqa: E731
    else:
        if fmt.lower() in ("isodate", "iso"):
            parse = datetime.fromisoformat
        else:
            try:
                pattern = qt_format_to_strptime(fmt)
            except ValueError as e:
                raise ApiError("400", f"time_format {fmt!r}: {e}; use time_t_seconds, epoch_mseconds, relative_day, "
                                      "relative_month, relative_second, ISODate or a format like yyyy-MM-ddThh:mm:ss") from None
            parse = lambda text: datetime.strptime(text, pattern)  # noqa: E731

        def convert(field: str, text: str) -> float:
            try:
                return parse(text).timestamp()
            except (ValueError, OverflowError, OSError, re.error):
                raise ApiError("400", f"{field} {text!r} does not match time_format {fmt!r}") from None

    end = convert("end_time", end_text) if end_text is not None else now
    start = convert("start_time", start_text) if start_text is not None else end - DEFAULT_SPAN
    return start, end


def wanted_logs(value: Any, log_names: Sequence[str]) -> List[str]:
    """The logs a request's ``logs`` field asks for, among *log_names* (the store's)."""
    if value is None or value == []:
        return list(log_names)
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = value
    else:
        raise ApiError("400", f"logs must be a log name or an array of names ({', '.join(log_names)})")
    if len(names) > MAX_LOG_NAMES:
        raise ApiError("400", f"logs holds {len(names)} names; at most {MAX_LOG_NAMES} are accepted "
                              f"(there are {len(log_names)} logs: {', '.join(log_names)})")
    for name in names:
        _bounded("logs", name)
    known = [n for n in names if n in log_names]
    if not known:
        raise ApiError("400", f"no known log among {', '.join(map(repr, names))}; logs are {', '.join(log_names)}")
    return list(dict.fromkeys(known))


def timestamp_keys(times: List[float]) -> List[str]:
    """Local ISO 8601 keys with microseconds; equal times get later, distinct keys."""
    keys: List[str] = []
    last: Optional[datetime] = None
    for ts in times:
        moment = datetime.fromtimestamp(ts)
        if last is not None and moment <= last:
            moment = last + timedelta(microseconds=1)
        keys.append(moment.isoformat(timespec="microseconds"))
        last = moment
    return keys


def read_logs(store: Any, args: Dict[str, Any], now: float) -> Dict[str, Any]:
    names = wanted_logs(args.get("logs"), store.names)
    start, end = time_range(args, now)
    if start > end:
        raise ApiError("400", "start_time is after end_time")
    result: Dict[str, Any] = {}
    truncated: Dict[str, int] = {}
    for name in names:
        rows, total = store.read_newest(name, start, end, MAX_ENTRIES)
        budget, keep = MAX_BYTES, len(rows)
        for i in range(len(rows) - 1, -1, -1):  # newest first, until the byte budget is spent
            budget -= rows[i][2]
            if budget < 0:
                keep = len(rows) - 1 - i
                break
        rows = rows[len(rows) - keep:]
        if total > len(rows):
            truncated[name] = total - len(rows)
        if rows:
            keys = timestamp_keys([ts for ts, _, _ in rows])
            result[name] = {key: entry for key, (_, entry, _) in zip(keys, rows)}
    if truncated:
        result["truncated"] = truncated
    return result


def route(api: Api, logs: LogStore, clock: Any) -> None:
    """Route ``rpc/logs`` (any login; read-only for limited users) over *logs*."""

    def handle(session, request):
        action = require_action(request.args)
        if action != "read_logs":
            raise ApiError("400", f"unknown action {action!r}; rpc/logs has read_logs")
        return read_logs(logs, require_object(request.args), clock.seconds())

    api.add("rpc", "logs", handle, limited="read")
