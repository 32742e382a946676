"""``rpc/settings``: one route, many actions, plus the four upstream key actions.

Wire shapes (args → reply args)::

    {"action":"register_ssl_cert","pub_key":B64PEM,"nickname":N,"email":E}   → {}
    {"action":"list_ssl_certs"}      → {"<user>":{"<pub_key>":"Nickname: N\\nEmail: E\\nDate Registered: <ISO>"}}
    {"action":"list_ssl_checksums"}  → {"md5_keys":["<base64(MD5(PEM))>",…]}
    {"action":"revoke_ssl_cert","pub_key":B64PEM[,"user":U]}                → {}

Actions live in a :class:`SettingsActions` table (name → ``handler(session, args)``)
that :mod:`sysadmd.assembly` makes and hands to each subsystem that adds actions (the
key actions here, the bridge links' in :mod:`sysadmd.bridgelink.settings`).  Keys are
registered for the session's own user; listing or revoking another user's keys (or
their checksums) needs full access (403, and the connection keeps serving); limited
users see only their own.  Revoking a key ends its logins.

``register_ssl_cert`` with a key the user registered before replaces its nickname and
email and answers ``{}`` (upstream's Qt GUI re-sends its key on every connection
set-up); a key registered for another user is refused with 409.  Keys must be within
:data:`sysadmd.runtime.crypto.LOGIN_KEY_RULE`, and a user may have ``MAX_KEYS_PER_USER``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator

from sysadmd.runtime import crypto
from sysadmd.api import Api, require_full_access
from sysadmd.auth.keys import DuplicateKey, KeyStore, KeyStoreError
from sysadmd.auth.revocation import end_key_logins
from sysadmd.wire.envelope import ApiError
from sysadmd.session import Session

Action = Callable[[Session, Dict[str, Any]], Any]


# Bounds on what a client may store: a 4096-bit SPKI PEM in base64 is about 1,100
# characters; the labels are for people.
MAX_PUB_KEY_CHARS = 16384
MAX_LABEL_CHARS = 256


def _text(args: Dict[str, Any], name: str, *, required: bool = False) -> str:
    value = args.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError("400", f"'{name}' must be a string")
    if required and not value:
        raise ApiError("400", f"'{name}' is required (a non-empty string)")
    return value


class SettingsActions:
    """The actions of ``rpc/settings``: each subsystem adds its own, once."""

    def __init__(self) -> None:
        self._actions: Dict[str, Action] = {}

    def add(self, name: str, handler: Action) -> None:
        if name in self._actions:
            raise ValueError(f"rpc/settings action {name!r} is added twice")
        self._actions[name] = handler

    def remove(self, name: str) -> None:
        del self._actions[name]

    def get(self, name: str) -> Any:
        return self._actions.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._actions))

    def valid(self) -> str:
        return ", ".join(sorted(self._actions))


def route(api: Api, actions: SettingsActions) -> None:
    """Route ``rpc/settings`` (read/write for limited users) to *actions*."""

    def settings(session: Session, request):
        args = request.args
        if not isinstance(args, dict):
            raise ApiError("400", f"args must be an object with 'action' (one of: {actions.valid()})")
        action = args.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError("400", f"args need 'action' (one of: {actions.valid()})")
        handler = actions.get(action)
        if handler is None:
            raise ApiError("400", f"unknown action {action[:64]!r}; expected one of: {actions.valid()}")
        return handler(session, args)

    api.add("rpc", "settings", settings, limited="read/write")


def add_key_actions(actions: SettingsActions, server: Any, keys: KeyStore) -> None:
    """The four upstream key actions over *keys*; *server* is the server state (its
    config, log and sessions, for :func:`~sysadmd.auth.revocation.end_key_logins`)."""

    def register_ssl_cert(session: Session, args: Dict[str, Any]) -> dict:
        pub_key = _text(args, "pub_key", required=True).strip()
        nickname, email = _text(args, "nickname"), _text(args, "email")
        if len(pub_key) > MAX_PUB_KEY_CHARS:
            raise ApiError("400", f"pub_key: {len(pub_key)} characters is too long for an RSA public key "
                                  f"(at most {MAX_PUB_KEY_CHARS}; expected base64 of a PEM public key)")
        for name, value in (("nickname", nickname), ("email", email)):
            if len(value) > MAX_LABEL_CHARS:
                raise ApiError("400", f"'{name}' is {len(value)} characters; at most {MAX_LABEL_CHARS} are kept")
        try:
            pem = crypto.pem_from_stored(pub_key)
        except crypto.KeyFormatError as e:
            raise ApiError("400", f"pub_key: {e} (expected base64 of a PEM public key)") from None
        try:
            key, replaced = keys.save(session.identity.user, pem, nickname, email, pub_key=pub_key,
                                      cap=server.config.max_keys_per_user)
        except crypto.KeyPolicyError as e:
            raise ApiError("400", f"pub_key: {e}") from None
        except DuplicateKey as e:
            raise ApiError("409", str(e)) from None
        except KeyStoreError as e:
            raise ApiError("400", str(e)) from None
        what = "Updated" if replaced else "Registered"
        server.logs.hostinfo(f"{what} SSL Key: User: {key.user}   Nickname: {key.nickname}   MD5: {key.md5}")
        return {}

    def list_ssl_certs(session: Session, args: Dict[str, Any]) -> dict:
        identity = session.identity
        listed = keys.list() if identity.full_access else keys.list(identity.user)
        reply: Dict[str, Dict[str, str]] = {}
        for key in listed:
            reply.setdefault(key.user, {})[key.pub_key] = key.description()
        return reply

    def list_ssl_checksums(session: Session, args: Dict[str, Any]) -> dict:
        # Bridge links report every checksum to their bridge through the key store itself
        # (sysadmd.bridgelink.link), not through this action.
        identity = session.identity
        return keys.checksums() if identity.full_access else keys.checksums(identity.user)

    def revoke_ssl_cert(session: Session, args: Dict[str, Any]) -> dict:
        pub_key = _text(args, "pub_key", required=True)
        own = session.identity.user
        user = _text(args, "user") or own
        if user != own:
            require_full_access(session, f"revoking a key of user {user}")
        key = keys.revoke(user, pub_key)
        if key is None:
            raise ApiError("400", f"user {user} has no registered key with that pub_key (use the exact string list_ssl_certs shows)")
        server.logs.hostinfo(f"Revoked SSL Key: User: {key.user}   Nickname: {key.nickname}   MD5: {key.md5}   By: {own}")
        end_key_logins(server, lambda identity: identity.key_checksum == key.md5,
                       f"key {key.nickname or key.md5} of user {key.user} was revoked")
        return {}

    actions.add("register_ssl_cert", register_ssl_cert)
    actions.add("list_ssl_certs", list_ssl_certs)
    actions.add("list_ssl_checksums", list_ssl_checksums)
    actions.add("revoke_ssl_cert", revoke_ssl_cert)
