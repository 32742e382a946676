"""``sysadm firewall status|list|open PORT…|close PORT…|start|stop``: ``sysadm/firewall``
(``--json``: the server's reply as is)."""

from __future__ import annotations

from typing import Any

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_OK


def _ask(ctx: Context, args: Any, what: str) -> Any:
    return ctx.ask("sysadm", "firewall", args, what=what)


async def firewall_status(ctx: Context) -> int:
    reply = await _ask(ctx, {"action": "status"}, "reading the firewall status")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    reply = reply if isinstance(reply, dict) else {}
    running = "running" if reply.get("is_running") == "true" else "stopped"
    enabled = "enabled at start" if reply.get("is_enabled") == "true" else "not enabled at start"
    line = f"firewall {running}, {enabled} (backend {reply.get('backend', '?')})"
    if reply.get("managed_by"):
        line += f"; managed by {reply['managed_by']}: changes are refused"
    ctx.say(line)
    return EXIT_OK


async def firewall_list(ctx: Context) -> int:
    reply = await _ask(ctx, {"action": "list_open"}, "listing the open ports")
    if ctx.json_output:
        ctx.emit_json(reply)
        return EXIT_OK
    ports = (reply or {}).get("openports", []) if isinstance(reply, dict) else []
    known = await _ask(ctx, {"action": "known_ports"}, "reading the known ports")
    known = known if isinstance(known, dict) else {}
    rows = [[port, (known.get(port) or {}).get("name", ""), (known.get(port) or {}).get("description", "")]
            for port in ports]
    for line in tables.render(["port", "service", "description"], rows):
        ctx.say(line)
    return EXIT_OK


async def firewall_change(ctx: Context) -> int:
    action = ctx.options.firewall_verb
    ports = getattr(ctx.options, "ports", None)
    args = {"action": action}
    if ports:
        args["ports"] = list(ports)
    what = f"{action} {' '.join(ports)}" if ports else f"{action} the firewall"
    reply = await _ask(ctx, args, what)
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say({"open": "opened", "close": "closed", "start": "started", "stop": "stopped"}[action]
                + (f" {', '.join(ports)}" if ports else " the firewall"))
    return EXIT_OK


def register(verb: Any, common: Any) -> None:
    """Add ``firewall`` to the ``sysadm`` command line (called by main)."""
    firewall = verb("firewall", None, "firewall status, open ports, open/close, start/stop (sysadm/firewall)")
    fv = firewall.add_subparsers(dest="firewall_verb", metavar="ACTION")
    fv.required = True
    p = fv.add_parser("status", parents=[common], help="running or not, enabled at start, backend")
    p.set_defaults(func=firewall_status)
    p = fv.add_parser("list", parents=[common], help="the open ports with their service names")
    p.set_defaults(func=firewall_list)
    for action, text in (("open", "open"), ("close", "close")):
        p = fv.add_parser(action, parents=[common], help=f"{text} ports: N/tcp, N/udp or N-M/tcp")
        p.add_argument("ports", metavar="PORT", nargs="+")
        p.set_defaults(func=firewall_change)
    for action, text in (("start", "apply the rules (sysadmd's own port stays open)"), ("stop", "remove the rules")):
        p = fv.add_parser(action, parents=[common], help=text)
        p.set_defaults(func=firewall_change)
