"""Shared plumbing for the benchmarks: child servers, CPU accounting, the Node client."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import List, Optional, Tuple

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_DIR = os.path.join(REPO, "bench", ".node")
LISTENING = re.compile(r"listening on \S+ port (\d+)|listening on port (\d+)")


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Child:
    """A server process whose output is watched for its 'listening … port N' line."""

    def __init__(self, argv: List[str], label: str, timeout: float = 30.0, env: Optional[dict] = None):
        self.label = label
        self.proc = subprocess.Popen(argv, cwd=REPO, env={**child_env(), **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        self.port: Optional[int] = None
        found = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = LISTENING.search(line)
                if m and self.port is None and "local socket" not in line:
                    self.port = int(m.group(1) or m.group(2))
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError(f"{label} did not start:\n" + "".join(self.lines[-30:]))
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def twistd_argv(plugin: str, *args: str) -> List[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", plugin, *args]


def ensure_node_ws() -> str:
    """Install the Node load generators' packages (once, into bench/.node): 'ws', and
    'libsodium-wrappers' for bench/loadgen_e2e.js's cipher."""
    if shutil.which("node") is None:
        raise SystemExit("the benchmark needs Node.js (node) for its load generator")
    wanted = {"ws": "ws@8", "libsodium-wrappers": "libsodium-wrappers@0.7"}
    missing = [spec for name, spec in wanted.items()
               if not os.path.exists(os.path.join(NODE_DIR, "node_modules", name, "package.json"))]
    if missing:
        os.makedirs(NODE_DIR, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", NODE_DIR, *missing], check=True)
    return os.path.join(NODE_DIR, "node_modules")


def run_node(script: str, *args: str, timeout: float) -> Tuple[dict, float]:
    """Run bench/<script> (a Node load generator) with *args*; returns (the JSON summary it
    prints last, its CPU seconds)."""
    env = dict(os.environ, NODE_PATH=ensure_node_ws())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["node", os.path.join(REPO, "bench", script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator {script} {' '.join(args[:1])} failed: {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout.strip().splitlines()[-1]), cpu


def run_loadgen(url: str, conns: int, inflight: int, seconds: float, key_file: Optional[str] = None) -> Tuple[dict, float]:
    """Run the Node client (bench/loadgen.js); returns (its JSON summary, its CPU seconds)."""
    return run_node("loadgen.js", url, str(conns), str(inflight), str(seconds), *([key_file] if key_file else []),
                    timeout=seconds + 120)


def tempdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def save_results(name: str, results: object) -> str:
    """Write *results* as ``bench/results/<name>.json`` (indented); its path."""
    out = os.path.join(REPO, "bench", "results")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path
