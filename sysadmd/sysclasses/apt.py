"""The apt backend of ``sysadm/pkg`` and ``sysadm/update``: argv builders, name checks and
parsers of apt-cache / dpkg-query / apt-get output.

Nothing here runs a shell.  Read-only queries run through
:func:`sysadmd.sysclasses.common.run_tool` (async processes, bounded output); changes
are dispatcher command strings (split Qt-style by the dispatcher, never by a shell):
every argument is checked to hold no double quote and quoted when it holds a space.

``PKG_APT_CONFIG`` (a file) reaches every apt tool as ``APT_CONFIG``: the tests point
apt at a private ``file:`` repository with it, and an administrator can do the same.
Every change runs with ``DEBIAN_FRONTEND=noninteractive``, waits up to
:data:`LOCK_WAIT` seconds for the dpkg lock, and reports its progress on the
dispatcher's progress pipe (``APT::Status-Fd``, :mod:`sysadmd.dispatcher.progress`).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Dict, Iterable, List, Optional, Tuple

from sysadmd.dispatcher.runner import PROGRESS_FD
from sysadmd.sysclasses.common import TOOL_ENV
from sysadmd.wire.envelope import ApiError

# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters,
# starting with a letter or digit.  An architecture qualifier (":amd64") is allowed.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,127}(?::[a-z0-9][a-z0-9-]{0,31})?\Z")
LOCK_WAIT = 120  # seconds apt-get waits for the dpkg lock before it fails
TOOLS = ("apt-get", "apt-cache", "apt-mark", "dpkg-query")


def tool_path(name: str) -> Optional[str]:
    return shutil.which(name, path=TOOL_ENV["PATH"])


def present() -> bool:
    """apt and dpkg are installed (a Debian family host)."""
    return all(tool_path(name) for name in TOOLS)


def check_name(name: str, field: str, index: int) -> str:
    if not PACKAGE_NAME.match(name):
        raise ApiError("400", f"'{field}'[{index}] {name[:60]!r} is not a Debian package name (lower case letters, "
                              "digits and + - ., at least two characters, starting with a letter or digit, "
                              "optionally :arch)")
    return name


def quote(arg: str) -> str:
    """One argument of a dispatcher command string (split like Qt, no shell)."""
    if '"' in arg or "\x00" in arg or "\n" in arg:
        raise ValueError(f"cannot pass {arg!r} in a dispatcher command")
    return f'"{arg}"' if not arg or any(c.isspace() for c in arg) else arg


class Apt:
    """How this daemon runs apt: the environment and the argv of each query and change."""

    def __init__(self, apt_config: str = ""):
        self.apt_config = apt_config
        self.paths = {name: tool_path(name) or name for name in TOOLS + ("apt-config", "env")}

    def env(self) -> Dict[str, str]:
        """The environment of read-only tools."""
        env = dict(TOOL_ENV, DEBIAN_FRONTEND="noninteractive")
        if self.apt_config:
            env["APT_CONFIG"] = self.apt_config
        return env

    def argv(self, tool: str, *args: str) -> List[str]:
        return [self.paths[tool], *args]

    # --- changes: dispatcher command strings --------------------------------------------
    def command(self, tool: str, args: Iterable[str]) -> str:
        """A dispatcher command running *tool* with the daemon's apt environment."""
        words = [self.paths["env"], "DEBIAN_FRONTEND=noninteractive"]
        if self.apt_config:
            words.append(f"APT_CONFIG={self.apt_config}")
        words.append(self.paths[tool])
        if tool == "apt-get":
            # No question may wait for an answer nobody gives: changed configuration files
            # keep the administrator's version (dpkg's confdef/confold).
            words += ["-q", "-o", f"APT::Status-Fd={PROGRESS_FD}", "-o", "Dpkg::Use-Pty=0",
                      "-o", f"DPkg::Lock::Timeout={LOCK_WAIT}",
                      "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
        words += list(args)
        return " ".join(quote(w) for w in words)

    def install(self, names: List[str]) -> str:
        return self.command("apt-get", ["-y", "install", *names])

    def remove(self, names: List[str]) -> str:
        return self.command("apt-get", ["-y", "remove", *names])

    def hold(self, names: List[str], hold: bool) -> str:
        return self.command("apt-mark", ["hold" if hold else "unhold", *names])

    def update(self) -> str:
        return self.command("apt-get", ["update"])

    def check_upgrade(self) -> str:
        return self.command("apt-get", ["-s", "upgrade"])

    def upgrade(self) -> str:
        return self.command("apt-get", ["-y", "upgrade"])

    def autoremove(self) -> str:
        return self.command("apt-get", ["-y", "autoremove"])


# --- parsers -------------------------------------------------------------------------------

def parse_records(text: str) -> List[Dict[str, str]]:
    """Deb822 paragraphs (``apt-cache show``): field name → value (continuation lines
    joined with newlines; a lone ``.`` is an empty line)."""
    records: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t" and last:
            piece = line.strip()
            current[last] += "\n" + ("" if piece == "." else piece)
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            current[last] = value.strip()
    if current:
        records.append(current)
    return records


def dependency_names(field: str) -> List[str]:
    """Package names of a Depends field (alternatives and versions dropped)."""
    names = []
    for part in field.split(","):
        first = part.split("|")[0].strip()
        name = first.split(" ")[0].split("(")[0].strip()
        if name and name not in names:
            names.append(name)
    return names


def installed_state(text: str) -> Dict[str, Tuple[str, str]]:
    """``dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'`` → name → (version, status)."""
    out: Dict[str, Tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2].strip())
    return out


def is_installed(status: str) -> bool:
    """From dpkg's status abbreviation (``ii``, ``hi``, ``rc``…): unpacked or further, not
    only configuration files left (``c``) or absent (``n``)."""
    return len(status) >= 2 and status[1] in "iUFWtH"


POLICY_LINE = re.compile(r"^\s*-?\d+\s+(\S+)\s+(\S+)\s+(\S+\s+)?Packages$")
SEARCH_LINE = re.compile(r"^(\S+) - (.*)$")
INST_LINE = re.compile(r"^Inst (\S+)(?: \[([^\]]*)\])? \((\S+) ([^)]*)\)")


def repos_from_policy(text: str) -> List[str]:
    """``apt-cache policy`` (no arguments) → ``"<uri> <suite>"`` of every package index, in order."""
    repos: List[str] = []
    for line in text.splitlines():
        match = POLICY_LINE.match(line)
        if match is None:
            continue
        uri, suite = match.group(1), match.group(2)
        if uri == "/var/lib/dpkg/status":
            continue
        repo = f"{uri} {suite}"
        if repo not in repos:
            repos.append(repo)
    return repos


def search_hits(text: str) -> List[Tuple[str, str]]:
    hits = []
    for line in text.splitlines():
        match = SEARCH_LINE.match(line)
        if match:
            hits.append((match.group(1), match.group(2)))
    return hits


def upgrades_from_simulation(text: str) -> List[Dict[str, str]]:
    """``apt-get -s upgrade`` → ``[{name, installed, version, origin}]`` of every ``Inst`` line."""
    found = []
    for line in text.splitlines():
        match = INST_LINE.match(line)
        if match:
            found.append({"name": match.group(1), "installed": match.group(2) or "", "version": match.group(3),
                          "origin": match.group(4).strip()})
    return found


def regex_literal(term: str) -> str:
    """*term* as a POSIX regular expression matching it literally (apt-cache search)."""
    escaped = re.sub(r"([\\.\[\]()*+?{}|^$])", r"\\\1", term)
    # A leading "-" would make the term an option of apt-cache: "[-]" is the same match.
    return "[-]" + escaped[1:] if escaped.startswith("-") else escaped


def log_dir_from_shell(text: str) -> Optional[str]:
    """``apt-config shell D Dir::Log/d`` → the directory (``D='/var/log/apt/'``)."""
    match = re.search(r"^D='([^']*)'", text, re.M)
    return os.path.normpath(match.group(1)) if match and match.group(1) else None
