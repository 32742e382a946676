"""The ``sysadm-bridge`` console script: manage registered keys and the blacklist.

Works on the state directory directly, whether the daemon runs or not (SQLite in WAL
mode); a running daemon closes the live connections of a removed key within about a
second (``REVOCATION_POLL_INTERVAL``).  Upstream's verbs are accepted as they are
(``import_ssl_file``, ``import_ssl_pubkey``, ``list_ssl``, ``remove_ssl``) next to
readable aliases.  Unlike upstream, any file name works for ``import_ssl_file`` and
``list_ssl`` lists keys only (``list_blocked`` shows the blacklist).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from types import SimpleNamespace
from typing import List, Optional, TextIO

from bridge import config as configmod
from bridge import migrations
from bridge.keys import ROLES, KeyStore, KeyStoreError, database_path
from bridge.service import open_blacklist
from sysadmd import __version__
from sysadmd.runtime import crypto
from sysadmd.runtime.configfile import ConfigError
from sysadmd.runtime.db import SchemaError, open_database
from sysadmd.runtime.statedir import ensure_private_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sysadm-bridge", description=(
        "Manage the keys that may connect to this sysadm-bridge, and its blacklist. "
        "Start the relay itself with: twistd -n sysadm-bridge"))
    parser.add_argument("--config", "-c", help=f"config file (default {configmod.DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--state-dir", "-d", help="state directory (overrides STATE_DIR)")
    parser.add_argument("--version", action="version", version=f"sysadm-bridge {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("import_ssl_file", aliases=["import-key"],
                         help="register the public key in FILE (PEM public key or certificate) as NICKNAME")
    p.add_argument("nickname")
    p.add_argument("file")
    _role_options(p)
    p.set_defaults(run=cmd_import_file)

    p = verbs.add_parser("import_ssl_pubkey", help="register a public key given as PEM text (or base64 of it) as NICKNAME")
    p.add_argument("nickname")
    p.add_argument("pem")
    _role_options(p)
    p.set_defaults(run=cmd_import_text)

    p = verbs.add_parser("list_ssl", aliases=["list-keys"], help="list the registered keys")
    p.set_defaults(run=cmd_list)

    p = verbs.add_parser("remove_ssl", aliases=["remove-key"],
                         help="revoke the key registered as NICKNAME (its live connections are closed)")
    p.add_argument("nickname")
    p.set_defaults(run=cmd_remove)

    p = verbs.add_parser("list_blocked", aliases=["list-blocked"], help="list blocked addresses")
    p.set_defaults(run=cmd_list_blocked)

    p = verbs.add_parser("unblock", help="remove ADDRESS from the blacklist")
    p.add_argument("address")
    p.set_defaults(run=cmd_unblock)
    return parser


def _role_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", choices=ROLES, default=None,
                   help="the one role this key may log in as: server, client, or both (explicitly). "
                        "Without --role the key is bound to the role of its first successful login")
    p.add_argument("--pairs-with", metavar="PUBKEY_FILE", action="append", default=[], dest="pairs_with",
                   help="client keys only: also pair this client on the key in PUBKEY_FILE (the key it logs in "
                        "to servers with, when that differs from the key it shows the bridge, as in the Qt GUI); "
                        "repeatable")


def resolve_config(args: argparse.Namespace) -> configmod.BridgeConfig:
    path = args.config
    if path is None and os.path.exists(configmod.DEFAULT_CONFIG):
        path = configmod.DEFAULT_CONFIG
    overrides = {"STATE_DIR": args.state_dir} if args.state_dir else None
    return configmod.load(path, overrides)


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        print(f"sysadm-bridge: configuration error: {e}", file=err)
        return 1
    ensure_private_dir(cfg.state_dir)
    try:
        db = open_database(database_path(cfg.state_dir), migrations.SCHEMA)
    except SchemaError as e:
        print(f"sysadm-bridge: {e}", file=err)
        return 1
    try:
        return args.run(cfg, db, args, out, err)
    except KeyStoreError as e:
        print(f"sysadm-bridge: {e}", file=err)
        return 1
    finally:
        db.close()


# --- verbs ------------------------------------------------------------------------------
def cmd_import_file(cfg, db, args, out, err) -> int:
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"sysadm-bridge: cannot read {args.file}: {e.strerror}", file=err)
        return 1
    kind = crypto.private_key_kind(data)
    if kind is not None:
        print(f"sysadm-bridge: {args.file}: {crypto.private_key_refusal(kind, args.file)}", file=err)
        return 1
    return _import(db, args, data, out, err)


def cmd_import_text(cfg, db, args, out, err) -> int:
    data = args.pem
    if "-----BEGIN" not in data:
        # Upstream stored base64 of whatever it was given; accept that stored form too.
        try:
            data = crypto.pem_from_stored(data)
        except crypto.KeyFormatError:
            print("sysadm-bridge: the key must be PEM text (-----BEGIN PUBLIC KEY-----…) or base64 of it", file=err)
            return 1
    return _import(db, args, data, out, err)


def _import(db, args, data, out, err) -> int:
    extra = []
    for path in args.pairs_with:
        try:
            with open(path, "rb") as f:
                extra.append(f.read())
        except OSError as e:
            print(f"sysadm-bridge: cannot read --pairs-with {path}: {e.strerror}", file=err)
            return 1
    store = KeyStore(db)
    replaced = store.get(args.nickname.strip()) is not None
    key = store.import_key(args.nickname, data, args.role, pairs_with=extra)
    verb = "replaced" if replaced else "registered"
    role = key.role if key.bound else "unbound: bound to the role of its first login"
    pairs = f", also pairs on {', '.join(key.pairs)}" if key.pairs else ""
    print(f"{verb} key {key.nickname!r} (role {role}, md5 {key.md5}{pairs})", file=out)
    return 0


def cmd_list(cfg, db, args, out, err) -> int:
    keys = KeyStore(db).all()
    if not keys:
        print("no keys registered", file=out)
        return 0
    rows = [("NICKNAME", "ROLE", "MD5", "REGISTERED", "PAIRS_WITH")]
    for key in keys:
        rows.append((key.nickname, key.role, key.md5, _when(key.registered), " ".join(key.pairs)))
    _table(rows, out)
    return 0


def cmd_remove(cfg, db, args, out, err) -> int:
    if not KeyStore(db).remove(args.nickname):
        print(f"sysadm-bridge: no key is registered as {args.nickname!r}", file=err)
        return 1
    print(f"removed key {args.nickname!r}; its live connections are closed by the running bridge", file=out)
    return 0


def cmd_list_blocked(cfg, db, args, out, err) -> int:
    blacklist = open_blacklist(db, SimpleNamespace(seconds=time.time), cfg)
    now = time.time()
    entries = [e for e in blacklist.entries() if e[2] > now]
    if not entries:
        print("no blocked addresses", file=out)
        return 0
    rows = [("ADDRESS", "BLOCKED", "UNTIL")]
    rows.extend((address, _when(since), _when(until)) for address, since, until in entries)
    _table(rows, out)
    return 0


def cmd_unblock(cfg, db, args, out, err) -> int:
    blacklist = open_blacklist(db, SimpleNamespace(seconds=time.time), cfg)
    if not blacklist.unblock(args.address):
        print(f"sysadm-bridge: {args.address} is not blocked", file=err)
        return 1
    print(f"unblocked {args.address}", file=out)
    return 0


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows, out) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


if __name__ == "__main__":
    sys.exit(main())
