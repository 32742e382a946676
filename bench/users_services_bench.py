"""``sysadm/users usershow`` and ``sysadm/services list_services`` latency on a host with
1,000 accounts and 1,000 init scripts, and ``list_services`` on systemd with 1,000 units.

Run on demand (as root, for the local socket's peer-uid login)::

    python -m bench.users_services_bench [--users 1000] [--scripts 1000] [--units 1000] [--rounds 30]

Everything is generated in a temporary directory, nothing on the host changes: a
``passwd``/``group``/``shadow`` with ``--users`` accounts (``USERS_PREFIX``) and an
``init.d`` with ``--scripts`` LSB scripts whose ``status`` exits 3, half of them enabled
by ``rc2.d`` links (``SERVICES_INITD_DIR``).  A real in-process daemon serves them on its
local socket; a client in the same process sends the requests one after another.

Reported, each beside its floor measured in the same run:

* ``usershow``: latency percentiles and process CPU per request (client included), and
  the floor: parsing the three files and encoding the reply in-process, no daemon.
* ``list_services``: latency percentiles, and the floor: the same number of bare
  ``<script> status`` processes with the same parallelism (what the listing must run),
  then 4 concurrent listings (they share one run).
* ``list_services_systemd`` (``--units``, 0 to skip; needs ``dbus-daemon`` and dbus-fast):
  a second daemon with ``SERVICES_INIT=systemd`` on a private ``dbus-daemon`` whose
  stand-in systemd manager (the one of tests/test_services_systemd.py, a Python
  dbus-fast service) holds ``--units`` service units; latency percentiles, and the
  floor: the same ``ListUnits`` + ``ListUnitFiles`` calls (both in flight at once, as the
  backend makes them) made bare on the backend's own bus connection (most of both is the stand-in building and marshalling its reply).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, reactor, task

from sysadmd import config as configmod
from sysadmd.assembly import build
from sysadmd.client.wsclient import connect_unix
from sysadmd.sysclasses.accounts import AccountDatabase
from sysadmd.sysclasses.sysv import STATUS_PARALLEL, run_script

SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: generated service {name}
### END INIT INFO
case "$1" in
  status) exit 3 ;;
  *) exit 0 ;;
esac
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, children.ru_utime + children.ru_stime


def generate(root: str, users: int, scripts: int) -> str:
    etc = os.path.join(root, "etc")
    os.makedirs(os.path.join(etc, "init.d"))
    os.makedirs(os.path.join(etc, "rc2.d"))
    with open(os.path.join(etc, "passwd"), "w") as p, open(os.path.join(etc, "shadow"), "w") as s:
        p.write("root:x:0:0:root:/root:/bin/bash\n")
        for i in range(users):
            p.write(f"bench{i:04d}:x:{20000 + i}:{20000 + i}:Bench user {i},,,:/home/bench{i:04d}:/bin/bash\n")
            s.write(f"bench{i:04d}:!:19000:0:99999:7:::\n")
    with open(os.path.join(etc, "group"), "w") as g:
        for i in range(users // 5):
            g.write(f"team{i:03d}:x:{30000 + i}:" + ",".join(f"bench{j:04d}" for j in range(i * 5, i * 5 + 5)) + "\n")
    with open(os.path.join(etc, "shells"), "w") as f:
        f.write("/bin/sh\n/bin/bash\n")
    initd = os.path.join(etc, "init.d")
    for i in range(scripts):
        name = f"svc{i:04d}"
        path = os.path.join(initd, name)
        with open(path, "w") as f:
            f.write(SCRIPT.format(name=name))
        os.chmod(path, 0o755)
        if i % 2 == 0:
            os.symlink(f"../init.d/{name}", os.path.join(etc, "rc2.d", f"S01{name}"))
    return initd


def percentiles(samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return {"p50_ms": round(pick(0.5), 2), "p95_ms": round(pick(0.95), 2), "max_ms": round(samples[-1] * 1000, 2)}


@defer.inlineCallbacks
def timed_calls(client, args, rounds):
    times = []
    own0, kids0 = cpu()
    for _ in range(rounds):
        start = time.perf_counter()
        reply = yield client.call("sysadm", args[0], args[1])
        times.append(time.perf_counter() - start)
        if reply["name"] != "response":
            raise RuntimeError(f"{args}: {reply}")
    own1, kids1 = cpu()
    return times, reply, (own1 - own0) / rounds, (kids1 - kids0) / rounds


@defer.inlineCallbacks
def bare_status(initd, parallel):
    slots = defer.DeferredSemaphore(parallel)
    paths = [os.path.join(initd, n) for n in sorted(os.listdir(initd))]
    start = time.perf_counter()
    yield defer.gatherResults([slots.run(run_script, reactor, [p, "status"], 10.0, None) for p in paths])
    return time.perf_counter() - start


@defer.inlineCallbacks
def main(reactor_, options):
    if os.geteuid() != 0:
        print("run as root: the client logs in on the local socket by peer uid", file=sys.stderr)
        return
    root = tempfile.mkdtemp(prefix="sdkbench")
    try:
        initd = generate(root, options.users, options.scripts)
        state = os.path.join(root, "state")
        cfg = configmod.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state, "USERS_PREFIX": root,
                                    "SERVICES_INITD_DIR": initd})
        daemon = build(cfg, reactor)
        daemon.startService()
        for listener in daemon.listeners.values():
            yield listener.ready
        client = yield connect_unix(reactor, cfg.socket)
        results = {"users": options.users, "scripts": options.scripts}

        db = AccountDatabase(root)
        floor = []
        for _ in range(options.rounds):
            db._cache.clear()
            start = time.perf_counter()
            ageing = db.ageing()
            json.dumps({a.name: db.user_entry(a, ageing) for a in db.accounts()}, separators=(",", ":"), sort_keys=True)
            floor.append(time.perf_counter() - start)
        times, reply, own, _ = yield timed_calls(client, ("users", {"action": "usershow"}), options.rounds)
        assert len(reply["args"]) == options.users + 1, len(reply["args"])
        results["usershow"] = dict(percentiles(times), cpu_ms_per_request=round(own * 1000, 2),
                                   floor_parse_uncached=percentiles(floor))
        times, _, own, _ = yield timed_calls(client, ("users", {"action": "groupshow"}), options.rounds)
        results["groupshow"] = dict(percentiles(times), cpu_ms_per_request=round(own * 1000, 2))

        floor_status = yield bare_status(initd, STATUS_PARALLEL)
        rounds = max(2, options.rounds // 10)
        times, reply, own, kids = yield timed_calls(client, ("services", {"action": "list_services"}), rounds)
        services = reply["args"]["services"]
        assert len(services) == options.scripts, len(services)
        assert sum(1 for s in services.values() if s["is_enabled"] == "true") == (options.scripts + 1) // 2
        start = time.perf_counter()
        together = yield defer.gatherResults([client.call("sysadm", "services", {"action": "list_services"})
                                              for _ in range(4)])
        shared = time.perf_counter() - start
        assert all(r["name"] == "response" for r in together)
        results["list_services"] = dict(percentiles(times), daemon_cpu_ms_per_request=round(own * 1000, 1),
                                        status_children_cpu_ms_per_request=round(kids * 1000, 1),
                                        floor_bare_status_ms=round(floor_status * 1000, 1),
                                        ratio_to_floor=round(statistics.median(times) / floor_status, 2),
                                        four_concurrent_ms=round(shared * 1000, 1))
        yield client.close()
        yield daemon.stopService()
        if options.units:
            results["list_services_systemd"] = yield systemd_listing(root, options)
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@defer.inlineCallbacks
def systemd_listing(root, options):
    """``list_services`` latency on the stand-in systemd with ``--units`` units."""
    if not shutil.which("dbus-daemon"):
        return {"skipped": "dbus-daemon is not installed"}
    from sysadmd.sysclasses.systemd import MANAGER, MANAGER_PATH, SYSTEMD
    from tests.test_services_systemd import PrivateBus

    bus_dir = tempfile.mkdtemp(prefix="sdkbus", dir="/tmp")
    bus = PrivateBus(bus_dir, units=[], generate=options.units)
    try:
        bus.start()
        cfg = configmod.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": os.path.join(root, "state-sd"),
                                    "SERVICES_INIT": "systemd", "SERVICES_SYSTEMD_BUS": bus.address})
        daemon = build(cfg, reactor)
        daemon.startService()
        for listener in daemon.listeners.values():
            yield listener.ready
        client = yield connect_unix(reactor, cfg.socket)
        backend = daemon.sysclasses["services"].backends[0]
        connection = yield backend._connected()
        floor = []
        for _ in range(options.rounds):
            start = time.perf_counter()
            yield defer.gatherResults([connection.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnits", "", []),
                                       connection.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitFiles", "", [])])
            floor.append(time.perf_counter() - start)
        times, reply, own, _ = yield timed_calls(client, ("services", {"action": "list_services"}), options.rounds)
        services = reply["args"]["services"]
        assert sum(1 for s in services.values() if s["tag"].startswith("gen")) == options.units, len(services)
        result = dict(percentiles(times), units=options.units, daemon_cpu_ms_per_request=round(own * 1000, 1),
                      floor_bare_dbus_calls=percentiles(floor),
                      ratio_to_floor=round(statistics.median(times) / statistics.median(floor), 2))
        yield client.close()
        yield daemon.stopService()
        return result
    finally:
        bus.stop()
        shutil.rmtree(bus_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--scripts", type=int, default=1000)
    parser.add_argument("--units", type=int, default=1000, help="systemd units on the stand-in manager (0: skip)")
    parser.add_argument("--rounds", type=int, default=30)
    opts = parser.parse_args()
    task.react(lambda r: main(r, opts))
