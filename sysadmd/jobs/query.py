"""Job queries: the seed's filter lists and options, compiled to one parameterised SQL
``WHERE``/``ORDER BY`` that SQLite evaluates on the job table's columns.

Filters (a JSON array; its terms are ANDed)::

    [["state", "=", "RUNNING"], ["time_started", ">", 1700000000]]
    [["OR", [["state", "=", "FAILED"], [["state", "=", "SUCCESS"], ["queue", "^", "pkg"]]]]]

* a term is ``[field, operator, value]``; ``["OR", [branch, …]]`` is true when one of its
  branches is (a branch is a term or an array of terms, ANDed); an array of terms where a
  term is expected is an AND group.  Fields are the names of the *columns* mapping
  (flat, dotted for nested job fields: ``progress.percent``, ``owner.user``).
* operators and their NULL rules (a NULL is a job field that is null):

  ==========  ===================================================  ==========================
  operator    true when                                            field is NULL
  ==========  ===================================================  ==========================
  ``=``       field equals value (value may be ``null``)           true only for ``null``
  ``!=``      field differs from value (value may be ``null``)     true unless value is null
  ``>`` …     ``> >= < <=``: ordered comparison (numbers, or text  false
              by code point); value must not be null
  ``~``       ``re.match(value, field)`` (anchored at the start;   matched as ""
              see :mod:`sysadmd.jobs.safe_regex`), text only
  ``in``      field is one of the array (which may hold null)      true if the array holds null
  ``nin``     field is none of the array                           false
  ``^``/``$`` field starts/ends with the value, text only          false
  ==========  ===================================================  ==========================

  These are TrueNAS's rules (its ``filter_list``), with SQL doing the work.  A value must
  suit its column: numbers (not booleans) for numeric columns, strings for text columns.
* ``~`` cannot hang the daemon: patterns go through :mod:`sysadmd.jobs.safe_regex`, a
  non-backtracking engine (time linear in the subject; backreferences and lookarounds
  refused) capped at :data:`~sysadmd.jobs.safe_regex.MAX_PATTERN_CHARS` characters, and
  only the first :data:`REGEX_SUBJECT_CHARS` characters of a field are examined (``$``
  matches at the end of that prefix).  One row costs at most
  ``REGEX_SUBJECT_CHARS × MAX_NFA_STATES`` steps, in practice one dict lookup a character.
* ``^`` and ``$`` compare ``substr()`` of the field with the value: no LIKE, so ``%`` and
  ``_`` are plain characters.  ``^`` also bounds the field to the range of strings with
  that prefix, so an index on the column serves it (as it serves ``=`` and ``in``).
* The SQL assumes the columns' default BINARY collation (text ordered by code point).
* Bounds: :data:`MAX_DEPTH` levels of arrays inside arrays, :data:`MAX_TERMS` terms, arrays of at most
  :data:`MAX_LIST` values, strings of at most :data:`MAX_STRING` characters (no NUL, no
  lone surrogate).

Options (an object, every key optional): ``order_by`` (field names, ``-`` prefix for
descending; NULLs sort first ascending and last descending, as SQLite does; ties are
broken by ``id`` ascending so pages are stable), ``limit`` (0 or absent: no limit),
``offset``, ``count`` (the number of matching jobs instead of the jobs), ``get`` (the
first matching job instead of a list; implies ``limit`` 1), ``select`` (the job fields
to return; dotted names reach into objects: see :func:`select_fields`).

Every refusal is a :class:`QueryError` whose message starts with where the bad part is
(``filters[2][1]``, ``options.order_by[0]``) and says what was expected.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Collection, Dict, List, Mapping, Optional

from sysadmd.jobs.safe_regex import RegexError, SafeRegex
from sysadmd.wire.envelope import type_name

MAX_DEPTH = 16  # arrays inside arrays, counting the outer filters array
MAX_TERMS = 64
MAX_LIST = 256
MAX_STRING = 1024
MAX_ORDER_FIELDS = 8
MAX_SELECT_FIELDS = 64
MAX_INT = 2 ** 63 - 1
REGEX_SUBJECT_CHARS = 1024

OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "~", "in", "nin", "^", "$")
OPTIONS = ("order_by", "limit", "offset", "count", "get", "select")
NUMERIC_KINDS = ("int", "float")
TEXT_ONLY = ("~", "^", "$")

# The job's fields on the wire (the contract's list): what ``select`` may name.
JOB_FIELDS = ("id", "method", "arguments", "logs_path", "logs_excerpt", "progress", "result", "error",
              "exception", "exc_info", "state", "time_started", "time_finished", "owner", "queue",
              "dispatcher_id", "commands", "return_codes", "outcome", "time_created")


class QueryError(ValueError):
    """A filter or option was refused; the message names the part and what was expected."""


@dataclass(frozen=True)
class Column:
    sql: str  # the column's SQL name (trusted: it comes from the store, never the client)
    kind: str  # "int" | "float" | "text"


@dataclass
class Query:
    """``SELECT … WHERE {where} ORDER BY {order_by} LIMIT ? OFFSET ?`` with *params* then
    ``limit`` (``None``: no limit; bind -1, SQLite's "no limit") and ``offset``."""

    where: str  # "1" when there are no filters
    params: list  # the values of where's placeholders, in order
    order_by: str  # always ends with the id tiebreak when the columns have an id
    limit: Optional[int]
    offset: int
    count: bool
    get: bool
    select: Optional[List[str]]


def _check_string(value: str, where: str) -> None:
    if len(value) > MAX_STRING:
        raise QueryError(f"{where}: a string of {len(value)} characters; at most {MAX_STRING} are accepted")
    if "\x00" in value:
        raise QueryError(f"{where}: the string holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(f"{where}: the string holds a lone UTF-16 surrogate at position {e.start}") from None


class _Compiler:
    def __init__(self, columns: Mapping[str, Column]):
        self.columns = columns
        self.params: List[Any] = []
        self.terms = 0

    def column(self, field: Any, where: str) -> Column:
        if not isinstance(field, str):
            raise QueryError(f"{where}: a field name must be a string, got {type_name(field)}")
        column = self.columns.get(field)
        if column is None:
            shown = field if len(field) <= 64 else field[:64] + "…"
            raise QueryError(f"{where}: unknown field {shown!r} (expected one of {', '.join(sorted(self.columns))})")
        return column

    def value(self, value: Any, column: Column, where: str, *, null_ok: bool) -> Any:
        if value is None:
            if not null_ok:
                raise QueryError(f"{where}: null cannot be compared with this operator")
            return None
        if column.kind in NUMERIC_KINDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise QueryError(f"{where}: expected a number for this numeric field, got {type_name(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise QueryError(f"{where}: expected a finite number")
            if isinstance(value, int) and abs(value) > MAX_INT:
                raise QueryError(f"{where}: the number is out of range (at most {MAX_INT} in magnitude)")
            return value
        if not isinstance(value, str):
            raise QueryError(f"{where}: expected a string for this text field, got {type_name(value)}")
        _check_string(value, where)
        return value

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def terms_list(self, filters: Any, where: str, depth: int) -> str:
        """An array of terms, ANDed."""
        if depth > MAX_DEPTH:
            raise QueryError(f"{where}: filters nested more than {MAX_DEPTH} levels deep")
        if not isinstance(filters, list):
            raise QueryError(f"{where}: expected an array of filters, got {type_name(filters)}")
        if len(filters) > MAX_TERMS:
            raise QueryError(f"{where}: {len(filters)} filters; at most {MAX_TERMS} are accepted")
        parts = [self.term(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(filters)]
        if not parts:
            return "1"
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def term(self, term: Any, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"{where}: filters nested more than {MAX_DEPTH} levels deep")
        if not isinstance(term, list):
            raise QueryError(f"{where}: expected a filter [field, operator, value], [\"OR\", [...]] or an array "
                             f"of filters, got {type_name(term)}")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QueryError(f"{where}: more than {MAX_TERMS} filters in all")
        if len(term) == 2 and term[0] == "OR":
            branches = term[1]
            inner = f"{where}[1]"
            if not isinstance(branches, list) or not branches:
                raise QueryError(f"{inner}: \"OR\" takes a non-empty array of branches, got "
                                 f"{'an empty array' if branches == [] else type_name(branches)}")
            if len(branches) > MAX_TERMS:
                raise QueryError(f"{inner}: {len(branches)} branches; at most {MAX_TERMS} are accepted")
            parts = []
            for i, branch in enumerate(branches):
                here = f"{inner}[{i}]"
                parts.append(self.term(branch, here, depth + 2))  # a term or an AND group
            return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
        if all(isinstance(t, list) for t in term):
            return self.terms_list(term, where, depth + 1)  # a nested AND group ([] is true)
        if len(term) != 3:
            if term and isinstance(term[0], str) and term[0].upper() == "OR":
                raise QueryError(f"{where}: expected [\"OR\", [branch, ...]] (\"OR\" in capitals, then one array)")
            raise QueryError(f"{where}: expected [field, operator, value] (3 elements), got {len(term)} elements")
        field, op, value = term
        column = self.column(field, f"{where}[0]")
        if not isinstance(op, str) or op not in OPERATORS:
            shown = repr(op) if isinstance(op, str) and len(op) <= 16 else type_name(op)
            raise QueryError(f"{where}[1]: unknown operator {shown} (expected one of {' '.join(OPERATORS)})")
        return self.condition(column, op, value, f"{where}[2]", f"{where}[1]")

    def condition(self, column: Column, op: str, value: Any, where: str, op_where: str) -> str:
        col = column.sql
        if op in TEXT_ONLY and column.kind != "text":
            raise QueryError(f"{op_where}: {op!r} applies to text fields only; this field is {column.kind}")
        if op in ("in", "nin"):
            if not isinstance(value, list):
                raise QueryError(f"{where}: {op!r} takes an array of values, got {type_name(value)}")
            if len(value) > MAX_LIST:
                raise QueryError(f"{where}: an array of {len(value)} values; at most {MAX_LIST} are accepted")
            values = [self.value(v, column, f"{where}[{i}]", null_ok=True) for i, v in enumerate(value)]
            present = [v for v in values if v is not None]
            listed = ", ".join(self.bind(v) for v in present)
            if op == "in":
                parts = [f"{col} IN ({listed})"] if present else []
                if len(present) < len(values):
                    parts.append(f"{col} IS NULL")
                return "(" + " OR ".join(parts) + ")" if parts else "0"
            return f"({col} IS NOT NULL AND {col} NOT IN ({listed}))" if present else f"{col} IS NOT NULL"
        v = self.value(value, column, where, null_ok=op in ("=", "!="))
        if op == "=":
            return f"{col} IS NULL" if v is None else f"{col} = {self.bind(v)}"
        if op == "!=":
            return f"{col} IS NOT NULL" if v is None else f"({col} IS NULL OR {col} != {self.bind(v)})"
        if op in (">", ">=", "<", "<="):
            return f"{col} {op} {self.bind(v)}"
        if op == "~":
            try:
                compiled_regex(v)
            except RegexError as e:
                raise QueryError(f"{where}: the regular expression is not accepted: {e}") from None
            return f"regexp({self.bind(v)}, {col})"
        if op == "^":
            if v == "":
                return f"{col} IS NOT NULL"
            upper = _prefix_bound(v)
            # The same rows, within a range an index on the column can serve (text is compared
            # by UTF-8 bytes, i.e. by code point, so every string with the prefix is in it).
            # Placeholders are bound in the order they appear in the text.
            bounded = f"{col} >= {self.bind(v)} AND {col} < {self.bind(upper)} AND " if upper is not None else ""
            return f"({bounded}substr({col}, 1, {self.bind(len(v))}) = {self.bind(v)})"
        # "$"
        if v == "":
            return f"{col} IS NOT NULL"
        return f"substr({col}, -{self.bind(len(v))}) = {self.bind(v)}"


def _prefix_bound(prefix: str) -> Optional[str]:
    """The least string above every string starting with *prefix*, if one can be written."""
    last = ord(prefix[-1])
    if last in (0xD7FF, 0x10FFFF):
        return None  # the next code point is a surrogate or there is none
    return prefix[:-1] + chr(last + 1)


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_INT:
        raise QueryError(f"{where}: expected a non-negative integer, got "
                         f"{value if isinstance(value, int) and not isinstance(value, bool) else type_name(value)}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise QueryError(f"{where}: expected true or false, got {type_name(value)}")
    return value


def compile_query(filters: Any, options: Any, columns: Mapping[str, Column], *,
                  selectable: Optional[Collection[str]] = None) -> Query:
    """Check *filters* and *options* and compile them for *columns*; raises :class:`QueryError`.

    *selectable*: the top-level names ``select`` may start with (default: the job's fields
    and the column names)."""
    compiler = _Compiler(columns)
    where = compiler.terms_list([] if filters is None else filters, "filters", 0)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise QueryError(f"options: expected an object, got {type_name(options)}")
    for key in options:
        if key not in OPTIONS:
            shown = key if len(key) <= 32 else key[:32] + "…"
            raise QueryError(f"options.{shown}: unknown option (expected one of {', '.join(OPTIONS)})")
    order_terms: List[str] = []
    ordered: List[str] = []
    order_by = options.get("order_by", [])
    if not isinstance(order_by, list):
        raise QueryError(f"options.order_by: expected an array of field names, got {type_name(order_by)}")
    if len(order_by) > MAX_ORDER_FIELDS:
        raise QueryError(f"options.order_by: {len(order_by)} fields; at most {MAX_ORDER_FIELDS} are accepted")
    for i, name in enumerate(order_by):
        here = f"options.order_by[{i}]"
        if not isinstance(name, str):
            raise QueryError(f"{here}: expected a field name (\"-\" in front for descending), got {type_name(name)}")
        descending = name.startswith("-")
        field = name[1:] if descending else name
        column = compiler.column(field, here)
        ordered.append(field)
        order_terms.append(f"{column.sql} {'DESC' if descending else 'ASC'}")
    id_column = columns.get("id")
    if id_column is not None and "id" not in ordered:
        order_terms.append(f"{id_column.sql} ASC")  # a stable order: pages never overlap
    limit: Optional[int] = None
    if "limit" in options:
        limit = _non_negative_int(options["limit"], "options.limit") or None
    offset = _non_negative_int(options.get("offset", 0), "options.offset")
    count = _bool(options.get("count", False), "options.count")
    get = _bool(options.get("get", False), "options.get")
    if count and get:
        raise QueryError("options.get: \"count\" and \"get\" cannot both be true")
    if get:
        limit = 1
    select = None
    if "select" in options:
        select = _select(options["select"], set(selectable) if selectable is not None else
                         set(JOB_FIELDS) | {name.split(".", 1)[0] for name in columns})
    return Query(where=where, params=compiler.params, order_by=", ".join(order_terms) or "NULL", limit=limit,
                 offset=offset, count=count, get=get, select=select)


def _select(value: Any, allowed: Collection[str]) -> List[str]:
    if not isinstance(value, list):
        raise QueryError(f"options.select: expected an array of field names, got {type_name(value)}")
    if len(value) > MAX_SELECT_FIELDS:
        raise QueryError(f"options.select: {len(value)} fields; at most {MAX_SELECT_FIELDS} are accepted")
    out = []
    for i, name in enumerate(value):
        here = f"options.select[{i}]"
        if not isinstance(name, str) or not name:
            raise QueryError(f"{here}: expected a field name, got {type_name(name)}")
        if len(name) > 128 or any(not part for part in name.split(".")):
            raise QueryError(f"{here}: expected a field name or a dotted path such as \"progress.percent\"")
        if name.split(".", 1)[0] not in allowed:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise QueryError(f"{here}: unknown field {shown!r} (expected one of {', '.join(sorted(allowed))})")
        out.append(name)
    return out


_MISSING = object()


def select_fields(entry: Dict[str, Any], select: List[str]) -> Dict[str, Any]:
    """*entry* reduced to the *select*ed fields; a dotted name keeps that path
    (``progress.percent`` → ``{"progress": {"percent": …}}``); absent paths are left out."""
    out: Dict[str, Any] = {}
    for name in select:
        parts = name.split(".")
        value: Any = entry
        for part in parts:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        if value is _MISSING:
            continue
        target = out
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        target[parts[-1]] = value
    return out


@lru_cache(maxsize=64)
def compiled_regex(pattern: str) -> SafeRegex:
    return SafeRegex(pattern)


def regexp(pattern: Any, subject: Any) -> int:
    """SQLite's ``regexp(pattern, subject)``: 1 if ``re.match`` would match the first
    :data:`REGEX_SUBJECT_CHARS` characters of *subject* (NULL read as "")."""
    if not isinstance(pattern, str):
        return 0
    if subject is None:
        subject = ""
    elif not isinstance(subject, str):
        subject = str(subject)
    return 1 if compiled_regex(pattern).match(subject[:REGEX_SUBJECT_CHARS]) else 0


def install_regexp(db: sqlite3.Connection) -> None:
    """Register :func:`regexp` (bounded, non-backtracking) on *db* for ``~`` filters."""
    db.create_function("regexp", 2, regexp, deterministic=True)
