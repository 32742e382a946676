"""Soak: attacks on the login path of a real sysadmd, with its RSS and a bystander's latency.

    python -m bench.soak_login [--seconds 10] [--attack parked|failures|names|all]

A ``twistd -n sysadmd`` child on 127.0.0.1 with the real PAM checker (a wrong password
for a missing user takes PAM's fail delay, about 2 s).  For each attack, for a bounded
time, an attacker process hammers it while a probe process sends ``rpc/identify`` every
20 ms on its own connection; reported: the daemon's RSS before, at its peak during and
2 s after the attack, the probe's p50/p99/max latency, and what the attacker saw.

* ``parked`` (issue 7 item 7): one connection sends a wrong-password ``rpc/auth`` and then
  small requests as fast as it can while the check is pending; it reconnects whenever
  it is closed (before the fix, 38 MiB of such requests grew the daemon by 672 MiB).
* ``failures`` (item 8): 40 connections each retry a wrong password as fast as answered.
* ``names`` (item 1): ``rpc/auth`` with a 5 MiB user name, repeatedly (before the fix one
  such request could abort the daemon inside NSS).

Results go to bench/results/soak_login.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List

from bench.common import REPO, Child, child_env, save_results, tempdir, twistd_argv

ATTACKS = ("parked", "failures", "names")


# --- the child roles (run with --role; they print one JSON line) -----------------------
def _role_main(role: str, url: str, seconds: float) -> None:
    from twisted.internet import defer, reactor, task

    from sysadmd.client.wsclient import connect

    stats: Dict[str, int] = {"connections": 0, "closed_1008": 0, "other_closes": 0, "sent": 0, "replies": 0,
                             "errors_429": 0, "errors_401": 0}
    latencies: List[float] = []
    deadline = time.monotonic() + seconds

    def auth_args(user: str) -> dict:
        return {"username": user, "password": "not-the-password"}

    @defer.inlineCallbacks
    def parked_loop():
        filler = json.dumps({"namespace": "rpc", "name": "identify", "id": "x", "args": "p" * 150})
        while time.monotonic() < deadline:
            client = yield connect(reactor, url)
            stats["connections"] += 1
            client.call("rpc", "auth", auth_args("nosuchuser-soak")).addErrback(lambda f: None)
            while not client.closed.called and time.monotonic() < deadline:
                try:
                    for _ in range(200):
                        client.send_text(filler)
                        stats["sent"] += 1
                except Exception:
                    break  # the daemon is closing this connection; see how, below
                yield task.deferLater(reactor, 0.001, lambda: None)
            if time.monotonic() < deadline or client.closed.called:
                code, _ = yield client.closed
                stats["closed_1008" if code == 1008 else "other_closes"] += 1
            else:
                yield client.close()

    @defer.inlineCallbacks
    def failures_one():
        client = yield connect(reactor, url)
        stats["connections"] += 1
        try:
            while time.monotonic() < deadline and not client.closed.called:
                reply = yield client.call("rpc", "auth", auth_args("nosuchuser-soak"))
                stats["replies"] += 1
                code = reply.get("args", {}).get("code") if isinstance(reply.get("args"), dict) else None
                if code == "429":
                    stats["errors_429"] += 1
                    yield task.deferLater(reactor, 0.05, lambda: None)
                elif code == "401":
                    stats["errors_401"] += 1
        except Exception:
            stats["other_closes"] += 1
        if not client.closed.called:
            yield client.close()

    @defer.inlineCallbacks
    def names_loop():
        huge = "n" * (5 * 1024 * 1024)
        client = yield connect(reactor, url)
        stats["connections"] += 1
        while time.monotonic() < deadline:
            reply = yield client.call("rpc", "auth", auth_args(huge))
            stats["replies"] += 1
            if isinstance(reply.get("args"), dict) and reply["args"].get("code") == "401":
                stats["errors_401"] += 1
        yield client.close()

    @defer.inlineCallbacks
    def probe():
        client = yield connect(reactor, url)
        while time.monotonic() < deadline:
            started = time.monotonic()
            yield client.call("rpc", "identify", "")
            latencies.append((time.monotonic() - started) * 1000)
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield client.close()

    @defer.inlineCallbacks
    def run():
        try:
            if role == "probe":
                yield probe()
            elif role == "parked":
                yield parked_loop()
            elif role == "failures":
                yield defer.gatherResults([failures_one() for _ in range(40)], consumeErrors=True)
            elif role == "names":
                yield names_loop()
        except Exception as e:  # reported, not raised: the parent wants the numbers
            stats["error"] = f"{type(e).__name__}: {e}"
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    if role == "probe":
        ordered = sorted(latencies)
        out = {"samples": len(ordered)}
        if ordered:
            out.update(p50_ms=statistics.median(ordered), p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                       max_ms=ordered[-1])
        print(json.dumps(out))
    else:
        print(json.dumps(stats))


# --- the parent ----------------------------------------------------------------------------
def _spawn(role: str, url: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.soak_login", "--role", role, "--url", url,
                             "--seconds", str(seconds)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _last_json(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": err.strip()[-500:]}


def soak(child: Child, url: str, attack: str, seconds: float) -> dict:
    mib = 1024 * 1024
    before = child.ps.memory_info().rss / mib
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            try:
                peak[0] = max(peak[0], child.ps.memory_info().rss / mib)
            except Exception:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attacker = _spawn(attack, url, seconds)
    time.sleep(0.5)  # let the attack start before the probe measures
    probe = _spawn("probe", url, max(1.0, seconds - 1))
    probe_result = _last_json(probe, seconds + 60)
    attacker_result = _last_json(attacker, seconds + 120)
    time.sleep(2)
    stop.set()
    alive = child.proc.poll() is None
    after = child.ps.memory_info().rss / mib if alive else None
    return {"attack": attack, "seconds": seconds, "daemon_alive": alive, "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak[0], 1), "rss_after_mib": None if after is None else round(after, 1),
            "probe": probe_result, "attacker": attacker_result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attack", choices=ATTACKS + ("all",), default="all")
    parser.add_argument("--role", choices=ATTACKS + ("probe",), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _role_main(args.role, args.url, args.seconds)
        return 0
    state = tempdir("soaklogin")
    config = os.path.join(state, "sysadmd.conf")
    with open(config, "w") as f:
        # Loopback stays exempt from the blacklist so the attacks run for their whole time;
        # 5 MiB names need a message limit above 5 MiB to reach the login code at all.
        f.write("MAX_MESSAGE_BYTES=16777216\n")
    results = []
    attacks = ATTACKS if args.attack == "all" else (args.attack,)
    for attack in attacks:
        child = Child(twistd_argv("sysadmd", "--config", config, "--port", "tcp:0:interface=127.0.0.1",
                                  "--state-dir", state, "--socket", "none"), "sysadmd")
        try:
            row = soak(child, f"wss://127.0.0.1:{child.port}/", attack, args.seconds)
        finally:
            child.stop()
        results.append(row)
        probe = row["probe"]
        print(f"{attack:>8}: alive={row['daemon_alive']} RSS {row['rss_before_mib']} -> peak {row['rss_peak_mib']} -> "
              f"after {row['rss_after_mib']} MiB | probe p50 {probe.get('p50_ms', float('nan')):.1f} ms "
              f"p99 {probe.get('p99_ms', float('nan')):.1f} ms max {probe.get('max_ms', float('nan')):.1f} ms "
              f"({probe.get('samples', 0)} samples) | attacker {row['attacker']}", flush=True)
    save_results("soak_login", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
