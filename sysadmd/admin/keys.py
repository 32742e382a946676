"""Key and blacklist verbs of the ``sysadmd`` admin command.

They edit the state directory's database directly, daemon running or not; a running
daemon uses a new key at the next login and ends a revoked key's sessions within about
a second (:mod:`sysadmd.auth.revocation`).
"""

from __future__ import annotations

import pwd
from typing import List, TextIO

from sysadmd import migrations
from sysadmd.runtime import crypto
from sysadmd.admin.state import VerbFailed, WallClock, local_time, open_state_db, table
from sysadmd.admin.verbs import UsageError, verb
from sysadmd.runtime.blacklist import Blacklist, normalize_address
from sysadmd.auth.keys import KeyStore, KeyStoreError

MAX_KEY_FILE_BYTES = 1024 * 1024  # far more than any key or certificate file


@verb("import_ssl_file", "USER FILE NICKNAME [EMAIL]",
      "Register the RSA public key in FILE (PEM public key, OpenSSH ssh-rsa line, or X.509\n"
      "certificate as PEM or DER) for USER, so USER can log in with rpc/auth_ssl. Only\n"
      f"{crypto.LOGIN_KEY_RULE} are accepted. Importing a key USER\n"
      "already has updates its nickname and email. A private key is refused (never stored);\n"
      "extract its public half with: openssl rsa -in KEY -pubout -out KEY.pub")
def import_ssl_file(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) not in (3, 4):
        raise UsageError(f"expected USER FILE NICKNAME [EMAIL], got {len(args)} argument(s)")
    user, path, nickname = args[:3]
    email = args[3] if len(args) == 4 else ""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise VerbFailed(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise VerbFailed(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; expected one PEM public key or certificate")
    kind = crypto.private_key_kind(data)
    if kind is not None:
        raise VerbFailed(f"{path}: {crypto.private_key_refusal(kind, path)}")
    try:
        pem = crypto.login_key_pem(data)
    except crypto.KeyFormatError as e:
        raise VerbFailed(f"{path}: {e}") from None
    # The admin command is not bound by MAX_KEYS_PER_USER (that protects the API).
    keys = KeyStore(open_state_db(state_dir))
    try:
        key, replaced = keys.save(user, pem, nickname, email)
    except (KeyStoreError, crypto.KeyFormatError) as e:
        raise VerbFailed(str(e)) from None
    try:
        pwd.getpwnam(user)
    except KeyError:
        err.write(f"warning: there is no local user {user}; the key cannot log in until there is one\n")
    if replaced:
        out.write(f"key {key.md5} of user {key.user} was registered already; nickname and email updated ({key.nickname})\n")
    else:
        out.write(f"registered key {key.md5} ({key.nickname}) for user {key.user}\n")
    return 0


@verb("list_keys", "", "List the registered keys: user, nickname, email, date, MD5 checksum.",
      aliases=("list_ssl_certs",))
def list_keys(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if args:
        raise UsageError(f"expected no arguments, got {' '.join(args)}")
    keys = KeyStore(open_state_db(state_dir)).list()
    if not keys:
        out.write("no registered keys\n")
        return 0
    rows = [(k.user, k.nickname, k.email, local_time(k.registered), k.md5) for k in keys]
    out.write(table(("USER", "NICKNAME", "EMAIL", "REGISTERED", "MD5"), rows))
    return 0


@verb("revoke_key", "USER NICKNAME|MD5",
      "Remove USER's key named NICKNAME (or with that MD5 checksum); its live sessions end.",
      aliases=("revoke_ssl_cert",))
def revoke_key(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) != 2:
        raise UsageError(f"expected USER NICKNAME|MD5, got {len(args)} argument(s)")
    user, handle = args
    keys = KeyStore(open_state_db(state_dir))
    found = keys.find(user, handle)
    if not found:
        raise VerbFailed(f"user {user} has no key with nickname or MD5 {handle!r} (see: sysadmd list_keys)")
    if len(found) > 1:
        sums = ", ".join(k.md5 for k in found)
        raise VerbFailed(f"{len(found)} keys of user {user} are named {handle!r}; give the MD5 instead ({sums})")
    key = found[0]
    keys.revoke(key.user, key.pub_key)
    out.write(f"revoked key {key.md5} ({key.nickname}) of user {key.user}\n")
    return 0


def _blacklist(state_dir: str) -> Blacklist:
    # Only the stored entries are used here; the counting limits do not matter.
    return Blacklist(open_state_db(state_dir), WallClock(), limit=1, reset_minutes=1, block_minutes=1,
                     schema=migrations.SCHEMA)


@verb("unblock", "ADDRESS", "Lift the block on ADDRESS set after repeated failed logins.")
def unblock(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if len(args) != 1:
        raise UsageError(f"expected one ADDRESS, got {len(args)} argument(s)")
    address = normalize_address(args[0])
    blacklist = _blacklist(state_dir)
    removed = blacklist.unblock(address)
    blacklist.success(address)  # the failure count starts again from zero
    if not removed:
        raise VerbFailed(f"{address} is not blocked (see: sysadmd list_blocked)")
    out.write(f"unblocked {address}\n")
    return 0


@verb("list_blocked", "", "List addresses blocked after repeated failed logins, and until when.")
def list_blocked(state_dir: str, args: List[str], out: TextIO, err: TextIO) -> int:
    if args:
        raise UsageError(f"expected no arguments, got {' '.join(args)}")
    now = WallClock.seconds()
    entries = [e for e in _blacklist(state_dir).entries() if e[2] > now]
    if not entries:
        out.write("no blocked addresses\n")
        return 0
    rows = [(address, local_time(blocked), local_time(until)) for address, blocked, until in entries]
    out.write(table(("ADDRESS", "BLOCKED", "UNTIL"), rows))
    return 0
