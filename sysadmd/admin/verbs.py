"""The verb registry of the ``sysadmd`` console script.

Each verb module (``keys``, ``bridges``) registers its verbs with :func:`verb`; every
verb works on the state directory directly, daemon running or not (SQLite in WAL mode,
and the daemon notices changes without a restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List


@dataclass
class Verb:
    name: str
    usage: str  # argument synopsis, e.g. "USER FILE NICKNAME [EMAIL]"
    help: str
    run: Callable[..., int]  # run(state_dir: str, args: List[str], out, err) -> exit code
    aliases: tuple = ()
    # False: the verb does not touch the state directory; run(options, args, out, err)
    # gets the parsed global options (:class:`GlobalOptions` of main) instead.
    uses_state: bool = True

    def help_text(self) -> str:
        names = " | ".join((self.name, *self.aliases))
        lines = [f"usage: sysadmd {self.name} {self.usage}".rstrip(), ""]
        if self.aliases:
            lines.append(f"names: {names}")
        lines.extend(self.help.splitlines())
        if self.uses_state:
            lines += ["", "options (before or after the verb):",
                      "  --state-dir DIR  state directory to work on",
                      "  --config FILE    config file to read STATE_DIR from"]
        return "\n".join(lines) + "\n"


VERBS: Dict[str, Verb] = {}


def verb(name: str, usage: str, help: str, aliases: tuple = (), uses_state: bool = True):
    def register(fn: Callable[..., int]) -> Callable[..., int]:
        v = Verb(name, usage, help, fn, aliases, uses_state)
        for n in (name, *aliases):
            if n in VERBS:
                raise ValueError(f"verb {n} registered twice")
            VERBS[n] = v
        return fn

    return register


class UsageError(Exception):
    """Wrong arguments for a verb; the message says what was expected."""


def primary_verbs() -> List[Verb]:
    seen = []
    for v in VERBS.values():
        if v not in seen:
            seen.append(v)
    return seen
