"""``sysadmd VERB …``: the admin command for the daemon's state directory.

    sysadmd [--state-dir DIR | --config FILE] VERB [ARGS…] [--state-dir DIR | --config FILE]

Verbs (from :mod:`sysadmd.admin.verbs`) work on the database directly, whether the
daemon runs or not.  The global options may come before or after the verb (after
``--`` everything is an argument of the verb); ``VERB --help`` explains one verb.
Exit codes: 0 done, 1 the verb failed, 2 the command line was wrong.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import List, Optional, TextIO

import sysadmd
from sysadmd import config as configmod
from sysadmd.admin import bridges, checkconfig, keys
from sysadmd.admin.state import VerbFailed
from sysadmd.admin.verbs import VERBS, UsageError, primary_verbs
from sysadmd.runtime.configfile import ConfigError

VERB_MODULES = (bridges, checkconfig, keys)  # imported for their verbs, which they register

DEFAULT_CONFIG = "/etc/sysadmd.conf"  # the file twistd -n sysadmd reads by default

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def usage_text() -> str:
    lines = [
        "usage: sysadmd [--state-dir DIR | --config FILE] VERB [ARGS...]",
        "       sysadmd VERB --help | sysadmd --version",
        "",
        "Manage the sysadmd state directory (registered keys, blocked addresses, bridge",
        "links). Works while the daemon runs; it notices the changes without a restart.",
        "Start the daemon itself with: twistd -n sysadmd",
        "",
        "options (before or after the verb; after -- everything is an argument):",
        "  --state-dir DIR  state directory (default: STATE_DIR of the config file, else",
        f"                   {configmod.default_state_dir()})",
        f"  --config FILE    config file to read STATE_DIR from (default: {DEFAULT_CONFIG} if present)",
        "  -h, --help       show this help, or one verb's help after the verb",
        "  --version        show the version",
        "",
        "verbs:",
    ]
    for v in sorted(primary_verbs(), key=lambda v: v.name):
        names = " | ".join((v.name, *v.aliases))
        lines.append(f"  {names} {v.usage}".rstrip())
        for text in v.help.splitlines():
            lines.append(f"      {text}")
    return "\n".join(lines) + "\n"


@dataclass
class GlobalOptions:
    state_dir: Optional[str] = None
    config_file: Optional[str] = None
    wants_help: bool = False
    wants_version: bool = False
    verb: Optional[str] = None
    args: List[str] = field(default_factory=list)
    default_config: str = DEFAULT_CONFIG


_VALUE_OPTIONS = {"--state-dir": ("state_dir", "DIR"), "--config": ("config_file", "FILE")}


def parse_command_line(argv: List[str]) -> GlobalOptions:
    """Split *argv* into the global options (anywhere before ``--``), the verb and its
    arguments; raises :class:`UsageError`.  An option given twice must agree."""
    opts = GlobalOptions()
    i = 0
    passthrough = False
    while i < len(argv):
        arg = argv[i]
        i += 1
        if passthrough:
            opts.args.append(arg)
            continue
        if arg == "--" and opts.verb is not None:
            passthrough = True
            continue
        if arg in ("-h", "--help"):
            opts.wants_help = True
            continue
        if arg == "--version":
            opts.wants_version = True
            continue
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            attr, meta = _VALUE_OPTIONS[name]
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"{name} needs a value ({meta})")
                value = argv[i]
                i += 1
            if not value:
                raise UsageError(f"{name} needs a non-empty value")
            previous = getattr(opts, attr)
            if previous is not None and previous != value:
                raise UsageError(f"{name} given twice ({previous} and {value}); give it once")
            setattr(opts, attr, value)
            continue
        if opts.verb is None:
            if arg.startswith("-"):
                raise UsageError(f"unknown option {arg} (expected --state-dir DIR, --config FILE, --version or -h)")
            opts.verb = arg
            continue
        opts.args.append(arg)  # the verb checks its own arguments and options
    return opts


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
        opts = parse_command_line(argv)
    except UsageError as e:
        err.write(f"sysadmd: {e}\n\n{usage_text()}")
        return EXIT_USAGE
    if opts.wants_version:
        out.write(f"sysadmd {sysadmd.__version__}\n")
        return EXIT_OK
    if opts.verb is None:
        if opts.wants_help:
            out.write(usage_text())
            return EXIT_OK
        err.write(f"sysadmd: expected a verb\n\n{usage_text()}")
        return EXIT_USAGE
    chosen = VERBS.get(opts.verb)
    if chosen is None:
        known = ", ".join(sorted(VERBS))
        err.write(f"sysadmd: unknown verb {opts.verb!r}; expected one of: {known} (see sysadmd --help)\n")
        return EXIT_USAGE
    if opts.wants_help:
        out.write(chosen.help_text())
        return EXIT_OK
    if not chosen.uses_state:
        target, directory = opts, None
    else:
        try:
            directory = target = resolve_state_dir(opts.state_dir, opts.config_file)
        except ConfigError as e:
            err.write(f"sysadmd: configuration error: {e}\n")
            return EXIT_FAILED
    try:
        return chosen.run(target, opts.args, out, err)
    except UsageError as e:
        err.write(f"sysadmd {chosen.name}: {e}\nusage: sysadmd {chosen.name} {chosen.usage}\n")
        return EXIT_USAGE
    except VerbFailed as e:
        err.write(f"sysadmd {chosen.name}: {e}\n")
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as e:
        where = f" (state directory {directory})" if directory else ""
        err.write(f"sysadmd {chosen.name}: {e}{where}\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
