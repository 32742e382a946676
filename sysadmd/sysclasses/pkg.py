"""``sysadm/pkg``: packages through apt (Debian family hosts; routed only when apt and
dpkg are installed).  No dnf backend: the hosts this was built and tested on are Debian.

Queries (any authenticated user; ``apt-cache`` / ``dpkg-query`` as async processes with
bounded output)::

    {"action":"pkg_info","pkg_origins":"curl" | [...]}
      → {"pkg_info":{"curl":{name,origin,version,comment,desc,maintainer,www,arch,
                              flatsize,pkgsize,categories,dependencies,repo,
                              installed,installed_version,locked}}}
    {"action":"pkg_search","search_term":"curl"[,"search_excludes":[...]]}
      → {"pkg_search":{"curl":{name,origin,comment},…,"results_order":["curl",…]}}
    {"action":"list_repos"} → {"list_repos":["<uri> <suite>",…]}
    {"action":"list_categories"} → {"list_categories":["admin","net",…]}  (Debian sections)

Changes (full access): each is one dispatcher job in ``pkg_queue`` (one at a time),
id ``sysadm_pkg_<action>-{uuid}``, its progress from apt's ``Status-Fd`` in the job
table; the reply is upstream's ``{"proc_cmd","proc_id","status":"pending"}`` plus
``id``, the job's number in the jobs API (``core/get_jobs``, ``core/job_wait``)::

    pkg_install (pkg_origins)   apt-get -y install …
    pkg_remove (pkg_origins)    apt-get -y remove …
    pkg_lock / pkg_unlock       apt-mark hold|unhold …
    pkg_update                  apt-get update
    pkg_check_upgrade           apt-get -s upgrade      (a simulation: what would change)
    pkg_upgrade                 apt-get -y upgrade       (held packages stay as they are)
    pkg_autoremove              apt-get -y autoremove

Upstream's package "origin" is its key; apt has none, so ``origin`` is the package
name.  ``repo`` (install) and ``recursive`` (remove) are upstream's pkg(8) options with
no apt equivalent: ``repo`` is refused unless empty, and apt always removes what
depends on a removed package.  ``pkg_audit`` answers 400: no vulnerability audit tool is
wired to apt on this backend.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet import defer, error, protocol

from sysadmd.jobs.model import Owner
from sysadmd.session import Session
from sysadmd.sysclasses import apt as aptmod
from sysadmd.sysclasses.apt import Apt
from sysadmd.sysclasses.common import ActionTable, flag_arg, names_arg, run_tool, text_arg
from sysadmd.wire.envelope import ApiError

QUEUE = "pkg_queue"
MAX_PACKAGES = 256
QUERY_TIMEOUT = 60.0  # seconds a read-only apt query may take
MAX_CATEGORIES = 1000
MAX_SEARCH_TERM = 128
CATEGORY_CACHE_SECONDS = 300.0  # list_categories reads every package record: its answer is kept this long
SECTION_LINE_MAX = 256


class _SectionCollector(protocol.ProcessProtocol):
    """Keeps only the ``Section:`` values of a stream of package records (bounded memory
    whatever the size of the stream); fires with ``(exit code, sections, stderr)``."""

    def __init__(self, done: defer.Deferred):
        self.done = done
        self.partial = b""
        self.sections: Set[str] = set()
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-SECTION_LINE_MAX:]
        for line in lines:
            if line.startswith(b"Section:") and len(self.sections) < MAX_CATEGORIES:
                self.sections.add(line[8:].strip()[:SECTION_LINE_MAX].decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-4096:]

    def processEnded(self, reason) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else -1
        self.done.callback((code, self.sections, self.err.decode("utf-8", "replace")))


def available(config: Any) -> bool:
    return aptmod.present()


def package_names(args: Dict[str, Any], field: str = "pkg_origins") -> List[str]:
    names = names_arg(args, field, max_items=MAX_PACKAGES, max_chars=160)
    return [aptmod.check_name(name, field, i) for i, name in enumerate(names)]


class PackageJobs:
    """Submits package changes to the dispatcher's ``pkg_queue``."""

    def __init__(self, dispatcher: Any):
        self.dispatcher = dispatcher

    def submit(self, session: Optional[Session], prefix: str, command: str, *, separator: Optional[str] = "-") -> Dict[str, Any]:
        """Queue *command* as job ``<prefix><separator>{uuid}`` (``separator=None``: the id
        is *prefix* itself, as upstream's one ``sysadm_update_checkupdates``)."""
        job_id = prefix if separator is None else f"{prefix}{separator}{{{uuid.uuid4()}}}"
        owner = Owner.of(session) if session is not None else None
        origin = f"{owner.user}@{owner.origin}" if owner is not None else ""
        job = self.dispatcher.submit(job_id, [command], queue=QUEUE, owner=owner, origin=origin)
        return {"proc_cmd": command, "proc_id": job_id, "status": "pending", "id": job.record.seq}

    def active(self, prefix: str) -> bool:
        return any(job_id.startswith(prefix) for job_id in self.dispatcher.active)


class Packages:
    def __init__(self, reactor: Any, config: Any, dispatcher: Any):
        self.reactor = reactor
        self.apt = Apt(config.pkg_apt_config)
        self.search_max = config.pkg_search_max
        self.jobs = PackageJobs(dispatcher)
        self._sections: Optional[Tuple[float, List[str]]] = None  # (when, sorted sections)

    def _run(self, *argv: str, ok_codes=(0,)) -> defer.Deferred:
        return run_tool(self.reactor, list(argv), timeout=QUERY_TIMEOUT, env=self.apt.env(), ok_codes=ok_codes)

    # --- queries --------------------------------------------------------------------------
    @defer.inlineCallbacks
    def pkg_info(self, session: Session, args: Dict[str, Any]):
        names = package_names(args)
        result = text_arg(args, "result", required=False, default="full", max_chars=16)
        if result not in ("full", "simple"):
            raise ApiError("400", f"'result' must be \"full\" or \"simple\", got {result!r}")
        shown = yield self._run(*self.apt.argv("apt-cache", "show", "--no-all-versions", *names), ok_codes=(0, 100))
        records = {r.get("Package"): r for r in aptmod.parse_records(shown) if r.get("Package")}
        state_text = yield self._run(*self.apt.argv("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n",
                                                   *[n.split(":")[0] for n in names]), ok_codes=(0, 1))
        states = aptmod.installed_state(state_text)
        held_text = yield self._run(*self.apt.argv("apt-mark", "showhold"))
        held = set(held_text.split())
        out: Dict[str, Any] = {}
        missing = []
        for name in names:
            base = name.split(":")[0]
            record = records.get(base)
            version, status = states.get(base, ("", ""))
            installed = aptmod.is_installed(status)
            if record is None and not installed:
                missing.append(name)
                continue
            out[name] = self._info(base, record or {}, version if installed else "", base in held, result == "full")
        if missing:
            raise ApiError("400", f"no package named {', '.join(missing)} is known to apt "
                                  "(run pkg_update to refresh the package lists)")
        return out

    @staticmethod
    def _info(name: str, record: Dict[str, str], installed_version: str, locked: bool, full: bool) -> Dict[str, Any]:
        description = record.get("Description", "")
        comment, _, desc = description.partition("\n")
        entry: Dict[str, Any] = {
            "name": name, "origin": name, "version": record.get("Version", installed_version),
            "comment": comment, "installed": "true" if installed_version else "false",
            "installed_version": installed_version, "locked": "true" if locked else "false",
        }
        if full:
            size = record.get("Installed-Size", "")
            entry.update({
                "desc": desc, "maintainer": record.get("Maintainer", ""), "www": record.get("Homepage", ""),
                "arch": record.get("Architecture", ""),
                "flatsize": str(int(size) * 1024) if size.isdigit() else "",
                "pkgsize": record.get("Size", ""),
                "categories": [record["Section"]] if record.get("Section") else [],
                "dependencies": aptmod.dependency_names(record.get("Depends", "")),
                "repo": record.get("Filename", "").split("/")[0] if record.get("Filename") else "",
            })
        return entry

    @defer.inlineCallbacks
    def pkg_search(self, session: Session, args: Dict[str, Any]):
        term = text_arg(args, "search_term", max_chars=MAX_SEARCH_TERM)
        if args.get("category"):
            raise ApiError("400", "'category' is not supported by the apt backend: search by name and description only")
        excludes = names_arg(args, "search_excludes", max_items=64, max_chars=MAX_SEARCH_TERM) \
            if args.get("search_excludes") else []
        text_arg(args, "repo", required=False, max_chars=256)
        found = yield self._run(*self.apt.argv("apt-cache", "search", aptmod.regex_literal(term)))
        hits = [(n, c) for n, c in aptmod.search_hits(found) if not any(x in n for x in excludes)]
        low = term.lower()

        def rank(hit):
            name = hit[0]
            return (0 if name == low else 1 if name.startswith(low) else 2 if low in name else 3, name)

        hits.sort(key=rank)
        out: Dict[str, Any] = {}
        for name, comment in hits[: self.search_max]:
            out[name] = {"name": name, "origin": name, "comment": comment}
        if not out:
            return None
        out["results_order"] = [name for name, _ in hits[: self.search_max]]
        return out

    @defer.inlineCallbacks
    def list_repos(self, session: Session, args: Dict[str, Any]):
        text = yield self._run(*self.apt.argv("apt-cache", "policy"))
        return aptmod.repos_from_policy(text)

    def list_categories(self, session: Session, args: Dict[str, Any]):
        """Debian sections of every package apt knows (its lists and the dpkg database)."""
        now = self.reactor.seconds()
        if self._sections is not None and now - self._sections[0] < CATEGORY_CACHE_SECONDS:
            return defer.succeed(self._sections[1])
        done: defer.Deferred = defer.Deferred()
        argv = self.apt.argv("apt-cache", "dumpavail")
        try:
            self.reactor.spawnProcess(_SectionCollector(done), argv[0], argv, env=self.apt.env())
        except OSError as e:
            raise ApiError("500", f"cannot run apt-cache: {e.strerror or e}") from None

        def keep(result):
            code, sections, err = result
            if code != 0:
                raise ApiError("400", f"apt-cache dumpavail exited with {code}: {err.strip()[-2000:] or 'no message'}")
            listed = sorted(sections)[:MAX_CATEGORIES]
            self._sections = (self.reactor.seconds(), listed)
            return listed

        return done.addCallback(keep)

    # --- changes -------------------------------------------------------------------------
    def pkg_install(self, session: Session, args: Dict[str, Any]):
        names = package_names(args)
        if args.get("repo"):
            raise ApiError("400", "'repo' is not supported by the apt backend (apt picks each package's candidate "
                                  "by pin priority); leave it out")
        return self.jobs.submit(session, "sysadm_pkg_install", self.apt.install(names))

    def pkg_remove(self, session: Session, args: Dict[str, Any]):
        names = package_names(args)
        flag_arg(args, "recursive", True)  # apt always removes what depends on them
        return self.jobs.submit(session, "sysadm_pkg_remove", self.apt.remove(names))

    def hold(self, hold: bool):
        def handler(session: Session, args: Dict[str, Any]):
            names = package_names(args)
            verb = "pkg_lock" if hold else "pkg_unlock"
            return self.jobs.submit(session, f"sysadm_{verb}", self.apt.hold(names, hold))
        return handler

    def pkg_update(self, session: Session, args: Dict[str, Any]):
        flag_arg(args, "force", False)  # apt-get update always fetches what changed
        return self.jobs.submit(session, "sysadm_pkg_update", self.apt.update())

    def pkg_check_upgrade(self, session: Session, args: Dict[str, Any]):
        return self.jobs.submit(session, "sysadm_pkg_check_upgrade", self.apt.check_upgrade())

    def pkg_upgrade(self, session: Session, args: Dict[str, Any]):
        return self.jobs.submit(session, "sysadm_pkg_upgrade", self.apt.upgrade())

    def pkg_autoremove(self, session: Session, args: Dict[str, Any]):
        return self.jobs.submit(session, "sysadm_pkg_autoremove", self.apt.autoremove())

    def pkg_audit(self, session: Session, args: Dict[str, Any]):
        raise ApiError("400", "pkg_audit is not available on this host: the apt backend has no vulnerability "
                              "audit tool")


def route(api: Any, reactor: Any, config: Any, dispatcher: Any) -> Packages:
    packages = Packages(reactor, config, dispatcher)
    table = ActionTable("pkg")
    for name in ("pkg_info", "pkg_search", "list_repos", "list_categories"):
        table.add(name, getattr(packages, name))
    for name in ("pkg_install", "pkg_remove", "pkg_update", "pkg_check_upgrade", "pkg_upgrade", "pkg_autoremove",
                 "pkg_audit"):
        table.add(name, getattr(packages, name), full_access=True)
    table.add("pkg_lock", packages.hold(True), full_access=True)
    table.add("pkg_unlock", packages.hold(False), full_access=True)
    table.route(api, limited="read")
    return packages
