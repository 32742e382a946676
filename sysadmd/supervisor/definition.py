"""A supervised program's definition (the seed's ``job.tm.json``) and its validation.

A definition is a JSON object; every field but ``command`` is optional::

    {"name": "web", "command": ["/usr/bin/python3", "-m", "http.server"] | "python3 -m http.server",
     "directory": "/srv/www", "environment": {"LANG": "C.UTF-8"}, "user": "www-data",
     "umask": "022", "autostart": true, "autorestart": "unexpected", "exitcodes": [0],
     "startsecs": 1, "startretries": 3, "stopsignal": "TERM", "stopwaitsecs": 10,
     "output_max_bytes": 1048576}

A string ``command`` is split as the dispatcher splits its commands
(:func:`sysadmd.dispatcher.commands.split_command`: Qt's rules, no shell).  ``user`` is
required when the daemon runs as root (say ``"root"`` to run a program as root); a
daemon running as another user can only start programs as itself.  Every error names
the field and says what was expected; unknown fields are refused (a typo such as
``autostrat`` would otherwise be silently ignored).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from sysadmd.dispatcher.commands import CommandError, split_command

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")
MAX_ARGS = 256
MAX_ARG_CHARS = 4096
MAX_ENV = 128
MAX_ENV_CHARS = 4096
MAX_PATH_CHARS = 1024
MAX_SECONDS = 86400.0
MAX_STARTRETRIES = 100
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
MAX_DEFINITION_BYTES = 64 * 1024
AUTORESTART = (True, False, "unexpected")
STOP_SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
RESERVED_ENV = ("SYSADMD_JOB",)  # the marker crash recovery finds the program's processes by

FIELDS = ("name", "command", "directory", "environment", "user", "umask", "autostart", "autorestart", "exitcodes",
          "startsecs", "startretries", "stopsignal", "stopwaitsecs", "output_max_bytes")


class DefinitionError(ValueError):
    """A definition that cannot be used; the message names the field."""


def check_name(name: Any) -> str:
    """A program name: 1-64 characters of ``A-Z a-z 0-9 . _ -``, not starting with ``.``."""
    if not isinstance(name, str) or not NAME.match(name):
        shown = repr(name)[:80]
        raise DefinitionError(f"name: expected 1-64 characters of A-Z a-z 0-9 . _ - not starting with '.', got {shown}")
    return name


@dataclass(frozen=True)
class Definition:
    name: str
    command: Tuple[str, ...]
    directory: str = "/"
    environment: Tuple[Tuple[str, str], ...] = ()
    user: str = ""  # "" only when the daemon does not run as root: the daemon's own user
    umask: int = 0o022
    autostart: bool = True
    autorestart: Any = "unexpected"
    exitcodes: Tuple[int, ...] = (0,)
    startsecs: float = 1.0
    startretries: int = 3
    stopsignal: str = "TERM"
    stopwaitsecs: float = 10.0
    output_max_bytes: int = 1024 * 1024

    @property
    def signum(self) -> int:
        return int(getattr(signal, "SIG" + self.stopsignal))

    def as_json(self) -> Dict[str, Any]:
        """The definition as ``pull`` returns it and the database keeps it (every field)."""
        out = asdict(self)
        out["command"] = list(self.command)
        out["environment"] = dict(self.environment)
        out["exitcodes"] = list(self.exitcodes)
        out["umask"] = format(self.umask, "03o")
        return out


def _number(data: Dict[str, Any], field: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise DefinitionError(f"{field}: expected {kind} from {low:g} to {high:g}, got {_shown(value)}")
    if not low <= value <= high:
        raise DefinitionError(f"{field}: expected a value from {low:g} to {high:g}, got {value:g}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _text(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise DefinitionError(f"{field}: expected a string, got {_shown(value)}")
    if len(value) > limit:
        raise DefinitionError(f"{field}: at most {limit} characters, got {len(value)}")
    if "\0" in value:
        raise DefinitionError(f"{field}: must not contain NUL characters")
    return value


def _command(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        _text("command", value, MAX_ARG_CHARS * 4)
        try:
            argv = split_command(value)
        except CommandError as e:
            raise DefinitionError(f"command: {e}") from None
    elif isinstance(value, list):
        if not value:
            raise DefinitionError("command: expected a non-empty argument list or a command string, got []")
        argv = [_text(f"command[{i}]", arg, MAX_ARG_CHARS) for i, arg in enumerate(value)]
        if not argv[0]:
            raise DefinitionError("command[0]: the program must not be empty")
    else:
        raise DefinitionError(f"command: expected an argument list or a command string, got {_shown(value)}")
    if len(argv) > MAX_ARGS:
        raise DefinitionError(f"command: at most {MAX_ARGS} arguments, got {len(argv)}")
    return tuple(argv)


def _environment(value: Any) -> Tuple[Tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise DefinitionError(f"environment: expected an object of NAME: \"value\" strings, got {_shown(value)}")
    if len(value) > MAX_ENV:
        raise DefinitionError(f"environment: at most {MAX_ENV} variables, got {len(value)}")
    out = []
    for key, val in sorted(value.items()):
        if not ENV_NAME.match(key):
            raise DefinitionError(f"environment: variable name {_shown(key)} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)")
        if key in RESERVED_ENV:
            raise DefinitionError(f"environment.{key}: reserved (the daemon's process marker)")
        out.append((key, _text(f"environment.{key}", val, MAX_ENV_CHARS)))
    return tuple(out)


def _umask(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,3}", value):
        return int(value, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    raise DefinitionError(f"umask: expected an octal string such as \"022\" (or an integer 0-511), got {_shown(value)}")


def _user(value: Any, euid: int, check: bool = True) -> str:
    if value is None or value == "":
        if euid == 0:
            raise DefinitionError("user: required when the daemon runs as root (the user the program runs as; "
                                  "say \"root\" to run it as root)")
        return ""
    name = _text("user", value, 64)
    if not check:
        return name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise DefinitionError(f"user: no such user {name!r} on this host") from None
    if euid != 0 and entry.pw_uid != euid:
        raise DefinitionError(f"user: the daemon runs as uid {euid} and can start programs only as itself, not as {name!r}")
    return name


def validate(data: Any, name: Optional[str] = None, *, euid: Optional[int] = None,
             check_user: bool = True) -> Definition:
    """The :class:`Definition` of *data* (a pushed ``job.tm.json``); *name* is the job
    name the push was addressed to (the definition's ``name`` must match it, or is
    taken from it).  *check_user* False: a stored definition, whose user may have gone
    since (its start then fails saying so).  Raises :class:`DefinitionError` naming the field."""
    if not isinstance(data, dict):
        raise DefinitionError(f"the definition must be a JSON object, got {_shown(data)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise DefinitionError(f"{unknown[0]}: unknown field (expected: {', '.join(FIELDS)})")
    own = data.get("name", name)
    check_name(own)
    if name is not None and own != name:
        raise DefinitionError(f"name: the definition is named {own!r} but was pushed as {name!r}")
    if "command" not in data:
        raise DefinitionError("command: required (an argument list or a command string)")
    directory = _text("directory", data.get("directory", "/"), MAX_PATH_CHARS)
    if not os.path.isabs(directory):
        raise DefinitionError(f"directory: expected an absolute path, got {directory!r}")
    autostart = data.get("autostart", True)
    if not isinstance(autostart, bool):
        raise DefinitionError(f"autostart: expected true or false, got {_shown(autostart)}")
    autorestart = data.get("autorestart", "unexpected")
    if autorestart not in AUTORESTART or isinstance(autorestart, int) and not isinstance(autorestart, bool):
        raise DefinitionError(f"autorestart: expected true, false or \"unexpected\", got {_shown(autorestart)}")
    exitcodes = data.get("exitcodes", [0])
    if not isinstance(exitcodes, list) or not exitcodes or len(exitcodes) > 256 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in exitcodes):
        raise DefinitionError(f"exitcodes: expected a non-empty list of exit codes 0-255, got {_shown(exitcodes)}")
    stopsignal = data.get("stopsignal", "TERM")
    if not isinstance(stopsignal, str) or stopsignal.upper().removeprefix("SIG") not in STOP_SIGNALS:
        raise DefinitionError(f"stopsignal: expected one of {', '.join(STOP_SIGNALS)}, got {_shown(stopsignal)}")
    return Definition(
        name=own,
        command=_command(data["command"]),
        directory=os.path.normpath(directory),
        environment=_environment(data.get("environment", {})),
        user=_user(data.get("user"), os.geteuid() if euid is None else euid, check_user),
        umask=_umask(data.get("umask", "022")),
        autostart=autostart,
        autorestart=autorestart,
        exitcodes=tuple(sorted(set(exitcodes))),
        startsecs=float(_number(data, "startsecs", 1, 0, MAX_SECONDS)),
        startretries=int(_number(data, "startretries", 3, 0, MAX_STARTRETRIES, integer=True)),
        stopsignal=stopsignal.upper().removeprefix("SIG"),
        stopwaitsecs=float(_number(data, "stopwaitsecs", 10, 0, MAX_SECONDS)),
        output_max_bytes=int(_number(data, "output_max_bytes", 1024 * 1024, 0, MAX_OUTPUT_BYTES, integer=True)),
    )
