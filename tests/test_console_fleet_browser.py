"""The console's fleet view in a real headless Chromium (issue 14 item 6): the user's key file
imported with WebCrypto (never sent: the page's network log, requests and WebSocket frames,
never holds its base64), the bridge login with the digest scheme, a real bridge with two real
agents online, `echo hello` run on both with commands sealed and signed in the page and the
results (encrypted under keys derived from the page's content keys) opened there; one agent's
dashboard over an end-to-end session whose hello goes only to that agent's relay connection; the key remembered in IndexedDB only when asked;
and a cross-check of the page's constructions against Python's (sysadmd/wire/seal.py,
fleetsig.py).  Screenshots go to tests/artifacts/console/."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import defer

from sysadmd.runtime import crypto
from sysadmd.wire import fleetsig, seal
from tests import keys_support as ks
from tests.browser_support import BrowserCase, button, field_for, sign_in
from tests.fleet_processes import FleetCluster
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

pytestmark = pytest.mark.slow

# Runs in the page: imports the console's own module and hands its exports to the step.
IN_PAGE = """
const done = arguments[arguments.length - 1];
const input = arguments[0];
import("/console/fleetcrypto.js").then(async (m) => {
  try { done(await (STEP)); } catch (err) { done({ error: String(err && err.message || err) }); }
}, (err) => done({ error: "import: " + err }));
"""


def in_page(driver, step: str, arg):
    driver.set_script_timeout(30)
    return driver.execute_async_script(IN_PAGE.replace("STEP", step), arg)


def key_lines(pem: bytes):
    """The base64 lines of a PEM file (the text that must never leave the browser)."""
    return [line for line in pem.decode("ascii").splitlines() if line and not line.startswith("-----")]


class FleetConsole(BrowserCase):
    timeout = 120

    @defer.inlineCallbacks
    def console(self, **overrides):
        cfg = make_config(short_tempdir(self), **overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"

    def until(self, driver, predicate, timeout, what):
        """wait_for, and on a timeout the page's status lines and console say why."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By

        try:
            return self.wait_for(driver, predicate, timeout=timeout, what=what)
        except TimeoutException:
            self.screenshot(driver, "fleet-failed")
            status = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#fleet-status, #fleet-summary, #fleet-results")]
            self.fail(f"no {what} within {timeout} s; the page says {status}; console {driver.get_log('browser')}")

    def click(self, driver, name):
        """Click button *name*; the agents table is rebuilt when fleet events arrive, so a
        button found a moment before may be gone: find it again."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked(d):
            try:
                button(d, name).click()
                return True
            except StaleElementReferenceException:
                return False
        self.wait_for(driver, clicked, what=f"a click on {name!r}")

    def open_fleet(self, driver):
        from selenium.webdriver.common.by import By

        sign_in(driver, self.url, "root", "pw")
        self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Fleet"), what="the Fleet link")
        driver.find_element(By.LINK_TEXT, "Fleet").click()
        field_for(driver, "Bridge URL")

    @defer.inlineCallbacks
    def test_run_on_two_agents_through_a_real_bridge_with_a_key_that_never_leaves(self):
        from selenium.webdriver.common.by import By

        cluster = FleetCluster(self, agents=2)
        yield cluster.setup(clients=("fleet-admin",))
        yield cluster.wait_online(cluster.agents)
        yield self.console(CONSOLE_CONNECT_SRC=f"wss://127.0.0.1:{cluster.port}")
        key_path = cluster.key_file("fleet-admin")
        with open(key_path, "rb") as f:
            secret_lines = key_lines(f.read())
        names = sorted(a.name for a in cluster.agents)
        driver = yield self.open_browser(network_log=True)

        def steps(driver):
            self.open_fleet(driver)
            field_for(driver, "Bridge URL").send_keys(f"wss://127.0.0.1:{cluster.port}")
            field_for(driver, "Key file").send_keys(key_path)
            self.wait_for(driver, lambda d: d.find_element(By.ID, "fleet-key").text.startswith("Key "), what="the key imported")
            self.assertIn(crypto.md5_checksum(ks.pem_of("fleet-admin")), driver.find_element(By.ID, "fleet-key").text)
            button(driver, "Connect").click()
            self.until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fleet-agents tr[data-online='yes']")) == 2,
                       20, "both agents online")
            rows = driver.find_elements(By.CSS_SELECTOR, "#fleet-agents tbody tr")
            self.assertEqual(sorted(r.find_elements(By.TAG_NAME, "td")[1].text for r in rows), names)
            self.assertEqual({r.get_attribute("data-agent") for r in rows}, {a.id for a in cluster.agents})
            self.screenshot(driver, "fleet-agents")
            self.click(driver, "All online")
            field_for(driver, "Command").send_keys("echo hello")
            button(driver, "Run on selected").click()
            self.until(driver, lambda d: d.find_element(By.ID, "fleet-summary").text.endswith("succeeded."),
                       60, "the run's summary")
            self.assertEqual(driver.find_element(By.ID, "fleet-summary").text, "2 of 2 succeeded.")
            results = driver.find_elements(By.CSS_SELECTOR, "#fleet-results li")
            self.assertEqual(len(results), 2)
            titles = sorted(r.find_element(By.TAG_NAME, "h3").text for r in results)
            self.assertEqual(titles, [f"{n}: COMPLETE succeeded" for n in names])
            self.assertEqual([r.find_element(By.TAG_NAME, "pre").text for r in results], ["hello", "hello"])
            self.screenshot(driver, "fleet-run")
            # agent1's own dashboard, through the bridge, end to end encrypted, logged in by the handshake.
            self.click(driver, "Open dashboard of agent1")
            self.until(driver, lambda d: d.find_elements(By.ID, "dash-hostname")
                       and d.find_element(By.ID, "dash-hostname").text == socket.gethostname(), 30, "agent1's dashboard")
            view = driver.find_element(By.CSS_SELECTOR, "#fleet-agent-view section")
            self.assertEqual(view.get_attribute("data-agent"), cluster.agents[0].id)
            self.assertIn(f"checked against its id {cluster.agents[0].id[:12]}, bound to its bridge connection",
                          driver.find_element(By.ID, "fleet-status").text)
            self.until(driver, lambda d: int(d.find_element(By.CSS_SELECTOR, "#fleet-agent-view canvas").get_attribute(
                "data-samples") or 0) >= 1, 20, "a system-state reading from agent1")
            self.screenshot(driver, "fleet-agent-dashboard")
            button(driver, "Close dashboard").click()
            self.wait_for(driver, lambda d: not d.find_elements(By.ID, "dash-hostname"), what="the dashboard closed")
            self.assertEqual(self.browser_errors(driver), [])
            return [entry["message"] for entry in driver.get_log("performance")]

        log = yield self.b(steps, driver)
        frames = [m for m in log if "Network.webSocketFrameSent" in m]
        self.assertTrue(any("pkcs1-sha256" in m for m in frames), "the bridge login is not in the network log")
        self.assertTrue(any("sealed1:" in m and '\\"execute\\"' in m for m in frames), "no sealed fleet/execute sent")
        received = [m for m in log if "Network.webSocketFrameReceived" in m]
        self.assertEqual(sum("keyed1:" in m for m in received), 2, "two keyed results expected")
        # The session's frames: one plain hello, to agent1's relay connection as fleet/agents
        # listed it (no other server is asked), then only "!" frames.
        relayed = [json.loads(m)["message"]["params"]["response"]["payloadData"] for m in frames]
        relayed = [p for p in relayed if not p.startswith("{")]
        hellos = [p for p in relayed if '"step":"hello"' in p]
        self.assertEqual(len(hellos), 1, hellos)
        listed = set()
        for m in log:
            if "Network.webSocketFrameReceived" in m:
                data = json.loads(m)["message"]["params"]["response"]["payloadData"]
                if data.startswith("{") and '"agents"' in data:
                    args = json.loads(data).get("args")
                    for row in (args.get("agents") or []) if isinstance(args, dict) else []:
                        if row.get("id") == cluster.agents[0].id and row.get("connection"):
                            listed.add(row["connection"])
        self.assertIn(hellos[0].split("\n", 1)[0], listed)
        encrypted = [p for p in relayed if p.split("\n", 1)[1].startswith("!")]
        self.assertGreaterEqual(len(encrypted), 3)  # finish, query, identify, systeminfo, subscribe
        self.assertEqual([p for p in relayed if '"step":"hello"' not in p and p not in encrypted], [])
        everything = "\n".join(log)
        self.assertNotIn("echo hello", "\n".join(frames))  # the command went out sealed only
        for line in secret_lines:
            self.assertNotIn(line, everything)

    @defer.inlineCallbacks
    def test_the_key_is_remembered_only_when_asked_and_never_extractable(self):
        from selenium.webdriver.common.by import By

        yield self.console()
        base = short_tempdir(self)
        pkcs8 = ks.private_key("fleet-admin").private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption())
        path = f"{base}/user.pem"
        with open(path, "wb") as f:
            f.write(pkcs8)
        checksum = crypto.md5_checksum(ks.pem_of("fleet-admin"))
        driver = yield self.open_browser()

        def note(d):
            return d.find_element(By.ID, "fleet-key").text

        def steps(driver):
            self.open_fleet(driver)
            field_for(driver, "Key file").send_keys(path)  # not remembered
            self.wait_for(driver, lambda d: note(d) == f"Key {checksum} (this page only).", what="the key in memory")
            driver.refresh()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "fleet-key") and note(d) == "No key imported.",
                          what="no key after a reload")
            driver.find_element(By.XPATH, "//label[text()='Remember on this browser']").click()
            field_for(driver, "Key file").send_keys(path)
            self.wait_for(driver, lambda d: note(d).endswith("(remembered on this browser)."), what="the key remembered")
            driver.refresh()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "fleet-key")
                          and note(d) == f"Key {checksum} (remembered on this browser).", what="the key after a reload")
            stored = in_page(driver, """new Promise((resolve) => {
                const open = indexedDB.open("sysadmd-fleet", 1);
                open.onsuccess = () => {
                  const get = open.result.transaction("keys").objectStore("keys").get("user");
                  get.onsuccess = () => { const k = get.result; open.result.close();
                    resolve({ sign: k.sign.extractable, usages: k.sign.usages, type: k.sign.type,
                              fields: Object.keys(k).sort() }); };
                };
              })""", None)
            self.assertEqual(stored, {"sign": False, "usages": ["sign"], "type": "private",
                                      "fields": ["checksum", "publicPem", "sign", "spki"]})
            self.screenshot(driver, "fleet-key")
            # Phone width: everything reachable without a page-wide horizontal scroll.
            driver.set_window_size(390, 844)
            self.wait_for(driver, lambda d: d.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1"), what="no sideways scroll at 390 px")
            self.screenshot(driver, "fleet-phone")
            driver.set_window_size(1280, 800)
            button(driver, "Forget key").click()
            self.wait_for(driver, lambda d: note(d) == "Key forgotten.", what="the key forgotten")
            driver.refresh()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "fleet-key") and note(d) == "No key imported.",
                          what="no key after forgetting it")
            # A public key, an encrypted key and junk are refused, saying why.
            with open(f"{base}/pub.pem", "w") as f:
                f.write(ks.pem_of("fleet-admin"))
            field_for(driver, "Key file").send_keys(f"{base}/pub.pem")
            self.wait_for(driver, lambda d: "BEGIN PRIVATE KEY" in d.find_element(By.ID, "fleet-status").text,
                          what="a public key refused")
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, driver)

    @defer.inlineCallbacks
    def test_page_constructions_match_python(self):
        yield self.console()
        user = ks.private_key("fleet-admin")
        agent = ks.private_key("agent-x")
        agent_spki = seal.spki_b64(agent)
        agent_id = hashlib.sha256(base64.b64decode(agent_spki)).hexdigest()
        command_id = uuid.uuid4().hex
        marker = "marker-" + uuid.uuid4().hex + " \u00e9\u4e2d"
        driver = yield self.open_browser()
        yield self.b(driver.get, self.url)

        # 1. The page seals a payload under a content key it keeps, and signs it.
        sent = yield self.b(in_page, driver, """(async () => {
            const key = await m.importUserKey(input.pkcs1);
            const key8 = await m.importUserKey(input.pkcs8);
            const agent = await m.agentKey(input.spki, input.agentId);
            let wrongAgent = null;
            try { await m.agentKey(input.spki, "0".repeat(64)); } catch (err) { wrongAgent = err.message; }
            const contentKey = m.newContentKey();
            const payload = await m.seal(agent.encrypt, input.marker, m.fleetContext("command", input.id, input.agentId),
                                         contentKey);
            window.fleetTest = { contentKey };
            return { checksum: key.checksum, checksum8: key8.checksum, pem: key.publicPem, extractable: key.sign.extractable,
                     payload, wrongAgent, resultKey: m.toBase64(await m.resultKey(contentKey)),
                     signature: await m.signCommand(key.sign, input.id, input.agentId, payload),
                     login: await m.bridgeLoginSignature(key.sign, "challenge123") };
          })()""", {
            "pkcs1": crypto.private_pem(user).decode(), "agentId": agent_id, "id": command_id, "marker": marker,
            "pkcs8": user.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode(),
            "spki": agent_spki})
        self.assertNotIn("error", sent, sent)
        self.assertEqual(sent["pem"], crypto.public_pem(user))
        self.assertEqual(sent["checksum"], crypto.md5_checksum(crypto.public_pem(user)))
        self.assertEqual(sent["checksum8"], sent["checksum"])
        self.assertFalse(sent["extractable"])
        self.assertIn("not the key its id names", sent["wrongAgent"])
        # Opened by Python's agent side with the agent's key and the same context only.
        context = seal.fleet_context("command", command_id, agent_id)
        plain, content_key = seal.open_sealed_key(agent, sent["payload"], context)
        self.assertEqual(plain, marker.encode("utf-8"))
        self.assertEqual(seal.open_sealed(agent, sent["payload"], context), plain)
        with self.assertRaises(seal.SealError):
            seal.open_sealed(agent, sent["payload"], seal.fleet_context("event", command_id, agent_id))
        self.assertEqual(base64.b64decode(sent["resultKey"]), seal.result_key(content_key))
        self.assertTrue(fleetsig.verify_command(user.public_key(), sent["signature"], command_id, agent_id,
                                                sent["payload"]))
        user.public_key().verify(base64.b64decode(sent["login"]), b"sysadm-bridge-login/1\nchallenge123",
                                 padding.PKCS1v15(), hashes.SHA256())

        # 2. The agent's result, keyed by Python under that content key, opens in the page; one
        # under another key, or for another command, does not.
        result_text = json.dumps({"ok": True, "outcome": "succeeded", "reply": {"cmd_list": ["echo"], "echo": "hi\n"}})
        result_context = seal.fleet_context("result", command_id, agent_id)
        keyed = seal.seal_keyed(seal.result_key(content_key), result_text.encode("utf-8"), result_context)
        forged = seal.seal_keyed(seal.result_key(os.urandom(32)), result_text.encode("utf-8"), result_context)
        out = yield self.b(in_page, driver, """(async () => {
            const k = window.fleetTest.contentKey;
            const tryOpen = async (...args) => { try { await m.openResult(...args); return null; } catch (err) { return err.message; } };
            return { opened: await m.openResult(k, input.id, input.agentId, input.keyed),
                     forged: await tryOpen(k, input.id, input.agentId, input.forged),
                     moved: await tryOpen(k, "f".repeat(32), input.agentId, input.keyed),
                     sealedForm: await tryOpen(k, input.id, input.agentId, input.payload) };
          })()""", {"id": command_id, "agentId": agent_id, "keyed": keyed, "forged": forged, "payload": sent["payload"]})
        self.assertNotIn("error", out, out)
        self.assertEqual(out["opened"], result_text)
        self.assertIn("does not open with this command's key", out["forged"])
        self.assertIn("does not open with this command's key", out["moved"])
        self.assertIn("not a keyed result", out["sealedForm"])
        self.assertEqual(self.browser_errors(driver), [])

    @defer.inlineCallbacks
    def test_page_session_handshake_matches_python(self):
        from sysadmd.wire import e2e

        yield self.console()
        user = ks.private_key("fleet-admin")
        agent = ks.private_key("agent-x")
        agent_id = e2e.agent_id_of(agent.public_key())
        driver = yield self.open_browser()
        yield self.b(driver.get, self.url)

        hello = yield self.b(in_page, driver, """(async () => {
            const s = await import("/console/fleetsession.js");
            const key = await m.importUserKey(input);
            const names = ["hs", "forged", "tag", "elsewhere", "stranger"];
            window.fleetTest = { s, key };
            for (const name of names) window.fleetTest[name] = await s.ClientHandshake.create(key);
            return names.map((name) => window.fleetTest[name].hello());
          })()""", crypto.private_pem(user).decode())
        self.assertEqual(hello[0]["key"], crypto.md5_checksum(crypto.public_pem(user)))
        here, there = "::{" + str(uuid.uuid4()) + "}", "::{" + str(uuid.uuid4()) + "}"
        server = e2e.ServerHandshake(agent)
        channel, reply = server.accept(hello[0], connection_id=here)
        # An accept signed by another key than the one it carries is refused in the page.
        _, forged = e2e.ServerHandshake(agent).accept(hello[1], connection_id=here)
        forged["sig"] = e2e.ServerHandshake(ks.private_key("stranger")).accept(hello[1])[1]["sig"]
        # A connection ID changed on the way (its tag no longer matches).
        _, tagged = e2e.ServerHandshake(agent).accept(hello[2], connection_id=here)
        tagged["server_connection_id"] = there
        # A genuine accept of the agent, bound to another connection than the one asked.
        _, elsewhere = e2e.ServerHandshake(agent).accept(hello[3], connection_id=there)
        # A genuine accept of another server (not the agent chosen).
        _, stranger = e2e.ServerHandshake(ks.private_key("stranger")).accept(hello[4], connection_id=here)
        out = yield self.b(in_page, driver, """(async () => {
            const t = window.fleetTest;
            const expect = { serverId: input.agentId, connectionId: input.here };
            const accepted = await t.hs.accept(input.reply, expect);
            t.cipher = accepted.cipher;
            const refused = {};
            for (const name of ["forged", "tag", "elsewhere", "stranger"]) {
              try { await t[name].accept(input[name], expect); refused[name] = "accepted"; } catch (err) { refused[name] = err.message; }
            }
            return { serverId: accepted.serverId, bound: accepted.serverConnectionId, finish: accepted.finish, refused,
                     frames: [accepted.cipher.seal('{"n":1}'), accepted.cipher.seal('{"n":2}')] };
          })()""", {"reply": reply, "forged": forged, "tag": tagged, "elsewhere": elsewhere, "stranger": stranger,
                     "agentId": agent_id, "here": here})
        self.assertNotIn("error", out, out)
        self.assertEqual(out["serverId"], agent_id)
        self.assertEqual(out["bound"], here)
        self.assertIn("signature does not match", out["refused"]["forged"])
        self.assertIn("connection_tag: does not match", out["refused"]["tag"])
        self.assertIn(f"comes from bridge connection {there}", out["refused"]["elsewhere"])
        self.assertIn("not the agent's", out["refused"]["stranger"])
        server.finish(user.public_key(), out["finish"])  # raises if the page's signature is wrong
        self.assertEqual([channel.open(f) for f in out["frames"]], [b'{"n":1}', b'{"n":2}'])
        answers = [channel.seal(b'{"pong":1}'), channel.seal(b'{"pong":2}')]
        opened = yield self.b(in_page, driver, """(async () => {
            const c = window.fleetTest.cipher;
            const out = [c.open(input[0])];
            try { c.open(input[0]); out.push("replayed frame opened"); } catch (err) { out.push(err.message); }
            out.push(c.open(input[1]));
            return out;
          })()""", answers)
        self.assertEqual(opened[0], '{"pong":1}')
        self.assertIn("does not open", opened[1])
        self.assertEqual(opened[2], '{"pong":2}')
        self.assertEqual(self.browser_errors(driver), [])
