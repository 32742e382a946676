"""Connection settings from the environment and the profile file, under the command line.

Precedence: command line > environment (``SYSADM_URL``, ``SYSADM_KEY``, ``SYSADM_BRIDGE``,
``SYSADM_SERVER``, …) > the selected profile of ``$XDG_CONFIG_HOME/sysadm/config``
(``~/.config/sysadm/config``) > built-in defaults.  The profile is ``--profile NAME``, else
``$SYSADM_PROFILE``, else the section ``[default]`` when the file has one.  A profile is
one INI section; sections do not inherit from each other::

    [default]
    url = wss://nas.lan:12150
    key = ~/.config/sysadm/id.pem

    [office]
    bridge = wss://relay.example.org
    server = office-nas
    key = ~/.config/sysadm/id.pem

Settings come in groups so layers never mix into something nobody asked for: where to
connect (``url``, ``bridge``, ``socket``) and how to log in (``user``, ``key``, ``token``)
are each taken whole from the highest layer that sets any of them; ``server``,
``bridge_key`` and ``allow_upstream_server`` count only when a bridge is used.
Passwords and tokens are never read from the file (use ``SYSADM_PASSWORD`` /
``SYSADM_TOKEN``).  This module imports nothing heavy: it runs before every command.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

DEFAULT_TIMEOUT = 30.0
DEFAULT_PROFILE = "default"

# file key → (option attribute, kind)
FILE_KEYS: Dict[str, Tuple[str, str]] = {
    "url": ("url", "text"),
    "bridge": ("bridge", "text"),
    "server": ("server", "text"),
    "socket": ("socket", "path"),
    "user": ("user", "text"),
    "key": ("key", "path"),
    "bridge_key": ("bridge_key", "path"),
    "fingerprint": ("fingerprint", "text"),
    "known_hosts": ("known_hosts", "path"),
    "known_servers": ("known_servers", "path"),
    "timeout": ("timeout", "float"),
    "allow_upstream_server": ("allow_upstream_server", "bool"),
}
NEVER_IN_FILE = {
    "password": "passwords are never read from the profile file; use SYSADM_PASSWORD or the terminal prompt",
    "token": "tokens are never read from the profile file; use --token or SYSADM_TOKEN",
    "passphrase": "key passphrases are never read from the profile file; use SYSADM_KEY_PASSPHRASE or the terminal",
}

# environment variable → option attribute (SYSADM_SOCKET, SYSADM_TOKEN and SYSADM_PASSWORD
# are read where they are used, with the same precedence).
ENV_KEYS: Dict[str, str] = {
    "SYSADM_URL": "url",
    "SYSADM_BRIDGE": "bridge",
    "SYSADM_SERVER": "server",
    "SYSADM_KEY": "key",
    "SYSADM_BRIDGE_KEY": "bridge_key",
    "SYSADM_USER": "user",
}

TARGET = ("url", "bridge", "socket")
LOGIN = ("user", "key", "token")
BRIDGE_ONLY = ("server", "bridge_key", "allow_upstream_server")
OTHERS = ("fingerprint", "known_hosts", "known_servers", "timeout")
EXPANDED = {"socket", "key", "bridge_key", "known_hosts", "known_servers"}


class ProfileError(Exception):
    """A profile file or setting that cannot be used; the message names file, section, key."""


def config_path(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sysadm", "config")


def _convert(path: str, section: str, name: str, kind: str, raw: str) -> Any:
    value = raw.strip()
    where = f"{path}: [{section}] {name}"
    if not value:
        raise ProfileError(f"{where}: empty value (remove the line, or give a value)")
    if kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise ProfileError(f"{where}: expected a number of seconds, got {value!r}") from None
        if not 0 <= number <= 86400:
            raise ProfileError(f"{where}: expected 0 (never) to 86400 seconds, got {value}")
        return number
    if kind == "bool":
        lowered = value.lower()
        if lowered in ("1", "yes", "true", "on"):
            return True
        if lowered in ("0", "no", "false", "off"):
            return False
        raise ProfileError(f"{where}: expected true or false, got {value!r}")
    if kind == "path":
        return os.path.expanduser(value)
    return value


def read_profile(path: str, name: Optional[str], explicit: bool) -> Dict[str, Any]:
    """The settings of profile *name* in *path* (option attribute → value).

    A missing file or section is an error only when the profile was asked for by name
    (*explicit*); otherwise there is simply no profile."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, default_section="\x00no-default-section")
    parser.optionxform = str  # keep the case, to name keys exactly as written
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        if explicit:
            raise ProfileError(f"profile {name!r} asked for, but there is no profile file {path}") from None
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read the profile file {path}: {getattr(e, 'strerror', None) or e}") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ProfileError(f"{path}: not a valid INI file ({first})") from None
    # Every section is checked, not only the one used: a typo shows up at once.
    for section in parser.sections():
        for key in parser[section]:
            normalized = key.lower().replace("-", "_")
            if normalized in NEVER_IN_FILE:
                raise ProfileError(f"{path}: [{section}] {key}: {NEVER_IN_FILE[normalized]}")
            if normalized not in FILE_KEYS:
                raise ProfileError(f"{path}: [{section}]: unknown key {key!r}; known keys: {', '.join(FILE_KEYS)}")
    chosen = name or DEFAULT_PROFILE
    if chosen not in parser:
        if explicit:
            names = ", ".join(parser.sections()) or "none"
            raise ProfileError(f"{path}: no profile [{chosen}] (profiles in the file: {names})")
        return {}
    settings: Dict[str, Any] = {}
    for key, raw in parser[chosen].items():
        attr, kind = FILE_KEYS[key.lower().replace("-", "_")]
        settings[attr] = _convert(path, chosen, key, kind, raw)
    return settings


def from_environment(environ: Mapping[str, str]) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    for variable, attr in ENV_KEYS.items():
        value = environ.get(variable)
        if value:
            found[attr] = os.path.expanduser(value) if attr in EXPANDED else value
    if environ.get("SYSADM_SOCKET"):
        found["socket"] = environ["SYSADM_SOCKET"]
    if environ.get("SYSADM_TOKEN"):
        found["token"] = environ["SYSADM_TOKEN"]
    return found


def from_command_line(options: Any) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    for attr in TARGET + LOGIN + BRIDGE_ONLY + OTHERS:
        value = getattr(options, attr, None)
        if value is not None and value is not False:
            found[attr] = value
    return found


def merge(layers: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine *layers* (highest first) by the group rules of the module docstring."""
    result: Dict[str, Any] = {}
    for group in (TARGET, LOGIN):
        for layer in layers:
            if any(attr in layer for attr in group):
                result.update({attr: layer[attr] for attr in group if attr in layer})
                break
    for attr in OTHERS + (BRIDGE_ONLY if result.get("bridge") else ()):
        for layer in layers:
            if attr in layer:
                result[attr] = layer[attr]
                break
    return result


def apply(options: Any, environ: Optional[Mapping[str, str]] = None) -> Any:
    """Fill *options* (an argparse Namespace) from the environment and the profile."""
    environ = os.environ if environ is None else environ
    name = getattr(options, "profile", None) or environ.get("SYSADM_PROFILE") or None
    path = config_path(environ)
    profile = read_profile(path, name, explicit=name is not None)
    cli = from_command_line(options)
    env = from_environment(environ)
    merged = merge([cli, env, profile])
    # Options given only with --bridge stay visible when given on the command line, so
    # that "--server needs --bridge" is still said.
    for attr in BRIDGE_ONLY:
        if attr in cli:
            merged.setdefault(attr, cli[attr])
    for attr in TARGET + LOGIN + BRIDGE_ONLY + OTHERS:
        default: Any = False if attr == "allow_upstream_server" else None
        setattr(options, attr, merged.get(attr, default))
    if options.timeout is None:
        options.timeout = DEFAULT_TIMEOUT
    options.profile_used = (name or DEFAULT_PROFILE) if profile else None
    return options
