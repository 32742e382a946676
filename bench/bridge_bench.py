"""sysadmd behind sysadm-bridge: rpc/query through the bridge vs direct, login time, relay MB/s.

    python -m bench.bridge_bench [--seconds 5] [--tries 20] [--relay-count 100] [--no-relay]
                                 [--shapes 1x1,8x4,32x8] [--no-login] [--profile-bridge FILE]
                                 [--engines stdlib,pyopenssl] [--floors tcp,tls|none]

Real processes on 127.0.0.1: ``twistd -n sysadm-bridge`` and ``twistd -n sysadmd``,
linked the way an operator does it (``sysadmd bridge_add`` / ``bridge_export_key``,
``sysadm-bridge import_ssl_file``), and a Node client (bench/loadgen_bridge.js) so the
load generator is not what is measured; its CPU time is reported beside the bridge's
and the server's.

1. For each shape (connections x requests in flight): rpc/query round trips DIRECT to
   sysadmd and THROUGH the bridge to the same sysadmd, in the same run. Reported:
   req/s, p50/p99, CPU time per request of each process, the throughput ratio
   (target >= 0.6x) and the p50 latency the bridge adds.  CPU time is the utime+stime
   delta of /proc/<pid>/stat around each run; the bridged run's line gives the bridge's
   and the server's CPU per relayed request and their ratio (target: the bridge at most
   half of the server, <= 0.5).
2. Login time of a bridged client: wall time from opening the TCP connection to the
   server's token reply (identify, auth_ssl to the bridge, key list, pairing, md5_key
   auth_ssl with the server), median and p90 over --tries (target < 50 ms).
3. bench/bridge_relay_bench.py: 1 MiB frames relayed server -> client, MiB/s.

``--engines`` (default ``stdlib,pyopenssl``): the bridge's TLS engines to measure, one
after the other in the same run (BRIDGE_TLS_ENGINE; a fresh bridge and server each);
the server's own TLS is the same in every pass.  ``ENGINE/py`` (``stdlib/py``) runs the
bridge with the relay step's Python reference instead of its C module
(SYSADM_BRIDGE_PURE_PYTHON=1, bridge/relayscan.py), to compare the two in one run.
A table of all of them ends the run.

``--floors tcp,tls`` (default: both when ``socat`` is installed; ``none`` to skip) also
measures each shape through a relay written in C that does the least any relay must, in
the same run, against the same server: the direct client's connection through ``socat``
in front of the server.  ``tcp``: socat copies the bytes (TLS stays end to end); ``tls``:
socat ends the client's TLS and opens its own to the server (as the bridge does, without
the WebSocket step).  Its CPU per request (socat's processes, children included) against
the server's is the same ratio as the bridge's: the floor of that ratio on this machine.

``--profile-bridge FILE`` runs the bridge under cProfile (twistd ``--profiler=cprofile
--savestats``; read FILE with ``pstats``); its CPU figures are then not representative.

Results go to bench/results/bridge_bench.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Tuple

import psutil

from bench.common import (REPO, Child, child_env, ensure_node_ws, run_node, save_results, stop_process, tempdir,
                          twistd_argv)
from sysadmd.runtime.crypto import generate_private_key, private_pem, public_pem

SHAPES = [(1, 1), (8, 4), (32, 8)]  # the same shapes as bench/rpc_bench.py
LINKED = "the bridge accepted our key"
RATIO_TARGET = 0.6  # bridged throughput / direct throughput, at least
CPU_TARGET = 0.5  # bridge CPU per relayed request / server CPU per request, at most
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_seconds(pid: int) -> List[float]:
    """utime, stime, cutime, cstime of *pid* (/proc/<pid>/stat fields 14-17), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces and ')'
    return [int(field) / _CLOCK_TICKS for field in fields[11:15]]


def proc_cpu_seconds(pid: int) -> Tuple[float, float]:
    """``(utime, stime)`` of *pid*, in seconds."""
    utime, stime, _, _ = _stat_seconds(pid)
    return utime, stime


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        conns, x, inflight = part.strip().partition("x")
        if not x or not conns.isdigit() or not inflight.isdigit() or int(conns) < 1 or int(inflight) < 1:
            raise argparse.ArgumentTypeError(f"shape {part!r}: expected CONNECTIONSxINFLIGHT, e.g. 8x4")
        shapes.append((int(conns), int(inflight)))
    return shapes


def socat_cpu_seconds(pid: int) -> float:
    """CPU seconds of socat *pid* and of its reaped children (one per connection)."""
    return sum(_stat_seconds(pid))


class Floor:
    """socat on 127.0.0.1 in front of the server: a relay in C that does the least a relay
    must ("tcp": copy bytes; "tls": end the client's TLS, open its own to the server)."""

    def __init__(self, kind: str, server_port: int, cert: str, key: str, workdir: str):
        self.kind = kind
        with socket.socket() as probe:  # a free loopback port for socat to listen on
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        listen = f"{self.port},bind=127.0.0.1,reuseaddr,fork,nodelay"
        if kind == "tcp":
            argv = ["socat", f"TCP-LISTEN:{listen}", f"TCP:127.0.0.1:{server_port},nodelay"]
        else:
            pem = os.path.join(workdir, "floor.pem")
            with open(pem, "wb") as out:
                for path in (cert, key):
                    with open(path, "rb") as f:
                        out.write(f.read())
            argv = ["socat", f"OPENSSL-LISTEN:{listen},cert={pem},verify=0",
                    f"OPENSSL:127.0.0.1:{server_port},verify=0,nodelay"]
        # socat's messages go to a file (a pipe nobody reads could fill and stall it)
        self.log = os.path.join(workdir, f"socat-{kind}.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while True:  # listening once a connect succeeds
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"socat ({kind}) did not start: {self.messages()}")
                time.sleep(0.05)
        self.idle()

    def messages(self) -> str:
        with open(self.log, "rb") as f:
            return f.read()[-500:].decode("utf-8", "replace")

    def idle(self) -> None:
        """Wait until every per-connection child has ended and been reaped (their CPU is
        counted then); after 10 s that is an error, not a figure that leaves them out."""
        children = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        deadline = time.monotonic() + 10
        while True:
            with open(children) as f:
                if not f.read().strip():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"socat ({self.kind}) still has connections 10 s after the load ended: "
                                   f"{self.messages()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


def admin(kind: str, state: str, *args: str) -> str:
    module = {"sysadmd": "sysadmd.admin.main", "bridge": "bridge.admin"}[kind]
    proc = subprocess.run([sys.executable, "-m", module, "--state-dir", state, *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Setup:
    """Bridge and server state dirs, the client key, both processes started and linked."""

    def __init__(self, base: str, profile_bridge: Optional[str] = None, engine: str = "stdlib"):
        self.base = base
        self.engine = engine
        self.profile_bridge = profile_bridge
        self.bridge_state = os.path.join(base, "bridge")
        self.server_state = os.path.join(base, "server")
        self.key_file = os.path.join(base, "client.pem")
        pub_file = os.path.join(base, "client.pub")
        key = generate_private_key(2048)
        with open(self.key_file, "wb") as f:
            f.write(private_pem(key))
        with open(pub_file, "w") as f:
            f.write(public_pem(key))
        self.config = os.path.join(base, "empty.conf")
        with open(self.config, "w") as f:
            f.write("# defaults\n")
        self.bridge_config = os.path.join(base, "bridge.conf")
        with open(self.bridge_config, "w") as f:
            f.write(f"BRIDGE_TLS_ENGINE={engine.split('/')[0]}\n")
        self.bridge: Optional[Child] = None
        self.server: Optional[Child] = None

    def start(self) -> None:
        base = self.base
        pub_file = os.path.join(base, "client.pub")
        bridge_argv = twistd_argv("sysadm-bridge", "--config", self.bridge_config, "--port", "tcp:0:interface=127.0.0.1",
                                  "--state-dir", self.bridge_state)
        if self.profile_bridge:
            at = bridge_argv.index("sysadm-bridge")
            bridge_argv[at:at] = [f"--profile={self.profile_bridge}", "--profiler=cprofile", "--savestats"]
        # "ENGINE/py": the relay step's Python reference instead of the C module
        step_env = {"SYSADM_BRIDGE_PURE_PYTHON": "1"} if self.engine.endswith("/py") else {}
        self.bridge = Child(bridge_argv, "sysadm-bridge", env=step_env)
        server_key = os.path.join(base, "server.key")
        admin("sysadmd", self.server_state, "bridge_export_key", server_key)
        admin("sysadmd", self.server_state, "bridge_add", "bench", f"wss://127.0.0.1:{self.bridge.port}", "--verify", "pin")
        admin("sysadmd", self.server_state, "import_ssl_file", "root", pub_file, "bench")
        admin("bridge", self.bridge_state, "import_ssl_file", "server", server_key, "--role", "server")
        admin("bridge", self.bridge_state, "import_ssl_file", "client", pub_file, "--role", "client")
        self.server = Child(twistd_argv("sysadmd", "--config", self.config, "--port", "tcp:0:interface=127.0.0.1",
                                        "--state-dir", self.server_state, "--socket", "none"), "sysadmd")
        deadline = time.monotonic() + 30
        while not any(LINKED in line for line in self.server.lines):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not link to the bridge:\n" + "".join(self.server.lines[-20:]))
            time.sleep(0.05)

    @property
    def bridge_url(self) -> str:
        return f"wss://127.0.0.1:{self.bridge.port}/"

    @property
    def server_url(self) -> str:
        return f"wss://127.0.0.1:{self.server.port}/"

    def stop(self) -> None:
        for child in (self.server, self.bridge):
            if child is not None:
                child.stop()


def node(*args: str, timeout: float) -> Tuple[dict, float]:
    """Run bench/loadgen_bridge.js; returns (its JSON summary, its CPU seconds)."""
    return run_node("loadgen_bridge.js", *args, timeout=timeout)


def measure(setup: Setup, mode: str, conns: int, inflight: int, seconds: float, floor: Optional[Floor] = None) -> dict:
    """One load run; with *floor*, the direct client's connections go through socat and
    "floor_cpu_*" is socat's CPU (its children's included)."""
    url = setup.bridge_url if mode == "bridge" else setup.server_url
    if floor is not None:
        url = f"wss://127.0.0.1:{floor.port}/"
    server_pid, bridge_pid = setup.server.proc.pid, setup.bridge.proc.pid
    server0, bridge0 = proc_cpu_seconds(server_pid), proc_cpu_seconds(bridge_pid)
    floor0 = socat_cpu_seconds(floor.proc.pid) if floor is not None else 0.0
    summary, client_cpu = node(mode, url, str(conns), str(inflight), str(seconds), setup.key_file, timeout=seconds + 120)
    server1, bridge1 = proc_cpu_seconds(server_pid), proc_cpu_seconds(bridge_pid)
    if floor is not None:
        floor.idle()  # its children's CPU counts once they are reaped
    floor_cpu = socat_cpu_seconds(floor.proc.pid) - floor0 if floor is not None else 0.0
    server_user, server_sys = server1[0] - server0[0], server1[1] - server0[1]
    bridge_user, bridge_sys = bridge1[0] - bridge0[0], bridge1[1] - bridge0[1]
    server_cpu, bridge_cpu = server_user + server_sys, bridge_user + bridge_sys
    n = max(1, summary["requests"])
    # CPU counts the connect/login phase and the warm-up second too, the same way for both modes.
    return {
        "rps": summary["requests"] / summary["seconds"],
        "requests": summary["requests"],
        "p50_ms": summary["p50_ms"],
        "p90_ms": summary["p90_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "server_cpu_s": server_cpu,
        "bridge_cpu_s": bridge_cpu,
        "client_cpu_s": client_cpu,
        "server_cpu_us_per_req": server_cpu / n * 1e6,
        "bridge_cpu_us_per_req": bridge_cpu / n * 1e6,
        "client_cpu_us_per_req": client_cpu / n * 1e6,
        "floor_cpu_s": floor_cpu,
        "floor_cpu_us_per_req": floor_cpu / n * 1e6,
        "server_sys_share": server_sys / server_cpu if server_cpu else 0.0,  # kernel part of the CPU time
        "bridge_sys_share": bridge_sys / bridge_cpu if bridge_cpu else 0.0,
    }


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def login_times(setup: Setup, tries: int) -> dict:
    summary, _ = node("authtime", setup.bridge_url, str(tries), setup.key_file, timeout=tries * 15 + 60)
    result = {}
    for phase in ("open_ms", "bridge_auth_ms", "paired_ms", "server_identify_ms", "server_challenge_ms", "total_ms"):
        values = summary[phase]
        result[phase] = {"median": statistics.median(values), "p90": percentile(values, 0.9), "max": max(values)}
    result["tries"] = len(summary["total_ms"])
    return result


def relay_bench(count: int) -> dict:
    """Run bench/bridge_relay_bench.py (its own bridge) and pick the MiB/s lines out."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bridge_relay_bench.py"), "--count", str(count)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bridge_relay_bench failed:\n{proc.stdout}{proc.stderr}")
    direct = re.search(r"direct wss \(floor\):\s+([\d.]+) MiB/s", proc.stdout)
    relayed = re.search(r"through the bridge:\s+([\d.]+) MiB/s", proc.stdout)
    return {"direct_mib_s": float(direct.group(1)), "bridge_mib_s": float(relayed.group(1)), "output": proc.stdout}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per shape and mode")
    parser.add_argument("--tries", type=int, default=20, help="bridged logins timed")
    parser.add_argument("--relay-count", type=int, default=100, help="1 MiB frames for the relay bench")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay throughput bench")
    parser.add_argument("--no-login", action="store_true", help="skip the bridged login timing")
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES,
                        help="connections x in flight, comma-separated (default 1x1,8x4,32x8)")
    parser.add_argument("--profile-bridge", metavar="FILE", help="run the bridge under cProfile, stats to FILE")
    parser.add_argument("--engines", type=parse_engines, default=["stdlib", "pyopenssl"],
                        help="the bridge's TLS engines (BRIDGE_TLS_ENGINE) to measure, comma-separated "
                             "(default stdlib,pyopenssl)")
    parser.add_argument("--floors", type=parse_floors, default=None,
                        help="relays in C measured beside the bridge: tcp, tls, both comma-separated, or none "
                             "(default: tcp,tls when socat is installed)")
    args = parser.parse_args(argv)
    if args.floors is None:
        args.floors = ["tcp", "tls"] if shutil.which("socat") else []
        if not args.floors:
            print("socat is not installed: no floor measured (apt install socat)", flush=True)
    elif args.floors and not shutil.which("socat"):
        parser.error("--floors needs socat (apt install socat)")
    ensure_node_ws()
    results: dict = {"shapes": [], "engines": args.engines}
    for engine in args.engines:
        print(f"== bridge TLS engine: {engine}", flush=True)
        run_engine(engine, args, results)
    print_engine_table(results)
    if args.profile_bridge:
        # The stats file is the last engine's bridge; each request is two relayed frames.
        last = args.engines[-1]
        frames = 2 * sum(row["bridge"]["requests"] for row in results["shapes"] if row["engine"] == last)
        results["bridge_profile"] = profile_summary(args.profile_bridge, frames)
        print("bridge profile (load-independent counts per relayed frame): " + ", ".join(
            f"{k} {v:.2f}" for k, v in results["bridge_profile"].items()), flush=True)
    return finish(results, args)


def parse_floors(text: str) -> List[str]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    if kinds == ["none"]:
        return []
    for kind in kinds:
        if kind not in ("tcp", "tls"):
            raise argparse.ArgumentTypeError(f"floor {kind!r}: expected tcp, tls or none")
    return kinds


def parse_engines(text: str) -> List[str]:
    engines = [part.strip() for part in text.split(",") if part.strip()]
    for engine in engines:
        if engine not in ("stdlib", "pyopenssl", "stdlib/py", "pyopenssl/py"):
            raise argparse.ArgumentTypeError(f"engine {engine!r}: expected stdlib or pyopenssl,"
                                             " each optionally with /py")
    if not engines:
        raise argparse.ArgumentTypeError("no engine given")
    return engines


def run_engine(engine: str, args: argparse.Namespace, results: dict) -> None:
    """Every shape (and the login timing) with the bridge on *engine*."""
    base = tempdir("benchbridge")
    setup = None
    floors: List[Floor] = []
    try:
        setup = Setup(base, os.path.abspath(args.profile_bridge) if args.profile_bridge else None, engine)
        setup.start()
        results.setdefault("load", {})[engine] = load_note()
        print(f"machine: {results['load'][engine]}", flush=True)
        step = [line.strip() for line in setup.bridge.lines if "relay step" in line]
        print(step[-1] if step else "relay step: (the bridge did not say)", flush=True)
        cert, key = (os.path.join(setup.bridge_state, "bridge." + ext) for ext in ("crt", "key"))
        for kind in args.floors:
            floors.append(Floor(kind, setup.server.port, cert, key, base))
        for conns, inflight in args.shapes:
            direct = measure(setup, "direct", conns, inflight, args.seconds)
            bridged = measure(setup, "bridge", conns, inflight, args.seconds)
            row = {"engine": engine, "shape": f"{conns}x{inflight}", "direct": direct, "bridge": bridged,
                   "throughput_ratio": bridged["rps"] / direct["rps"],
                   "added_p50_ms": bridged["p50_ms"] - direct["p50_ms"],
                   "bridge_to_server_cpu": bridged["bridge_cpu_us_per_req"] / max(1e-9, bridged["server_cpu_us_per_req"])}
            for floor in floors:
                m = measure(setup, "direct", conns, inflight, args.seconds, floor)
                row.setdefault("floors", {})[floor.kind] = {
                    **m, "throughput_ratio": m["rps"] / direct["rps"],
                    "floor_to_server_cpu": m["floor_cpu_us_per_req"] / max(1e-9, m["server_cpu_us_per_req"])}
            results["shapes"].append(row)
            print(f"{row['shape']:>5}: direct {direct['rps']:7.0f} req/s p50 {direct['p50_ms']:.2f} ms p99 {direct['p99_ms']:.2f} ms"
                  f" | bridged {bridged['rps']:7.0f} req/s p50 {bridged['p50_ms']:.2f} ms p99 {bridged['p99_ms']:.2f} ms"
                  f" | ratio x{row['throughput_ratio']:.2f}, +{row['added_p50_ms']:.2f} ms p50", flush=True)
            for mode, m in (("direct", direct), ("bridge", bridged)):
                print(f"       {mode:>6} cpu/req: server {m['server_cpu_us_per_req']:5.0f} us, bridge {m['bridge_cpu_us_per_req']:5.0f} us,"
                      f" client {m['client_cpu_us_per_req']:5.0f} us (cpu s: server {m['server_cpu_s']:.1f},"
                      f" bridge {m['bridge_cpu_s']:.1f}, client {m['client_cpu_s']:.1f}); errors {m['errors']}", flush=True)
            ratio_ok = "ok" if row["throughput_ratio"] >= RATIO_TARGET else "MISSED"
            cpu_ok = "ok" if row["bridge_to_server_cpu"] <= CPU_TARGET else "MISSED"
            print(f"       => {row['shape']}: throughput x{row['throughput_ratio']:.2f} of direct (>= {RATIO_TARGET}: {ratio_ok});"
                  f" bridged: bridge {bridged['bridge_cpu_us_per_req']:.0f} us/req, server {bridged['server_cpu_us_per_req']:.0f}"
                  f" us/req, bridge/server {row['bridge_to_server_cpu']:.2f} (<= {CPU_TARGET}: {cpu_ok});"
                  f" kernel share: bridge {bridged['bridge_sys_share']:.0%}, server {bridged['server_sys_share']:.0%}", flush=True)
            for kind, m in row.get("floors", {}).items():
                print(f"       floor socat-{kind}: {m['rps']:7.0f} req/s (x{m['throughput_ratio']:.2f} of direct),"
                      f" socat {m['floor_cpu_us_per_req']:.0f} us/req, server {m['server_cpu_us_per_req']:.0f} us/req,"
                      f" socat/server {m['floor_to_server_cpu']:.2f}; errors {m['errors']}", flush=True)
        if not args.no_login:
            login = login_times(setup, args.tries)
            results.setdefault("login", {})[engine] = login
            total = login["total_ms"]
            print(f"bridged login (TCP connect -> server token), {login['tries']} tries: median {total['median']:.1f} ms,"
                  f" p90 {total['p90']:.1f} ms, max {total['max']:.1f} ms", flush=True)
            print("  phases from connect (median): ws open {open_ms[median]:.1f} ms, bridge token {bridge_auth_ms[median]:.1f} ms,"
                  " paired {paired_ms[median]:.1f} ms, server identify {server_identify_ms[median]:.1f} ms,"
                  " server challenge {server_challenge_ms[median]:.1f} ms".format(**login), flush=True)
    finally:
        for floor in floors:
            floor.stop()
        if setup is not None:
            setup.stop()
        shutil.rmtree(base, True)


def print_engine_table(results: dict) -> None:
    """One line per engine and shape: throughput ratio and the bridge's CPU against the server's."""
    print("relay        shape  bridged/direct  relay us/req  server us/req  relay/server", flush=True)
    for row in results["shapes"]:
        bridged = row["bridge"]
        print(f"{row['engine']:<12} {row['shape']:>5}  x{row['throughput_ratio']:<13.2f}  {bridged['bridge_cpu_us_per_req']:>12.0f}"
              f"  {bridged['server_cpu_us_per_req']:>13.0f}  {row['bridge_to_server_cpu']:>12.2f}", flush=True)
        for kind, m in row.get("floors", {}).items():
            print(f"{'  socat-' + kind:<12} {row['shape']:>5}  x{m['throughput_ratio']:<13.2f}  {m['floor_cpu_us_per_req']:>12.0f}"
                  f"  {m['server_cpu_us_per_req']:>13.0f}  {m['floor_to_server_cpu']:>12.2f}", flush=True)


def profile_summary(path: str, frames: int) -> dict:
    """Per relayed frame (*frames*: two per bridged request the load generator counted;
    its connect and warm-up are not counted, so the figures are slightly high): Python
    function calls, epoll waits, epoll_ctl calls and sends, from the bridge's cProfile
    stats.  (Relayed frames no longer pass through onMessage, so its calls cannot be the
    count.)"""
    import pstats

    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)  # twistd writes the stats as it exits
    stats = pstats.Stats(path).stats

    def calls(match) -> int:
        return sum(v[0] for k, v in stats.items() if match(k))

    frames = max(1, frames)
    total = sum(v[0] for v in stats.values())
    return {
        "python_calls": total / frames,
        "epoll_waits": calls(lambda k: k[2] == "<method 'poll' of 'select.epoll' objects>") / frames,
        "epoll_ctl": calls(lambda k: k[2] in ("<method 'modify' of 'select.epoll' objects>",
                                             "<method 'register' of 'select.epoll' objects>",
                                             "<method 'unregister' of 'select.epoll' objects>")) / frames,
        "socket_sends": calls(lambda k: k[2] == "<method 'send' of '_socket.socket' objects>") / frames,
    }


def load_note() -> str:
    """The machine's load at the start of the run (the figures depend on it)."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cpus, load average {one:.2f} (1 min) {five:.2f} (5 min), cpu busy {psutil.cpu_percent(0.5):.0f}%"


def finish(results: dict, args: argparse.Namespace) -> int:
    if not args.no_relay:
        relay = relay_bench(args.relay_count)
        results["relay"] = {k: v for k, v in relay.items() if k != "output"}
        print("relay bench (bench/bridge_relay_bench.py):")
        print("  " + relay["output"].strip().replace("\n", "\n  "), flush=True)
    save_results("bridge_bench", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
