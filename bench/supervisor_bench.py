"""Supervisor benchmark: 200 supervised idle programs, start→RUNNING, a crash loop's cost.

Run on demand::

    python -m bench.supervisor_bench [--programs 200] [--idle 10] [--crash 10]

A real in-process sysadmd (its database, job table, events hub and ``events-supervisor``
log) on the real reactor; every program is a real ``sleep``:

(a) ``start_to_running``: ``--programs`` definitions (``startsecs`` 1) are pushed, then
    all are started in one go through :meth:`Supervisor.handle`; per program the time
    from its ``start`` request to its ``RUNNING`` event (p50/p99/max), and the same less
    the 1 s ``startsecs`` every program must stay up (the daemon's own delay).
    Then ``--single`` programs are started one at a time (``startsecs`` 0.2) beside the
    running ones: the time from ``start`` to ``RUNNING`` beyond ``startsecs``.
(b) ``idle_cpu``: with every program RUNNING, the daemon process's CPU time over
    ``--idle`` seconds, as a percentage of one core (target < 1 %).
(c) ``crash_loop``: one program that exits 1 at once, ``startsecs`` 0 and
    ``autorestart`` true (the fastest loop the supervisor allows: a restart at most every
    second) runs ``--crash`` seconds beside the idle ones; the daemon's CPU time above the
    idle rate, per restart (each restart: a fork+exec, a job row and output file, the
    run's end scan, two events).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

from twisted.internet import defer, reactor, task

from sysadmd import config as configmod
from sysadmd.assembly import build
from bench.common import save_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLEEP = shutil.which("sleep") or "/bin/sleep"
FALSE = shutil.which("false") or "/bin/false"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pause(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@defer.inlineCallbacks
def main(args):
    state = tempfile.mkdtemp(prefix="sbench", dir="/tmp")
    results = {}
    try:
        cfg = configmod.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state, "SOCKET": "none"})
        daemon = build(cfg, reactor)
        daemon.startService()
        for listener in daemon.listeners.values():
            yield listener.ready
        sup = daemon.supervisor
        running_at = {}
        states = {}

        def seen(event):
            states[event["program"]] = event["state"]
            if event["state"] == "RUNNING":
                running_at.setdefault(event["program"], time.perf_counter())
        daemon.server.events.listen("supervisor", seen)

        names = [f"idle{i:03d}" for i in range(args.programs)]
        for name in names:
            reply = yield sup.handle("push", name, {"command": [SLEEP, "86400"], "user": "root", "autostart": False,
                                                    "startsecs": 1},
                                     full_access=True, actor="bench")
            assert reply.status == "success", reply
        asked = {}
        for name in names:
            asked[name] = time.perf_counter()
            reply = yield sup.handle("start", name, None, full_access=True, actor="bench")
            assert reply.status == "success", reply
        deadline = time.perf_counter() + 60
        while len(running_at) < len(names) and time.perf_counter() < deadline:
            yield pause(0.05)
        assert len(running_at) == len(names), f"only {len(running_at)} of {len(names)} reached RUNNING"
        delays = [running_at[n] - asked[n] for n in names]
        results["start_to_running_s"] = {
            "programs": len(names), "startsecs": 1,
            "p50": round(statistics.median(delays), 3), "p99": round(percentile(delays, 0.99), 3),
            "max": round(max(delays), 3),
            "p99_beyond_startsecs": round(percentile(delays, 0.99) - 1, 3),
        }

        # One start at a time (the others idle): the latency a single `start` sees.
        single = []
        for i in range(args.single):
            name = f"single{i:02d}"
            yield sup.handle("push", name, {"command": [SLEEP, "86400"], "user": "root", "autostart": False,
                                            "startsecs": 0.2}, full_access=True, actor="bench")
            t0 = time.perf_counter()
            yield sup.handle("start", name, None, full_access=True, actor="bench")
            while name not in running_at:
                yield pause(0.002)
            single.append(running_at[name] - t0 - 0.2)
            yield sup.handle("delete", name, None, full_access=True, actor="bench")
        results["single_start_beyond_startsecs_s"] = {
            "starts": len(single), "p50": round(statistics.median(single), 4),
            "p99": round(percentile(single, 0.99), 4), "max": round(max(single), 4)}

        yield pause(2)  # let the start burst settle (run-end scans, retention)
        c0, t0 = cpu(), time.perf_counter()
        yield pause(args.idle)
        idle_cpu, idle_wall = cpu() - c0, time.perf_counter() - t0
        idle_rate = idle_cpu / idle_wall
        alive = sum(1 for n in names if sup.programs[n].state == "RUNNING")
        results["idle_cpu"] = {"programs_running": alive, "seconds": round(idle_wall, 1),
                               "percent_of_one_core": round(100 * idle_rate, 3), "target_percent": 1.0}

        reply = yield sup.handle("push", "crasher", {"command": [FALSE], "user": "root", "autostart": False,
                                                     "startsecs": 0, "autorestart": True},
                                 full_access=True, actor="bench")
        assert reply.status == "success", reply
        c0, t0 = cpu(), time.perf_counter()
        yield sup.handle("start", "crasher", None, full_access=True, actor="bench")
        yield pause(args.crash)
        restarts = sup.programs["crasher"].restarts
        crash_cpu, crash_wall = cpu() - c0, time.perf_counter() - t0
        yield sup.handle("stop", "crasher", None, full_access=True, actor="bench")
        extra = crash_cpu - idle_rate * crash_wall
        results["crash_loop"] = {"seconds": round(crash_wall, 1), "restarts": restarts,
                                 "restarts_per_s": round(restarts / crash_wall, 2),
                                 "daemon_cpu_ms_per_restart": round(1000 * extra / max(restarts, 1), 2)}

        t0 = time.perf_counter()
        yield daemon.stopService()
        results["daemon_stop_with_programs_s"] = round(time.perf_counter() - t0, 2)
        leftovers = [n for n in names if sup.programs[n].state != "STOPPED"]
        assert not leftovers, leftovers
    finally:
        shutil.rmtree(state, True)
        print(json.dumps(results, indent=2))
        save_results("supervisor_bench", results)
        reactor.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--single", type=int, default=20)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--crash", type=float, default=10.0)
    options = parser.parse_args()
    reactor.callWhenRunning(lambda: main(options).addErrback(lambda f: (f.printTraceback(), reactor.stop())))
    reactor.run()
