"""sysadmd.jobs.query: the seed's filters and options compiled to SQL, checked on a real
SQLite table against an independent pure-Python evaluation of TrueNAS's rules."""

from __future__ import annotations

import re
import sqlite3
import time
import unittest

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from sysadmd.jobs.model import COLUMNS  # the job store's filterable fields; the table below is laid out the same way
from sysadmd.jobs.query import (MAX_DEPTH, MAX_LIST, MAX_STRING, MAX_TERMS, REGEX_SUBJECT_CHARS, QueryError,
                                compile_query, install_regexp, select_fields)

TEXT_FIELDS = [f for f, c in COLUMNS.items() if c.kind == "text"]
NUM_FIELDS = [f for f, c in COLUMNS.items() if c.kind != "text" and f != "id"]

SCHEMA = ("CREATE TABLE jobs (id INTEGER PRIMARY KEY, method TEXT, state TEXT, queue TEXT, dispatcher_id TEXT, "
          "outcome TEXT, time_created REAL, time_started REAL, time_finished REAL, progress_percent REAL, "
          "progress_description TEXT, owner_user TEXT, owner_via TEXT, owner_from TEXT, error TEXT)")


def make_db(rows):
    db = sqlite3.connect(":memory:")
    install_regexp(db)
    db.execute(SCHEMA)
    for row in rows:
        names = list(COLUMNS)
        db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS[n].sql for n in names)}) VALUES "
                   f"({', '.join('?' for _ in names)})", [row[n] for n in names])
    return db


def run_sql(db, q):
    if q.count:
        return db.execute(f"SELECT COUNT(*) FROM (SELECT id FROM jobs WHERE {q.where} ORDER BY {q.order_by} "
                          f"LIMIT ? OFFSET ?)", q.params + [q.limit if q.limit is not None else -1, q.offset]).fetchone()[0]
    sql = f"SELECT id FROM jobs WHERE {q.where} ORDER BY {q.order_by} LIMIT ? OFFSET ?"
    return [r[0] for r in db.execute(sql, q.params + [q.limit if q.limit is not None else -1, q.offset])]


# --- the reference: TrueNAS's rules, evaluated in Python on dicts --------------------------
def py_regex(pattern):
    # Our "$" is the end of the subject (Python's "\Z"); the generators put "$" only last.
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


REFERENCE_OPS = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    ">": lambda x, y: x is not None and x > y,
    ">=": lambda x, y: x is not None and x >= y,
    "<": lambda x, y: x is not None and x < y,
    "<=": lambda x, y: x is not None and x <= y,
    "~": lambda x, y: re.match(py_regex(y), (x or "")[:REGEX_SUBJECT_CHARS]) is not None,
    "in": lambda x, y: x in y,
    "nin": lambda x, y: x is not None and x not in y,
    "^": lambda x, y: x is not None and x.startswith(y),
    "$": lambda x, y: x is not None and x.endswith(y),
}


def ref_match(row, term):
    if len(term) == 2 and term[0] == "OR":
        return any(ref_match(row, b) for b in term[1])
    if all(isinstance(t, list) for t in term):
        return ref_all(row, term)
    field, op, value = term
    return REFERENCE_OPS[op](row[field], value)


def ref_all(row, filters):
    return all(ref_match(row, t) for t in filters)


def reference(rows, filters, options):
    out = [r for r in rows if ref_all(r, filters)]
    out.sort(key=lambda r: r["id"])
    keys = list(options.get("order_by", []))
    for name in reversed(keys):
        field = name.lstrip("-")
        out.sort(key=lambda r: (r[field] is not None, r[field] if r[field] is not None else 0),
                 reverse=name.startswith("-"))
    offset = options.get("offset", 0)
    limit = options.get("limit") or None
    if options.get("get"):
        limit = 1
    out = out[offset:] if limit is None else out[offset:offset + limit]
    if options.get("count"):
        return len(out)
    return [r["id"] for r in out]


# --- generators -----------------------------------------------------------------------------
texts = st.one_of(st.none(), st.text(alphabet="ab%_é.1\n\ud7ff\U0010ffff\ue000", max_size=5))
numbers = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0]))
row_values = st.fixed_dictionaries({**{f: texts for f in TEXT_FIELDS}, **{f: numbers for f in NUM_FIELDS}})
rows_strategy = st.lists(row_values, max_size=12).map(lambda rs: [dict(r, id=i + 1) for i, r in enumerate(rs)])

regex_atoms = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", "\\d", "%", "_", "é", "\\.", "(a|b)", "(?:ab)"])
regex_quants = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "{2}", "*?"])
regexes = st.builds(
    lambda head, parts, alt, tail: head + ("|".join(["".join(parts), alt]) if alt else "".join(parts)) + tail,
    st.sampled_from(["", "^"]),
    st.lists(st.tuples(regex_atoms, regex_quants).map("".join), max_size=4),
    st.one_of(st.just(""), st.sampled_from(["a", "b.", "%"])),
    st.sampled_from(["", "$"]),
)
plain_text = st.text(alphabet="ab%_é.1\n\ud7ff\U0010ffff\ue000", max_size=4)


@st.composite
def leaf(draw):
    if draw(st.booleans()):
        field = draw(st.sampled_from(TEXT_FIELDS))
        op = draw(st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~", "in", "nin", "^", "$"]))
        if op == "~":
            value = draw(regexes)
        elif op in ("in", "nin"):
            value = draw(st.lists(st.one_of(st.none(), plain_text), max_size=3))
        elif op in ("=", "!="):
            value = draw(st.one_of(st.none(), plain_text))
        else:
            value = draw(plain_text)
    else:
        field = draw(st.sampled_from(NUM_FIELDS + ["id"]))
        op = draw(st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "in", "nin"]))
        num = st.one_of(st.integers(-3, 13), st.sampled_from([0.5, -1.5, 2.0]))
        if op in ("in", "nin"):
            value = draw(st.lists(st.one_of(st.none(), num), max_size=3))
        elif op in ("=", "!="):
            value = draw(st.one_of(st.none(), num))
        else:
            value = draw(num)
    return [field, op, value]


filters_strategy = st.recursive(
    st.lists(leaf(), max_size=3),
    lambda inner: st.lists(st.one_of(
        leaf(),
        st.lists(inner, min_size=1, max_size=3).map(lambda bs: ["OR", bs]),  # branches: AND groups
        st.lists(st.one_of(leaf(), st.lists(leaf(), min_size=1, max_size=2)), min_size=1, max_size=3)
          .map(lambda bs: ["OR", bs]),  # branches: terms and AND groups
        inner.filter(bool),  # a nested AND group
    ), max_size=3),
    max_leaves=8,
)

orderable = list(COLUMNS)
options_strategy = st.fixed_dictionaries({}, optional={
    "order_by": st.lists(st.sampled_from(orderable).flatmap(lambda f: st.sampled_from([f, "-" + f])), max_size=3),
    "limit": st.integers(0, 5),
    "offset": st.integers(0, 5),
    "count": st.booleans(),
})


class PropertyTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows_strategy, filters_strategy, options_strategy)
    def test_sql_agrees_with_reference(self, rows, filters, options):
        try:
            q = compile_query(filters, options, COLUMNS)
        except QueryError as e:
            assume("nested more than" not in str(e))  # the generator may nest past MAX_DEPTH
            raise
        db = make_db(rows)
        self.assertEqual(run_sql(db, q), reference(rows, filters, options), (q.where, q.params, q.order_by))

    @settings(max_examples=200, deadline=None)
    @given(rows_strategy, st.lists(st.sampled_from(orderable).flatmap(lambda f: st.sampled_from([f, "-" + f])),
                                   max_size=2), st.integers(1, 4))
    def test_pages_partition_the_result(self, rows, order_by, size):
        """limit/offset pages never overlap nor skip (the id tiebreak makes the order total)."""
        db = make_db(rows)
        whole = run_sql(db, compile_query([], {"order_by": order_by}, COLUMNS))
        paged = []
        for offset in range(0, len(rows) + size, size):
            paged += run_sql(db, compile_query([], {"order_by": order_by, "limit": size, "offset": offset}, COLUMNS))
        self.assertEqual(paged, whole)
        self.assertEqual(sorted(whole), [r["id"] for r in rows])


# --- explicit cases -----------------------------------------------------------------------
ROWS = [
    dict({f: None for f in COLUMNS}, id=1, method="dispatcher.run", state="SUCCESS", queue="pkg", time_started=10.0,
         **{"progress.percent": 100.0, "owner.user": "alice", "progress.description": "done 100%"}),
    dict({f: None for f in COLUMNS}, id=2, method="dispatcher.run", state="FAILED", queue="pkg_1", time_started=20.0,
         error="exit 1", **{"progress.percent": 40.0, "owner.user": "bob"}),
    dict({f: None for f in COLUMNS}, id=3, method="config.save", state="RUNNING", queue="no_queue", time_started=30.0,
         **{"owner.user": "alice", "progress.description": "a_b"}),
    dict({f: None for f in COLUMNS}, id=4, method="filesystem.get", state="WAITING", queue="pkgs",
         **{"owner.user": None}),
]


class OperatorTests(unittest.TestCase):
    def setUp(self):
        self.db = make_db(ROWS)

    def ids(self, filters, options=None):
        got = run_sql(self.db, compile_query(filters, options or {}, COLUMNS))
        self.assertEqual(got, reference(ROWS, filters, options or {}))
        return got

    def test_seed_example(self):
        self.assertEqual(self.ids([["id", "=", 3]]), [3])

    def test_equality_and_null(self):
        self.assertEqual(self.ids([["state", "=", "FAILED"]]), [2])
        self.assertEqual(self.ids([["time_started", "=", None]]), [4])
        self.assertEqual(self.ids([["state", "!=", "FAILED"]]), [1, 3, 4])
        self.assertEqual(self.ids([["owner.user", "!=", "alice"]]), [2, 4])  # NULL differs from "alice"
        self.assertEqual(self.ids([["error", "!=", None]]), [2])

    def test_ordering_comparisons_skip_null(self):
        self.assertEqual(self.ids([["time_started", ">", 10]]), [2, 3])
        self.assertEqual(self.ids([["time_started", ">=", 10]]), [1, 2, 3])
        self.assertEqual(self.ids([["time_started", "<", 30]]), [1, 2])
        self.assertEqual(self.ids([["time_started", "<=", 30]]), [1, 2, 3])
        self.assertEqual(self.ids([["state", ">", "RUNNING"]]), [1, 4])

    def test_regex(self):
        self.assertEqual(self.ids([["method", "~", "dispatcher"]]), [1, 2])
        self.assertEqual(self.ids([["method", "~", "run"]]), [])  # anchored at the start, as re.match
        self.assertEqual(self.ids([["method", "~", ".*(save|get)$"]]), [3, 4])
        self.assertEqual(self.ids([["error", "~", ""]]), [1, 2, 3, 4])  # NULL matched as ""

    def test_regex_cannot_hang(self):
        db = make_db([dict({f: None for f in COLUMNS}, id=i, error="a" * 5000) for i in range(1, 51)])
        started = time.monotonic()
        q = compile_query([["error", "~", "(a+)+b"]], {}, COLUMNS)
        self.assertEqual(run_sql(db, q), [])
        self.assertLess(time.monotonic() - started, 2.0)

    def test_in_and_nin(self):
        self.assertEqual(self.ids([["state", "in", ["SUCCESS", "WAITING"]]]), [1, 4])
        self.assertEqual(self.ids([["owner.user", "in", [None]]]), [4])
        self.assertEqual(self.ids([["owner.user", "in", []]]), [])
        self.assertEqual(self.ids([["owner.user", "nin", ["alice"]]]), [2])  # NULL is never "not in"
        self.assertEqual(self.ids([["owner.user", "nin", []]]), [1, 2, 3])
        self.assertEqual(self.ids([["id", "in", [2, 4, 9]]]), [2, 4])

    def test_starts_and_ends_with_are_not_like(self):
        self.assertEqual(self.ids([["queue", "^", "pkg"]]), [1, 2, 4])
        self.assertEqual(self.ids([["queue", "^", "pkg_"]]), [2])  # "_" is no wildcard
        self.assertEqual(self.ids([["queue", "^", "pk%"]]), [])  # nor is "%"
        self.assertEqual(self.ids([["progress.description", "$", "100%"]]), [1])
        self.assertEqual(self.ids([["progress.description", "$", "_b"]]), [3])
        self.assertEqual(self.ids([["progress.description", "$", "%"]]), [1])
        self.assertEqual(self.ids([["progress.description", "^", ""]]), [1, 3])  # never true for NULL
        self.assertEqual(self.ids([["queue", "$", "a-very-long-suffix-pkg"]]), [])

    def test_or_and_nesting(self):
        self.assertEqual(self.ids([["OR", [["state", "=", "FAILED"], ["state", "=", "WAITING"]]]]), [2, 4])
        self.assertEqual(self.ids([["OR", [[["owner.user", "=", "alice"], ["state", "=", "RUNNING"]],
                                           ["id", "=", 2]]]]), [2, 3])
        self.assertEqual(self.ids([[["queue", "^", "pkg"], ["OR", [["id", "=", 1], ["id", "=", 4]]]]]), [1, 4])
        self.assertEqual(self.ids([["OR", [["OR", [["id", "=", 1]]], ["id", "=", 2]]], ["method", "^", "disp"]]), [1, 2])

    def test_options(self):
        self.assertEqual(self.ids([], {"order_by": ["-time_started"]}), [3, 2, 1, 4])  # NULL last descending
        self.assertEqual(self.ids([], {"order_by": ["time_started"]}), [4, 1, 2, 3])  # and first ascending
        self.assertEqual(self.ids([], {"order_by": ["method"]}), [3, 1, 2, 4])  # ties by id
        self.assertEqual(self.ids([], {"order_by": ["-method"]}), [4, 1, 2, 3])
        self.assertEqual(self.ids([], {"limit": 2, "offset": 1}), [2, 3])
        self.assertEqual(self.ids([], {"limit": 0}), [1, 2, 3, 4])  # 0: no limit, as TrueNAS
        q = compile_query([["state", "!=", "FAILED"]], {"count": True}, COLUMNS)
        self.assertTrue(q.count)
        self.assertEqual(run_sql(self.db, q), 3)
        q = compile_query([], {"get": True, "order_by": ["-id"]}, COLUMNS)
        self.assertEqual((q.get, q.limit), (True, 1))
        self.assertEqual(run_sql(self.db, q), [4])
        q = compile_query([], {"select": ["id", "progress.percent", "owner"]}, COLUMNS)
        self.assertEqual(q.select, ["id", "progress.percent", "owner"])

    def test_select_fields(self):
        job = {"id": 5, "progress": {"percent": 10, "description": "x"}, "owner": {"user": "a"}, "state": "RUNNING"}
        self.assertEqual(select_fields(job, ["id", "progress.percent", "owner", "missing", "state.x"]),
                         {"id": 5, "progress": {"percent": 10}, "owner": {"user": "a"}})

    def test_equality_in_and_prefix_use_an_index(self):
        self.db.execute("CREATE INDEX jobs_queue ON jobs (queue)")
        for filters in ([["queue", "=", "pkg"]], [["queue", "in", ["pkg", "x"]]], [["queue", "^", "pk"]]):
            q = compile_query(filters, {}, COLUMNS)
            plan = " ".join(str(r[-1]) for r in self.db.execute(
                f"EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE {q.where}", q.params))
            self.assertRegex(plan, r"SEARCH jobs USING (COVERING )?INDEX jobs_queue", filters)
        self.assertEqual(self.ids([["queue", "^", "pkg"]]), [1, 2, 4])

    def test_values_are_parameters(self):
        q = compile_query([["method", "=", "x'); DROP TABLE jobs; --"]], {}, COLUMNS)
        self.assertNotIn("DROP", q.where)
        self.assertEqual(run_sql(self.db, q), [])
        self.assertEqual(self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0], 4)


class ErrorTests(unittest.TestCase):
    def refused(self, filters, options=None, where=""):
        with self.assertRaises(QueryError) as cm:
            compile_query(filters, options, COLUMNS)
        message = str(cm.exception)
        self.assertTrue(message.startswith(where + ":") if where else message.startswith("filters["), message)
        return message

    def test_each_error_names_its_place(self):
        self.assertIn("expected an array of filters", self.refused({"id": 1}, where="filters"))
        self.assertIn("expected a filter", self.refused([5], where="filters[0]"))
        self.assertIn("3 elements", self.refused([["id", "="]], where="filters[0]"))
        self.assertIn("unknown field 'nope'", self.refused([["nope", "=", 1]], where="filters[0][0]"))
        self.assertIn("field name must be a string", self.refused([[1, "=", 1]], where="filters[0][0]"))
        self.assertIn("unknown operator '=~' (expected one of = != > >= < <= ~ in nin ^ $)",
                      self.refused([["id", "=", 1], ["id", "=~", 1]], where="filters[1][1]"))
        self.assertIn("expected a number", self.refused([["id", "=", "53"]], where="filters[0][2]"))
        self.assertIn("expected a number", self.refused([["id", "=", True]], where="filters[0][2]"))
        self.assertIn("expected a finite number", self.refused([["time_started", ">", float("nan")]],
                                                               where="filters[0][2]"))
        self.assertIn("out of range", self.refused([["id", "=", 2 ** 64]], where="filters[0][2]"))
        self.assertIn("expected a string", self.refused([["state", "=", 1]], where="filters[0][2]"))
        self.assertIn("null cannot be compared", self.refused([["id", ">", None]], where="filters[0][2]"))
        self.assertIn("text fields only", self.refused([["id", "^", "1"]], where="filters[0][1]"))
        self.assertIn("takes an array", self.refused([["id", "in", 1]], where="filters[0][2]"))
        self.assertIn("expected a number", self.refused([["id", "in", [1, "x"]]], where="filters[0][2][1]"))
        self.assertIn("not accepted: backreferences", self.refused([["state", "~", "(a)\\1"]], where="filters[0][2]"))
        self.assertIn("NUL", self.refused([["state", "=", "a\x00"]], where="filters[0][2]"))
        self.assertIn("surrogate", self.refused([["state", "=", "\ud800"]], where="filters[0][2]"))
        self.assertIn("non-empty array of branches", self.refused([["OR", []]], where="filters[0][1]"))
        self.assertIn("\"OR\" in capitals", self.refused([["or", [["id", "=", 1]]]], where="filters[0]"))
        self.assertIn("unknown field", self.refused([["OR", [["id", "=", 1], [["x", "=", 1]]]]],
                                                    where="filters[0][1][1][0][0]"))

    def test_option_errors(self):
        self.assertIn("expected an object", self.refused([], [1], where="options"))
        self.assertIn("unknown option", self.refused([], {"extend": "x"}, where="options.extend"))
        self.assertIn("unknown field", self.refused([], {"order_by": ["-nope"]}, where="options.order_by[0]"))
        self.assertIn("expected a field name", self.refused([], {"order_by": [1]}, where="options.order_by[0]"))
        self.assertIn("expected an array", self.refused([], {"order_by": "id"}, where="options.order_by"))
        self.assertIn("non-negative integer", self.refused([], {"limit": -1}, where="options.limit"))
        self.assertIn("non-negative integer", self.refused([], {"offset": "1"}, where="options.offset"))
        self.assertIn("true or false", self.refused([], {"count": 1}, where="options.count"))
        self.assertIn("cannot both be true", self.refused([], {"count": True, "get": True}, where="options.get"))
        self.assertIn("unknown field", self.refused([], {"select": ["password"]}, where="options.select[0]"))
        self.assertIn("dotted path", self.refused([], {"select": ["progress..x"]}, where="options.select[0]"))

    def test_bounds(self):
        deep = [["id", "=", 1]]
        for _ in range(MAX_DEPTH + 1):
            deep = [deep]
        self.assertIn(f"nested more than {MAX_DEPTH} levels", self.refused(deep))
        self.assertEqual(run_sql(make_db(ROWS), compile_query([[[[["id", "=", 1]]]]], {}, COLUMNS)), [1])
        self.assertIn(f"at most {MAX_TERMS}", self.refused([["id", "=", i] for i in range(MAX_TERMS + 1)],
                                                             where="filters"))
        self.assertIn(f"more than {MAX_TERMS} filters in all",
                      self.refused([[["id", "=", i] for i in range(40)], [["id", "=", i] for i in range(40)]]))
        self.assertIn(f"at most {MAX_LIST}", self.refused([["id", "in", list(range(MAX_LIST + 1))]],
                                                          where="filters[0][2]"))
        self.assertIn(f"at most {MAX_STRING}", self.refused([["state", "=", "x" * (MAX_STRING + 1)]],
                                                            where="filters[0][2]"))
        self.assertIn("at most 256", self.refused([["state", "~", "a" * 257]], where="filters[0][2]"))
