"""Issue 8 item 13: error messages that name the real cause.

(a) a right password for a user without rights says so (after the password was checked,
never before); the log says why each login failed.  (b) a client pointed with --url at a
bridge is told it is a bridge.  (c) every admin verb a hint names exists.  (d) private keys
are refused where a public key is expected, and never stored.
"""

import pytest
import base64
import os
import re

from twisted.trial import unittest

from sysadmd.runtime import crypto
from tests.test_sec_login import HeldPasswords, ServerUnit, auth_text, replies


def hostinfo(server):
    server.logs.flush()
    return [e for _, _, e in server.logs.read(["hostinfo"], 0, 2e6)]


class LoginFailureReasons(ServerUnit):
    def setUp(self):
        self.passwords = HeldPasswords({"alice": "right", "bob": "right"})
        self.server = self.make_server(self.passwords, BLACKLIST_AUTH_FAIL_LIMIT=10,
                                       FULL_ACCESS_GROUPS="wheel", LIMITED_ACCESS_GROUPS="operator")
        groups = {"alice": True}  # bob: a real account in no access group
        self.looked_up = []

        def for_user(user):
            self.looked_up.append(user)
            return groups.get(user)
        self.server.rights.for_user = for_user

    def login(self, user, password, peer="203.0.113.7"):
        session, channel = self.session(self.server, peer=peer)
        self.server.api.handle_text(session, auth_text(user, password))
        self.passwords.release(self.passwords.calls - 1)
        self.clock.advance(0)
        [reply] = replies(channel)
        return reply

    def test_right_password_without_rights_names_the_groups(self):
        reply = self.login("bob", "right")
        self.assertEqual(reply["args"]["code"], "401")  # upstream's code, kept
        detail = reply["args"]["detail"]
        self.assertIn("user bob has no access rights on this host", detail)
        self.assertIn("FULL_ACCESS_GROUPS (wheel)", detail)
        self.assertIn("LIMITED_ACCESS_GROUPS (operator)", detail)
        self.assertTrue(any("User Login Attempt: bob" in e and "Reason: no access rights" in e for e in hostinfo(self.server)))

    def test_wrong_password_reveals_nothing_about_groups(self):
        for user in ("bob", "alice", "nobody-at-all"):
            reply = self.login(user, "wrong")
            self.assertEqual(reply["args"]["code"], "401")
            self.assertEqual(reply["args"]["detail"], "user name or password not accepted")
            self.assertNotIn("access", reply["args"]["detail"])
        entries = [e for e in hostinfo(self.server) if "Success: false" in e]
        self.assertEqual(len(entries), 3)
        self.assertTrue(all("Reason: wrong user name or password" in e for e in entries))

    def test_implausible_and_blocked_logins_are_logged_with_their_reason(self):
        session, channel = self.session(self.server)
        self.server.api.handle_text(session, auth_text("evil\nname", "x"))
        self.assertEqual(self.passwords.calls, 0)
        entries = hostinfo(self.server)
        implausible = [e for e in entries if "Reason: implausible credentials" in e]
        self.assertEqual(len(implausible), 1)
        self.assertIn("evil\\nname", implausible[0])  # passed through untrusted.shown
        self.assertNotIn("evil\nname", implausible[0])
        # Block the address, then try once more: the refusal says "blocked".
        for _ in range(10):
            self.login("alice", "wrong", peer="198.51.100.5")
        session, channel = self.session(self.server, peer="198.51.100.5")
        self.server.api.handle_text(session, auth_text("alice", "right"))
        self.assertIn("blocked", replies(channel)[-1]["args"]["detail"])
        self.assertTrue(any("IP: 198.51.100.5" in e and "Reason: blocked" in e for e in hostinfo(self.server)))

    def test_right_password_with_rights_still_logs_in(self):
        reply = self.login("alice", "right")
        self.assertEqual(reply["name"], "response")


# --- (c) hints name verbs that exist --------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MENTION = re.compile(r"\b(sysadm-bridge|sysadmd|sysadm) ([a-z][a-z0-9_-]*)")
# Words that follow a program name in prose ("the sysadmd configuration"), not verbs.
PROSE = {"as", "and", "configuration", "command", "wss", "rest", "state", "server", "servers", "client",
         "clients", "bridge", "reads", "service"}


def _message_strings():
    """(file, line, text) of every string literal in sysadmd/ and bridge/ but docstrings."""
    import ast

    for package in ("sysadmd", "bridge"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                docs = set()
                for node in ast.walk(tree):
                    body = getattr(node, "body", None)
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                            and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                        docs.add(id(body[0].value))
                for node in ast.walk(tree):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                        yield os.path.relpath(path, ROOT), node.lineno, node.value


def _verbs():
    from bridge.admin import build_parser as bridge_parser
    from sysadmd.admin.main import VERB_MODULES  # importing it registers the verbs
    from sysadmd.admin.verbs import VERBS

    assert VERB_MODULES
    from sysadmd.client.main import build_parser as client_parser

    def choices(parser):
        for action in parser._actions:
            if getattr(action, "choices", None) and hasattr(action, "_name_parser_map"):
                return set(action.choices)
        return set()
    return {"sysadm-bridge": choices(bridge_parser()), "sysadmd": set(VERBS) | {"check-config"},
            "sysadm": choices(client_parser())}


class HintsNameRealVerbs(unittest.TestCase):
    def test_every_verb_a_message_names_exists(self):
        verbs = _verbs()
        self.assertIn("import-key", verbs["sysadm-bridge"])
        self.assertIn("import_ssl_file", verbs["sysadmd"])
        self.assertIn("identify", verbs["sysadm"])
        checked, wrong = 0, []
        for path, line, text in _message_strings():
            for m in MENTION.finditer(text):
                program, word = m.groups()
                if word in PROSE:
                    continue
                checked += 1
                if word not in verbs[program]:
                    wrong.append(f"{path}:{line}: `{program} {word}` is not a verb of {program}")
        self.assertGreater(checked, 10)
        self.assertEqual(wrong, [])

    def test_the_checker_catches_a_made_up_verb(self):
        verbs = _verbs()
        for program, word in MENTION.findall("run `sysadm-bridge import NICK FILE` then `sysadmd import_keys`"):
            self.assertNotIn(word, verbs[program])

    def test_no_doubled_words_in_messages(self):
        doubled = re.compile(r"\b(the|a|bridge|server|key|to|of|is|with)\s+\1\b", re.IGNORECASE)
        found = [f"{path}:{line}: {m.group(0)!r}" for path, line, text in _message_strings() for m in doubled.finditer(text)]
        self.assertEqual(found, [])


# --- (d) private keys where a public key is expected ------------------------------------------
def _private_files(folder):
    """(path, expected extract command) for a PKCS#1 and a PKCS#8 PEM private key, and an
    OpenSSH one when ssh-keygen is there."""
    from cryptography.hazmat.primitives import serialization

    key = crypto.generate_private_key()
    files = []
    for name, fmt in (("pkcs1.key", serialization.PrivateFormat.TraditionalOpenSSL),
                      ("pkcs8.key", serialization.PrivateFormat.PKCS8),
                      ("openssh.key", serialization.PrivateFormat.OpenSSH)):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
        command = f"ssh-keygen -e -m PKCS8 -f {path}" if "openssh" in name else f"openssl rsa -in {path} -pubout"
        files.append((path, command))
    return key, files


class PrivateKeysRefused(ServerUnit):
    def setUp(self):
        import tempfile

        self.folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.folder)
        self.key, self.files = _private_files(self.folder)

    def test_sysadmd_import_ssl_file_refuses_with_the_extract_command(self):
        import io

        from sysadmd.admin.main import main
        from sysadmd.auth.keys import KeyStore
        from sysadmd.admin.state import open_state_db

        state = os.path.join(self.folder, "state")
        for path, command in self.files:
            out, err = io.StringIO(), io.StringIO()
            code = main(["--state-dir", state, "import_ssl_file", "root", path, "laptop"], out, err)
            self.assertNotEqual(code, 0)
            self.assertIn("private key", err.getvalue())
            self.assertIn(command, err.getvalue())
        self.assertEqual(KeyStore(open_state_db(state)).list(), [])
        # The public half, extracted as told, is accepted.
        pub = os.path.join(self.folder, "pkcs1.key.pub")
        with open(pub, "w") as f:
            f.write(crypto.public_pem(self.key))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--state-dir", state, "import_ssl_file", "root", pub, "laptop"], out, err), 0, err.getvalue())

    def test_sysadm_bridge_import_key_refuses(self):
        import io

        from bridge.admin import main
        from bridge.keys import KeyStore, database_path
        from sysadmd.runtime.db import open_database

        state = os.path.join(self.folder, "bridge-state")
        for path, command in self.files:
            out, err = io.StringIO(), io.StringIO()
            code = main(["--state-dir", state, "import-key", "laptop", path, "--role", "client"], out, err)
            self.assertEqual(code, 1)
            self.assertIn(command, err.getvalue())
        db = open_database(database_path(state))
        self.addCleanup(db.close)
        self.assertEqual(KeyStore(db).all(), [])

    def test_register_ssl_cert_refuses_a_private_key_and_stores_nothing(self):
        from sysadmd.wire.envelope import encode
        from sysadmd.session import Identity

        from tests.support import add_key_login

        server = self.make_server(HeldPasswords({}))
        add_key_login(server)
        session, channel = self.session(server)
        server.login_succeeded(session, Identity("root", True, "password"))
        for i, (path, _) in enumerate(self.files):
            with open(path, "rb") as f:
                stored = base64.b64encode(f.read()).decode()
            server.api.handle_text(session, encode({"namespace": "rpc", "name": "settings", "id": f"r{i}",
                                                    "args": {"action": "register_ssl_cert", "pub_key": stored}}))
            reply = replies(channel)[-1]
            self.assertEqual(reply["args"]["code"], "400", reply)
            self.assertIn("private key", reply["args"]["detail"])
            expected = "ssh-keygen -e -m PKCS8 -f KEY" if "openssh" in path else "openssl rsa -in KEY -pubout"
            self.assertIn(expected, reply["args"]["detail"])
        self.assertTrue(_has_table(server.db, "registered_keys"))
        self.assertEqual(server.db.execute("SELECT * FROM registered_keys").fetchall(), [])
        server.api.handle_text(session, encode({"namespace": "rpc", "name": "settings", "id": "list",
                                                "args": {"action": "list_ssl_certs"}}))
        self.assertEqual(replies(channel)[-1]["args"], {})


def _has_table(db, name):
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


# --- (b) --url pointed at a bridge ---------------------------------------------------------
@pytest.mark.slow  # real daemons or child processes
class UrlAtABridge(unittest.TestCase):
    timeout = 40

    def test_url_at_a_bridge_says_it_is_a_bridge_and_suggests_bridge(self):
        from twisted.internet import defer

        from tests.test_bridge_wss import start_bridge
        from tests.test_client_cli import run_cli

        @defer.inlineCallbacks
        def run():
            daemon = yield start_bridge(self)
            home = self.mktemp()
            os.makedirs(home)
            url = daemon.url.rstrip("/")
            result = yield run_cli(home, "--url", url, "--user", "root", "query", SYSADM_PASSWORD="pw")
            self.assertEqual(result.code, 2, result.err)
            self.assertIn(f"{url} is a sysadm bridge, not a server", result.err)
            self.assertIn(f"--bridge {url} --key FILE --server NAME", result.err)
            # identify still answers (the bridge says what it is).
            result = yield run_cli(home, "--url", url, "identify")
            self.assertEqual(result.code, 0, result.err)
            self.assertIn("type: bridge", result.out)
        return run()


class ClientSaysWhyLoginFailed(unittest.TestCase):
    def test_no_rights_reply_gets_the_group_hint_not_the_register_hint(self):
        from sysadmd.client.connect import _check_login
        from sysadmd.client.errors import EXIT_AUTH, ClientError

        reply = {"namespace": "error", "name": "error", "id": "x",
                 "args": {"code": "401", "message": "Unauthorized",
                          "detail": "user bob has no access rights on this host (not root and not in "
                                    "FULL_ACCESS_GROUPS (wheel) or LIMITED_ACCESS_GROUPS (operator))"}}
        for what in ("login as bob", "login with key id.pem"):
            with self.assertRaises(ClientError) as caught:
                _check_login(reply, what)
            self.assertEqual(caught.exception.exit_code, EXIT_AUTH)
            self.assertIn("user bob has no access rights", caught.exception.message)
            self.assertIn("adds the user to a group named in FULL_ACCESS_GROUPS", caught.exception.message)
            self.assertNotIn("register the public key", caught.exception.message)
