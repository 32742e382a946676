"""``sysadm --bridge URL --key FILE fleet …``: commands and events for the agents behind a
bridge, stored there while an agent is offline (issue 13; docs/protocol.md §8.5).

Talks to the bridge itself (``fleet/*`` messages), not to a server.  Each command and
event is sealed to the agent's bridge key (:mod:`sysadmd.wire.seal`; the key the bridge
lists must be the one the agent id names, and the agent's name must not be pinned to
another key in known_servers) and signed with ``--key`` (:mod:`sysadmd.wire.fleetsig`):
the agent runs it as the user that key is registered to there, with that user's rights,
or refuses it.  Each command's content key is derived from ``--key`` and the command and
agent ids (:func:`sysadmd.wire.seal.command_key`), so any later ``fleet wait`` can open
the result, which comes back encrypted under a key derived from it (known only to us and
the agent); a result that is not is shown as unverified and counts as a failure.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import (EXIT_CERTIFICATE, EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError, ErrorReply,
                                   is_error)

DEFAULT_TTL = 3600.0
DEFAULT_RUN_TIMEOUT = 600.0
MAX_WAIT = 3600.0


def register(verb: Any, common: argparse.ArgumentParser) -> None:
    fleet = verb("fleet", None, "with --bridge: the agents behind the bridge: list, run commands (stored while an "
                 "agent is offline), pending, wait, cancel, emit events")
    actions = fleet.add_subparsers(dest="fleet_verb", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("agents", parents=[common], help="agents paired with your key: id, name, online, last "
                           "seen, round-trip time, pending commands")
    p.set_defaults(func=agents)
    p = actions.add_parser("run", parents=[common], help="run COMMAND (a dispatcher job; several: a chain) or, with "
                           "--api NS/NAME, one API request on agents; prints each result, then a summary")
    p.add_argument("command", metavar="COMMAND", nargs="+",
                   help="command lines (split by the agent, no shell); with --api: the request args as JSON")
    p.add_argument("--agents", metavar="A,B", help="agent ids (or unique prefixes) or names")
    p.add_argument("--all", action="store_true", help="every agent paired with your key")
    p.add_argument("--api", metavar="NS/NAME", help="run this API request instead of a dispatcher job")
    p.add_argument("--ttl", metavar="SECONDS", type=float, default=DEFAULT_TTL,
                   help=f"how long the bridge keeps a command for an offline agent (default {DEFAULT_TTL:g})")
    p.add_argument("--run-timeout", metavar="SECONDS", type=float, default=DEFAULT_RUN_TIMEOUT,
                   help=f"how long the agent lets it run (default {DEFAULT_RUN_TIMEOUT:g})")
    p.add_argument("--no-wait", action="store_true", help="print the command ids and exit (fetch with `fleet wait`)")
    p.set_defaults(func=run)
    p = actions.add_parser("pending", parents=[common], help="AGENT's commands not finished yet (id, agentId, status, ts)")
    p.add_argument("agent", metavar="AGENT")
    p.set_defaults(func=pending)
    p = actions.add_parser("wait", parents=[common], help="wait for command ID's result and print it")
    p.add_argument("command_id", metavar="ID")
    p.add_argument("--wait", metavar="SECONDS", type=float, default=MAX_WAIT, help="give up after this long")
    p.set_defaults(func=wait)
    p = actions.add_parser("cancel", parents=[common], help="cancel command ID while it is still PENDING")
    p.add_argument("command_id", metavar="ID")
    p.set_defaults(func=cancel)
    p = actions.add_parser("emit", parents=[common], help="send event KEY with JSON data to AGENT (A,B for several); "
                           "stored while an agent is offline")
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("event_key", metavar="KEY")  # dest "key" is --key FILE
    p.add_argument("data", metavar="JSON")
    p.add_argument("--ttl", metavar="SECONDS", type=float, default=DEFAULT_TTL)
    p.add_argument("--wait", metavar="SECONDS", type=float, default=3.0,
                   help="how long to wait for the agents to retrieve it (default 3)")
    p.set_defaults(func=emit)


async def open_fleet(ctx: Context) -> None:
    """``--bridge`` is required: authenticate with the bridge only."""
    if not ctx.options.bridge:
        raise ClientError("fleet needs --bridge URL --key FILE (it talks to the bridge the agents are linked to)",
                          EXIT_USAGE)
    from sysadmd.client import bridged

    session = await bridged.open_bridge(ctx)
    ctx.extras["bridge"] = session
    ctx.conn = session.conn  # closing it closes our socket to the bridge


async def _ask(ctx: Context, name: str, args: Dict[str, Any], timeout: Optional[float] = None) -> Any:
    d = ctx.conn.call("fleet", name, args)
    wait = timeout if timeout is not None else ctx.timeout
    if wait:
        d.addTimeout(wait, ctx.reactor)
    try:
        reply = await d
    except defer.TimeoutError:
        raise ClientError(f"no reply to fleet/{name} from {ctx.target} within {wait:g} s", EXIT_ERROR_REPLY) from None
    if is_error(reply):
        raise ErrorReply(reply, f"fleet/{name}")
    return reply.get("args")


async def _agents(ctx: Context) -> List[Dict[str, Any]]:
    args = await _ask(ctx, "agents", {})
    return args.get("agents", []) if isinstance(args, dict) else []


def _resolve(known: List[Dict[str, Any]], wanted: str) -> List[Dict[str, Any]]:
    found = []
    for ref in [w.strip() for w in wanted.split(",") if w.strip()]:
        matches = [a for a in known if a["id"] == ref or a["name"] == ref] or \
            [a for a in known if a["id"].startswith(ref.lower())]
        if len(matches) != 1:
            names = ", ".join(f"{a['name']} ({a['id'][:12]})" for a in known) or "none"
            why = "matches no agent" if not matches else "matches several agents"
            raise ClientError(f"agent {ref!r} {why} paired with your key (agents: {names}); "
                              "`sysadm fleet agents` lists them", EXIT_USAGE)
        if matches[0] not in found:
            found.append(matches[0])
    return found


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else "-"


def _checked(ctx: Context, targets: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Agent id → its public key, for every target: the key the bridge lists must be the
    one the id names, and the agent's name must hold that key in known_servers (pinned now
    if the name is new).  Nothing is sealed or signed for an agent that fails."""
    from sysadmd.client import knownservers  # here, not at import: `sysadm` starts without cryptography
    from sysadmd.wire import bound, seal

    known = knownservers.KnownServers(getattr(ctx.options, "known_servers", None))
    keys = {}
    for agent in targets:
        try:
            keys[agent["id"]] = seal.agent_key(agent.get("key"), agent["id"])
        except seal.SealError as e:
            raise ClientError(f"{e}. Nothing was sent.", EXIT_CERTIFICATE) from None
        name = agent.get("name")
        if not knownservers.valid_name(name):
            name = "key-" + agent["id"][:16]
        holder = known.by_name(name)
        if holder is None:
            known.pin(name, agent["id"])
            ctx.note(f"Pinned agent {name} key {bound.display_fingerprint(agent['id'])} ({known.path})")
        elif holder.fingerprint != agent["id"]:
            raise ClientError(
                f"WARNING: agent {agent['id'][:12]} calls itself {name}, but its key is not the one pinned for "
                f"{name}!\n  pinned {holder.display} (since {holder.first_seen})\n"
                f"  got    {bound.display_fingerprint(agent['id'])}\n"
                "Another bridge tenant may be posing as that agent. Nothing was sent.\n"
                f"If {name} really has a new bridge key, remove the old entry with\n"
                f"  sysadm known-servers forget {name}\n(file {known.path}) and try again.", EXIT_CERTIFICATE)
    return keys


def _open_result(ctx: Context, command_id: str, agent_id: str, result: Any) -> Any:
    """``(result JSON text, verified)``: a keyed result opened with the command's key; any
    other is returned unverified (a refusal made before the agent opened the payload, or
    a forgery)."""
    from sysadmd.wire import seal

    if not seal.is_keyed(result):
        return result, False
    key = seal.result_key(seal.command_key(ctx.extras["bridge"].server_key, command_id, agent_id))
    try:
        return seal.open_keyed(key, result, seal.fleet_context("result", command_id, agent_id)).decode("utf-8"), True
    except (seal.SealError, UnicodeDecodeError) as e:
        return json.dumps({"ok": False, "outcome": "unverified", "error": f"the result does not open: {e}"}), False


async def agents(ctx: Context) -> int:
    rows = await _agents(ctx)
    if ctx.json_output:
        ctx.emit_json(rows)
        return EXIT_OK
    if not rows:
        ctx.say("no agents are paired with your key on this bridge")
        return EXIT_OK
    table = [[a["id"][:16], a["name"], "yes" if a["online"] else "no", _when(a["last_seen"]),
              "-" if a.get("rtt") is None else f"{a['rtt'] * 1000:.1f} ms", a["pending"]] for a in rows]
    for line in tables.render(["id", "name", "online", "last seen", "rtt", "pending"], table):
        ctx.say(line)
    return EXIT_OK


def _payload(opts: Any) -> str:
    if opts.run_timeout <= 0:
        raise ClientError("--run-timeout must be above 0 seconds", EXIT_USAGE)
    if opts.api:
        namespace, slash, name = opts.api.partition("/")
        if not slash or not namespace or not name:
            raise ClientError(f"--api {opts.api!r}: expected NAMESPACE/NAME such as sysadm/systemmanager", EXIT_USAGE)
        text = " ".join(opts.command)
        try:
            args = json.loads(text)
        except ValueError as e:
            raise ClientError(f"with --api, COMMAND is the request args as JSON: {e}", EXIT_USAGE) from None
        spec = {"kind": "api", "namespace": namespace, "name": name, "args": args, "timeout": opts.run_timeout}
    else:
        spec = {"kind": "job", "commands": list(opts.command), "timeout": opts.run_timeout}
    return json.dumps(spec, separators=(",", ":"), sort_keys=True)


def _outcome(reply: Dict[str, Any], result: Any = None, verified: bool = False) -> Dict[str, Any]:
    """A fetched command and its opened *result* → the agent's result object (parsed), or
    what happened instead.  Only a *verified* result (encrypted under the command's key)
    counts as success."""
    status = reply.get("status")
    parsed: Dict[str, Any] = {}
    if isinstance(result, str):
        try:
            value = json.loads(result)
            parsed = value if isinstance(value, dict) else {}
        except ValueError:
            parsed = {"error": "the agent's result is not JSON"}
        if not verified and parsed.get("ok") is True:
            parsed = dict(parsed, ok=False, outcome="unverified",
                          error="a success that is not encrypted with the command's key: not trusted")
    ok = status == "COMPLETE" and parsed.get("ok") is True
    return {"id": reply.get("id"), "status": status, "ok": ok, "outcome": parsed.get("outcome", status.lower() if
            isinstance(status, str) else "?"), "error": parsed.get("error"), "reply": parsed.get("reply"),
            "job_id": parsed.get("job_id"), "host": parsed.get("host")}


def _short_reply(outcome: Dict[str, Any]) -> str:
    reply = outcome.get("reply")
    if isinstance(reply, dict) and "cmd_list" in reply:
        parts = [str(reply.get(c, "")).strip() for c in reply.get("cmd_list", [])]
        return " | ".join(p for p in parts if p)
    return "" if reply is None else json.dumps(reply, sort_keys=True)


async def run(ctx: Context) -> int:
    opts = ctx.options
    if bool(opts.agents) == bool(opts.all):
        raise ClientError("say which agents: --agents A,B or --all", EXIT_USAGE)
    if not 1 <= opts.ttl <= 30 * 86400:
        raise ClientError("--ttl must be 1 to 2592000 seconds", EXIT_USAGE)
    known = await _agents(ctx)
    targets = known if opts.all else _resolve(known, opts.agents)
    if not targets:
        raise ClientError("no agents are paired with your key on this bridge", EXIT_ERROR_REPLY)
    plain = _payload(opts).encode("utf-8")
    agent_keys = _checked(ctx, targets)
    key = ctx.extras["bridge"].server_key
    from sysadmd.runtime import crypto  # here, not at import: `sysadm` starts without cryptography
    from sysadmd.wire import fleetsig, seal

    md5 = crypto.md5_checksum(crypto.public_pem(key))
    commands, by_id = [], {}
    for agent in targets:
        command_id = uuid.uuid4().hex
        payload = seal.seal_with_key(agent_keys[agent["id"]], seal.command_key(key, command_id, agent["id"]), plain,
                                     seal.fleet_context("command", command_id, agent["id"]))
        commands.append({"id": command_id, "agent": agent["id"], "payload": payload, "key": md5,
                         "signature": fleetsig.sign_command(key, command_id, agent["id"], payload)})
        by_id[command_id] = agent
    await _ask(ctx, "execute", {"commands": commands, "ttl": opts.ttl})
    if opts.no_wait:
        for c in commands:
            ctx.say(f"{c['id']}  {by_id[c['id']]['name']}")
        return EXIT_OK
    wait = min(MAX_WAIT, opts.ttl + opts.run_timeout + 5)
    results: Dict[str, Dict[str, Any]] = {}

    async def one(command_id: str) -> None:
        try:
            reply = await _ask(ctx, "wait", {"id": command_id, "timeout": wait}, timeout=wait + 30)
            reply = reply if isinstance(reply, dict) else {}
            agent_id = by_id[command_id]["id"]
            outcome = _outcome(reply, *_open_result(ctx, command_id, agent_id, reply.get("result")))
        except ClientError as e:
            outcome = {"id": command_id, "status": "UNKNOWN", "ok": False, "outcome": "unknown", "error": e.message}
        results[command_id] = outcome
        agent = by_id[command_id]
        if ctx.json_output:
            ctx.emit_json(dict(outcome, agent=agent["id"], name=agent["name"]), compact=True)
        else:
            detail = outcome.get("error") or _short_reply(outcome)
            ctx.say(f"{agent['name']} ({agent['id'][:12]}): {outcome['status']} {outcome['outcome']}"
                    + (f": {detail}" if detail else ""))

    await defer.gatherResults([defer.ensureDeferred(one(c["id"])) for c in commands], consumeErrors=True)
    if not ctx.json_output:
        rows = [[by_id[i]["name"], by_id[i]["id"][:12], r["status"], r["outcome"], "yes" if r["ok"] else "no"]
                for i, r in results.items()]
        ctx.say("")
        for line in tables.render(["agent", "id", "status", "outcome", "ok"], rows):
            ctx.say(line)
    return EXIT_OK if all(r["ok"] for r in results.values()) else EXIT_ERROR_REPLY


async def pending(ctx: Context) -> int:
    agent = _resolve(await _agents(ctx), ctx.options.agent)[0]
    args = await _ask(ctx, "pending", {"agent": agent["id"]})
    rows = args.get("commands", []) if isinstance(args, dict) else []
    if ctx.json_output:
        ctx.emit_json(rows)
        return EXIT_OK
    for line in tables.render(["id", "agentId", "status", "ts"],
                              [[r["id"], r["agentId"][:12], r["status"], _when(r["ts"])] for r in rows], max_width=70):
        ctx.say(line)
    return EXIT_OK


async def wait(ctx: Context) -> int:
    limit = max(0.0, min(MAX_WAIT, ctx.options.wait))
    reply = await _ask(ctx, "wait", {"id": ctx.options.command_id, "timeout": limit}, timeout=limit + 30)
    reply = reply if isinstance(reply, dict) else {}
    agent_id = reply.get("agentId")
    result, verified = _open_result(ctx, ctx.options.command_id, agent_id, reply.get("result")) \
        if isinstance(agent_id, str) else (None, False)
    outcome = _outcome(reply, result, verified)
    if ctx.json_output:
        ctx.emit_json(outcome)
    else:
        detail = outcome.get("error") or _short_reply(outcome)
        ctx.say(f"{outcome['id']}: {outcome['status']} {outcome['outcome']}" + (f": {detail}" if detail else ""))
    return EXIT_OK if outcome["ok"] else EXIT_ERROR_REPLY


async def cancel(ctx: Context) -> int:
    args = await _ask(ctx, "cancel", {"id": ctx.options.command_id})
    ctx.say(f"{args['id']}: {args['status']}")
    return EXIT_OK


async def emit(ctx: Context) -> int:
    opts = ctx.options
    targets = _resolve(await _agents(ctx), opts.agent)
    try:
        data = json.loads(opts.data)
    except ValueError as e:
        raise ClientError(f"JSON: not valid JSON: {e}", EXIT_USAGE) from None
    delivered: Dict[str, bool] = {}
    done: defer.Deferred = defer.Deferred()
    event_id: List[str] = []

    def listener(message: Dict[str, Any]) -> None:
        args = message.get("args")
        if message.get("name") == "fleet" and isinstance(args, dict) and args.get("kind") == "delivered" \
                and event_id and args.get("event") == event_id[0]:
            delivered[args.get("agent")] = True
            if len(delivered) == len(targets) and not done.called:
                done.callback(None)

    agent_keys = _checked(ctx, targets)
    key = ctx.extras["bridge"].server_key
    from sysadmd.runtime import crypto
    from sysadmd.wire import fleetsig, seal

    ctx.conn.event_listeners.append(listener)
    plain = json.dumps({"key": opts.event_key, "data": data}, separators=(",", ":"), sort_keys=True).encode("utf-8")
    new_id = uuid.uuid4().hex
    event_id.append(new_id)
    payloads, signatures = {}, {}
    for a in targets:
        payloads[a["id"]] = seal.seal(agent_keys[a["id"]], plain, seal.fleet_context("event", new_id, a["id"]))
        signatures[a["id"]] = fleetsig.sign_event(key, new_id, a["id"], payloads[a["id"]])
    reply = await _ask(ctx, "emit", {"id": new_id, "agents": [a["id"] for a in targets], "payloads": payloads,
                                     "signatures": signatures, "key": crypto.md5_checksum(crypto.public_pem(key)),
                                     "ttl": opts.ttl})
    if opts.wait > 0 and len(delivered) < len(targets):
        try:
            await done.addTimeout(opts.wait, ctx.reactor)
        except defer.TimeoutError:
            pass
    for a in targets:
        state = "retrieved" if delivered.get(a["id"]) else "stored until the agent retrieves it"
        ctx.say(f"{reply['id']}  {a['name']} ({a['id'][:12]}): {state}")
    return EXIT_OK
