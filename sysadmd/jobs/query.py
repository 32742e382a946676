"""Filters and options of ``core/get_jobs`` compiled to SQL (a small version).

This module supports the operators ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` and
``in``, and the options ``order_by``,
``limit``, ``offset``, ``count``, ``get`` and ``select``; the interface (names and
signatures of :class:`Column`, :class:`QueryError`, :class:`Query`, :func:`compile_query`
and :func:`install_regexp`) is the one the full compiler provides.

A filter list is ``[[field, operator, value], …]`` (all must hold).  Every value goes to
SQLite as a bound parameter; field names are only ever looked up in *columns*, never
pasted into SQL.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

MAX_TERMS = 64  # filter terms per query
MAX_LIST = 1000  # values of one "in"
MAX_TEXT = 4096  # characters of one string value
MAX_REGEX = 256  # characters of a REGEXP pattern (REGEXP is registered for the full compiler)
OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "in")
COMPARISONS = {"!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
OPTIONS = ("order_by", "limit", "offset", "count", "get", "select")


@dataclass(frozen=True)
class Column:
    sql: str
    kind: str  # "int" | "float" | "text"


class QueryError(ValueError):
    """A filter or option that cannot be compiled; the message names the bad part."""


@dataclass
class Query:
    where: str
    params: list
    order_by: str
    limit: Optional[int]
    offset: int
    count: bool
    get: bool
    select: Optional[List[str]]


def _value(where: str, value: Any, column: Column) -> Any:
    if value is None:
        return None
    if column.kind == "text":
        if not isinstance(value, str):
            raise QueryError(f"{where}: expected a string, got {type(value).__name__}")
        if len(value) > MAX_TEXT:
            raise QueryError(f"{where}: string of {len(value)} characters (at most {MAX_TEXT})")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QueryError(f"{where}: expected a number, got {type(value).__name__}")
    if column.kind == "int" and isinstance(value, float) and not value.is_integer():
        raise QueryError(f"{where}: expected a whole number, got {value!r}")
    return value


def compile_query(filters: Any, options: Any, columns: Mapping[str, Column]) -> Query:
    """Compile *filters* and *options* for a table whose fields are *columns*."""
    if filters is None:
        filters = []
    if not isinstance(filters, list):
        raise QueryError(f"filters: expected a list of [field, operator, value], got {type(filters).__name__}")
    if len(filters) > MAX_TERMS:
        raise QueryError(f"filters: {len(filters)} terms (at most {MAX_TERMS})")
    names = ", ".join(sorted(columns))
    clauses: List[str] = []
    params: list = []
    for index, term in enumerate(filters):
        where = f"filters[{index}]"
        if not isinstance(term, list) or len(term) != 3:
            raise QueryError(f"{where}: expected [field, operator, value]")
        field, op, value = term
        if not isinstance(field, str) or field not in columns:
            raise QueryError(f"{where}: unknown field {str(field)[:64]!r} (expected one of {names})")
        column = columns[field]
        if op not in OPERATORS:
            raise QueryError(f"{where}: unknown operator {str(op)[:16]!r} (expected one of {' '.join(OPERATORS)})")
        if op == "=":
            value = _value(f"{where} value", value, column)
            if value is None:
                clauses.append(f"{column.sql} IS NULL")
            else:
                clauses.append(f"{column.sql} = ?")
                params.append(value)
        elif op in COMPARISONS:
            value = _value(f"{where} value", value, column)
            if value is None:
                clauses.append(f"{column.sql} IS NOT NULL" if op == "!=" else "0")
            elif op == "!=":
                clauses.append(f"({column.sql} IS NULL OR {column.sql} != ?)")
                params.append(value)
            else:
                clauses.append(f"{column.sql} {COMPARISONS[op]} ?")
                params.append(value)
        else:
            if not isinstance(value, list):
                raise QueryError(f"{where} value: 'in' needs a list, got {type(value).__name__}")
            if len(value) > MAX_LIST:
                raise QueryError(f"{where} value: {len(value)} items (at most {MAX_LIST})")
            values = [_value(f"{where} value[{i}]", v, column) for i, v in enumerate(value)]
            if not values:
                clauses.append("0")
            else:
                clauses.append(f"{column.sql} IN ({','.join('?' for _ in values)})")
                params.extend(values)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise QueryError(f"options: expected an object, got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise QueryError(f"options: unknown option {unknown[0][:32]!r} (expected one of {', '.join(OPTIONS)})")
    order = options.get("order_by", [])
    if not isinstance(order, list) or len(order) > 8:
        raise QueryError("options.order_by: expected a list of at most 8 field names ('-' prefix: descending)")
    order_sql = []
    for index, name in enumerate(order):
        if not isinstance(name, str):
            raise QueryError(f"options.order_by[{index}]: expected a field name")
        desc = name.startswith("-")
        bare = name[1:] if desc else name
        if bare not in columns:
            raise QueryError(f"options.order_by[{index}]: unknown field {bare[:64]!r} (expected one of {names})")
        order_sql.append(f"{columns[bare].sql} {'DESC' if desc else 'ASC'}")
    limit = options.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise QueryError("options.limit: expected a whole number of at least 0")
    offset = options.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError("options.offset: expected a whole number of at least 0")
    flags = {}
    for flag in ("count", "get"):
        value = options.get(flag, False)
        if not isinstance(value, bool):
            raise QueryError(f"options.{flag}: expected true or false")
        flags[flag] = value
    select = options.get("select")
    if select is not None:
        if not isinstance(select, list) or not select or len(select) > 64:
            raise QueryError("options.select: expected a non-empty list of at most 64 field names")
        for index, name in enumerate(select):
            if not isinstance(name, str) or not name or len(name) > 64:
                raise QueryError(f"options.select[{index}]: expected a field name")
    return Query(where=" AND ".join(clauses) or "1", params=params, order_by=", ".join(order_sql) or "1",
                 limit=limit, offset=offset, count=flags["count"], get=flags["get"], select=select)


def install_regexp(db: sqlite3.Connection) -> None:
    """Register ``REGEXP`` on *db*: patterns of at most MAX_REGEX characters, texts of at
    most MAX_TEXT characters searched (a longer text is searched in its first MAX_TEXT)."""
    cache: dict = {}

    def regexp(pattern: Any, text: Any) -> int:
        if not isinstance(pattern, str) or not isinstance(text, str) or len(pattern) > MAX_REGEX:
            return 0
        compiled = cache.get(pattern)
        if compiled is None:
            if len(cache) > 64:
                cache.clear()
            try:
                compiled = cache[pattern] = re.compile(pattern)
            except re.error:
                return 0
        return 1 if compiled.search(text[:MAX_TEXT]) else 0

    db.create_function("REGEXP", 2, regexp, deterministic=True)
