"""``sysadm/fs`` ``dirlist``: the entries of one directory, read as the caller.

Request::

    {"action":"dirlist", "dir":"/home/alice"}

Reply (upstream's shape)::

    {"dirlist":{"docs":{"dir":true},
                "latest":{"symlink":true,"target":"docs/v2"},
                "notes.txt":{"size":1234,"owner":"alice","group":"alice"}},
     "truncated":{"returned":5000,"total":12000}}

* ``dir`` must be an absolute path of at most ``MAX_PATH_CHARS`` characters without NUL.
* The listing runs in a child process under the caller's own uid, gid and groups
  (upstream listed any directory as root for anyone): a user sees exactly what they could
  see with ``ls``.  Root lists everything.  A daemon not running as root lists only for
  its own user.  The child is killed after ``LIST_TIMEOUT`` seconds (a hung mount).
* Like upstream, a symbolic link to a directory is ``{"dir":true}``; another symbolic link
  is ``{"symlink":true,"target":…}`` with the link's text as stored.  Unlike upstream,
  hidden entries are listed and ``size`` is a number of bytes.
* At most ``DIRLIST_MAX_ENTRIES`` entries (the first by name); when more exist, the
  top-level ``truncated`` object (beside ``dirlist``) says how many were returned and how
  many the directory holds.
* Errors: 403 when the caller may not read the directory, 400 when it does not exist or
  is not a directory.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from typing import Any, Dict, List

from twisted.internet import defer

from sysadmd.wire.envelope import ApiError
from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable, spawn, text_arg

MAX_PATH_CHARS = 4096
MAX_USER_CHARS = 256
LIST_TIMEOUT = 20.0
OUTPUT_LIMIT = 64 * 1024 * 1024  # a full listing of names and link targets fits many times

# The child program (standard library only; run with python -I -S: no environment, no
# site directories).  argv: directory, max entries, uid, gid, user name (uid -1: stay as
# is).  The interpreter starts with the daemon's ids (the caller may not be allowed to
# run it: it may live in root's home) and the program drops to the caller's uid, gid and
# groups before it touches the directory.
# Exit codes: 0 listing on stdout, 3 permission denied, 4 missing/not a directory,
# 5 the ids could not be switched.
LISTER = r"""
import grp, heapq, json, os, pwd, stat, sys

def name_of(table, key, cache):
    if key not in cache:
        try:
            cache[key] = table(key)[0]
        except KeyError:
            cache[key] = str(key)
    return cache[key]

def become(uid, gid, user):
    os.setgroups(os.getgrouplist(user, gid))
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getegid() != gid:
        raise OSError("ids did not change")

def main():
    path, limit, uid, gid, user = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if uid >= 0:
        try:
            become(uid, gid, user)
        except OSError as e:
            sys.stderr.write("cannot switch to uid %d: %s" % (uid, e))
            return 5
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        sys.stderr.write(e.strerror or str(e))
        return 3 if e.errno in (1, 13) else 4
    total = 0
    def names():
        nonlocal total
        with os.scandir(fd) as it:
            for entry in it:
                total += 1
                yield entry.name
    try:
        chosen = heapq.nsmallest(limit, names())
    except OSError as e:
        sys.stderr.write(e.strerror or str(e))
        return 3 if e.errno in (1, 13) else 4
    users, groups, out = {}, {}, {}
    for name in chosen:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode):
                    out[name] = {"dir": True}
                    continue
            except OSError:
                pass
            try:
                target = os.readlink(name, dir_fd=fd)
            except OSError:
                target = ""
            out[name] = {"symlink": True, "target": target}
        elif stat.S_ISDIR(st.st_mode):
            out[name] = {"dir": True}
        else:
            out[name] = {"size": st.st_size, "owner": name_of(lambda u: pwd.getpwuid(u), st.st_uid, users),
                         "group": name_of(lambda g: grp.getgrgid(g), st.st_gid, groups)}
    json.dump({"entries": out, "total": total}, sys.stdout, separators=(",", ":"))
    return 0

sys.exit(main())
"""


def available(config: Any) -> bool:
    """Needs only a Python to run the listing child (always there)."""
    return bool(sys.executable) and os.path.exists(sys.executable)


class DirList:
    def __init__(self, reactor: Any, max_entries: int):
        self.reactor = reactor
        self.max_entries = max_entries

    def table(self) -> ActionTable:
        table = ActionTable("fs")
        table.add("dirlist", self.dirlist, wrap=False)
        return table

    def _ids(self, session: Session) -> List[str]:
        """The lister's uid, gid and user arguments for the caller (uid -1: as the daemon)."""
        user = session.identity.user if session.identity else ""
        if not user or len(user) > MAX_USER_CHARS:
            raise ApiError("403", "dirlist needs a logged-in user")
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ApiError("403", f"user {user} has no account on this host; dirlist reads as the caller") from None
        if entry.pw_uid == os.geteuid():
            return ["-1", "-1", user]
        if os.geteuid() != 0:
            raise ApiError("403", f"this daemon runs as uid {os.geteuid()} and cannot read as {user}; "
                                  "it lists directories only for its own user")
        return [str(entry.pw_uid), str(entry.pw_gid), user]

    def dirlist(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        path = text_arg(args, "dir", max_chars=MAX_PATH_CHARS)
        if not path.startswith("/"):
            raise ApiError("400", f"'dir' must be an absolute path (starting with /), got {path[:64]!r}")
        ids = self._ids(session)
        argv = [sys.executable, "-I", "-S", "-c", LISTER, path, str(self.max_entries)] + ids
        d = spawn(self.reactor, argv, timeout=LIST_TIMEOUT, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
                  output_limit=OUTPUT_LIMIT, path="/")
        return d.addCallback(self._reply, path)

    def _reply(self, result: Any, path: str) -> Dict[str, Any]:
        code, out, err = result
        reason = err.strip()[:500] or "no message"
        if code == 3:
            raise ApiError("403", f"cannot read {path}: {reason}")
        if code == 4:
            raise ApiError("400", f"cannot list {path}: {reason}")
        if code == 5:
            raise ApiError("500", f"listing {path} failed: {reason}")
        if code != 0:
            status = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
            raise ApiError("500", f"listing {path} failed: the lister {status}: {reason}")
        try:
            listing = json.loads(out)
        except ValueError:
            raise ApiError("500", f"listing {path} failed: the lister's output was cut or unreadable") from None
        reply: Dict[str, Any] = {"dirlist": listing["entries"]}
        if listing["total"] > self.max_entries:
            reply["truncated"] = {"returned": len(listing["entries"]), "total": listing["total"]}
        return reply


def route(api: Any, reactor: Any, config: Any) -> DirList:
    """Register ``sysadm/fs`` (read for limited users: each reads as themselves)."""
    lister = DirList(reactor, config.dirlist_max_entries)
    lister.table().route(api, limited="read")
    return lister
