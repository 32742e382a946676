"""Bridge link verbs of the ``sysadmd`` admin command (upstream's names, plus aliases).

They edit the state directory's database directly; a running daemon starts or stops
the link within a couple of seconds (:mod:`sysadmd.bridgelink.links`).
"""

from __future__ import annotations

import os
from typing import List, TextIO

from sysadmd.admin.state import VerbFailed, WallClock, local_time, open_state_db, table
from sysadmd.admin.verbs import UsageError, verb
from sysadmd.bridgelink import key as bridgekey
from sysadmd.bridgelink.store import DEFAULT_VERIFY, VERIFY_MODES, BridgeLinkError, BridgeLinkStore
from sysadmd.runtime.statedir import ensure_private_dir


def _split_verify(args: List[str]) -> tuple:
    """``(positional, verify)`` from ``ARGS [--verify MODE | --verify=MODE]``."""
    positional, verify = [], DEFAULT_VERIFY
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name == "--verify":
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"--verify needs a value ({'|'.join(VERIFY_MODES)})")
                i += 1
                value = args[i]
            verify = value
        elif arg.startswith("--"):
            raise UsageError(f"unknown option {arg} (expected --verify {'|'.join(VERIFY_MODES)})")
        else:
            positional.append(arg)
        i += 1
    return positional, verify


@verb("bridge_add", "NICKNAME URL [--verify none|pin|ca]",
      "Make the daemon keep a link to the bridge at URL (wss:// and :12149 are added when\n"
      "missing). --verify: pin (default) trusts the first TLS certificate seen and refuses\n"
      "any other later; ca checks it against the system CAs; none checks nothing. Adding a\n"
      "link again replaces it and forgets its pinned certificate.",
      aliases=("bridge-add",))
def bridge_add(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    positional, verify = _split_verify(args)
    if len(positional) != 2:
        raise UsageError(f"expected NICKNAME URL, got {len(positional)} argument(s)")
    nickname, url = positional
    store = BridgeLinkStore(open_state_db(state_dir), clock=WallClock)
    try:
        replaced = store.get(nickname) is not None
        row = store.add(nickname, url, verify)
    except BridgeLinkError as e:
        raise VerbFailed(str(e)) from None
    out.write(f"{'replaced' if replaced else 'added'} bridge link {row.nickname}: {row.url} (verify {row.verify})\n")
    return 0


@verb("bridge_list", "", "List the bridge links: nickname, URL, verify mode, pinned certificate, date added.",
      aliases=("bridge-list",))
def bridge_list(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if args:
        raise UsageError(f"expected no arguments, got {' '.join(args)}")
    rows = BridgeLinkStore(open_state_db(state_dir)).list()
    if not rows:
        out.write("no bridge links\n")
        return 0
    out.write(table(("NICKNAME", "URL", "VERIFY", "ADDED", "FINGERPRINT"),
                    [(r.nickname, r.url, r.verify, local_time(r.created), r.fingerprint or "-") for r in rows]))
    return 0


@verb("bridge_remove", "NICKNAME", "Remove a bridge link; a running daemon disconnects from that bridge.",
      aliases=("bridge-remove",))
def bridge_remove(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) != 1:
        raise UsageError(f"expected NICKNAME, got {len(args)} argument(s)")
    store = BridgeLinkStore(open_state_db(state_dir))
    if not store.remove(args[0]):
        known = ", ".join(r.nickname for r in store.list()) or "none"
        raise VerbFailed(f"no bridge link named {args[0]!r} (links: {known})")
    out.write(f"removed bridge link {args[0]}\n")
    return 0


@verb("bridge_export_key", "[FILE]",
      "Print (or write to FILE, mode 0644) the PEM public key this server authenticates to\n"
      "bridges with, creating the key if needed. Import it on the bridge with:\n"
      "sysadm-bridge import_ssl_file NICKNAME FILE (upstream bridges want FILE to end in .key).",
      aliases=("bridge-export-key",))
def bridge_export_key(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) > 1:
        raise UsageError(f"expected at most one FILE, got {len(args)} arguments")
    ensure_private_dir(state_dir)
    pem = bridgekey.public_key_pem(state_dir)
    if not args:
        out.write(pem)
        return 0
    path = args[0]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        os.chmod(path, 0o644)
    except OSError as e:
        raise VerbFailed(f"cannot write {path}: {e.strerror}") from None
    out.write(f"wrote the bridge public key to {path}\n")
    if not path.endswith((".key", ".crt")):
        err.write("note: upstream sysadm-bridge import_ssl_file accepts only files ending in .key or .crt\n")
    return 0
