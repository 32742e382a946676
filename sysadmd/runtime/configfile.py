"""Typed ``KEY=VALUE`` configuration files, shared by sysadmd and sysadm-bridge.

The format is upstream's ``sysadm.conf``: one ``KEY=VALUE`` per line, ``#`` starts a
comment.  Unlike upstream we strip trailing comments (``true #[true/false]`` is
``true``) and ignore commented-out lines.  Every key has a type and a default; a bad
value raises :class:`ConfigError` naming the key, which the daemons turn into a
one-line error and exit code 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional


class ConfigError(Exception):
    """A configuration value is unusable; ``str()`` is the one-line message."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int, float, bool, str, list, endpoint, path
    default: Any
    doc: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None

    def parse(self, raw: str) -> Any:
        text = raw.strip()
        try:
            value = _PARSERS[self.kind](text)
        except ValueError as e:
            raise ConfigError(f"{self.name}: {e}") from None
        if self.kind in ("int", "float"):
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{self.name}: {value} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{self.name}: {value} is above the maximum {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.name}: {text!r} is not one of {', '.join(self.choices)}")
        return value


def _parse_int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        # float() reads "nan", "inf" and "infinity"; none of them is a usable setting
        # (a NaN grace period made every kill fail), so they are refused here.
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_list(text: str) -> tuple:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_endpoint(text: str) -> str:
    """A port number, a Twisted endpoint string, or empty for 'disabled'."""
    if text == "" or text.lower() == "none":
        return ""
    if text.isdigit():
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
        return text
    kind = text.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd"):
        raise ValueError(
            f"expected a port number or an endpoint string such as tcp:12150:interface=127.0.0.1, got {text!r}"
        )
    return text


_PARSERS: Dict[str, Callable[[str], Any]] = {
    "int": _parse_int,
    "float": _parse_float,
    "bool": _parse_bool,
    "str": lambda t: t,
    "path": lambda t: os.path.expanduser(t) if t else "",
    "list": _parse_list,
    "endpoint": _parse_endpoint,
}


def read_file(path: str) -> Dict[str, str]:
    """Return the raw ``KEY -> VALUE`` text of a config file (last one wins)."""
    values: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {stripped!r}")
        key, _, value = stripped.partition("=")
        if "#" in value:
            value = value.split("#", 1)[0]
        values[key.strip().upper()] = value.strip()
    return values


def resolve(keys: Iterable[Key], raw: Mapping[str, str], source: str = "") -> Dict[str, Any]:
    """Parse *raw* against *keys*; unknown keys are an error (typos must not pass silently)."""
    known = {k.name: k for k in keys}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        where = f" in {source}" if source else ""
        raise ConfigError(f"{unknown[0]}: unknown configuration key{where}")
    values: Dict[str, Any] = {}
    for name, key in known.items():
        values[name] = key.parse(raw[name]) if name in raw else key.default
    return values


def render_sample(title: str, keys: List[Key]) -> str:
    """The commented sample file: every key, its meaning and its default."""
    out = [f"# {title}", "#", "# KEY=VALUE per line; '#' starts a comment. Every key is shown with its", "# default, commented out.", ""]
    for key in keys:
        for line in key.doc.splitlines():
            out.append(f"# {line}")
        default = key.default
        if isinstance(default, bool):
            text = "true" if default else "false"
        elif isinstance(default, tuple):
            text = ",".join(default)
        else:
            text = str(default)
        out.append(f"#{key.name}={text}")
        out.append("")
    return "\n".join(out)


class Settings:
    """Resolved settings with attribute access by lower-case key name (``cfg.port``).

    Subclasses name their :data:`KEYS` and fill in derived defaults or cross-key checks
    in :meth:`validate` (raising :class:`ConfigError` naming the key).
    """

    KEYS: List[Key] = []

    def __init__(self, values: Mapping[str, Any], source: str = ""):
        self._values = dict(values)
        self.source = source
        self.validate()

    def validate(self) -> None:
        """Derived defaults and checks that involve several keys."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name.upper()]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    def update_values(self, values: Mapping[str, Any]) -> None:
        """Replace some already validated values in place (a configuration reload):
        whoever holds this object sees them at its next read."""
        unknown = set(values) - set(self._values)
        if unknown:
            raise KeyError(f"not settings of this object: {', '.join(sorted(unknown))}")
        self._values.update(values)

    @classmethod
    def load(cls, path: Optional[str] = None, overrides: Optional[Mapping[str, str]] = None):
        """Read *path* (if any), apply command-line *overrides* (raw text), validate."""
        raw: Dict[str, str] = {}
        if path:
            raw.update(read_file(path))
        if overrides:
            raw.update({k.upper(): v for k, v in overrides.items() if v is not None})
        return cls(resolve(cls.KEYS, raw, source=path or ""), source=path or "")
