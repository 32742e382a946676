"""``sysadm/users``: accounts and groups, with upstream's argument names and reply shapes,
changed through the system's own shadow tools (argv only, checked by
:mod:`sysadmd.sysclasses.accounts`).

Actions and replies (unwrapped, as upstream's users class answers)::

    usershow    → {name:{name,uid,gid,class,change,expire,comment,home_dir,shell[,canremove:"false"]}}
    groupshow   → {group:{name,gid,users:[…]}}
    useradd     (name, password, uid, comment, home_dir, expire, shell, group, other_groups) → {"result":"success"}
    userdelete  (name, clean_home "true"|"false", default "true")                             → {"result":"success"}
    usermod     (name, newname, password, uid, comment, home_dir, expire, shell, group, other_groups)
    groupadd    (name, gid, users)        groupdelete (name)
    groupmod    (name, one of users | add_users | remove_users)
    personacrypt_init, personacrypt_listdevs → 400 (a TrueOS feature)

Rights (docs/protocol.md §6.9): limited users see only their own account in ``usershow``
and only themselves among group members in ``groupshow``; the only change they may make
is ``usermod`` on themselves, and there only ``password``, ``comment`` and ``shell``
(upstream let them change any field of their own account, including groups and uid).
Everything else needs full access.  Nobody deletes the account they are logged in as,
renames it, or deletes uid 0.  ``clean_home`` removes a home only when it is a plain
directory owned by the account and nobody else's home.

Failures are error replies carrying the tool's message (400), never a success with an
error inside.  Changes run one at a time (the tools lock the files themselves, and a
second concurrent one would fail with "cannot lock").
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer

from sysadmd.wire.envelope import ApiError
from sysadmd.session import Session
from sysadmd.sysclasses import accounts
from sysadmd.sysclasses.common import TOOL_ENV, TOOL_TIMEOUT, ActionTable, _Collect, _kill, spawn, tool_message
from sysadmd.sysclasses.accounts import AccountDatabase

TOOLS = ("useradd", "usermod", "userdel", "groupadd", "groupmod", "groupdel", "chpasswd")
SELF_FIELDS = frozenset(("action", "name", "password", "comment", "shell"))
SUCCESS = {"result": "success"}


def available(config: Any) -> bool:
    """The class needs the shadow tools and a readable passwd file."""
    import shutil

    db = AccountDatabase(config.users_prefix)
    return all(shutil.which(t, path=TOOL_ENV["PATH"]) for t in TOOLS) and bool(db.accounts())


class _Fed(_Collect):
    """A child whose stdin gets *data* then EOF (chpasswd's input)."""

    def __init__(self, done: defer.Deferred, data: bytes):
        super().__init__(done)
        self.data = data

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.closeStdin()


class Users:
    def __init__(self, reactor: Any, db: AccountDatabase):
        self.reactor = reactor
        self.db = db
        self.lock = defer.DeferredLock()

    # --- running tools -------------------------------------------------------------------
    @defer.inlineCallbacks
    def _tool(self, argv: List[str], stdin: Optional[bytes] = None):
        if stdin is None:
            result = yield spawn(self.reactor, argv)
        else:
            done: defer.Deferred = defer.Deferred()
            transport = self.reactor.spawnProcess(_Fed(done, stdin), argv[0], argv, env=dict(TOOL_ENV))
            killer = self.reactor.callLater(TOOL_TIMEOUT, _kill, transport)
            result = yield done
            if killer.active():
                killer.cancel()
        if result[0] != 0:
            raise ApiError("400", tool_message(argv, result))
        return result[1]

    def _serial(self, work):
        return self.lock.run(defer.inlineCallbacks(work))

    def _chpasswd(self, name: str, line: bytes) -> defer.Deferred:
        if self.db.prefix:
            raise ApiError("400", "'password': passwords can only be set on the system's own account database "
                                  "(USERS_PREFIX is set and chpasswd has no prefix option)")
        return self._tool(["chpasswd"], stdin=line)

    # --- reading ------------------------------------------------------------------------
    def usershow(self, session: Session, args: Dict[str, Any]) -> Dict[str, Any]:
        me = session.identity
        ageing = self.db.ageing()
        out = {}
        for account in self.db.accounts():
            if not me.full_access and account.name != me.user:
                continue
            entry = self.db.user_entry(account, ageing)
            if account.name == me.user:
                entry["canremove"] = "false"
            out[account.name] = entry
        return out

    def groupshow(self, session: Session, args: Dict[str, Any]) -> Dict[str, Any]:
        me = session.identity
        out: Dict[str, Any] = {}
        for group in self.db.groups():
            entry: Dict[str, Any] = {"name": group.name, "gid": str(group.gid)}
            if me.full_access:
                entry["users"] = group.members
            elif me.user in group.members:
                entry["users"] = [me.user]
            out[group.name] = entry
        return out

    # --- users --------------------------------------------------------------------------
    def useradd(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        accounts.unsupported(args)
        name = accounts.user_name(args.get("name"))
        if "password" not in args:
            raise ApiError("400", "args need 'password' (the new account's password)")
        line = accounts.password_input(name, args["password"])
        argv = ["useradd", *self.db.tool_prefix(), "-m", *accounts.account_options(args, self.db.shells_file), name]
        if self.db.prefix:
            raise ApiError("400", "'password': passwords can only be set on the system's own account database "
                                  "(USERS_PREFIX is set)")

        def work():
            yield self._tool(argv)
            try:
                yield self._chpasswd(name, line)
            except ApiError:
                # The account must not stay behind without the password asked for.
                yield self._tool(["userdel", "-r", name]).addErrback(lambda f: None)
                raise
            return SUCCESS

        return self._serial(work)

    def userdelete(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        from sysadmd.sysclasses.common import flag_arg

        name = accounts.user_name(args.get("name"))
        if name == session.identity.user:
            raise ApiError("409", f"{name} is the account you are logged in as; delete it from another account")
        clean = flag_arg(args, "clean_home", True)
        account = self.db.account(name)
        if account is None:
            raise ApiError("400", f"no account named {name}")
        if account.uid == 0:
            raise ApiError("409", f"{name} has uid 0 (root's); it is not deleted through sysadm/users")
        argv = ["userdel", *self.db.tool_prefix()]
        if clean:
            exists, refusal = accounts.removable_home(self.db, account)
            if refusal:
                raise ApiError("409", f"not deleting {name} with clean_home: {refusal}; "
                                      "send \"clean_home\":\"false\" to keep the home")
            if exists:
                argv.append("-r")
        argv.append(name)

        def work():
            yield self._tool(argv)
            return SUCCESS

        return self._serial(work)

    def usermod(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        me = session.identity
        name = accounts.user_name(args.get("name"))
        if not me.full_access:
            if name != me.user:
                raise ApiError("403", f"user {me.user} has limited access and may change only their own account")
            extra = sorted(k for k in args if k not in SELF_FIELDS)
            if extra:
                raise ApiError("403", f"with limited access only password, comment and shell of your own account may "
                                      f"change; not {', '.join(map(str, extra[:8]))}")
        accounts.unsupported(args)
        if self.db.account(name) is None:
            raise ApiError("400", f"no account named {name}")
        argv = ["usermod", *self.db.tool_prefix(), *accounts.account_options(args, self.db.shells_file)]
        newname = None
        if args.get("newname") not in (None, ""):
            newname = accounts.user_name(args["newname"], "newname")
            if name == me.user:
                raise ApiError("409", f"{name} is the account you are logged in as; rename it from another account")
            argv += ["-l", newname]
        line = accounts.password_input(name, args["password"]) if "password" in args else None
        changes = len(argv) > 1 + len(self.db.tool_prefix())
        if not changes and line is None:
            raise ApiError("400", "usermod needs at least one field to change (newname, password, uid, comment, "
                                  "home_dir, expire, shell, group, other_groups)")
        if line is not None and self.db.prefix:
            self._chpasswd(name, line)  # raises: no password on a prefixed database

        def work():
            if line is not None:
                yield self._chpasswd(name, line)  # before a rename, while the old name is valid
            if changes:
                yield self._tool(argv + [name])
            return SUCCESS

        return self._serial(work)

    # --- groups -------------------------------------------------------------------------
    def groupadd(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        name = accounts.user_name(args.get("name"))
        argv = ["groupadd", *self.db.tool_prefix()]
        if args.get("gid") not in (None, ""):
            argv += ["-g", str(accounts.id_number(args["gid"], "gid"))]
        if args.get("users") not in (None, "", []):
            argv += ["-U", ",".join(accounts.name_list(args["users"], "users"))]
        argv.append(name)

        def work():
            yield self._tool(argv)
            return SUCCESS

        return self._serial(work)

    def groupdelete(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        name = accounts.user_name(args.get("name"))
        argv = ["groupdel", *self.db.tool_prefix(), name]

        def work():
            yield self._tool(argv)
            return SUCCESS

        return self._serial(work)

    def groupmod(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        name = accounts.user_name(args.get("name"))
        given = [k for k in ("users", "add_users", "remove_users") if k in args]
        if len(given) != 1:
            raise ApiError("400", "groupmod needs exactly one of 'users' (the whole member list), 'add_users' or "
                                  f"'remove_users'; got {', '.join(given) or 'none'}")
        field = given[0]
        names = accounts.name_list(args[field], field)
        prefix = self.db.tool_prefix()

        def work():
            if field == "users":
                argv = ["groupmod", *prefix, "-U", ",".join(names), name]
            elif field == "add_users":
                argv = ["groupmod", *prefix, "-a", "-U", ",".join(names), name]
            else:
                group = self.db.group(name)
                if group is None:
                    raise ApiError("400", f"no group named {name}")
                argv = ["groupmod", *prefix, "-U", ",".join(accounts.members_after(group.members, names)), name]
            yield self._tool(argv)
            return SUCCESS

        return self._serial(work)

    @staticmethod
    def personacrypt(session: Session, args: Dict[str, Any]) -> None:
        raise ApiError("400", f"{args.get('action')}: PersonaCrypt is a TrueOS feature that Linux does not have")


def route(api: Any, reactor: Any, config: Any) -> Users:
    users = Users(reactor, AccountDatabase(config.users_prefix))
    table = ActionTable("users")
    table.add("usershow", users.usershow, wrap=False)
    table.add("groupshow", users.groupshow, wrap=False)
    table.add("usermod", users.usermod, wrap=False)  # limited users: on themselves only
    for action in ("useradd", "userdelete", "groupadd", "groupdelete", "groupmod"):
        table.add(action, getattr(users, action), full_access=True, wrap=False)
    for action in ("personacrypt_init", "personacrypt_listdevs"):
        table.add(action, users.personacrypt, wrap=False)
    table.route(api, limited="read/write")
    return users
