"""WebSocket transfer benchmark: ``sysadm cp`` MB/s direct to sysadmd vs through the bridge.

    python -m bench.ws_transfer_bench [--size-mib 128] [--runs 3]

Real processes on 127.0.0.1, linked as bench/bridge_bench.py links them (``twistd -n
sysadm-bridge``, ``twistd -n sysadmd`` with a bridge link, one RSA key registered on
both): the real ``sysadm cp`` client copies a random file up (``cp FILE server:PATH``) and
back down (``cp server:PATH FILE``), DIRECT (``--url``, TLS WebSocket) and THROUGH the
bridge (``--bridge … --server ID``), alternating the order between runs, in the same run.
Each copy is checked byte for byte (SHA-256).  Timed: the whole client process, login
included.  Reported: median MB/s (MiB/s) of each, the ratio bridged/direct (target >=
0.6), and the CPU seconds of each process per GiB; also bench/results/ws_transfer_bench.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from bench.bridge_bench import Setup
from bench.common import REPO, child_env, save_results, tempdir

MIB = 1024 * 1024


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


class Cli:
    def __init__(self, base: str, setup: Setup):
        self.env = child_env()
        self.env.update(HOME=base, XDG_CONFIG_HOME=os.path.join(base, "cfg"), XDG_STATE_HOME=os.path.join(base, "st"))
        self.setup = setup
        self.server_id = ""

    def run(self, *argv: str) -> str:
        proc = subprocess.run([sys.executable, "-c", "from sysadmd.client.main import main; import sys; "
                               "sys.exit(main())", *argv], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"sysadm {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def prefix(self, mode: str):
        if mode == "direct":
            return ["--url", f"127.0.0.1:{self.setup.server.port}", "--key", self.setup.key_file]
        return ["--bridge", f"127.0.0.1:{self.setup.bridge.port}", "--key", self.setup.key_file,
                "--server", self.server_id]

    def find_server(self) -> None:
        rows = json.loads(self.run("--bridge", f"127.0.0.1:{self.setup.bridge.port}", "--key", self.setup.key_file,
                                   "--json", "peers"))
        self.server_id = rows[0]["id"]


def timed_cp(cli: Cli, setup: Setup, mode: str, src: str, dst: str) -> dict:
    server0, bridge0 = setup.server.cpu_seconds(), setup.bridge.cpu_seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cli.run(*cli.prefix(mode), "cp", src, dst)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds, "server_cpu": setup.server.cpu_seconds() - server0,
            "bridge_cpu": setup.bridge.cpu_seconds() - bridge0,
            "client_cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    base = tempdir("wsx")
    setup = Setup(base)
    try:
        setup.start()
        cli = Cli(base, setup)
        cli.find_server()
        files = os.path.join(base, "files")
        os.makedirs(files)
        src = os.path.join(files, "payload.bin")
        with open(src, "wb") as f:
            for _ in range(opts.size_mib):
                f.write(os.urandom(MIB))
        digest = sha(src)
        size = opts.size_mib * MIB
        samples = {f"{way} {mode}": [] for way in ("upload", "download") for mode in ("direct", "bridge")}
        cpu = {key: [] for key in samples}
        for run in range(opts.runs):
            modes = ("direct", "bridge") if run % 2 == 0 else ("bridge", "direct")
            for mode in modes:
                remote = os.path.join(files, f"up-{mode}-{run}.bin")
                up = timed_cp(cli, setup, mode, src, "server:" + remote)
                assert sha(remote) == digest, f"upload {mode} differs"
                back = os.path.join(files, f"down-{mode}-{run}.bin")
                down = timed_cp(cli, setup, mode, "server:" + remote, back)
                assert sha(back) == digest, f"download {mode} differs"
                os.unlink(remote)
                os.unlink(back)
                for way, r in (("upload", up), ("download", down)):
                    samples[f"{way} {mode}"].append(size / MIB / r["seconds"])
                    cpu[f"{way} {mode}"].append({k: v * 1024 / opts.size_mib for k, v in r.items() if k != "seconds"})
        med = {k: statistics.median(v) for k, v in samples.items()}
        cpu_med = {k: {p: statistics.median(c[p] for c in v) for p in ("server_cpu", "bridge_cpu", "client_cpu")}
                   for k, v in cpu.items()}
        print(f"WebSocket transfer benchmark (sysadm cp): {opts.size_mib} MiB, {opts.runs} runs, median MB/s (MiB/s)")
        for way in ("upload", "download"):
            d, b = med[f"{way} direct"], med[f"{way} bridge"]
            print(f"  {way:8}  direct {d:7.1f}   bridge {b:7.1f}   ratio {b / d:.2f}  (target >= 0.6)")
            for mode in ("direct", "bridge"):
                c = cpu_med[f"{way} {mode}"]
                print(f"            {mode:6} CPU s/GiB: server {c['server_cpu']:.2f}  bridge {c['bridge_cpu']:.2f}  "
                      f"client {c['client_cpu']:.2f}")
        save_results("ws_transfer_bench", {
            "size_mib": opts.size_mib, "runs": opts.runs, "mb_per_s": samples, "median": med, "cpu_s_per_gib": cpu_med,
            "ratio": {way: med[f"{way} bridge"] / med[f"{way} direct"] for way in ("upload", "download")}})
    finally:
        setup.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
