"""``sysadm pkg …``: ``sysadm/pkg`` on the command line (``--json``: the server's replies).

* ``search TERM`` and ``info NAME…`` print tables / fields;
* ``install``, ``remove``, ``lock``, ``unlock`` (NAME…), ``update``, ``upgrade`` queue a job
  in the server's ``pkg_queue`` and follow it through the jobs API (``core/job_wait`` with
  a short wait, so the bar moves about twice a second) with a progress bar on stderr,
  then exit with the job's code like ``sysadm job wait`` (``--no-wait``: print the job's
  number and return at once; ``sysadm job wait N`` follows it later).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_OK
from sysadmd.client.jobverbs import duration, exit_code_of, progress_bar

POLL = 0.5  # seconds the server holds each job_wait while a package job runs
FINISHED = ("SUCCESS", "FAILED", "ABORTED")
CHANGES = {  # verb → (action, takes package names, what it does)
    "install": ("pkg_install", True, "install packages and what they need"),
    "remove": ("pkg_remove", True, "remove packages (and what depends on them)"),
    "lock": ("pkg_lock", True, "hold packages at their version (apt-mark hold)"),
    "unlock": ("pkg_unlock", True, "release held packages"),
    "update": ("pkg_update", False, "refresh the package lists"),
    "upgrade": ("pkg_upgrade", False, "upgrade every package that is not held"),
}


def _pkg(ctx: Context, args: Dict[str, Any], what: str) -> Any:
    return ctx.ask("sysadm", "pkg", args, what=what)


async def pkg_search(ctx: Context) -> int:
    term = ctx.options.term
    reply = await _pkg(ctx, {"action": "pkg_search", "search_term": term}, f"searching for {term}")
    found = (reply or {}).get("pkg_search") or {}
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    order = found.get("results_order") or []
    rows = [[name, (found.get(name) or {}).get("comment", "")] for name in order]
    if not rows:
        ctx.note(f"sysadm: no package matches {term!r}")
        return EXIT_OK
    for line in tables.render(["package", "description"], rows):
        ctx.say(line)
    return EXIT_OK


INFO_FIELDS = ("name", "version", "installed", "installed_version", "locked", "comment", "categories",
               "dependencies", "maintainer", "www", "arch", "flatsize", "repo")


async def pkg_info(ctx: Context) -> int:
    names: List[str] = ctx.options.names
    reply = await _pkg(ctx, {"action": "pkg_info", "pkg_origins": names}, f"reading {' '.join(names)}")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    info = (reply or {}).get("pkg_info") or {}
    for index, name in enumerate(names):
        entry = info.get(name) or {}
        if index:
            ctx.say()
        for key in INFO_FIELDS:
            value = entry.get(key)
            if isinstance(value, list):
                value = ", ".join(value)
            if value not in (None, ""):
                ctx.say(f"{key + ':':19}{value}")
    return EXIT_OK


def _bar_line(job: Dict[str, Any]) -> str:
    description = (job.get("progress") or {}).get("description") or ""
    return f"job {job.get('id')} {progress_bar(job)} {description}".rstrip()[:120]


async def follow(ctx: Context, job_id: int) -> int:
    """Wait for package job *job_id*, drawing its progress on stderr; its exit code."""
    tty = bool(getattr(ctx.err, "isatty", lambda: False)())
    shown = ""
    while True:
        job = await ctx.ask("core", "job_wait", [job_id, {"timeout": POLL}], what=f"waiting for job {job_id}")
        line = _bar_line(job)
        if line != shown and job.get("state") not in FINISHED:
            if tty:
                ctx.err.write("\r" + line.ljust(len(shown)))
                ctx.err.flush()
            else:
                ctx.note(line)
            shown = line
        if job.get("state") in FINISHED:
            break
    if tty and shown:
        ctx.err.write("\n")
        ctx.err.flush()
    if ctx.json_output:
        ctx.emit_json(job)
    else:
        error = f": {job['error']}" if job.get("error") else ""
        ctx.say(f"job {job_id} {job.get('state')} ({job.get('outcome')}) after {duration(job, time.time())}{error}")
        if job.get("state") != "SUCCESS":
            ctx.note(f"sysadm: see its output with `sysadm job log {job_id}`")
    return exit_code_of(job)


async def pkg_change(ctx: Context) -> int:
    verb: str = ctx.options.pkg_verb
    action, takes_names, _ = CHANGES[verb]
    args: Dict[str, Any] = {"action": action}
    names = getattr(ctx.options, "names", None) or []
    if takes_names:
        args["pkg_origins"] = names
    reply = await _pkg(ctx, args, f"pkg {verb} {' '.join(names)}".rstrip())
    queued = (reply or {}).get(action) or {}
    if ctx.options.no_wait:
        if ctx.json_output:
            ctx.emit_json(reply)
        else:
            ctx.say(f"queued job {queued.get('id')} ({queued.get('proc_id')}): {queued.get('proc_cmd')}")
        return EXIT_OK
    if not ctx.json_output:
        ctx.note(f"sysadm: job {queued.get('id')} queued in pkg_queue: {queued.get('proc_cmd')}")
    return await follow(ctx, int(queued["id"]))


def register(verb: Any, common: Any) -> None:
    """Add ``pkg …`` to the ``sysadm`` command line (called by main)."""
    pkg = verb("pkg", None, "search, show, install, remove, hold and upgrade packages (sysadm/pkg)")
    pv = pkg.add_subparsers(dest="pkg_verb", metavar="ACTION")
    pv.required = True
    p = pv.add_parser("search", parents=[common], help="packages whose name or description holds TERM")
    p.add_argument("term", metavar="TERM")
    p.set_defaults(func=pkg_search)
    p = pv.add_parser("info", parents=[common], help="versions, state and details of packages")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(func=pkg_info)
    for name, (_, takes_names, text) in CHANGES.items():
        p = pv.add_parser(name, parents=[common], help=f"{text} (a job with a progress bar)")
        if takes_names:
            p.add_argument("names", metavar="NAME", nargs="+")
        p.add_argument("--no-wait", action="store_true", dest="no_wait", help="print the job's number and return")
        p.set_defaults(func=pkg_change)
