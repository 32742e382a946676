"""sysadm/users end to end: a real daemon over wss, real accounts and groups made and
removed by the shadow tools (root only), full-access and limited sessions, replies
checked against upstream's shapes."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess

import pytest
from hypothesis import example, given, settings, strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses import accounts
from sysadmd.wire.envelope import ApiError
from tests.support import FakePasswords, logged_in_client, make_config, short_tempdir, start_daemon

USER_KEYS = {"name", "uid", "gid", "class", "change", "expire", "comment", "home_dir", "shell"}
TOOLS = ("useradd", "userdel", "usermod", "groupadd", "groupdel", "groupmod", "chpasswd")


def _run(*argv, check=False):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _exists_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _exists_group(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


class Checks(unittest.TestCase):
    """The argument checks, without any tool."""

    def test_names(self):
        for good in ("alice", "a_b-c.d", "_svc", "Bob9"):
            self.assertEqual(accounts.user_name(good), good)
        for bad in ("", "-rf", "a b", "a:b", "x" * 33, "1234", "a/b", "al\nice", 5, None, "é"):
            with self.assertRaises(ApiError) as e:
                accounts.user_name(bad)
            self.assertEqual(e.exception.code, "400")
            self.assertIn("'name'", e.exception.detail)

    def test_ids_paths_shells_comments_passwords(self):
        self.assertEqual(accounts.id_number("1500", "uid"), 1500)
        for bad in (0, -1, "0", 2**31, "12a", True, 1.5):
            with self.assertRaises(ApiError):
                accounts.id_number(bad, "uid")
        self.assertEqual(accounts.home_path("/home/x/"), "/home/x")
        for bad in ("home/x", "/home/../etc", "/home//x", "/home/./x", "/a:b", "/a\nb"):
            with self.assertRaises(ApiError) as e:
                accounts.home_path(bad)
            self.assertIn("home_dir", e.exception.detail)
        self.assertEqual(accounts.shell_path("/bin/sh", "/etc/shells"), "/bin/sh")
        with self.assertRaises(ApiError) as e:
            accounts.shell_path("/tmp/evil", "/etc/shells")
        self.assertIn("not a login shell", e.exception.detail)
        for bad in ("a:b", "line\nbreak"):
            with self.assertRaises(ApiError):
                accounts.comment_text(bad)
        self.assertEqual(accounts.password_input("bob", "s3:cret"), b"bob:s3:cret\n")
        for bad in ("", "a\nb", "a\rb", "x" * 513):
            with self.assertRaises(ApiError):
                accounts.password_input("bob", bad)
        self.assertEqual(accounts.expire_date("2030-01-02"), "2030-01-02")
        self.assertEqual(accounts.expire_date("0"), "")
        self.assertEqual(accounts.expire_date(86400), "1970-01-02")
        with self.assertRaises(ApiError):
            accounts.expire_date("next week")

    def test_unsupported_upstream_fields_are_refused_by_name(self):
        for args, word in (({"personacrypt_init": "da0"}, "PersonaCrypt"), ({"class": "staff"}, "login classes"),
                           ({"change": "1700000000"}, "'change'")):
            with self.assertRaises(ApiError) as e:
                accounts.unsupported(args)
            self.assertIn(word, e.exception.detail)

    def test_options_are_argv_items_never_a_shell_line(self):
        argv = accounts.account_options({"uid": 1500, "comment": "A; rm -rf /", "home_dir": "/home/a",
                                         "shell": "/bin/sh", "other_groups": "adm,users", "expire": "0"}, "/etc/shells")
        self.assertEqual(argv, ["-u", "1500", "-c", "A; rm -rf /", "-d", "/home/a", "-e", "", "-s", "/bin/sh",
                                "-G", "adm,users"])

    def test_the_account_database_reads_a_prefix_with_ageing(self):
        root = short_tempdir(self)
        os.makedirs(os.path.join(root, "etc"))
        with open(os.path.join(root, "etc/passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001:Bob,,,:/home/bob:/bin/sh\nbad line\n")
        with open(os.path.join(root, "etc/group"), "w") as f:
            f.write("adm:x:4:bob,carol\nempty:x:9:\n")
        with open(os.path.join(root, "etc/shadow"), "w") as f:
            f.write("bob:$y$hash:19000:0:30:7::20000:\n")
        db = accounts.AccountDatabase(root)
        self.assertEqual([a.name for a in db.accounts()], ["root", "bob"])
        self.assertEqual(db.tool_prefix(), ["--prefix", root])
        entry = db.user_entry(db.account("bob"), db.ageing())
        self.assertEqual(set(entry), USER_KEYS)
        self.assertEqual(entry["change"], str((19000 + 30) * 86400))
        self.assertEqual(entry["expire"], str(20000 * 86400))
        self.assertEqual([(g.name, g.members) for g in db.groups()], [("adm", ["bob", "carol"]), ("empty", [])])


@pytest.mark.slow  # real daemons and the shadow tools
class UsersOverWss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS):
            raise unittest.SkipTest("needs root and the shadow tools to create temporary accounts")
        suffix = secrets.token_hex(3)
        self.suffix = suffix
        self.limited_group = f"sdkl{suffix}"
        self.limited_user = f"sdkm{suffix}"
        _run("groupadd", self.limited_group, check=True)
        self.addCleanup(_run, "groupdel", self.limited_group)
        _run("useradd", "--no-create-home", "--shell", "/bin/sh", "--groups", self.limited_group, self.limited_user,
             check=True)
        self.addCleanup(_run, "userdel", self.limited_user)
        cfg = make_config(short_tempdir(self), FULL_ACCESS_GROUPS=f"sdkf{suffix}", LIMITED_ACCESS_GROUPS=self.limited_group,
                          RIGHTS_CACHE_SECONDS=0)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "rootpw", self.limited_user: "pw"}))
        self.root = yield self.login("root", "rootpw")
        self.limited = yield self.login(self.limited_user, "pw")

    def login(self, user, password):
        return logged_in_client(self, self.running, user, password)

    def users(self, client, **args):
        return client.call("sysadm", "users", args)

    def scratch_user(self, name):
        self.addCleanup(_run, "userdel", "-r", name)
        return name

    def scratch_group(self, name):
        self.addCleanup(_run, "groupdel", name)
        return name

    def ok(self, reply):
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    def err(self, reply, code="400"):
        self.assertEqual(reply["name"], "error", reply)
        self.assertEqual(reply["args"]["code"], code, reply)
        return reply["args"]["detail"]

    @defer.inlineCallbacks
    def test_listed_in_rpc_query(self):
        query = yield self.root.call("rpc", "query", {})
        self.assertEqual(query["args"]["sysadm/users"], "read/write")
        query = yield self.limited.call("rpc", "query", {})
        self.assertEqual(query["args"]["sysadm/users"], "read/write")  # usermod on themselves

    @defer.inlineCallbacks
    def test_add_show_modify_and_delete_a_real_account_and_group(self):
        name = self.scratch_user(f"sdka{self.suffix}")
        group = self.scratch_group(f"sdkg{self.suffix}")
        reply = yield self.users(self.root, action="groupadd", name=group, users=[self.limited_user])
        self.assertEqual(self.ok(reply), {"result": "success"})
        self.assertEqual(grp.getgrnam(group).gr_mem, [self.limited_user])
        reply = yield self.users(self.root, action="useradd", name=name, password="Secret-1",
                                 comment="Test account", shell="/bin/sh", other_groups=[group])
        self.assertEqual(self.ok(reply), {"result": "success"})
        entry = pwd.getpwnam(name)
        self.assertEqual((entry.pw_gecos, entry.pw_shell, entry.pw_dir), ("Test account", "/bin/sh", f"/home/{name}"))
        self.assertTrue(os.path.isdir(entry.pw_dir))  # made like upstream's useradd -m
        with open("/etc/shadow") as f:
            hashed = [line.split(":")[1] for line in f if line.startswith(name + ":")][0]
        self.assertTrue(hashed.startswith("$"), "chpasswd set a password hash")
        self.assertIn(name, grp.getgrnam(group).gr_mem)

        shown = self.ok((yield self.users(self.root, action="usershow")))
        self.assertEqual(set(shown[name]), USER_KEYS)
        self.assertEqual(shown[name]["uid"], str(entry.pw_uid))
        self.assertEqual(shown["root"]["canremove"], "false")  # the caller's own account
        groups = self.ok((yield self.users(self.root, action="groupshow")))
        self.assertEqual(groups[group], {"name": group, "gid": str(grp.getgrnam(group).gr_gid),
                                         "users": [self.limited_user, name]})

        reply = yield self.users(self.root, action="usermod", name=name, comment="Changed", shell="/bin/bash")
        self.assertEqual(self.ok(reply), {"result": "success"})
        self.assertEqual(pwd.getpwnam(name).pw_gecos, "Changed")
        reply = yield self.users(self.root, action="groupmod", name=group, remove_users=self.limited_user)
        self.ok(reply)
        self.assertEqual(grp.getgrnam(group).gr_mem, [name])
        self.ok((yield self.users(self.root, action="groupmod", name=group, add_users=[self.limited_user])))
        self.assertEqual(sorted(grp.getgrnam(group).gr_mem), sorted([name, self.limited_user]))
        self.ok((yield self.users(self.root, action="groupmod", name=group, users=[])))
        self.assertEqual(grp.getgrnam(group).gr_mem, [])

        reply = yield self.users(self.root, action="userdelete", name=name)
        self.assertEqual(self.ok(reply), {"result": "success"})
        self.assertFalse(_exists_user(name))
        self.assertFalse(os.path.exists(entry.pw_dir))  # clean_home defaults to "true", as upstream
        self.ok((yield self.users(self.root, action="groupdelete", name=group)))
        self.assertFalse(_exists_group(group))

    @defer.inlineCallbacks
    def test_a_tool_failure_is_an_error_reply_with_the_tools_message(self):
        reply = yield self.users(self.root, action="useradd", name=self.limited_user, password="x")
        detail = self.err(reply)
        self.assertIn("useradd exited with", detail)
        self.assertIn("already exists", detail)
        detail = self.err((yield self.users(self.root, action="groupdelete", name=f"sdkn{self.suffix}")))
        self.assertIn("groupdel", detail)
        self.assertIn("does not exist", detail)

    @defer.inlineCallbacks
    def test_bad_fields_are_refused_before_any_tool_runs(self):
        name = self.scratch_user(f"sdkb{self.suffix}")
        for args, field in (({"name": "-o"}, "'name'"), ({"name": name, "shell": "/tmp/sh"}, "shell"),
                            ({"name": name, "home_dir": "/home/../etc"}, "home_dir"),
                            ({"name": name, "uid": 0}, "'uid'"), ({"name": name, "password": "a\nroot:x"}, "password"),
                            ({"name": name, "comment": "x:0:0"}, "comment"),
                            ({"name": name, "personacrypt_init": "da0"}, "PersonaCrypt")):
            args = dict({"password": "pw"}, **args)
            detail = self.err((yield self.users(self.root, action="useradd", **args)))
            self.assertIn(field, detail)
        self.assertFalse(_exists_user(name))
        detail = self.err((yield self.users(self.root, action="personacrypt_listdevs")))
        self.assertIn("PersonaCrypt", detail)
        detail = self.err((yield self.users(self.root, action="nosuch")))
        self.assertIn("usershow", detail)

    @defer.inlineCallbacks
    def test_nobody_deletes_or_renames_themselves_and_homes_are_removed_only_when_theirs(self):
        detail = self.err((yield self.users(self.root, action="userdelete", name="root")), "409")
        self.assertIn("logged in as", detail)
        self.err((yield self.users(self.root, action="usermod", name="root", newname="toor")), "409")
        name = self.scratch_user(f"sdkh{self.suffix}")
        _run("useradd", "--no-create-home", "--home-dir", "/tmp", name, check=True)
        detail = self.err((yield self.users(self.root, action="userdelete", name=name)), "409")
        self.assertIn("clean_home", detail)
        self.assertTrue(os.path.isdir("/tmp"))
        self.ok((yield self.users(self.root, action="userdelete", name=name, clean_home="false")))
        self.assertFalse(_exists_user(name))

    @defer.inlineCallbacks
    def test_limited_users_see_and_change_only_themselves(self):
        me = self.limited_user
        root_before, my_uid = pwd.getpwnam("root"), pwd.getpwnam(me).pw_uid
        shown = self.ok((yield self.users(self.limited, action="usershow")))
        self.assertEqual(list(shown), [me])
        self.assertEqual(shown[me]["canremove"], "false")
        groups = self.ok((yield self.users(self.limited, action="groupshow")))
        self.assertEqual(groups[self.limited_group]["users"], [me])
        self.assertNotIn("users", groups["root"])  # not a member: no member list
        self.ok((yield self.users(self.limited, action="usermod", name=me, comment="Mine", shell="/bin/bash")))
        self.assertEqual((pwd.getpwnam(me).pw_gecos, pwd.getpwnam(me).pw_shell), ("Mine", "/bin/bash"))
        self.ok((yield self.users(self.limited, action="usermod", name=me, password="New-pass-1")))
        detail = self.err((yield self.users(self.limited, action="usermod", name=me, uid=0)), "403")
        self.assertIn("uid", detail)
        self.err((yield self.users(self.limited, action="usermod", name=me, other_groups="root")), "403")
        self.err((yield self.users(self.limited, action="usermod", name="root", comment="x")), "403")
        for action in ("useradd", "userdelete", "groupadd", "groupdelete", "groupmod"):
            detail = self.err((yield self.users(self.limited, action=action, name="x", password="p", users="x")), "403")
            self.assertIn("full access", detail)
        self.assertEqual(pwd.getpwnam("root"), root_before)
        self.assertEqual(pwd.getpwnam(me).pw_uid, my_uid)
        self.assertNotIn("root", [g.gr_name for g in grp.getgrall() if me in g.gr_mem])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=8)


class CheckProperties(unittest.TestCase):
    """Whatever JSON a request carries, the checks either return a safe value or raise a 400."""

    @settings(max_examples=300, deadline=None)
    @given(JSON_VALUES)
    @example("67768036191676800")  # a time the C library cannot convert (EOVERFLOW): once a crash
    def test_every_check_returns_a_safe_value_or_a_400(self, value):
        checks = (accounts.user_name, lambda v: accounts.id_number(v, "uid"), accounts.comment_text, accounts.home_path,
                  lambda v: accounts.name_list(v, "users"), accounts.expire_date, lambda v: accounts.group_ref(v, "group"),
                  lambda v: accounts.shell_path(v, "/etc/shells"), lambda v: accounts.password_input("bob", v))
        option_like_is_fine = (checks[2], checks[5], checks[8])  # values that follow their own option
        for check in checks:
            try:
                out = check(value)
            except ApiError as e:
                self.assertEqual(e.code, "400")
                continue
            text = out.decode() if isinstance(out, bytes) else ",".join(out) if isinstance(out, list) else str(out)
            self.assertNotIn("\x00", text)
            if check is not checks[-1]:
                self.assertNotIn("\n", text)
            if check not in option_like_is_fine:
                self.assertFalse(text.startswith("-"), text)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=60))
    def test_a_valid_name_is_only_portable_characters(self, text):
        try:
            name = accounts.user_name(text)
        except ApiError:
            return
        self.assertRegex(name, r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
        self.assertFalse(name.isdigit())
