"""How long ``sysadm --socket S identify`` takes, against ``python -c pass`` in the same run.

Starts a real sysadmd (twistd, loopback TCP port 0, a Unix socket in a temp dir), then runs
the client N times in fresh processes and reports the wall time of each kind of run
(median and best), its ratio to the bare interpreter's median, and its CPU time (user +
system).  The target of issue 8 item 15: start-up to the first request under 0.25 s, on
a machine not busy with other work (the load average is printed: wall times on a loaded
machine say more about the load than about the client).

Rows: the bare interpreter; importing ``autobahn.twisted.websocket`` (what every client
built on autobahn's Twisted WebSocket paid before its first byte: the client no longer
uses it); ``sysadm`` over the local socket; ``sysadm`` over ``wss://`` (TLS, certificate
pinned on first use); and, with ``--compare DIR``, the same local-socket run of the client
in another source tree (e.g. ``git archive <rev> | tar -x -C DIR``), interleaved with the
others so that load changes hit all rows alike.

    python -m bench.client_startup [--runs 15] [--compare DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from bench.common import Child, child_env, tempdir, twistd_argv

LAUNCH = "from sysadmd.client.main import main; import sys; sys.exit(main())"
TARGET = 0.25


def timed(argv, env, cpu=None) -> float:
    """Wall time of one run; its CPU time (user + system) is appended to *cpu*."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # "-c" puts the working directory first on sys.path: run where PYTHONPATH points
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"].split(os.pathsep)[0])
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} failed ({proc.returncode}): {proc.stderr.strip()}")
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--compare", metavar="DIR", help="also time the client of the source tree in DIR")
    args = parser.parse_args()
    state = tempdir("sysadm-startup-")
    socket_path = os.path.join(state, "sysadmd.sock")
    daemon = Child(twistd_argv("sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state,
                               "--socket", socket_path), "sysadmd")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(socket_path):
            if time.monotonic() > deadline:
                raise SystemExit("the daemon's socket did not appear")
            time.sleep(0.05)
        env = child_env()
        env["XDG_CONFIG_HOME"] = state  # no profile file of the user's; known_hosts in the temp dir
        env.pop("SYSADM_PROFILE", None)
        rows = [("python -c pass", [sys.executable, "-c", "pass"], env),
                ("import autobahn.twisted.ws", [sys.executable, "-c", "import autobahn.twisted.websocket"], env),
                ("sysadm --socket S identify", [sys.executable, "-c", LAUNCH, "--socket", socket_path, "identify"], env),
                ("sysadm --url wss:// identify", [sys.executable, "-c", LAUNCH, "--url", f"wss://127.0.0.1:{daemon.port}",
                                                  "identify"], env)]
        if args.compare:
            other = dict(env)
            other["PYTHONPATH"] = os.path.abspath(args.compare) + os.pathsep + os.environ.get("PYTHONPATH", "")
            rows.append((f"{os.path.basename(os.path.abspath(args.compare))[:14]}: --socket identify",
                         [sys.executable, "-c", LAUNCH, "--socket", socket_path, "identify"], other))
        for _, argv, row_env in rows:
            timed(argv, row_env)  # warm the page cache and .pyc files; pins the certificate
        times = [[] for _ in rows]
        cpus = [[] for _ in rows]
        for _ in range(args.runs):  # interleaved, so load changes hit all alike
            for i, (_, argv, row_env) in enumerate(rows):
                times[i].append(timed(argv, row_env, cpus[i]))
        base = statistics.median(times[0])
        for (label, _, _), values, cpu in zip(rows, times, cpus):
            median = statistics.median(values)
            print(f"{label:32s} median {median * 1000:7.1f} ms   best {min(values) * 1000:7.1f} ms   "
                  f"{median / base:5.1f}x bare   cpu {statistics.median(cpu) * 1000:6.1f} ms")
        print(f"runs {args.runs}; cpu: the run's own user+system time (median), which other load on the "
              f"machine does not inflate as it does wall time; load average now {os.getloadavg()[0]:.2f}")
        local = statistics.median(times[2])
        print(f"target: sysadm over the local socket under {TARGET * 1000:.0f} ms: "
              f"{'within' if local < TARGET else 'OVER'} ({local * 1000:.1f} ms)")
        if args.compare:
            print(f"compared tree / this tree (local socket): wall {statistics.median(times[4]) / local:.2f}x, "
                  f"cpu {statistics.median(cpus[4]) / statistics.median(cpus[2]):.2f}x")
    finally:
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
