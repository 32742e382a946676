"""``sysadm info``: the machine at a glance (sysadm/systemmanager systeminfo + memorystats).

People get a short summary; ``--json`` prints both replies as the server sent them::

    {"memorystats":{…},"systeminfo":{…}}
"""

from __future__ import annotations

from typing import Any, Dict, List

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_OK, ClientError, ErrorReply

CLASS = "sysadm/systemmanager"


async def _action(ctx: Context, action: str) -> Dict[str, Any]:
    try:
        reply = await ctx.ask("sysadm", "systemmanager", {"action": action}, f"{CLASS} {action}")
    except ErrorReply as e:
        if e.code == "404":
            raise ClientError(f"{ctx.target} offers no {CLASS} (its host has no backend for it, or it is not "
                              "sysadmd); `sysadm query` lists what it offers") from None
        raise
    result = reply.get(action) if isinstance(reply, dict) else None
    if not isinstance(result, dict):
        raise ClientError(f"{CLASS} {action}: unexpected reply {str(reply)[:200]}")
    return result


def size(n: Any) -> str:
    """Bytes as a short human figure: ``1.5 GiB``."""
    try:
        value = float(n)
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "?"


def mib(text: Any) -> str:
    try:
        return size(int(text) * 1024 * 1024)
    except (TypeError, ValueError):
        return "?"


def summary(system: Dict[str, Any], memory: Dict[str, Any]) -> List[str]:
    """The lines `sysadm info` prints (pure: tested without a server)."""
    lines = [
        f"Host:     {system.get('hostname', '?')}",
        f"OS:       {system.get('systemversion', '?')} ({system.get('arch', '?')})",
        f"Kernel:   {system.get('kernelversion', '?')}",
        f"Uptime:   {str(system.get('uptime', '?')).removeprefix('up ')}",
        f"CPU:      {system.get('cputype', '?')}, {system.get('cpucores', '?')} cores",
    ]
    load = system.get("loadavg")
    if isinstance(load, list) and len(load) == 3:
        lines[-1] += "; load " + " ".join(str(x) for x in load)
    total = memory.get("total") or system.get("totalmem")
    line = f"Memory:   {mib(total)} total"
    if "available" in memory:
        line += f", {mib(memory['available'])} available"
    line += f", {mib(memory.get('free'))} free, {mib(memory.get('cache'))} cache"
    lines.append(line)
    disks = system.get("disks")
    if isinstance(disks, dict) and disks:
        lines.append("Disks:")
        rows = []
        for mount in sorted(disks):
            d = disks[mount] if isinstance(disks[mount], dict) else {}
            rows.append([mount, d.get("device", ""), d.get("fstype", ""), size(d.get("used")), size(d.get("total")),
                         f"{d.get('percent', '?')}%"])
        lines += ["  " + line for line in tables.render(["mount", "device", "type", "used", "size", "use"], rows)]
    return lines


async def info(ctx: Context) -> int:
    system = await _action(ctx, "systeminfo")
    memory = await _action(ctx, "memorystats")
    if ctx.json_output:
        ctx.emit_json({"systeminfo": system, "memorystats": memory})
        return EXIT_OK
    for line in summary(system, memory):
        ctx.say(line)
    return EXIT_OK
