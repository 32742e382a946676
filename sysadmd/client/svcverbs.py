"""``sysadm svc …``: the supervisor's programs (``sysadm/supervisor``), in the manner of
``supervisorctl``.

::

    sysadm svc list                     table: name, state, pid, uptime, restarts, last exit
    sysadm svc status [NAME…]           one line per program (all without NAME)
    sysadm svc start|stop|kill|repair NAME…
    sysadm svc restart NAME…            stop (if live), then start
    sysadm svc push FILE [--name NAME]  create or replace from a job.tm.json (- reads stdin)
    sysadm svc pull NAME                the definition as JSON
    sysadm svc delete NAME              stop, then remove
    sysadm svc reload [NAME]            apply a pushed definition (all programs without NAME)
    sysadm svc log NAME [--follow]      the output of the program's latest run

``sysadm services logs NAME [-n N]`` (registered by :func:`add_services_logs` among the
``services`` verbs): the last N (default 200, at most 5000) lines of a service's log
(``sysadm/services`` ``logs``; full access), then where they came from on stderr.

``--json`` prints the server's replies as they are.  A ``redundant`` answer (starting a
running program…) is said as such and is not an error.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from sysadmd.client import jobverbs, tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError

MAX_FILE_BYTES = 64 * 1024
REDUNDANT = {"start": "already starting or running", "stop": "not running", "kill": "not running",
             "repair": "not FATAL or in BACKOFF: nothing to repair", "reload": "definition unchanged: nothing to reload",
             "push": "identical to the stored definition"}
DONE = {"start": "started", "stop": "stopped", "kill": "killed", "repair": "repaired (now STOPPED)",
        "push": "stored (a live program keeps running its old definition until `sysadm svc reload`)",
        "delete": "stopped and deleted", "reload": "reloaded", "restart": "reloaded"}


def _ask(ctx: Context, action: str, name: Any = None, data: Any = None) -> Any:
    args: Dict[str, Any] = {"action": action}
    if name is not None:
        args["job"] = name
    if data is not None:
        args["data"] = data
    return ctx.ask("sysadm", "supervisor", args, what=f"svc {action}" + (f" {name}" if name else ""))


def uptime_text(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def status_line(status: Dict[str, Any]) -> str:
    """supervisorctl's shape: name, state, then pid and uptime or why it is not running."""
    state = status.get("state", "?")
    if state in ("RUNNING", "STARTING", "STOPPING") and status.get("pid"):
        detail = f"pid {status['pid']}, uptime {uptime_text(status.get('uptime'))}"
    elif status.get("error"):
        detail = status["error"]
    elif status.get("last_exit_status") is not None:
        detail = f"last exit status {status['last_exit_status']}"
    else:
        detail = "not started"
    if status.get("reload_pending"):
        detail += " (a pushed definition waits for reload)"
    return f"{status.get('name', '?'):<24} {state:<9} {detail}"


def program_rows(programs: List[Dict[str, Any]]) -> List[List[str]]:
    return [[p.get("name", "?"), p.get("state", "?"), str(p.get("pid") or "-"), uptime_text(p.get("uptime")),
             str(p.get("restarts", 0)), "-" if p.get("last_exit_status") is None else str(p["last_exit_status"]),
             str(p.get("job") or "-")] for p in programs]


async def svc_list(ctx: Context) -> int:
    reply = await _ask(ctx, "list")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    programs = reply.get("programs") or []
    if not programs:
        ctx.say("no programs (add one with `sysadm svc push FILE`)")
        return EXIT_OK
    for line in tables.render(["name", "state", "pid", "uptime", "restarts", "last exit", "job"],
                              program_rows(programs)):
        ctx.say(line)
    return EXIT_OK


async def svc_status(ctx: Context) -> int:
    names: List[str] = ctx.options.names
    if names:
        statuses = [(await _ask(ctx, "status", name)).get("data") or {} for name in names]
    else:
        statuses = (await _ask(ctx, "list")).get("programs") or []
    if ctx.json_output:
        ctx.emit_json(statuses)
        return EXIT_OK
    for status in statuses:
        ctx.say(status_line(status))
    return EXIT_OK


def _said(ctx: Context, action: str, name: str, reply: Any) -> None:
    if ctx.json_output:
        ctx.emit_json({"job": name, **(reply or {})}, compact=True)
        return
    result = (reply or {}).get("result")
    if result == "redundant":
        ctx.say(f"{name}: {REDUNDANT.get(action, 'nothing to do')}")
    else:
        ctx.say(f"{name}: {DONE.get(action, result or 'done')}")


async def svc_change(ctx: Context) -> int:
    action: str = ctx.options.svc_verb
    for name in ctx.options.names:
        if action == "restart":
            await _ask(ctx, "stop", name)
            _said(ctx, "start", name, await _ask(ctx, "start", name))
            continue
        _said(ctx, action, name, await _ask(ctx, action, name))
    return EXIT_OK


def read_definition(path: str, stdin: Any) -> Dict[str, Any]:
    try:
        if path == "-":
            text = stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror or e}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise ClientError(f"{path} is not UTF-8 text", EXIT_USAGE) from None
    if len(text) > MAX_FILE_BYTES:
        raise ClientError(f"{path} is larger than {MAX_FILE_BYTES} bytes; a definition is a small JSON object",
                          EXIT_USAGE)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ClientError(f"{path} is not JSON: {e}", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise ClientError(f"{path}: a definition is a JSON object, got {type(data).__name__}", EXIT_USAGE)
    return data


async def svc_push(ctx: Context) -> int:
    data = read_definition(ctx.options.file, ctx.stdin)
    name = ctx.options.name or data.get("name")
    if not isinstance(name, str) or not name:
        raise ClientError(f"{ctx.options.file} has no \"name\": give one with --name NAME", EXIT_USAGE)
    _said(ctx, "push", name, await _ask(ctx, "push", name, data))
    return EXIT_OK


async def svc_pull(ctx: Context) -> int:
    reply = await _ask(ctx, "pull", ctx.options.name)
    ctx.emit_json(reply if ctx.json_output else reply.get("data"))
    return EXIT_OK


async def svc_delete(ctx: Context) -> int:
    _said(ctx, "delete", ctx.options.name, await _ask(ctx, "delete", ctx.options.name))
    return EXIT_OK


async def svc_reload(ctx: Context) -> int:
    name = ctx.options.name
    reply = await (_ask(ctx, "reload", name) if name else _ask(ctx, "restart"))
    _said(ctx, "reload", name or "all programs", reply)
    return EXIT_OK


async def svc_log(ctx: Context) -> int:
    status = (await _ask(ctx, "status", ctx.options.name)).get("data") or {}
    job_id = status.get("job")
    if not isinstance(job_id, int):
        raise ClientError(f"{ctx.options.name} has not run yet (no output)", EXIT_ERROR_REPLY)
    ctx.options.job_id = job_id
    ctx.options.offset = 0
    return await jobverbs.job_log(ctx)


LOG_LINES_MAX = 5000


async def services_logs(ctx: Context) -> int:
    name, lines = ctx.options.name, ctx.options.lines
    if not 1 <= lines <= LOG_LINES_MAX:
        raise ClientError(f"-n must be from 1 to {LOG_LINES_MAX}, got {lines}", EXIT_USAGE)
    reply = await ctx.ask("sysadm", "services", {"action": "logs", "service": name, "lines": lines},
                          what=f"logs of {name}")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    for line in (reply or {}).get("lines") or []:
        ctx.say(line)
    ctx.note(f"({len((reply or {}).get('lines') or [])} lines from {(reply or {}).get('source', '?')})")
    return EXIT_OK


def add_services_logs(sv: Any, common: Any) -> None:
    """``sysadm services logs NAME [-n N]`` on the ``services`` sub-parsers *sv*."""
    p = sv.add_parser("logs", parents=[common], help="the last lines of a service's log (full access)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--lines", type=int, default=200, metavar="N", help="how many lines (1-5000, default 200)")
    p.set_defaults(func=services_logs)


def register(verb: Any, common: Any) -> None:
    """Add ``svc`` to the ``sysadm`` command line (called by main)."""
    svc = verb("svc", None, "supervised programs (sysadm/supervisor), like supervisorctl: list, status, start, "
               "stop, restart, kill, repair, push, pull, delete, reload, log")
    sv = svc.add_subparsers(dest="svc_verb", metavar="ACTION")
    sv.required = True
    p = sv.add_parser("list", parents=[common], help="every program: state, pid, uptime, restarts, last exit")
    p.set_defaults(func=svc_list)
    p = sv.add_parser("status", parents=[common], help="one line per program (the named ones, or all)")
    p.add_argument("names", metavar="NAME", nargs="*")
    p.set_defaults(func=svc_status)
    for action, text in (("start", "start the named programs"), ("stop", "stop them (stopsignal, then SIGKILL)"),
                         ("restart", "stop, then start them"), ("kill", "SIGKILL them at once"),
                         ("repair", "FATAL/BACKOFF → STOPPED, retry count cleared")):
        p = sv.add_parser(action, parents=[common], help=text)
        p.add_argument("names", metavar="NAME", nargs="+")
        p.set_defaults(func=svc_change)
    p = sv.add_parser("push", parents=[common], help="create or replace a program from a job.tm.json FILE (- = stdin)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", metavar="NAME", help="the program name (default: the file's \"name\")")
    p.set_defaults(func=svc_push)
    p = sv.add_parser("pull", parents=[common], help="print a program's definition (JSON)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=svc_pull)
    p = sv.add_parser("delete", parents=[common], help="stop a program, then remove it")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=svc_delete)
    p = sv.add_parser("reload", parents=[common], help="apply pushed definitions (restarting changed live programs); "
                      "all programs without NAME")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.set_defaults(func=svc_reload)
    p = sv.add_parser("log", parents=[common], help="the output of a program's latest run (--follow: until it ends)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new output until that run ends")
    p.set_defaults(func=svc_log)
