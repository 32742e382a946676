"""The OpenRC backend of ``sysadm/services``: OpenRC's own tools, argv only.

* listing: ``rc-update show -v`` (every service in ``/etc/init.d`` with the runlevels it is
  in) and ``rc-status --nocolor --servicelist`` (each service's state); ``is_enabled`` is
  "true" when the service is in a runlevel other than ``off`` and ``shutdown``,
  ``is_running`` when its state is ``started``.  ``description`` is the script's
  ``description=`` line (an ``openrc-run`` script) or its LSB ``Short-Description``;
  ``tag`` is the name, ``path`` the script.
* ``start``/``stop``/``restart``: ``rc-service NAME VERB``.
* ``enable``: ``rc-update add NAME default``; ``disable``: ``rc-update del NAME`` with
  every runlevel the service is in (so a service in ``boot`` is disabled too).
* ``logs(name, lines)``: the last lines of ``/var/log/<name>.log`` when it exists (OpenRC
  keeps no journal of its own).

A failing tool is an error reply carrying the tool's output.  *wrapper* (argv words put
before every tool) lets the same backend drive the OpenRC of another root, e.g. through
``chroot``.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from sysadmd.wire.envelope import ApiError
from sysadmd.sysclasses import logtail
from sysadmd.sysclasses.common import TOOL_ENV
from sysadmd.sysclasses.sysv import ACTION_TIMEOUT, HEADER_BYTES, read_header, run_script

TOOLS = ("rc-service", "rc-update", "rc-status")
IGNORED = frozenset(("rc", "rcS", "functions.sh", "README", "skeleton"))
NOT_ENABLING = frozenset(("off", "shutdown"))
LIST_TIMEOUT = 60.0
LOG_LINES_MAX = 5000
STATUS_LINE = re.compile(r"^\s*(\S+)\s+\[\s*([A-Za-z][A-Za-z ]*?)\s*\]\s*$")
SHOW_LINE = re.compile(r"^\s*(\S+)\s+\|\s*(.*?)\s*$")
DESCRIPTION_LINE = re.compile(r"""^\s*description=(?:"([^"]*)"|'([^']*)'|(\S*))""", re.M)


def parse_status(text: str) -> Dict[str, str]:
    """``rc-status --nocolor --servicelist`` → ``{service: state}``."""
    states: Dict[str, str] = {}
    for line in text.splitlines():
        m = STATUS_LINE.match(line)
        if m:
            states[m.group(1)] = m.group(2).lower()
    return states


def parse_show(text: str) -> Dict[str, List[str]]:
    """``rc-update show -v`` → ``{service: [runlevels]}`` (empty list: in none)."""
    levels: Dict[str, List[str]] = {}
    for line in text.splitlines():
        m = SHOW_LINE.match(line)
        if m:
            levels[m.group(1)] = m.group(2).split()
    return levels


def description_of(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    m = DESCRIPTION_LINE.search(head)
    if m:
        return next(g for g in m.groups() if g is not None)[:200]
    return read_header(path)[0]


class OpenrcBackend:
    name = "openrc"

    def __init__(self, reactor: Any, initd: str = "/etc/init.d", wrapper: Optional[List[str]] = None,
                 log_dir: str = "/var/log"):
        self.reactor = reactor
        self.initd = initd.rstrip("/") or "/"
        self.wrapper = list(wrapper or [])
        self.log_dir = log_dir

    @staticmethod
    def present() -> bool:
        return all(shutil.which(tool, path=TOOL_ENV["PATH"]) for tool in TOOLS)

    def _argv(self, tool: str, *args: str) -> List[str]:
        if self.wrapper:
            return [*self.wrapper, tool, *args]
        return [shutil.which(tool, path=TOOL_ENV["PATH"]) or tool, *args]

    @defer.inlineCallbacks
    def _run(self, tool: str, *args: str, timeout: float = ACTION_TIMEOUT):
        argv = self._argv(tool, *args)
        code, text = yield run_script(self.reactor, argv, timeout)
        if code != 0:
            status = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
            raise ApiError("400", f"{' '.join([tool, *args])} {status}: {_tidy(text) or 'no message'}")
        return text

    # --- listing ------------------------------------------------------------------------------
    def script(self, name: str) -> Optional[str]:
        path = os.path.join(self.initd, name)
        if name in IGNORED or name.startswith(".") or not os.path.isfile(path) or not os.access(path, os.X_OK):
            return None
        return path

    @defer.inlineCallbacks
    def runlevels(self):
        text = yield self._run("rc-update", "show", "-v", timeout=LIST_TIMEOUT)
        return parse_show(text)

    @defer.inlineCallbacks
    def list(self):
        levels = yield self.runlevels()
        states = parse_status((yield self._run("rc-status", "--nocolor", "--servicelist", timeout=LIST_TIMEOUT)))
        out: Dict[str, Dict[str, str]] = {}
        for name in sorted(set(levels) | set(states)):
            path = self.script(name)
            if path is None:
                continue
            enabled = any(level not in NOT_ENABLING for level in levels.get(name, []))
            out[name] = {"name": name, "tag": name, "path": path, "description": description_of(path),
                         "is_enabled": "true" if enabled else "false",
                         "is_running": "true" if states.get(name) == "started" else "false"}
        return out

    def owns(self, name: str) -> bool:
        return self.script(name) is not None

    # --- actions ------------------------------------------------------------------------------
    @defer.inlineCallbacks
    def act(self, verb: str, name: str):
        if self.script(name) is None:
            raise ApiError("400", f"no OpenRC service {name} in {self.initd}")
        if verb in ("start", "stop", "restart"):
            yield self._run("rc-service", name, verb)
        elif verb == "enable":
            yield self._run("rc-update", "add", name, "default")
        elif verb == "disable":
            levels = (yield self.runlevels()).get(name, [])
            if levels:
                yield self._run("rc-update", "del", name, *levels)
        else:
            raise ApiError("400", f"unknown verb {verb}")

    # --- logs (used by the services class's logs action) -------------------------------------
    def logs(self, name: str, lines: int) -> defer.Deferred:
        """Fires with ``{"lines": the last *lines* lines of <log_dir>/<name>.log, "source": path}``
        (read backwards, bounded: :func:`sysadmd.sysclasses.logtail.tail_lines`)."""
        path = os.path.join(self.log_dir, f"{name}.log")
        found = logtail.tail_lines(path, max(1, min(int(lines), LOG_LINES_MAX)))
        if found is None:
            return defer.fail(ApiError("404", f"OpenRC keeps no log for {name}: {path} does not exist "
                                              "or is not a readable regular file"))
        source = path if found.complete else f"{path} (last {found.scanned >> 20} MiB only)"
        return defer.succeed({"lines": found.lines, "source": source})


def _tidy(text: str) -> str:
    """A tool's output without the noise lines some OpenRC builds print (``scandir: …``)."""
    kept = [line for line in text.splitlines() if line.strip() and not line.startswith("scandir: ")]
    return "\n".join(kept).strip()[-2000:]
