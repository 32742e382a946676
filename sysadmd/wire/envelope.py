"""The JSON envelope, byte for byte as upstream's code writes it.

Request::

    {"namespace":"rpc","name":"query","id":"q1","args":{}}

* text must begin with ``{`` (after trailing newlines are stripped) and parse as an
  object; ``namespace``/``name``/``id`` are taken when they are strings, else ``""``;
  a missing ``args`` makes the whole object the args.
* ``rpc`` and ``events`` match case-insensitively; replies echo the namespace as sent.
* refused with a 400 (the connection stays): a lone UTF-16 surrogate anywhere in the
  message (``"\ud800"`` is valid JSON but no Unicode text: it cannot be written back
  as UTF-8, logged or stored), and a message of more than :data:`MAX_JSON_VALUES`
  values (parsing costs per value, ~0.25 s per million, all of it on the reactor
  thread and holding the GIL, so a thread would not help; the count is taken on the
  text before parsing and may over-count commas inside strings, never under-count).
  Together with ``MAX_UNAUTH_MESSAGE_BYTES`` this bounds what one message can cost.

Success reply (compact JSON, sorted keys)::

    {"args":<result>,"id":"q1","name":"response","namespace":"rpc"}

With an empty or missing id, ``name`` echoes the request name instead of ``response``.

Error reply (code is a string; ``detail`` is ours and says what was wrong)::

    {"args":{"code":"400","detail":"…","message":"Bad Request"},"id":"q1","name":"error","namespace":"error"}

Event::

    {"args":{…},"id":"","name":"dispatcher","namespace":"events"}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

MESSAGES = {
    "400": "Bad Request",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "Not Found",
    "405": "Method Not Allowed",
    "409": "Conflict",
    "413": "Payload Too Large",
    "429": "Too Many Requests",
    "500": "Internal Server Error",
    "503": "Service Unavailable",
}


class ApiError(Exception):
    """A request failed; becomes an error reply with *code* and a *detail* sentence."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = str(code)
        self.detail = detail


class EnvelopeError(ApiError):
    """The message itself could not be read as a request."""

    def __init__(self, detail: str, request_id: str = "", name: str = ""):
        super().__init__("400", detail)
        self.request_id = request_id
        self.name = name


@dataclass(slots=True)
class Request:
    namespace: str  # as sent (echoed in replies)
    name: str
    id: str
    args: Any
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def route(self) -> tuple:
        return (self.namespace.lower(), self.name.lower())


# At most this many JSON values (objects, arrays and the members/elements between
# commas) in one message: about 25 ms of parsing at worst.
MAX_JSON_VALUES = 100_000
_SURROGATE = re.compile("[\ud800-\udfff]")
# A \uD800-\uDFFF escape; only these (or surrogates already in the text) can put a
# surrogate into a parsed string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse(text: str) -> Request:
    """Parse one message; raises :class:`EnvelopeError` with a readable detail."""
    stripped = text.rstrip("\r\n")
    if not stripped.startswith("{"):
        raise EnvelopeError("a request is a JSON object and its text must begin with '{'")
    values = stripped.count(",") + stripped.count("{") + stripped.count("[")
    if values > MAX_JSON_VALUES:
        raise EnvelopeError(f"the message holds about {values} JSON values; at most {MAX_JSON_VALUES} are accepted")
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("a request must be a JSON object")
    # The cheap tests first ("in" and isascii() are fast scans or O(1)): a large ASCII
    # message without a backslash-u (a file chunk in base64) skips both regex scans.
    if ("\\u" in stripped and _SURROGATE_ESCAPE.search(stripped)) or \
            (not stripped.isascii() and _SURROGATE.search(stripped)):
        where = lone_surrogate_path(obj)
        if where is not None:
            rid = obj.get("id", "")
            rid = rid if type(rid) is str and not _SURROGATE.search(rid) else ""
            raise EnvelopeError(f"{where} holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape that is not "
                                "half of a pair); such text cannot be encoded, the request was refused", rid)
    # "string or else empty", as upstream reads them (a numeric id becomes "")
    request_id = obj.get("id", "")
    if type(request_id) is not str:
        request_id = ""
    namespace = obj.get("namespace", "")
    if type(namespace) is not str:
        namespace = ""
    name = obj.get("name", "")
    if type(name) is not str:
        name = ""
    if not namespace:
        raise EnvelopeError("missing 'namespace' (a non-empty string such as \"rpc\")", request_id, name)
    if not name:
        raise EnvelopeError("missing 'name' (a non-empty string such as \"query\")", request_id, name)
    args = obj["args"] if "args" in obj else obj
    return Request(namespace=namespace, name=name, id=request_id, args=args, raw=obj)


# One encoder for every message: json.dumps with non-default options builds a new
# JSONEncoder per call, a measurable part of a small request's cost.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def encode(obj: Any) -> str:
    """Compact JSON with sorted keys, as Qt's ``QJsonDocument::toJson(Compact)``."""
    return _ENCODER.encode(obj)


def reply(request: Request, args: Any) -> Dict[str, Any]:
    return {
        "args": args,
        "id": request.id,
        "name": "response" if request.id else request.name,
        "namespace": request.namespace,
    }


def error(code: str, detail: Optional[str] = None, request_id: str = "") -> Dict[str, Any]:
    code = str(code)
    args = {"code": code, "message": MESSAGES.get(code, "Error")}
    if detail:
        args["detail"] = detail
    return {"args": args, "id": request_id, "name": "error", "namespace": "error"}


def event(name: str, args: Any) -> Dict[str, Any]:
    return {"args": args, "id": "", "name": name, "namespace": "events"}


def require_object(args: Any, what: str = "args") -> Dict[str, Any]:
    if not isinstance(args, dict):
        raise ApiError("400", f"{what} must be a JSON object, got {type_name(args)}")
    return args


def require_action(args: Any) -> str:
    obj = require_object(args)
    action = obj.get("action")
    if not isinstance(action, str) or not action:
        raise ApiError("400", "missing 'action' (a string) in args")
    return action.lower()


def utf8(text: str) -> bytes:
    """*text* as UTF-8, each lone surrogate (which UTF-8 cannot hold) replaced by U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def lone_surrogate_path(obj: Any) -> Optional[str]:
    """Where (``args.x[2]``, ``a key in args``) the first string holding a lone surrogate
    is in parsed JSON *obj*, or ``None``.  Iterative: depth is what ``json`` allowed."""
    stack = [(obj, "the request")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return f"a key in {where}"
                stack.append((item, key if where == "the request" else f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
