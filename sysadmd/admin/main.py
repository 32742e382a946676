"""``sysadmd VERB …``: the admin command for the daemon's state directory.

    sysadmd [--state-dir DIR | --config FILE] VERB [ARGS…]

Verbs (from :mod:`sysadmd.admin.verbs`) work on the database directly, whether the
daemon runs or not.  Exit codes: 0 done, 1 the verb failed, 2 the command line was wrong.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import List, Optional, TextIO, Tuple

from sysadmd import config as configmod
from sysadmd.admin import bridges, keys  # noqa: F401  (they register their verbs)
from sysadmd.admin.state import VerbFailed
from sysadmd.admin.verbs import VERBS, UsageError, primary_verbs
from sysadmd.configfile import ConfigError

DEFAULT_CONFIG = "/etc/sysadmd.conf"  # the file twistd -n sysadmd reads by default

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def usage_text() -> str:
    lines = [
        "usage: sysadmd [--state-dir DIR | --config FILE] VERB [ARGS...]",
        "",
        "Manage the sysadmd state directory (registered keys, blocked addresses, bridge",
        "links). Works while the daemon runs; it notices the changes without a restart.",
        "",
        "options:",
        "  --state-dir DIR  state directory (default: STATE_DIR of the config file, else",
        f"                   {configmod.default_state_dir()})",
        f"  --config FILE    config file to read STATE_DIR from (default: {DEFAULT_CONFIG} if present)",
        "  -h, --help       show this help",
        "",
        "verbs:",
    ]
    for v in sorted(primary_verbs(), key=lambda v: v.name):
        names = " | ".join((v.name, *v.aliases))
        lines.append(f"  {names} {v.usage}".rstrip())
        for text in v.help.splitlines():
            lines.append(f"      {text}")
    return "\n".join(lines) + "\n"


def parse_options(argv: List[str]) -> Tuple[Optional[str], Optional[str], bool, List[str]]:
    """``(state_dir, config_file, wants_help, rest)``; raises :class:`UsageError`."""
    state_dir = config_file = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            return state_dir, config_file, True, argv[i + 1:]
        name, eq, value = arg.partition("=")
        if name in ("--state-dir", "--config"):
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value ({'DIR' if name == '--state-dir' else 'FILE'})")
                i += 1
                value = argv[i]
            if not value:
                raise UsageError(f"{name} needs a non-empty value")
            if name == "--state-dir":
                state_dir = value
            else:
                config_file = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg} (expected --state-dir DIR, --config FILE or -h)")
        else:
            return state_dir, config_file, False, argv[i:]
        i += 1
    return state_dir, config_file, False, []


def resolve_state_dir(state_dir: Optional[str], config_file: Optional[str]) -> str:
    if state_dir:
        return os.path.abspath(os.path.expanduser(state_dir))
    if config_file is None and os.path.exists(DEFAULT_CONFIG):
        config_file = DEFAULT_CONFIG
    return configmod.load(config_file).state_dir


def main(argv: Optional[List[str]] = None, out: TextIO = None, err: TextIO = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        state_dir, config_file, wants_help, rest = parse_options(argv)
    except UsageError as e:
        err.write(f"sysadmd: {e}\n\n{usage_text()}")
        return EXIT_USAGE
    if wants_help:
        out.write(usage_text())
        return EXIT_OK
    if not rest:
        err.write(f"sysadmd: expected a verb\n\n{usage_text()}")
        return EXIT_USAGE
    name, args = rest[0], rest[1:]
    chosen = VERBS.get(name)
    if chosen is None:
        known = ", ".join(sorted(VERBS))
        err.write(f"sysadmd: unknown verb {name!r}; expected one of: {known} (see sysadmd --help)\n")
        return EXIT_USAGE
    try:
        directory = resolve_state_dir(state_dir, config_file)
    except ConfigError as e:
        err.write(f"sysadmd: configuration error: {e}\n")
        return EXIT_FAILED
    try:
        return chosen.run(directory, args, out, err)
    except UsageError as e:
        err.write(f"sysadmd {chosen.name}: {e}\nusage: sysadmd {chosen.name} {chosen.usage}\n")
        return EXIT_USAGE
    except VerbFailed as e:
        err.write(f"sysadmd {chosen.name}: {e}\n")
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as e:
        err.write(f"sysadmd {chosen.name}: {e} (state directory {directory})\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
