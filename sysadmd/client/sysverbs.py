"""``sysadm users …`` and ``sysadm services …``: ``sysadm/users`` and ``sysadm/services``
as tables (``--json``: the server's reply as is).

New passwords for ``users add`` come from ``$SYSADM_NEW_PASSWORD``, else are asked twice
on the terminal; they travel only inside the request.
"""

from __future__ import annotations

import getpass
import os
from typing import Any, Dict, List

from sysadmd.client import svcverbs, tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError


def _users(ctx: Context, args: Dict[str, Any], what: str) -> Any:
    return ctx.ask("sysadm", "users", args, what=what)


async def users_list(ctx: Context) -> int:
    shown = await _users(ctx, {"action": "usershow"}, "listing users")
    if ctx.json_output:
        ctx.emit_json(shown)
        return EXIT_OK
    rows = [[e.get("name", n), e.get("uid", ""), e.get("gid", ""), e.get("home_dir", ""), e.get("shell", ""),
             e.get("comment", "")] for n, e in sorted((shown or {}).items(), key=lambda kv: _uid(kv[1]))]
    for line in tables.render(["name", "uid", "gid", "home", "shell", "comment"], rows):
        ctx.say(line)
    return EXIT_OK


def _uid(entry: Any) -> int:
    try:
        return int(entry.get("uid", 0))
    except (TypeError, ValueError, AttributeError):
        return 0


async def users_show(ctx: Context) -> int:
    name = ctx.options.name
    shown = await _users(ctx, {"action": "usershow"}, f"showing {name}")
    entry = (shown or {}).get(name)
    if entry is None:
        raise ClientError(f"no account named {name} (or not visible to you: limited users see only themselves)",
                          EXIT_ERROR_REPLY)
    groups = await _users(ctx, {"action": "groupshow"}, "listing groups")
    member_of = sorted(g for g, info in (groups or {}).items() if name in (info.get("users") or []))
    if ctx.json_output:
        ctx.emit_json(dict(entry, groups=member_of))
        return EXIT_OK
    for key in ("name", "uid", "gid", "comment", "home_dir", "shell", "expire", "change"):
        ctx.say(f"{key}: {entry.get(key, '')}")
    ctx.say(f"groups: {', '.join(member_of)}")
    return EXIT_OK


def prepare_users_add(ctx: Context) -> None:
    password = os.environ.get("SYSADM_NEW_PASSWORD")
    if password is None:
        if not (hasattr(ctx.stdin, "isatty") and ctx.stdin.isatty()):
            raise ClientError("the new account needs a password: set SYSADM_NEW_PASSWORD, or run on a terminal to be asked",
                              EXIT_USAGE)
        try:
            password = getpass.getpass(f"New password for {ctx.options.name}: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            raise ClientError("no password given", EXIT_USAGE) from None
        if password != again:
            raise ClientError("the two passwords differ", EXIT_USAGE)
    ctx.extras["new_password"] = password


async def users_add(ctx: Context) -> int:
    o = ctx.options
    args: Dict[str, Any] = {"action": "useradd", "name": o.name, "password": ctx.extras["new_password"]}
    for field, value in (("uid", o.uid), ("comment", o.comment), ("home_dir", o.home), ("shell", o.shell),
                         ("group", o.group), ("expire", o.expire)):
        if value is not None:
            args[field] = value
    if o.groups:
        args["other_groups"] = [g for g in o.groups.split(",") if g]
    reply = await _users(ctx, args, f"adding {o.name}")
    return _done(ctx, reply, f"added {o.name}")


async def users_delete(ctx: Context) -> int:
    o = ctx.options
    reply = await _users(ctx, {"action": "userdelete", "name": o.name, "clean_home": "false" if o.keep_home else "true"},
                         f"deleting {o.name}")
    return _done(ctx, reply, f"deleted {o.name}" + ("" if o.keep_home else " and its home"))


def _done(ctx: Context, reply: Any, message: str) -> int:
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say(message)
    return EXIT_OK


async def services_list(ctx: Context) -> int:
    listed = await ctx.ask("sysadm", "services", {"action": "list_services"}, what="listing services")
    services = (listed or {}).get("services", {}) if isinstance(listed, dict) else {}
    if ctx.json_output:
        ctx.emit_json(listed)
        return EXIT_OK
    rows = [[name, _yes(e.get("is_running")), _yes(e.get("is_enabled")), e.get("description", "")]
            for name, e in sorted(services.items())]
    for line in tables.render(["service", "running", "enabled", "description"], rows):
        ctx.say(line)
    return EXIT_OK


def _yes(flag: Any) -> str:
    return "yes" if str(flag).lower() == "true" else "no"


async def services_change(ctx: Context) -> int:
    verb: str = ctx.options.services_verb
    names: List[str] = ctx.options.names
    reply = await ctx.ask("sysadm", "services", {"action": verb, "services": names}, what=f"{verb} {' '.join(names)}")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    key = next(iter(reply)) if isinstance(reply, dict) and reply else ""
    done = reply.get(key, []) if key else []
    ctx.say(f"{key.split('_', 1)[-1] or verb}: {', '.join(done) or '(none)'}")
    return EXIT_OK


def register(verbs_parser: Any, common: Any, verb: Any) -> None:
    """Add ``users`` and ``services`` to the ``sysadm`` command line (called by main)."""
    users = verb("users", None, "list, show, add and delete accounts (sysadm/users)")
    uv = users.add_subparsers(dest="users_verb", metavar="ACTION")
    uv.required = True
    p = uv.add_parser("list", parents=[common], help="every account (limited users: their own)")
    p.set_defaults(func=users_list)
    p = uv.add_parser("show", parents=[common], help="one account and its groups")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=users_show)
    p = uv.add_parser("add", parents=[common], help="create an account (password from $SYSADM_NEW_PASSWORD or asked)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--uid", type=int)
    p.add_argument("--comment")
    p.add_argument("--home", metavar="DIR")
    p.add_argument("--shell", metavar="PATH")
    p.add_argument("--group", metavar="GROUP", help="primary group")
    p.add_argument("--groups", metavar="G1,G2", help="other groups")
    p.add_argument("--expire", metavar="YYYY-MM-DD")
    p.set_defaults(func=users_add, prepare=prepare_users_add)
    p = uv.add_parser("delete", parents=[common], help="delete an account and its home")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--keep-home", action="store_true", dest="keep_home", help="leave the home directory")
    p.set_defaults(func=users_delete)

    services = verb("services", None, "list, start, stop, restart, enable and disable services (sysadm/services)")
    sv = services.add_subparsers(dest="services_verb", metavar="ACTION")
    sv.required = True
    p = sv.add_parser("list", parents=[common], help="every service with its state")
    p.set_defaults(func=services_list)
    for action, text in (("start", "start"), ("stop", "stop"), ("restart", "restart"),
                         ("enable", "start at boot"), ("disable", "not start at boot")):
        p = sv.add_parser(action, parents=[common], help=f"{text} the named services")
        p.add_argument("names", metavar="NAME", nargs="+")
        p.set_defaults(func=services_change)
    svcverbs.add_services_logs(sv, common)  # E: services logs NAME [-n N]
