"""How long ``sysadm --socket S identify`` takes, against ``python -c pass`` in the same run.

Starts a real sysadmd (twistd, loopback TCP port 0, a Unix socket in a temp dir), then runs
the client N times in fresh processes and reports the wall time of each kind of run
(median and best), and the client's own share (client minus bare interpreter).  The target
of issue 8 item 15: start-up to the first request under 0.25 s.

    python -m bench.client_startup [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench.common import Child, child_env, tempdir, twistd_argv

LAUNCH = "from sysadmd.client.main import main; import sys; sys.exit(main())"


def timed(argv, env) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
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
        env["XDG_CONFIG_HOME"] = state  # no profile file of the user's
        client = [sys.executable, "-c", LAUNCH, "--socket", socket_path, "identify"]
        bare = [sys.executable, "-c", "pass"]
        timed(client, env)  # warm the page cache and .pyc files
        # The floor no client on autobahn's Twisted WebSocket can go below: importing it
        # (autobahn.twisted's package runs its WAMP imports too).
        floor = [sys.executable, "-c", "import autobahn.twisted.websocket"]
        client_times, bare_times, floor_times = [], [], []
        for _ in range(args.runs):  # interleaved, so load changes hit all alike
            bare_times.append(timed(bare, env))
            floor_times.append(timed(floor, env))
            client_times.append(timed(client, env))
        rows = (("python -c pass", bare_times), ("import autobahn.twisted.ws", floor_times),
                ("sysadm --socket S identify", client_times))
        for label, values in rows:
            print(f"{label:28s} median {statistics.median(values) * 1000:7.1f} ms   best {min(values) * 1000:7.1f} ms")
        share = statistics.median(client_times) - statistics.median(bare_times)
        print(f"{'client share (difference)':28s} median {share * 1000:7.1f} ms   runs {args.runs}")
        ours = statistics.median(client_times) - statistics.median(floor_times)
        print(f"{'beyond the autobahn import':28s} median {ours * 1000:7.1f} ms   (our imports, connect, request, close)")
        verdict = "within" if statistics.median(client_times) < 0.25 else "OVER"
        print(f"target: whole run under 250 ms: {verdict}")
    finally:
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
