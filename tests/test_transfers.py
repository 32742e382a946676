"""core/download, GET /_download/<job> and POST /_upload end to end: an in-process daemon
on loopback, real HTTPS (treq and the curl binary), real SQLite, real files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

from twisted.internet import defer, reactor, task, threads
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.session import Identity
from sysadmd.transfers import web
from tests.support import FakePasswords, PinnedPolicy, RecordingChannel, http_client, make_config, open_client, server_cert, short_tempdir, \
    start_daemon

BASIC = "Basic " + base64.b64encode(b"root:pw").decode()


def multipart(fields, boundary=b"XyZzY-boundary"):
    body = b""
    for name, value, filename in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + value + b"\r\n"
    return body + b"--" + boundary + b"--\r\n", b"multipart/form-data; boundary=" + boundary


@implementer(IBodyProducer)
class _Chunked:
    """A body of unknown length: the client sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, data):
        self.data = data

    def startProducing(self, consumer):
        for i in range(0, len(self.data), 65536):
            consumer.write(self.data[i:i + 65536])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class TransferTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.dir = short_tempdir(self)
        cfg = make_config(os.path.join(self.dir, "state"), DOWNLOAD_TOKEN_TTL=60, UPLOAD_MAX_BYTES=4 * 1024 * 1024)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        self.client = yield open_client(self, self.running)
        auth = yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(auth["name"], "response", auth)
        self.http = http_client(self, self.running)
        self.base = f"https://127.0.0.1:{self.running.port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, contextFactory=PinnedPolicy(server_cert(self.running)), pool=pool)

    @defer.inlineCallbacks
    def download(self, method, params, filename="out.bin", client=None):
        reply = yield (client or self.client).call("core", "download", [method, params, filename])
        self.assertEqual(reply["name"], "response", reply)
        job_id, url = reply["args"]
        self.assertTrue(url.startswith(f"/_download/{job_id}?auth_token="), url)
        return job_id, url

    @defer.inlineCallbacks
    def get(self, url, headers=None):
        # A bare Agent: treq's gzip decoder rewrites Content-Length/Content-Encoding.
        response = yield self.agent.request(b"GET", (self.base + url).encode(), Headers(headers or {}))
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_filesystem_get_download_resume_with_range_and_sha_header(self):
        path = os.path.join(self.dir, "payload.bin")
        data = os.urandom(3 * 1024 * 1024 + 17)
        with open(path, "wb") as f:
            f.write(data)
        job_id, url = yield self.download("filesystem.get", [path], 'we"ird\nname.bin')
        response, body = yield self.get(url)  # waits for the job if it still runs
        self.assertEqual(response.code, 200, body[:300])
        self.assertEqual(body, data)
        h = response.headers
        self.assertEqual(response.length, len(data))  # from Content-Length (the client takes it out of headers)
        self.assertEqual(h.getRawHeaders(b"x-content-sha256"), [hashlib.sha256(data).hexdigest().encode()])
        self.assertEqual(h.getRawHeaders(b"content-type"), [b"application/octet-stream"])
        self.assertIn(b'filename="we_ird_name.bin"', h.getRawHeaders(b"content-disposition")[0])
        # Resume: the same token again, from byte 1,000,000.
        response, body = yield self.get(url, {b"Range": [b"bytes=1000000-"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[1000000:])
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [f"bytes 1000000-{len(data) - 1}/{len(data)}".encode()])
        response, body = yield self.get(url, {b"Range": [b"bytes=%d-" % (len(data) + 5)]})
        self.assertEqual(response.code, 416)
        job = (yield self.client.call("core", "get_jobs", [[["id", "=", job_id]]]))["args"][0]
        self.assertEqual((job["method"], job["state"], job["result"]["sha256"], job["result"]["size"]),
                         ("filesystem.get", "SUCCESS", hashlib.sha256(data).hexdigest(), len(data)))

    @defer.inlineCallbacks
    def test_wrong_job_other_user_and_expired_tokens_get_401(self):
        path = os.path.join(self.dir, "a.txt")
        with open(path, "wb") as f:
            f.write(b"hello\n")
        job_a, url_a = yield self.download("filesystem.get", [path])
        reply = yield self.client.call("core", "download", {"method": "job.log", "params": [job_a], "filename": "a.log"})
        job_b, url_b = reply["args"]  # the object form of the args
        for bad, words in (({"method": "nope", "params": []}, "'method' must be one of"),
                           (["job.log", "x"], "'params' must be a list"),
                           (["job.log", [999999]], "no job 999999"),
                           ({"method": "job.log", "params": [1], "extra": 1}, "unknown key 'extra'")):
            reply = yield self.client.call("core", "download", bad)
            self.assertIn(words, reply["args"]["detail"], reply)
        token_a = url_a.split("auth_token=")[1]
        response, _ = yield self.get(f"/_download/{job_b}?auth_token={token_a}")  # token of another job
        self.assertEqual(response.code, 401)
        response, _ = yield self.get(f"/_download/{job_a}?auth_token=not-a-token")
        self.assertEqual(response.code, 401)
        response, body = yield self.get(url_a)
        self.assertEqual((response.code, body), (200, b"hello\n"))
        # The right token presented by another user (their own Bearer login) is refused.
        other = self.server.tokens.issue(Identity("op", True, "password"))
        response, _ = yield self.get(url_a, {b"Authorization": [b"Bearer " + other.encode()]})
        self.assertEqual(response.code, 401)
        response, _ = yield self.get(url_a, {b"Authorization": [BASIC.encode()]})  # the owner: fine
        self.assertEqual(response.code, 200)
        # Expiry: DOWNLOAD_TOKEN_TTL (60 s) later the token is refused, and the spool goes.
        grants = self.running.daemon.transfers.tokens
        for grant in grants._grants.values():
            grant.expires -= 61
        response, _ = yield self.get(url_a)
        self.assertEqual(response.code, 401)
        dl = self.running.daemon.transfers.downloads[job_a]
        self.running.daemon.transfers.sweep()
        self.assertFalse(os.path.exists(dl.path))

    @defer.inlineCallbacks
    def test_filesystem_get_refuses_links_fifos_and_limited_users(self):
        link = os.path.join(self.dir, "link")
        os.symlink("/etc/hostname", link)
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        for path, words in ((link, "symbolic link"), (fifo, "not a regular file")):
            job_id, url = yield self.download("filesystem.get", [path])
            response, body = yield self.get(url)
            self.assertEqual(response.code, 409, body)
            self.assertIn(words, json.loads(body)["args"]["detail"])
            job = (yield self.client.call("core", "job_wait", [job_id, {"timeout": 10}]))["args"]
            self.assertEqual(job["state"], "FAILED")
            self.assertIn(words, job["error"])
        session = self.server.open_session("test", "limited-peer", RecordingChannel(),
                                           identity=Identity("op", False, "password"), timers=False)
        self.addCleanup(session.lost)
        for method, params in (("filesystem.get", ["/etc/hostname"]), ("config.save", [])):
            reply = yield self.server.api.handle(session, envelope.parse(json.dumps(
                {"namespace": "core", "name": "download", "id": "x", "args": [method, params, "h"]})))
            self.assertEqual(reply["args"]["code"], "403", reply)
            self.assertIn("full access", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_upload_with_the_real_curl_binary_as_the_seed_writes_it(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("no curl binary")
        src = os.path.join(self.dir, "src.bin")
        data = os.urandom(1024 * 1024 + 3)
        with open(src, "wb") as f:
            f.write(data)
        target = os.path.join(self.dir, "x")
        cert = os.path.join(self.running.config.state_dir, "server.crt")
        cmd = ["curl", "-sS", "--cacert", cert, "--resolve", f"localhost:{self.running.port}:127.0.0.1",
               "-F", 'data={"method":"filesystem.put","params":["%s",{"mode":493}]}' % target,
               "-F", f"file=@{src}", "-u", "root:pw", f"https://localhost:{self.running.port}/_upload"]
        out = yield threads.deferToThread(subprocess.run, cmd, capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        job_id = json.loads(out.stdout)["job_id"]
        job = (yield self.client.call("core", "job_wait", [job_id, {"timeout": 10}]))["args"]
        self.assertEqual((job["state"], job["method"], job["owner"]["user"]), ("SUCCESS", "filesystem.put", "root"), job)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.stat(target).st_mode & 0o7777, 493)
        self.assertEqual(os.listdir(self.running.daemon.transfers.spool_dir), [])
        # The seed's other form: -X POST, an explicit multipart Content-Type, /_upload/.
        cmd = ["curl", "-sS", "--cacert", cert, "--resolve", f"localhost:{self.running.port}:127.0.0.1",
               "-X", "POST", "-u", "root:pw", "-H", "Content-Type: multipart/form-data",
               "-F", 'data={"method": "filesystem.put", "params": ["%s", {"append": true}]}' % target,
               "-F", f"file=@{src}", f"https://localhost:{self.running.port}/_upload/"]
        out = yield threads.deferToThread(subprocess.run, cmd, capture_output=True, timeout=20)
        job_id = json.loads(out.stdout)["job_id"]
        job = (yield self.client.call("core", "job_wait", [job_id, {"timeout": 10}]))["args"]
        self.assertEqual(job["state"], "SUCCESS", job)
        self.assertEqual(os.path.getsize(target), 2 * len(data))

    @defer.inlineCallbacks
    def upload(self, fields, auth=BASIC, boundary=b"XyZzY-boundary"):
        body, ctype = multipart(fields, boundary)
        response = yield self.http.post(self.base + "/_upload", data=body,
                                        headers={b"Content-Type": [ctype], b"Authorization": [auth.encode()]})
        text = yield response.content()
        return response.code, json.loads(text)

    @defer.inlineCallbacks
    def test_upload_order_size_cap_auth_and_append(self):
        target = os.path.join(self.dir, "t.txt")
        put = json.dumps({"method": "filesystem.put", "params": [target]}).encode()
        code, body = yield self.upload([("file", b"abc", "f"), ("data", put, None)])
        self.assertEqual(code, 400)
        self.assertIn("field 'file' came before field 'data'", body["args"]["detail"])
        code, body = yield self.upload([("data", put, None), ("file", b"x" * (5 * 1024 * 1024), "f")])
        self.assertEqual(code, 413)
        self.assertIn("UPLOAD_MAX_BYTES", body["args"]["detail"])
        code, body = yield self.upload([("data", put, None), ("file", b"abc", "f")], auth="Basic " +
                                       base64.b64encode(b"root:wrong").decode())
        self.assertEqual(code, 401)
        code, body = yield self.upload([("data", put, None), ("file", b"abc", "f")], auth="Bearer nope")
        self.assertEqual(code, 401)
        self.assertFalse(os.path.exists(target))
        token = (yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"}))["args"][0]
        code, body = yield self.upload([("data", put, None), ("file", b"one\r\n--", "f")], auth="Bearer " + token)
        self.assertEqual(code, 200, body)
        yield self.client.call("core", "job_wait", [body["job_id"], {"timeout": 10}])
        append = json.dumps({"method": "filesystem.put", "params": [target, {"append": True}]}).encode()
        code, body = yield self.upload([("data", append, None), ("file", b"two", "f")])
        job = (yield self.client.call("core", "job_wait", [body["job_id"], {"timeout": 10}]))["args"]
        self.assertEqual(job["state"], "SUCCESS", job)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"one\r\n--two")
        self.assertEqual(os.listdir(self.running.daemon.transfers.spool_dir), [])
        self.assertEqual(self.running.daemon.transfers.uploads_receiving, 0)

    @defer.inlineCallbacks
    def test_failed_put_leaves_the_old_file_intact(self):
        target = os.path.join(self.dir, "keep.txt")
        with open(target, "wb") as f:
            f.write(b"old contents")
        # A body cut short (no closing boundary): nothing is written.
        body, ctype = multipart([("data", json.dumps({"method": "filesystem.put", "params": [target]}).encode(), None),
                                 ("file", b"new" * 1000, "f")])
        response = yield self.http.post(self.base + "/_upload", data=body[:-30],
                                        headers={b"Content-Type": [ctype], b"Authorization": [BASIC.encode()]})
        self.assertEqual(response.code, 400)
        self.assertIn("closing boundary", (yield response.json())["args"]["detail"])
        # A job that fails while writing (aborted mid-copy by a read-only directory swap is
        # racy; a target that became a directory is not): the old file stays whole.
        sub = os.path.join(self.dir, "sub")
        os.mkdir(sub)
        code, reply = yield self.upload([("data", json.dumps({"method": "filesystem.put", "params": [sub]}).encode(),
                                          None), ("file", b"zzz", "f")])
        job = (yield self.client.call("core", "job_wait", [reply["job_id"], {"timeout": 10}]))["args"]
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("not a regular file", job["error"])
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"old contents")
        self.assertEqual([n for n in os.listdir(self.dir) if "sysadmd-upload" in n], [])

    @defer.inlineCallbacks
    def test_config_save_then_config_upload_round_trip_applied_at_next_start(self):
        db = self.server.db
        job_id, url = yield self.download("config.save", [{}], "backup.tar")
        response, archive = yield self.get(url)
        self.assertEqual(response.code, 200, archive[:200])
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            names = tar.getnames()
        self.assertEqual(names[0], "MANIFEST.json")
        self.assertIn("db/sysadmd.sqlite", names)
        self.assertIn("keys/server.key", names)
        # Something changes after the backup; restoring brings the saved state back.
        jobs_before = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        code, reply = yield self.upload([("data", b'{"method":"config.upload","params":[]}', None),
                                         ("file", archive, "backup.tar")])
        self.assertEqual(code, 200, reply)
        job = (yield self.client.call("core", "job_wait", [reply["job_id"], {"timeout": 10}]))["args"]
        self.assertEqual(job["state"], "SUCCESS", job)
        self.assertIn("next start", job["result"]["applied"])
        state = self.running.config.state_dir
        self.assertTrue(os.path.isfile(os.path.join(state, "restore", "pending", "READY")))
        with open(os.path.join(state, "server.key"), "rb") as f:
            key_before = f.read()
        # The next start applies it, before the database is opened: a real restart.
        yield self.client.close()
        yield self.running.daemon.stopService()
        self.running.server.db.close()
        with open(os.path.join(state, "server.key"), "wb") as f:
            f.write(b"a key made after the backup")
        again = yield start_daemon(self, self.running.config, passwords=FakePasswords({"root": "pw"}))
        self.assertFalse(os.path.exists(os.path.join(state, "restore", "pending")))
        [kept] = [n for n in os.listdir(os.path.join(state, "restore")) if n.startswith("replaced-")]
        with open(os.path.join(state, "restore", kept, "keys__server.key"), "rb") as f:
            self.assertEqual(f.read(), b"a key made after the backup")
        with open(os.path.join(state, "server.key"), "rb") as f:
            self.assertEqual(f.read(), key_before)
        # The restored database is the one saved: the config.upload job that came later is
        # not in it; the config.save job (running when it was saved) ends "interrupted".
        rows = again.server.db.execute("SELECT method, outcome FROM jobs ORDER BY id").fetchall()
        self.assertEqual(len(rows), jobs_before)
        self.assertEqual([tuple(r) for r in rows][-1], ("config.save", "interrupted"))
        self.assertEqual(again.server.db.execute("PRAGMA integrity_check").fetchone()[0], "ok")

    @defer.inlineCallbacks
    def test_config_upload_refuses_foreign_members_and_bad_databases(self):
        def tar_of(members):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            return buf.getvalue()

        manifest = json.dumps({"format": "sysadmd-backup", "version": 1, "files": {}}).encode()
        cases = [
            (tar_of([("MANIFEST.json", manifest), ("../etc/passwd", b"x")]), "is not part of a config.save archive"),
            (tar_of([("MANIFEST.json", manifest), ("db/sysadmd.sqlite", b"garbage" * 100)]), "does not match MANIFEST"),
            (b"not a tar at all", "not a config.save archive"),
        ]
        for archive, words in cases:
            code, reply = yield self.upload([("data", b'{"method":"config.upload","params":[]}', None),
                                             ("file", archive, "b.tar")])
            job = (yield self.client.call("core", "job_wait", [reply["job_id"], {"timeout": 10}]))["args"]
            self.assertEqual(job["state"], "FAILED")
            self.assertIn(words, job["error"])
        self.assertFalse(os.path.exists(os.path.join(self.running.config.state_dir, "restore", "pending")))

    @defer.inlineCallbacks
    def test_job_log_download_of_a_dispatcher_job(self):
        reply = yield self.client.call("rpc", "dispatcher", {"action": "run", "lg": ["seq 1 20000"]})
        self.assertEqual(reply["args"]["started"], ["lg"], reply)
        [job] = (yield self.client.call("core", "get_jobs", [[["dispatcher_id", "=", "lg"]]]))["args"]
        yield self.client.call("core", "job_wait", [job["id"], {"timeout": 20}])
        _, url = yield self.download("job.log", [job["id"]], "lg.log")
        response, body = yield self.get(url)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, "".join(f"{i}\n" for i in range(1, 20001)).encode())


    @defer.inlineCallbacks
    def test_a_get_while_the_job_runs_waits_for_it_then_answers_425(self):
        self.patch(web, "DOWNLOAD_WAIT", 0.3)
        transfers = self.running.daemon.transfers
        session = self.server.open_session("test", "127.0.0.1", RecordingChannel(),
                                           identity=Identity("root", True, "password"), timers=False)
        self.addCleanup(session.lost)

        def pending():
            from sysadmd.jobs.model import Owner
            from sysadmd.transfers.service import Download
            job_id = self.running.daemon.transfers.table.create("job.log", [1], Owner.of(session))
            dl = Download(job_id, transfers.spool_path("dl"), "slow.bin")
            transfers.downloads[job_id] = dl
            return dl, f"/_download/{job_id}?auth_token={transfers.tokens.issue(job_id, 'root')}"

        dl, url = pending()
        response, body = yield self.get(url)
        self.assertEqual(response.code, 425, body)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        # Finishing while a GET waits answers that GET with the file.
        dl, url = pending()
        self.patch(web, "DOWNLOAD_WAIT", 10)
        got = self.get(url)
        with open(dl.path, "wb") as f:
            f.write(b"ready now")
        dl.size, dl.sha256 = 9, hashlib.sha256(b"ready now").hexdigest()
        reactor.callLater(0.2, transfers._download_done, {"size": 9}, dl)
        response, body = yield got
        self.assertEqual((response.code, body), (200, b"ready now"))

    @defer.inlineCallbacks
    def test_the_spool_cap_fails_downloads_and_refuses_uploads_naming_the_key(self):
        self.running.daemon.transfers.spool_max = 1024 * 1024
        path = os.path.join(self.dir, "big.bin")
        with open(path, "wb") as f:
            f.write(b"x" * (2 * 1024 * 1024))
        job_id, url = yield self.download("filesystem.get", [path])
        job = (yield self.client.call("core", "job_wait", [job_id, {"timeout": 10}]))["args"]
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("TRANSFER_SPOOL_MAX_BYTES", job["error"])
        response, _ = yield self.get(url)
        self.assertEqual(response.code, 409)
        put = json.dumps({"method": "filesystem.put", "params": [os.path.join(self.dir, "t")]}).encode()
        code, body = yield self.upload([("data", put, None), ("file", b"y" * (2 * 1024 * 1024), "f")])
        self.assertEqual(code, 507)
        self.assertIn("TRANSFER_SPOOL_MAX_BYTES", body["args"]["detail"])
        # Without a Content-Length (chunked), the spool cap is checked as the bytes come.
        mp, ctype = multipart([("data", put, None), ("file", b"y" * (2 * 1024 * 1024), "f")])
        response = yield self.agent.request(
            b"POST", (self.base + "/_upload").encode(),
            Headers({b"Content-Type": [ctype], b"Authorization": [BASIC.encode()]}), _Chunked(mp))
        reply = json.loads((yield readBody(response)))
        self.assertEqual(response.code, 507, reply)
        self.assertIn("TRANSFER_SPOOL_MAX_BYTES", reply["args"]["detail"])
        self.assertEqual(os.listdir(self.running.daemon.transfers.spool_dir), [])

    @defer.inlineCallbacks
    def test_the_login_is_checked_before_any_byte_of_the_body_is_spooled(self):
        transfers = self.running.daemon.transfers
        spooled = []
        real = transfers.spool_path
        self.patch(transfers, "spool_path", lambda prefix: spooled.append(prefix) or real(prefix))
        put = json.dumps({"method": "filesystem.put", "params": [os.path.join(self.dir, "never")]}).encode()
        big = b"z" * (3 * 1024 * 1024)
        code, body = yield self.upload([("data", put, None), ("file", big, "f")],
                                       auth="Basic " + base64.b64encode(b"root:wrong").decode())
        self.assertEqual(code, 401, body)
        limited = self.server.tokens.issue(Identity("op", False, "password"))
        code, body = yield self.upload([("data", put, None), ("file", big, "f")], auth="Bearer " + limited)
        self.assertEqual(code, 403, body)
        self.assertIn("full access", body["args"]["detail"])
        code, body = yield self.upload([("data", put, None), ("file", big, "f")], auth="Digest x")
        self.assertEqual(code, 401, body)
        self.assertEqual(spooled, [])  # no upload file was ever opened
        self.assertEqual(transfers.uploads_receiving, 0)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "never")))

    @defer.inlineCallbacks
    def test_head_single_ranges_and_multi_range_requests(self):
        path = os.path.join(self.dir, "r.bin")
        data = bytes(range(256)) * 40
        with open(path, "wb") as f:
            f.write(data)
        _, url = yield self.download("filesystem.get", [path], "r.bin")
        response = yield self.agent.request(b"HEAD", (self.base + url).encode(), Headers({}))
        yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"x-content-sha256"), [hashlib.sha256(data).hexdigest().encode()])
        response, body = yield self.get(url, {b"Range": [b"bytes=0-9"]})
        self.assertEqual((response.code, body), (206, data[:10]))
        response, body = yield self.get(url, {b"Range": [b"bytes=-16"]})
        self.assertEqual((response.code, body), (206, data[-16:]))
        response, body = yield self.get(url, {b"Range": [b"bytes=0-1,5-6"]})  # several ranges: the whole file
        self.assertEqual((response.code, body), (200, data))
        # A link followed from another site's page works (the token is the only credential)...
        response, body = yield self.get(url, {b"Sec-Fetch-Site": [b"cross-site"], b"Range": [b"bytes=0-1"]})
        self.assertEqual((response.code, body), (206, data[:2]))
        # ... but an upload from another site's page is refused like any REST call.
        mp, ctype = multipart([("data", b'{"method":"filesystem.put","params":["/tmp/never"]}', None), ("file", b"x", "f")])
        response = yield self.http.post(self.base + "/_upload", data=mp, headers={
            b"Content-Type": [ctype], b"Authorization": [BASIC.encode()], b"Origin": [b"https://evil.example"]})
        self.assertEqual(response.code, 403)
        self.assertIn("evil.example", (yield response.json())["args"]["detail"])
        response, body = yield self.get(url.replace("/_download/", "/_download/x"))
        self.assertEqual(response.code, 401)
        response = yield self.agent.request(b"POST", (self.base + url).encode(), Headers({}))
        yield readBody(response)
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_core_job_abort_stops_a_download_job_and_drops_its_spool(self):
        path = os.path.join(self.dir, "sparse.bin")
        with open(path, "wb") as f:
            f.truncate(64 * 1024 ** 3)  # 64 GiB of holes: the copy runs long enough to abort
        self.running.daemon.transfers.spool_max = 128 * 1024 ** 3
        job_id, url = yield self.download("filesystem.get", [path])
        reply = yield self.client.call("core", "job_abort", [job_id])
        self.assertEqual(reply["args"], {"id": job_id, "aborted": "aborted"}, reply)
        job = (yield self.client.call("core", "job_wait", [job_id, {"timeout": 20}]))["args"]
        self.assertEqual((job["state"], job["outcome"]), ("ABORTED", "killed"), job)
        self.assertEqual(os.listdir(self.running.daemon.transfers.spool_dir), [])
        response, _ = yield self.get(url)
        self.assertEqual(response.code, 409)

    @defer.inlineCallbacks
    def test_a_daemon_stop_ends_running_transfer_threads_promptly(self):
        path = os.path.join(self.dir, "sparse.bin")
        with open(path, "wb") as f:
            f.truncate(64 * 1024 ** 3)
        transfers = self.running.daemon.transfers
        transfers.spool_max = 128 * 1024 ** 3
        job_id, _ = yield self.download("filesystem.get", [path])
        yield self.client.close()
        yield self.running.daemon.stopService()
        dl = transfers.downloads[job_id]
        for _ in range(100):
            if dl.done:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(dl.done)
        row = transfers.table.row(job_id)
        self.assertEqual((row["state"], row["outcome"]), ("ABORTED", "interrupted"))
