"""The SysV init script backend of ``sysadm/services``: scripts in ``/etc/init.d``
(``SERVICES_INITD_DIR``) and their runlevel links in the ``rc?.d`` directories beside it.

* listing: every executable regular file of the directory but the helpers that are not
  services (``README``, ``skeleton``, ``rc``, ``rcS``…); ``description`` and ``tag`` come
  from the LSB header (``Short-Description``, first ``Provides``); ``is_enabled`` is
  "true" when an ``S`` link exists in runlevel 2, 3, 4 or 5; ``is_running`` is "true" when
  ``<script> status`` exits 0 (LSB).  Status checks run at most
  :data:`STATUS_PARALLEL` at a time, each killed after :data:`STATUS_TIMEOUT` seconds,
  and requests that arrive while a listing runs share it.
* ``start``/``stop``/``restart``: ``<script> <verb>`` with a clean environment (what
  ``service`` does on a host without systemd).  Output goes to a temporary file, not a
  pipe, so a daemon that keeps its inherited stdout open cannot hold the reply.
* ``enable``/``disable``: on the system's own ``/etc/init.d`` with ``update-rc.d``
  (``defaults`` or ``defaults-disabled`` first when the script has no links yet, then
  ``enable``/``disable``); on another directory, the same links made here: ``S01``/``K01``
  links from the script's ``Default-Start``/``Default-Stop``, then ``S``↔``K`` renames
  in runlevels 2-5, as ``update-rc.d`` does without insserv.
* ``logs``: the last lines of the syslog file of ``SERVICES_LOG_DIR`` (the first of
  ``syslog``, ``messages``, ``daemon.log`` there) whose tag is the script's name or its
  LSB ``Provides`` (case ignored; ``name/part`` counts as ``name``), read backwards (:mod:`sysadmd.sysclasses.logtail`, at
  most :data:`~sysadmd.sysclasses.logtail.MAX_SCAN_BYTES` per request), then those of
  the service's own ``<name>.log`` and ``<name>/*.log`` there (the :data:`OWN_LOGS_MAX`
  newest); each file's lines are one block, blocks in the order the files were last
  written, and the last *lines* of all that are the answer.  Read in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, error, protocol, threads
from twisted.python import failure

from sysadmd.wire.envelope import ApiError
from sysadmd.sysclasses import logtail
from sysadmd.sysclasses.common import TOOL_ENV, _kill

IGNORED = frozenset(("README", "skeleton", "rc", "rcS", "single", "reboot", "halt", "bootclean.sh", "functions"))
STATUS_PARALLEL = 8
STATUS_TIMEOUT = 10.0
ACTION_TIMEOUT = 120.0
OUTPUT_KEEP = 16 * 1024
BOOT_LEVELS = ("2", "3", "4", "5")
HEADER_BYTES = 8192
SYSLOG_FILES = ("syslog", "messages", "daemon.log")
OWN_LOGS_MAX = 8  # newest <name>/*.log files read


@dataclass
class Script:
    name: str
    path: str
    description: str
    tag: str
    start_levels: List[str]
    stop_levels: List[str]


def read_header(path: str) -> Tuple[str, str, List[str], List[str]]:
    """``(description, provides, Default-Start, Default-Stop)`` from an LSB header."""
    desc, provides, start, stop = "", "", [], []
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES).decode("utf-8", "replace")
    except OSError:
        return desc, provides, start, stop
    inside = False
    for line in head.splitlines():
        if line.startswith("### BEGIN INIT INFO"):
            inside = True
        elif line.startswith("### END INIT INFO"):
            break
        elif inside:
            m = re.match(r"#\s*([A-Za-z-]+):\s*(.*)", line)
            if not m:
                continue
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == "short-description":
                desc = value
            elif key == "provides":
                provides = value.split()[0] if value.split() else ""
            elif key == "default-start":
                start = value.split()
            elif key == "default-stop":
                stop = value.split()
    return desc, provides, start, stop


class _Exit(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred):
        self.done = done

    def processEnded(self, reason) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        if code is None and isinstance(value, error.ProcessTerminated):
            code = -(value.signal or 0)
        self.done.callback(code)


@defer.inlineCallbacks
def run_script(reactor: Any, argv: List[str], timeout: float, cwd: Optional[str] = "/"):
    """Run *argv* with its stdout and stderr in a temporary file; ``(code, output tail)``.

    *cwd* ``None`` keeps the daemon's own directory, which lets Twisted use
    ``posix_spawn`` instead of ``fork`` (several times cheaper for a large daemon):
    status checks, run a thousand at a time, use it; actions run in ``/``."""
    with tempfile.TemporaryFile() as out, open(os.devnull, "rb") as null:
        done: defer.Deferred = defer.Deferred()
        try:
            transport = reactor.spawnProcess(_Exit(done), argv[0], argv, env=dict(TOOL_ENV), path=cwd,
                                             childFDs={0: null.fileno(), 1: out.fileno(), 2: out.fileno()})
        except OSError as e:
            raise ApiError("500", f"cannot run {argv[0]}: {e.strerror or e}") from None
        killer = reactor.callLater(timeout, _kill, transport)
        code = yield done
        if killer.active():
            killer.cancel()
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_KEEP))
        text = out.read().decode("utf-8", "replace")
    return code, text


class SysvBackend:
    name = "sysv"

    def __init__(self, reactor: Any, initd: str, log_dir: str = "/var/log"):
        self.reactor = reactor
        self.initd = initd.rstrip("/") or "/"
        self.log_dir = log_dir
        self.etc = os.path.dirname(self.initd)
        self.use_update_rc_d = self.initd == "/etc/init.d" and shutil.which("update-rc.d", path=TOOL_ENV["PATH"])
        self._status_slots = defer.DeferredSemaphore(STATUS_PARALLEL)
        self._waiters: Optional[List[defer.Deferred]] = None

    @staticmethod
    def present(initd: str) -> bool:
        return os.path.isdir(initd)

    # --- listing --------------------------------------------------------------------------
    def scripts(self) -> List[Script]:
        found = []
        try:
            entries = sorted(os.scandir(self.initd), key=lambda e: e.name)
        except OSError:
            return []
        for entry in entries:
            name = entry.name
            if name in IGNORED or name.startswith(".") or ".dpkg-" in name or name.endswith((".sh.orig", "~")):
                continue
            try:
                if not entry.is_file() or not os.access(entry.path, os.X_OK):
                    continue
            except OSError:
                continue
            desc, provides, start, stop = read_header(entry.path)
            found.append(Script(name, entry.path, desc, provides or name, start, stop))
        return found

    def script(self, name: str) -> Optional[Script]:
        path = os.path.join(self.initd, name)
        if name in IGNORED or not os.path.isfile(path) or not os.access(path, os.X_OK):
            return None
        desc, provides, start, stop = read_header(path)
        return Script(name, path, desc, provides or name, start, stop)

    def _links(self) -> Dict[str, List[str]]:
        """``{script: [link names in rc2-5.d]}``."""
        links: Dict[str, List[str]] = {}
        for level in BOOT_LEVELS:
            try:
                names = os.listdir(os.path.join(self.etc, f"rc{level}.d"))
            except OSError:
                continue
            for link in names:
                if re.match(r"[SK]\d\d", link):
                    links.setdefault(link[3:], []).append(link)
        return links

    def enabled(self, name: str, links: Optional[Dict[str, List[str]]] = None) -> bool:
        links = self._links() if links is None else links
        return any(link.startswith("S") for link in links.get(name, []))

    def running(self, script: Script) -> defer.Deferred:
        d = self._status_slots.run(run_script, self.reactor, [script.path, "status"], STATUS_TIMEOUT, None)
        return d.addCallback(lambda result: result[0] == 0)

    def list(self) -> defer.Deferred:
        """Fires with ``{name: upstream's service object}``; concurrent calls share one run."""
        d: defer.Deferred = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(d)
            return d
        self._waiters = [d]

        def done(result):
            waiters, self._waiters = self._waiters, None
            for waiter in waiters:
                if isinstance(result, failure.Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        defer.ensureDeferred(self._list()).addBoth(done)
        return d

    async def _list(self) -> Dict[str, Dict[str, str]]:
        scripts = self.scripts()
        links = self._links()
        states = await defer.gatherResults([self.running(s) for s in scripts], consumeErrors=True)
        return {s.name: {"name": s.name, "tag": s.tag, "path": s.path, "description": s.description,
                         "is_enabled": "true" if self.enabled(s.name, links) else "false",
                         "is_running": "true" if up else "false"}
                for s, up in zip(scripts, states)}

    def owns(self, name: str) -> bool:
        return self.script(name) is not None

    # --- actions ----------------------------------------------------------------------------
    @defer.inlineCallbacks
    def act(self, verb: str, name: str):
        script = self.script(name)
        if script is None:
            raise ApiError("400", f"no init script {name} in {self.initd}")
        if verb in ("start", "stop", "restart"):
            code, text = yield run_script(self.reactor, [script.path, verb], ACTION_TIMEOUT)
            if code != 0:
                raise ApiError("400", _failure(f"{script.path} {verb}", code, text))
        elif self.use_update_rc_d:
            if not any(self._links().get(name, [])):
                yield self._tool(["update-rc.d", name, "defaults" if verb == "enable" else "defaults-disabled"])
            yield self._tool(["update-rc.d", name, verb])
        else:
            self._toggle_links(script, verb == "enable")

    @defer.inlineCallbacks
    def _tool(self, argv: List[str]):
        code, text = yield run_script(self.reactor, [shutil.which(argv[0], path=TOOL_ENV["PATH"]) or argv[0], *argv[1:]],
                                      ACTION_TIMEOUT)
        if code != 0:
            raise ApiError("400", _failure(" ".join(argv), code, text))

    def _toggle_links(self, script: Script, enable: bool) -> None:
        name = script.name
        try:
            if not self._links().get(name) and not self._any_link(name):
                if not script.start_levels:
                    raise ApiError("400", f"{script.path} has no Default-Start runlevels in its LSB header; "
                                          "nothing to enable or disable")
                first = "S" if enable else "K"
                for level in script.start_levels:
                    self._link(level, f"{first}01{name}", name)
                for level in script.stop_levels:
                    self._link(level, f"K01{name}", name)
                return
            want, other = ("S", "K") if enable else ("K", "S")
            for level in BOOT_LEVELS:
                directory = os.path.join(self.etc, f"rc{level}.d")
                for link in _names(directory):
                    if link.startswith(other) and re.match(r"[SK]\d\d", link) and link[3:] == name:
                        os.rename(os.path.join(directory, link), os.path.join(directory, want + link[1:]))
        except OSError as e:
            raise ApiError("400", f"changing the runlevel links of {name} failed: {e.strerror or e}") from None

    # --- logs -------------------------------------------------------------------------------
    def logs(self, name: str, lines: int) -> defer.Deferred:
        """Fires with ``{"lines": [...], "source": "<files read>"}`` (see the module docstring)."""
        script = self.script(name)
        if script is None:
            return defer.fail(ApiError("400", f"no init script {name} in {self.initd}"))
        tags = {name.lower().encode(), script.tag.lower().encode()}
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.read_logs, name, tags, lines)

    def read_logs(self, name: str, tags: set, lines: int) -> Dict[str, Any]:
        """The blocking part of :meth:`logs` (also called directly by tests)."""
        blocks: List[Tuple[float, str, List[str]]] = []
        budget = logtail.MAX_SCAN_BYTES
        syslog = next((p for p in (os.path.join(self.log_dir, f) for f in SYSLOG_FILES) if os.path.isfile(p)), None)
        if syslog is not None:
            def ours(line: bytes) -> bool:
                tag = logtail.syslog_tag(line)
                if tag is None:
                    return False
                tag = tag.lower()
                return tag in tags or tag.split(b"/", 1)[0] in tags  # postfix/smtpd is postfix's
            tail = logtail.tail_lines(syslog, lines, keep=ours, max_scan=budget)
            if tail is not None:
                budget -= tail.scanned
                label = f"{syslog} (tag {' or '.join(sorted(t.decode() for t in tags))}"
                label += ", last {} MiB only)".format(tail.scanned >> 20) if not tail.complete else ")"
                blocks.append((_mtime(syslog), label, tail.lines))
        for path in self._own_logs(name):
            if budget <= 0:
                break
            tail = logtail.tail_lines(path, lines, max_scan=budget)
            if tail is not None:
                budget -= tail.scanned
                blocks.append((_mtime(path), path, tail.lines))
        blocks.sort(key=lambda block: block[0])
        out: List[str] = []
        for _, _, block in blocks:
            out.extend(block)
        sources = ", ".join(label for _, label, _ in blocks)
        return {"lines": out[-lines:] if lines else [],
                "source": sources or f"no syslog ({', '.join(SYSLOG_FILES)}) nor {name}.log in {self.log_dir}"}

    def _own_logs(self, name: str) -> List[str]:
        paths = [os.path.join(self.log_dir, name + ".log")]
        directory = os.path.join(self.log_dir, name)
        try:
            found = [e.path for e in os.scandir(directory) if e.name.endswith(".log") and e.is_file(follow_symlinks=False)]
        except OSError:
            found = []
        found.sort(key=_mtime, reverse=True)
        return [p for p in paths if os.path.isfile(p)] + found[:OWN_LOGS_MAX]

    def _any_link(self, name: str) -> bool:
        for level in ("S", "0", "1", "2", "3", "4", "5", "6"):
            if any(link[3:] == name for link in _names(os.path.join(self.etc, f"rc{level}.d"))):
                return True
        return False

    def _link(self, level: str, link: str, name: str) -> None:
        directory = os.path.join(self.etc, f"rc{level}.d")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, link)
        if not os.path.lexists(path):
            os.symlink(f"../{os.path.basename(self.initd)}/{name}", path)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _names(directory: str) -> List[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _failure(what: str, code: Optional[int], text: str) -> str:
    status = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
    return f"{what} {status}: {text.strip()[-2000:] or 'no message'}"
