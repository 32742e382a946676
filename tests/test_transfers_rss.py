"""A large upload to a real ``twistd -n sysadmd`` process never sits in its memory:
512 MiB streamed from a generator to POST /_upload grows the daemon's RSS (read from
/proc/<pid>/status while the upload runs) by less than 50 MiB."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer
from twisted.web.iweb import IBodyProducer

from sysadmd.admin.main import main as admin_main
from sysadmd.client.wsclient import connect
from tests.keys_support import key_login, pem_of
from tests.support import PinnedPolicy, short_tempdir
from tests.test_twistd import LISTENING, ROOT, TWISTD, DaemonProcess, child_env

pytestmark = pytest.mark.slow

UPLOAD = 512 * 1024 * 1024
BLOCK = 256 * 1024
RSS_LIMIT = 50 * 1024 * 1024


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@implementer(IBodyProducer)
class GeneratedBody:
    """A multipart body made on the fly: data, then UPLOAD bytes of file, written only as
    fast as the connection takes them (never built in memory)."""

    def __init__(self, data: bytes, boundary: bytes, size: int):
        self.head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="data"\r\n\r\n' + data + b"\r\n--"
                     + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n'
                     b"Content-Type: application/octet-stream\r\n\r\n")
        self.tail = b"\r\n--" + boundary + b"--\r\n"
        self.size = size
        self.length = len(self.head) + size + len(self.tail)
        self.block = bytes(range(256)) * (BLOCK // 256)

    def startProducing(self, consumer):
        def blocks():
            consumer.write(self.head)
            yield
            left = self.size
            while left:
                n = min(left, BLOCK)
                consumer.write(self.block[:n])
                left -= n
                yield
            consumer.write(self.tail)

        self._task = task.cooperate(blocks())
        return self._task.whenDone().addCallback(lambda _: None)

    def pauseProducing(self):
        self._task.pause()

    def resumeProducing(self):
        self._task.resume()

    def stopProducing(self):
        self._task.stop()


class UploadRssTests(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_half_a_gigabyte_upload_keeps_the_daemon_rss_flat(self):
        state = short_tempdir(self, "rs")
        conf = os.path.join(state, "sysadmd.conf")
        with open(conf, "w") as f:
            f.write("# defaults\n")
        pub = os.path.join(state, "alice.pub")
        with open(pub, "w") as f:
            f.write(pem_of("alice"))
        self.assertEqual(admin_main(["--state-dir", state, "import_ssl_file", "root", pub, "alice"],
                                    out=io.StringIO(), err=io.StringIO()), 0)
        proto = DaemonProcess()
        args = TWISTD + ["sysadmd", "--config", conf, "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state]
        transport = reactor.spawnProcess(proto, sys.executable, args, env=child_env(), path=ROOT)
        proto.transport = transport

        def stop():
            if not proto.ended.called:
                transport.signalProcess("KILL")
                return proto.ended

        self.addCleanup(stop)
        port = int((yield proto.wait_for(LISTENING)).group(1))
        client = yield connect(reactor, f"wss://127.0.0.1:{port}/")
        self.addCleanup(client.close)
        login = yield key_login(client, "alice")
        token = login["args"][0]
        pid = transport.pid
        target = os.path.join(state, "big.bin")
        data = json.dumps({"method": "filesystem.put", "params": [target, {"mode": 0o600}]}).encode()
        body = GeneratedBody(data, b"rss-boundary-1234", UPLOAD)
        with open(os.path.join(state, "server.crt"), "rb") as f:
            cert = f.read()
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=PinnedPolicy(cert), pool=pool)
        before = rss_of(pid)
        peak = [before]
        sampler = task.LoopingCall(lambda: peak.__setitem__(0, max(peak[0], rss_of(pid))))
        sampler.start(0.1)
        try:
            response = yield agent.request(
                b"POST", f"https://127.0.0.1:{port}/_upload".encode(),
                Headers({b"Authorization": [b"Bearer " + token.encode()],
                         b"Content-Type": [b"multipart/form-data; boundary=rss-boundary-1234"]}), body)
            reply = json.loads((yield readBody(response)))
            self.assertEqual(response.code, 200, reply)
            done = yield client.call("core", "job_wait", [reply["job_id"], {"timeout": 120}])
        finally:
            sampler.stop()
        self.assertEqual(done["args"]["state"], "SUCCESS", done)
        self.assertEqual(os.path.getsize(target), UPLOAD)
        growth = peak[0] - before
        print(f"\ndaemon RSS before {before / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB "
              f"(+{growth / 2**20:.1f} MiB) for a {UPLOAD >> 20} MiB upload")
        self.assertLess(growth, RSS_LIMIT)
        self.assertNotEqual(body.length, UNKNOWN_LENGTH)
