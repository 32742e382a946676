"""Transfer benchmark: download and upload MB/s over HTTPS, sysadmd vs a bare twisted.web
server in the same run, and the daemon's RSS during a large upload.

Run on demand::

    python -m bench.transfer_bench [--size-mib 512] [--runs 3]

Starts a real ``twistd -n sysadmd`` (fresh state dir; an RSA key registered for root with
the ``sysadmd import_ssl_file`` verb, a token from a key login) and, beside it, a floor: a
bare twisted.web site on the same certificate whose ``static.File`` serves the same file
and whose POST resource only receives the body (twisted.web's own temp file; its form
parsing off, so it does not load the body into memory).  The client is the ``curl``
binary for both, so the servers are what is measured:

* download: ``core/download`` ``filesystem.get`` (over REST), wait for the job, then
  ``GET /_download/<id>`` — vs ``GET`` of the file from the floor's ``static.File``;
* upload: ``curl -F data=… -F file=@…`` to ``/_upload`` (``filesystem.put``; timed until
  the reply, i.e. the body is on disk; the job's copy to the target is timed apart) —
  vs the same ``curl -F`` to the floor;
* the daemon's peak RSS (``/proc/<pid>/status``, sampled every 50 ms) during its upload;
* each server's CPU seconds per GiB uploaded (steadier than MB/s on a shared machine).

Reported: median MB/s of ``--runs`` runs each, the ratio (target >= 0.8), the RSS growth;
also written to bench/results/transfer_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

from bench.common import Child, save_results, tempdir, twistd_argv

MIB = 1024 * 1024


# --- the floor server (python -m bench.transfer_bench --floor CERT KEY DIR) ---------------
def floor_main(cert: str, key: str, directory: str) -> None:
    from twisted.internet import reactor
    from twisted.web import resource, server, static

    from sysadmd.runtime.tls import server_context

    class Receive(resource.Resource):
        isLeaf = True

        def render_POST(self, request):
            return b'{"ok":true}'

    class Root(resource.Resource):
        def getChild(self, name, request):
            return Receive() if name == b"upload" else static.File(directory).getChild(name, request)

    site = server.Site(Root(), parsePOSTFormSubmission=False)
    site.log = lambda request: None
    port = reactor.listenSSL(0, site, server_context(cert, key), interface="127.0.0.1")
    print(f"listening on port {port.getHost().port}", flush=True)
    reactor.run()


# --- helpers ---------------------------------------------------------------------------------
def key_login_token(port: int, private_key) -> str:
    """Log in with *private_key* over a TLS WebSocket; the token."""
    from twisted.internet import defer, reactor

    from sysadmd.runtime import crypto
    from sysadmd.client.wsclient import connect

    out = {}

    @defer.inlineCallbacks
    def go():
        try:
            client = yield connect(reactor, f"wss://127.0.0.1:{port}/")
            stage1 = yield client.call("rpc", "auth_ssl", "")
            reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(
                private_key, stage1["args"]["test_string"])})
            out["token"] = reply["args"][0]
            client.close()
        except Exception as e:
            out["error"] = e
        reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "error" in out:
        raise out["error"]
    return out["token"]


def curl(args, cert: str, port: int):
    argv = ["curl", "-sS", "--fail-with-body", "--cacert", cert, "--resolve", f"localhost:{port}:127.0.0.1", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout[:300]}")
    return proc.stdout


def rest(path: str, args, token: str, cert: str, port: int):
    out = curl(["-X", "POST", "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
                "--data-binary", json.dumps(args), f"https://localhost:{port}{path}"], cert, port)
    return json.loads(out)["args"]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--floor":
        floor_main(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("the benchmark needs the curl binary")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sysadmd.admin.main import main as admin_main

    state = tempdir("xb")
    files = os.path.join(state, "files")
    os.makedirs(files)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = os.path.join(state, "bench.pub")
    with open(pub, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    if admin_main(["--state-dir", state, "import_ssl_file", "root", pub, "bench"]) != 0:
        raise SystemExit("could not register the benchmark key")
    size = opts.size_mib * MIB
    src = os.path.join(files, "payload.bin")
    block = os.urandom(MIB)
    with open(src, "wb") as f:
        for _ in range(opts.size_mib):
            f.write(block)
    daemon = Child(twistd_argv("sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state,
                               "--socket", "none"), "sysadmd")
    cert = os.path.join(state, "server.crt")
    floor = Child([sys.executable, "-m", "bench.transfer_bench", "--floor", cert, os.path.join(state, "server.key"),
                   files], "floor")
    try:
        token = key_login_token(daemon.port, key)
        results = {"download": [], "download floor": [], "upload": [], "upload floor": [], "upload job": [],
                   "upload cpu s/GiB": [], "upload floor cpu s/GiB": []}
        peak_growth = 0
        for run in range(opts.runs):
            # download
            job_id, url = rest("/core/download", ["filesystem.get", [src], "payload.bin"], token, cert, daemon.port)
            job = rest("/core/job_wait", [job_id, {"timeout": 300}], token, cert, daemon.port)
            assert job["state"] == "SUCCESS", job
            t, _ = timed(lambda: curl(["-o", "/dev/null", f"https://localhost:{daemon.port}{url}"], cert, daemon.port))
            results["download"].append(size / MIB / t)
            t, _ = timed(lambda: curl(["-o", "/dev/null", f"https://localhost:{floor.port}/payload.bin"], cert, floor.port))
            results["download floor"].append(size / MIB / t)
            # upload (the order alternates between runs: page-cache writeback from one upload
            # must not always land on the same server)
            target = os.path.join(files, f"uploaded-{run}.bin")
            data = json.dumps({"method": "filesystem.put", "params": [target, {"mode": 0o600}]})

            def ours():
                before = rss(daemon.proc.pid)
                peak = [before]
                sampling = threading.Event()

                def sample():
                    while not sampling.is_set():
                        peak[0] = max(peak[0], rss(daemon.proc.pid))
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample)
                sampler.start()
                cpu = daemon.cpu_seconds()
                try:
                    t, out = timed(lambda: curl(["-H", f"Authorization: Bearer {token}", "-F", f"data={data}",
                                                 "-F", f"file=@{src}", f"https://localhost:{daemon.port}/_upload"],
                                                cert, daemon.port))
                    cpu = daemon.cpu_seconds() - cpu
                    up_id = json.loads(out)["job_id"]
                    tj, job = timed(lambda: rest("/core/job_wait", [up_id, {"timeout": 300}], token, cert, daemon.port))
                finally:
                    sampling.set()
                    sampler.join()
                assert job["state"] == "SUCCESS", job
                os.unlink(target)
                results["upload"].append(size / MIB / t)
                results["upload cpu s/GiB"].append(cpu * 1024 / opts.size_mib)
                results["upload job"].append(size / MIB / tj)
                return peak[0] - before

            def floor_upload():
                cpu = floor.cpu_seconds()
                t, _ = timed(lambda: curl(["-F", "data={}", "-F", f"file=@{src}", f"https://localhost:{floor.port}/upload"],
                                          cert, floor.port))
                results["upload floor cpu s/GiB"].append((floor.cpu_seconds() - cpu) * 1024 / opts.size_mib)
                results["upload floor"].append(size / MIB / t)

            if run % 2:
                floor_upload()
                peak_growth = max(peak_growth, ours())
            else:
                peak_growth = max(peak_growth, ours())
                floor_upload()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"transfer benchmark: {opts.size_mib} MiB, {opts.runs} runs each, median MB/s (MiB/s)")
        print(f"  download  sysadmd {med['download']:8.1f}   floor {med['download floor']:8.1f}   "
              f"ratio {med['download'] / med['download floor']:.2f}  (target >= 0.8)")
        print(f"  upload    sysadmd {med['upload']:8.1f}   floor {med['upload floor']:8.1f}   "
              f"ratio {med['upload'] / med['upload floor']:.2f}  (target >= 0.8; body on disk when answered)")
        print(f"  upload server CPU s/GiB: sysadmd {med['upload cpu s/GiB']:.2f}   floor "
              f"{med['upload floor cpu s/GiB']:.2f}")
        print(f"  upload job (filesystem.put copy to the target, after the reply) {med['upload job']:8.1f}")
        print(f"  daemon RSS growth during a {opts.size_mib} MiB upload: {peak_growth / MIB:.1f} MiB (target < 50)")
        save_results("transfer_bench", {"size_mib": opts.size_mib, "runs": opts.runs, "mb_per_s": results,
                                        "median": med, "rss_growth_bytes": peak_growth})
    finally:
        daemon.stop()
        floor.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
