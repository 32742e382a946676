"""Job store benchmark: ``core/get_jobs`` over 100,000 jobs.

Run on demand::

    python -m bench.jobs_store [--jobs 100000] [--queries 2000]

Fills a fresh state directory's database (real SQLite file, WAL, the daemon's own
schema and indexes) with ``--jobs`` jobs: a tenth of them dispatcher jobs written through
the dispatcher's store (``JobStore.add_many`` + ``save``), the rest through the job
table's API (``create`` / ``started`` / ``finish``), five owners, most finished, a few
hundred running or waiting.  Then times the ``core/get_jobs`` handler itself (compile the
filters, run the SQL, build the reply dicts; no transport) for:

* ``by id``: ``[["id","=",N]]`` for random N;
* ``state+order+limit``: ``[["state","=",S]], {"order_by":["-id"],"limit":50}`` for a
  rare state (RUNNING) and the commonest one (SUCCESS);
* ``owner+order+limit``: ``[["owner.user","=",U]], {"order_by":["-id"],"limit":50}``;
* ``count by state``: ``{"count":true}``;

beside a floor measured in the same run: a bare ``SELECT * FROM jobs WHERE id = ?`` on
the same connection.  Reported: p50 / p99 / max in milliseconds (target: p99 < 20 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from types import SimpleNamespace

from sysadmd import migrations
from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher.store import JobStore
from sysadmd.jobs.model import Owner
from sysadmd.jobs.rpc import CoreApi
from sysadmd.jobs.service import JobsService
from sysadmd.jobs.store import JobTable

OWNERS = [Owner(name, "password", f"192.0.2.{i}") for i, name in enumerate(("alice", "bob", "carol", "dave", "root"))]


class FakeClock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def seconds(self):
        return self.now

    def callLater(self, *args, **kw):  # retention is not started here
        raise AssertionError("not used")


def fill(table: JobTable, store: JobStore, clock: FakeClock, n: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    db = table.db
    batch = 1000
    made = 0
    while made < n:
        db.execute("BEGIN")
        for _ in range(min(batch, n - made)):
            clock.now += 0.5
            owner = rng.choice(OWNERS)
            live = made >= n - 300
            if made % 10 == 0:
                [record] = store.add_many([(f"job-{made}", "no_queue", ["true"], f"{owner.user}@x", clock.now, owner)])
                record.state = "running" if live else "finished"
                record.started = clock.now
                record.finished = None if live else clock.now + 0.1
                record.return_codes = [] if live else [rng.choice((0, 0, 0, 1))]
                store.save(record)
            else:
                job_id = table.create(rng.choice(("fleet.update", "config.save", "system.update")), [{"n": made}], owner)
                if made < n - 100:
                    table.started(job_id)
                if not live:
                    table.finish(job_id, rng.choice(("succeeded", "succeeded", "failed", "killed")))
            made += 1
        db.execute("COMMIT")
    return time.perf_counter() - started


def timed(fn, count: int):
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
            "max_ms": round(samples[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="jobsbench")
    try:
        db = open_database(database_path(state), migrations.SCHEMA)
        clock = FakeClock()
        table = JobTable(db, state, clock)
        store = JobStore(db, state, table)
        fill_s = fill(table, store, clock, args.jobs)
        service = JobsService(table, clock, lambda *a: None, lambda name: 0, retention_days=30, max_bytes=1 << 40)
        api = CoreApi(service)
        session = SimpleNamespace(identity=SimpleNamespace(full_access=True, user="root"))
        rng = random.Random(11)
        top = db.execute("SELECT MAX(id) FROM jobs").fetchone()[0]

        def call(query_args):
            return api.get_jobs(session, SimpleNamespace(args=query_args))

        results = {
            "floor: bare SELECT by id": timed(lambda: db.execute("SELECT * FROM jobs WHERE id = ?",
                                                                 (rng.randint(1, top),)).fetchone(), args.queries),
            "get_jobs by id": timed(lambda: call([[["id", "=", rng.randint(1, top)]]]), args.queries),
            "get_jobs state=RUNNING order -id limit 50": timed(
                lambda: call([[["state", "=", "RUNNING"]], {"order_by": ["-id"], "limit": 50}]), args.queries),
            "get_jobs state=SUCCESS order -id limit 50": timed(
                lambda: call([[["state", "=", "SUCCESS"]], {"order_by": ["-id"], "limit": 50}]), args.queries),
            "get_jobs state=SUCCESS order -id limit 50 offset 5000": timed(
                lambda: call([[["state", "=", "SUCCESS"]], {"order_by": ["-id"], "limit": 50, "offset": 5000}]),
                args.queries // 4),
            "get_jobs owner.user=bob order -id limit 50": timed(
                lambda: call([[["owner.user", "=", "bob"]], {"order_by": ["-id"], "limit": 50}]), args.queries),
            "get_jobs count state=FAILED": timed(lambda: call([[["state", "=", "FAILED"]], {"count": True}]),
                                                 args.queries // 4),
        }
        counts = {row[0]: row[1] for row in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        report = {"jobs": args.jobs, "fill_seconds": round(fill_s, 1), "states": counts,
                  "database_bytes": os.path.getsize(database_path(state)), "queries": results,
                  "target": "p99 < 20 ms"}
        print(json.dumps(report, indent=2))
        db.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
