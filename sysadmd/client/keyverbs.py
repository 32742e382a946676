"""``sysadm keys …`` and ``sysadm bridges …``: the ``rpc/settings`` actions, readable.

Keys: ``list_ssl_certs``, ``register_ssl_cert`` (``pub_key`` = base64 of the PEM public
key), ``revoke_ssl_cert`` (the stored ``pub_key`` text, found here by nickname, checksum
or the string itself), ``list_ssl_checksums``.  Bridges: ``list_bridges``,
``add_bridge``, ``remove_bridge`` (the server's outgoing bridge links).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError
from sysadmd.client.connect import load_key, read_key_bytes, read_key_file


def _description_fields(text: str) -> Dict[str, str]:
    fields = {}
    for line in str(text).splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields


def _checksum(pub_key: str) -> str:
    from sysadmd.runtime import crypto  # imported when needed: cryptography costs ~25 ms of start-up

    try:
        return crypto.md5_checksum(crypto.pem_from_stored(pub_key))
    except crypto.KeyFormatError:
        return "?"


def _registered(listing: Any) -> List[Tuple[str, str, Dict[str, str]]]:
    """``(user, pub_key, fields)`` for every key of a ``list_ssl_certs`` reply."""
    found = []
    if isinstance(listing, dict):
        for user in sorted(listing):
            keys = listing[user] if isinstance(listing[user], dict) else {}
            for pub_key in sorted(keys):
                found.append((user, pub_key, _description_fields(keys[pub_key])))
    return found


async def keys_list(ctx: Context) -> int:
    listing = await ctx.ask("rpc", "settings", {"action": "list_ssl_certs"}, what="listing keys")
    if ctx.json_output:
        ctx.emit_json(listing)
        return EXIT_OK
    rows = [[user, f.get("nickname", ""), f.get("email", ""), f.get("date registered", ""), _checksum(pub_key)]
            for user, pub_key, f in _registered(listing)]
    if not rows:
        ctx.say("no registered keys")
        return EXIT_OK
    for line in tables.render(["user", "nickname", "email", "registered", "md5"], rows):
        ctx.say(line)
    return EXIT_OK


def public_key_text(path: str, ctx: Optional[Context] = None) -> str:
    """SPKI PEM of the key in *path* (public key, certificate, ``ssh-rsa`` line, or a
    private key: only its public half is ever sent, and a note says so)."""
    from sysadmd.runtime import crypto

    data = read_key_bytes(path)
    if crypto.private_key_kind(data) is not None:
        stdin, err = (ctx.stdin, ctx.err) if ctx is not None else (None, None)
        pem = crypto.public_pem(load_key(path, stdin, err))
        if ctx is not None:
            ctx.note(f"note: {path} is a private key; only its public half is sent (md5 {crypto.md5_checksum(pem)}). "
                     f"The public key alone: {crypto.extract_public_command(crypto.private_key_kind(data), path)}")
        return pem
    return read_key_file(path, crypto.normalized_pem)


def prepare_keys_add(ctx: Context) -> None:
    ctx.extras["pem"] = public_key_text(ctx.options.file, ctx)


async def keys_add(ctx: Context) -> int:
    from sysadmd.runtime import crypto

    pem = ctx.extras.get("pem") or public_key_text(ctx.options.file, ctx)
    nickname = ctx.options.nickname or os.path.splitext(os.path.basename(ctx.options.file))[0]
    args = {"action": "register_ssl_cert", "pub_key": crypto.stored_form(pem), "nickname": nickname,
            "email": ctx.options.email or ""}
    reply = await ctx.ask("rpc", "settings", args, what="registering the key")
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say(f"registered key {nickname} (md5 {crypto.md5_checksum(pem)})")
    return EXIT_OK


def _find_key(listing: Any, handle: str, owner: Optional[str]) -> List[Tuple[str, str, Dict[str, str]]]:
    matches = []
    for user, pub_key, fields in _registered(listing):
        if owner and user != owner:
            continue
        if handle in (pub_key, fields.get("nickname"), _checksum(pub_key)):
            matches.append((user, pub_key, fields))
    return matches


async def keys_revoke(ctx: Context) -> int:
    from sysadmd.runtime import crypto

    handle, owner = ctx.options.handle, ctx.options.owner
    if os.path.isfile(handle):
        handle = crypto.stored_form(public_key_text(handle, ctx))
    listing = await ctx.ask("rpc", "settings", {"action": "list_ssl_certs"}, what="listing keys")
    matches = _find_key(listing, handle, owner)
    if not matches:
        raise ClientError(f"no registered key matches {handle[:80]!r} (give a nickname, md5 checksum, the pub_key "
                          "string or a key file; `sysadm keys list` shows them)", EXIT_ERROR_REPLY)
    if len(matches) > 1:
        users = ", ".join(sorted({m[0] for m in matches}))
        raise ClientError(f"{handle!r} matches {len(matches)} keys (users {users}); use --owner USER or the md5 checksum",
                          EXIT_USAGE)
    user, pub_key, fields = matches[0]
    await ctx.ask("rpc", "settings", {"action": "revoke_ssl_cert", "pub_key": pub_key, "user": user},
                  what="revoking the key")
    if ctx.json_output:
        ctx.emit_json({})
    else:
        ctx.say(f"revoked key {fields.get('nickname') or _checksum(pub_key)} of user {user}")
    return EXIT_OK


async def keys_checksums(ctx: Context) -> int:
    reply = await ctx.ask("rpc", "settings", {"action": "list_ssl_checksums"}, what="listing key checksums")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    for md5 in (reply or {}).get("md5_keys", []) if isinstance(reply, dict) else []:
        ctx.say(md5)
    return EXIT_OK


# --- bridges ------------------------------------------------------------------------------

def _bridge_rows(listing: Any) -> List[dict]:
    """Accept ``{nick: {...}}``, ``{"bridges": [...]}`` or ``[...]`` shapes."""
    if isinstance(listing, dict) and isinstance(listing.get("bridges"), (list, dict)):
        listing = listing["bridges"]
    if isinstance(listing, dict):
        return [dict(v, nickname=k) if isinstance(v, dict) else {"nickname": k, "url": v} for k, v in sorted(listing.items())]
    if isinstance(listing, list):
        return [row for row in listing if isinstance(row, dict)]
    return []


async def bridges_list(ctx: Context) -> int:
    listing = await ctx.ask("rpc", "settings", {"action": "list_bridges"}, what="listing bridges")
    if ctx.json_output:
        ctx.emit_json(listing)
        return EXIT_OK
    rows = _bridge_rows(listing)
    if not rows:
        ctx.say("no bridge links")
        return EXIT_OK
    data = [[r.get("nickname", "?"), r.get("url", ""), _link_status(r), len(r.get("peers") or []),
             r.get("verify", ""), r.get("fingerprint") or "-"] for r in rows]
    for line in tables.render(["nickname", "url", "status", "clients", "verify", "fingerprint"], data, max_width=100):
        ctx.say(line)
    return EXIT_OK


def _link_status(row: dict) -> str:
    if row.get("authenticated"):
        return "authenticated"
    if row.get("connected"):
        return "connected"
    if "connected" not in row and "state" in row:
        return _plain(row["state"])
    text = "down"
    if row.get("last_error"):
        text += f": {row['last_error']}"
    if row.get("next_retry_in") is not None:
        text += f" (retry in {row['next_retry_in']} s)"
    return text


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


async def bridges_add(ctx: Context) -> int:
    args = {"action": "add_bridge", "nickname": ctx.options.nickname, "url": ctx.options.bridge_url}
    if ctx.options.verify:
        args["verify"] = ctx.options.verify
    reply = await ctx.ask("rpc", "settings", args, what="adding the bridge link")
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say(f"added bridge link {ctx.options.nickname} → {ctx.options.bridge_url}")
    return EXIT_OK


async def bridges_remove(ctx: Context) -> int:
    reply = await ctx.ask("rpc", "settings", {"action": "remove_bridge", "nickname": ctx.options.nickname},
                          what="removing the bridge link")
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say(f"removed bridge link {ctx.options.nickname}")
    return EXIT_OK
