"""Split a dispatcher command string into an argument list, the way upstream's Qt does.

Upstream started every command with ``QProcess::start(<string>)``, so clients send whole
command lines.  The rules are Qt's, never a shell's:

* whitespace separates arguments;
* a double quote toggles "inside quotes", where whitespace is kept;
* three double quotes in a row stand for one literal ``"``;
* two in a row toggle nothing and add nothing (so ``""`` alone is no argument).

No globbing, pipes, redirection, variables or ``&&``: the result goes straight to
``execvp``-style spawning.
"""

from __future__ import annotations

from typing import List


class CommandError(ValueError):
    """A command string that yields no program to run."""


def split_command(text: str) -> List[str]:
    """The argument list of *text*; raises :class:`CommandError` if it has none."""
    if not isinstance(text, str):
        raise CommandError(f"a command must be a string, got {type(text).__name__}")
    if "\0" in text:
        raise CommandError("a command must not contain NUL characters")
    args: List[str] = []
    current: List[str] = []
    quotes = 0  # consecutive double quotes seen just before this character
    quoted = False
    for char in text:
        if char == '"':
            quotes += 1
            if quotes == 3:
                current.append('"')
                quotes = 0
            continue
        if quotes == 1:
            quoted = not quoted
        quotes = 0
        if char.isspace() and not quoted:
            if current:
                args.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        args.append("".join(current))
    if not args:
        raise CommandError("the command is empty (nothing but spaces and quotes)")
    return args
