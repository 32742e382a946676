"""``sysadm call``, ``sysadm query``, ``sysadm identify``: one request, one answer."""

from __future__ import annotations

import json
from typing import Any

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError, ErrorReply, is_error


def parse_args_json(text: Any, stdin: Any) -> Any:
    """The ARGS-JSON argument: ``None`` → ``{}``, ``-`` → read stdin, else JSON text."""
    if text is None:
        return {}
    source = "ARGS-JSON"
    if text == "-":
        text = stdin.read()
        source = "ARGS-JSON (stdin)"
        if not text.strip():
            raise ClientError(f"{source} is empty; expected a JSON value such as {{\"action\":\"list\"}}", EXIT_USAGE)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        excerpt = text.splitlines()[e.lineno - 1] if text.splitlines() else ""
        pointer = " " * (e.colno - 1) + "^"
        raise ClientError(
            f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}\n  {excerpt[:200]}\n  {pointer[:202]}",
            EXIT_USAGE,
        ) from None


def prepare_call(ctx: Context) -> None:
    ctx.extras["call_args"] = parse_args_json(ctx.options.args_json, ctx.stdin)


async def call(ctx: Context) -> int:
    opts = ctx.options
    reply = await ctx.call(opts.namespace, opts.name, ctx.extras.get("call_args", {}))
    if ctx.json_output:
        ctx.emit_json(reply, compact=True)
    if is_error(reply):
        ctx.note(f"sysadm: {ErrorReply(reply, f'{opts.namespace}/{opts.name}').message}")
        return EXIT_ERROR_REPLY
    if not ctx.json_output:
        args = reply.get("args")
        if isinstance(args, str):
            ctx.say(args)
        else:
            ctx.emit_json(args)
    return EXIT_OK


async def query(ctx: Context) -> int:
    available = await ctx.ask("rpc", "query", {})
    if ctx.json_output:
        ctx.emit_json(available)
        return EXIT_OK
    if not isinstance(available, dict) or not available:
        ctx.say("(no APIs listed)")
        return EXIT_OK
    for line in tables.render(["api", "access"], sorted(available.items())):
        ctx.say(line)
    return EXIT_OK


async def identify(ctx: Context) -> int:
    info = await ctx.ask("rpc", "identify", "")
    if ctx.json_output:
        ctx.emit_json(info)
        return EXIT_OK
    if isinstance(info, dict):
        for key in sorted(info):
            ctx.say(f"{key}: {info[key]}")
    else:
        ctx.say(str(info))
    return EXIT_OK
