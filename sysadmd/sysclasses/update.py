"""``sysadm/update``: system updates through apt, in upstream's status shapes (routed when
apt and dpkg are installed, with :mod:`sysadmd.sysclasses.pkg`).

::

    {"action":"checkupdates"[,"force":"true"]}
      → {"checkupdates":{"status":"noupdates"|"updatesavailable"|"checkingforupdates"|
                                   "updaterunning"|"rebootrequired",
                         "details":"<text>","last_check":"<ISO time of the package lists>",
                         "packageupdate":{"name":"<n> packages","packages":[{name,installed,version,origin}]},
                         "security":{"name":"<n> security updates"}}}
    {"action":"startupdate"[,"target":"pkgupdate"]}        (full access)
      → {"startupdate":{"command","comment":"Task Queued","queueid","id"}}
    {"action":"listlogs"} → {"listlogs":{"history.log":{"name","started","finished"},…}}
    {"action":"readlogs","logs":"history.log" | [...]} → {"readlogs":{"history.log":"<text>"}}

``checkupdates`` answers from the package lists as they are (``apt-get -s upgrade``, a
simulation); with ``force`` it queues ``sysadm_update_checkupdates`` (``apt-get update``)
in ``pkg_queue`` and answers ``checkingforupdates`` (upstream's behaviour), as it does
while that job runs.  ``updaterunning`` while a ``startupdate`` job is pending or
running; ``rebootrequired`` when ``/run/reboot-required`` exists (Debian's flag file;
its package list is in ``details``).  ``startupdate`` queues
``sysadm_update_runupdates::{uuid}`` = ``apt-get -y upgrade`` in ``pkg_queue`` (only
``target`` ``pkgupdate``: upstream's other targets are TrueOS's).  The logs are apt's
own (``Dir::Log``: history.log, term.log and their rotations), each read to its last
``PKG_LOG_READ_MAX`` bytes (``.gz`` rotations decompressed).
"""

from __future__ import annotations

import gzip
import os
from datetime import datetime
from typing import Any, Dict, List

from twisted.internet import defer, threads

from sysadmd.api import require_full_access
from sysadmd.session import Session
from sysadmd.sysclasses import apt as aptmod
from sysadmd.sysclasses.common import ActionTable, flag_arg, names_arg, run_tool, text_arg
from sysadmd.sysclasses.pkg import QUERY_TIMEOUT, PackageJobs
from sysadmd.sysclasses.apt import Apt
from sysadmd.wire.envelope import ApiError

REBOOT_REQUIRED = "/run/reboot-required"
CHECK_JOB = "sysadm_update_checkupdates"
RUN_JOB = "sysadm_update_runupdates"
MAX_LOGS = 64
MAX_DETAILS = 64 * 1024


def available(config: Any) -> bool:
    return aptmod.present()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


class Updates:
    def __init__(self, reactor: Any, config: Any, dispatcher: Any, *, reboot_flag: str = REBOOT_REQUIRED):
        self.reactor = reactor
        self.apt = Apt(config.pkg_apt_config)
        self.jobs = PackageJobs(dispatcher)
        self.read_max = config.pkg_log_read_max
        self.reboot_flag = reboot_flag

    def _run(self, *argv: str) -> defer.Deferred:
        return run_tool(self.reactor, list(argv), timeout=QUERY_TIMEOUT, env=self.apt.env())

    @defer.inlineCallbacks
    def _lists_dir(self) -> Any:
        text = yield self._run(*self.apt.argv("apt-config", "shell", "D", "Dir::State::Lists/d"))
        return aptmod.log_dir_from_shell(text)

    @defer.inlineCallbacks
    def checkupdates(self, session: Session, args: Dict[str, Any]):
        force = flag_arg(args, "force", False)
        if self.jobs.active(RUN_JOB):
            return {"status": "updaterunning"}
        if self.jobs.active(CHECK_JOB):
            return {"status": "checkingforupdates"}
        if os.path.exists(self.reboot_flag):
            try:
                with open(self.reboot_flag + ".pkgs", "rb") as f:
                    details = f.read(MAX_DETAILS).decode("utf-8", "replace")
            except OSError:
                details = ""
            return {"status": "rebootrequired", "details": details}
        if force:
            require_full_access(session, "sysadm/update checkupdates with force")
            self.jobs.submit(session, CHECK_JOB, self.apt.update(), separator=None)
            return {"status": "checkingforupdates"}
        text = yield self._run(*self.apt.argv("apt-get", "-s", "-q", "upgrade"))
        upgrades = aptmod.upgrades_from_simulation(text)
        out: Dict[str, Any] = {"status": "updatesavailable" if upgrades else "noupdates",
                               "details": text[-MAX_DETAILS:]}
        lists = yield self._lists_dir()
        try:
            out["last_check"] = _iso(os.stat(lists).st_mtime) if lists else ""
        except OSError:
            out["last_check"] = ""
        if upgrades:
            out["packageupdate"] = {"name": f"{len(upgrades)} packages", "packages": upgrades}
            security = [u for u in upgrades if "security" in u["origin"].lower()]
            if security:
                out["security"] = {"name": f"{len(security)} security updates",
                                   "packages": [u["name"] for u in security]}
        return out

    def startupdate(self, session: Session, args: Dict[str, Any]):
        target = text_arg(args, "target", required=False, default="pkgupdate", max_chars=32)
        if target != "pkgupdate":
            raise ApiError("400", f"'target' {target!r} is not supported: only \"pkgupdate\" (all package upgrades) "
                                  "exists on an apt host")
        if self.jobs.active(RUN_JOB):
            raise ApiError("400", "an update is already queued or running (see checkupdates)")
        queued = self.jobs.submit(session, RUN_JOB + "::", self.apt.upgrade(), separator="")
        return {"command": queued["proc_cmd"], "comment": "Task Queued", "queueid": queued["proc_id"],
                "id": queued["id"]}

    @defer.inlineCallbacks
    def _log_dir(self) -> Any:
        text = yield self._run(*self.apt.argv("apt-config", "shell", "D", "Dir::Log/d"))
        directory = aptmod.log_dir_from_shell(text)
        if not directory:
            raise ApiError("500", "apt-config names no log directory (Dir::Log)")
        return directory

    @staticmethod
    def _logs_in(directory: str) -> Dict[str, os.stat_result]:
        found = {}
        try:
            names = os.listdir(directory)
        except OSError:
            return {}
        for name in names:
            try:
                st = os.stat(os.path.join(directory, name), follow_symlinks=False)
            except OSError:
                continue
            if os.path.isfile(os.path.join(directory, name)) and not os.path.islink(os.path.join(directory, name)):
                found[name] = st
        return found

    @defer.inlineCallbacks
    def listlogs(self, session: Session, args: Dict[str, Any]):
        directory = yield self._log_dir()
        found = yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._logs_in, directory)
        newest = sorted(found.items(), key=lambda kv: -kv[1].st_mtime)[:MAX_LOGS]
        return {name: {"name": name, "started": str(int(st.st_ctime)), "finished": str(int(st.st_mtime))}
                for name, st in newest}

    def _read(self, directory: str, names: List[str]) -> Dict[str, str]:
        known = self._logs_in(directory)
        out = {}
        for name in names:
            if name not in known:
                raise ApiError("400", f"no log named {name[:80]!r} in {directory} (see listlogs)")
        for name in names:
            path = os.path.join(directory, name)
            try:
                if name.endswith(".gz"):
                    with gzip.open(path, "rb") as f:
                        data = b""
                        while True:
                            chunk = f.read(1 << 20)
                            if not chunk:
                                break
                            data = (data + chunk)[-self.read_max:]
                else:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        f.seek(max(0, size - self.read_max))
                        data = f.read(self.read_max)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise ApiError("400", f"cannot read log {name}: {getattr(e, 'strerror', None) or e}") from None
            out[name] = data.decode("utf-8", "replace")
        return out

    @defer.inlineCallbacks
    def readlogs(self, session: Session, args: Dict[str, Any]):
        names = names_arg(args, "logs", max_items=MAX_LOGS, max_chars=255)
        for i, name in enumerate(names):
            if "/" in name or name in (".", ".."):
                raise ApiError("400", f"'logs'[{i}] must be a file name from listlogs, not a path")
        directory = yield self._log_dir()
        result = yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._read,
                                                 directory, names)
        return result


def route(api: Any, reactor: Any, config: Any, dispatcher: Any) -> Updates:
    updates = Updates(reactor, config, dispatcher)
    table = ActionTable("update")
    table.add("checkupdates", updates.checkupdates)
    table.add("listlogs", updates.listlogs)
    table.add("startupdate", updates.startupdate, full_access=True)
    table.add("readlogs", updates.readlogs, full_access=True)
    table.route(api, limited="read")
    return updates
