"""``sysadm``: the command line of a sysadmd server (console script).

Parses the command line, opens the right connection (local socket, ``wss://`` URL or a
bridge), logs in, runs one verb and exits with a documented code.  Verbs are
coroutines ``verb(ctx) -> exit code`` in the neighbouring modules; expected failures are
:class:`~sysadmd.client.errors.ClientError` and print one readable message.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, List, Optional

from twisted.internet import defer, task

from sysadmd import __version__
from sysadmd.client import calls, cpverb, eventtail, fleetverbs, fwverbs, info, jobs, jobverbs, keyverbs, pkgverbs, svcverbs, sysverbs
from sysadmd.client.connect import BRIDGE_PORT, SERVER_PORT, default_socket, login, open_tls, open_unix, parse_url, resolve_credentials
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, ClientError
from sysadmd.client.knownhosts import KnownHosts

DESCRIPTION = """\
Talk to a sysadmd server: call any API, run jobs and watch their output live, tail
events, manage login keys and bridge links.

Where: the local daemon's Unix socket by default (your uid is your login), a remote
server with --url wss://host[:port] (certificate pinned on first use), or a server
behind a bridge with --bridge wss://host[:12149] --key FILE --server NAME (servers behind
a bridge prove their key and are pinned by it on first use, like ssh host keys).
"""

EXAMPLES = """\
examples:
  sysadm identify
  sysadm --url wss://nas.lan --user alice query
  sysadm info
  sysadm call rpc dispatcher '{"action":"list"}'
  echo '{"action":"list_ssl_certs"}' | sysadm call rpc settings -
  sysadm run 'make -C /src' 'make -C /src install'
  sysadm run --detach 'make -C /src'   then   sysadm job attach ID
  sysadm cp backup.tar server:/srv/backup.tar
  sysadm events system-state --pretty
  sysadm keys add ~/.ssh/sysadm.pub --nickname laptop
  sysadm --bridge wss://relay.example.org --key ~/.config/sysadm/id.pem peers
  sysadm --profile office query
  sysadm services list
  sysadm users add alice --groups sudo
"""

PROFILES_HELP = """\
profiles and environment:
  Settings come from the command line, else the environment (SYSADM_URL, SYSADM_BRIDGE,
  SYSADM_SERVER, SYSADM_KEY, SYSADM_BRIDGE_KEY, SYSADM_USER, SYSADM_SOCKET, SYSADM_TOKEN),
  else the profile file $XDG_CONFIG_HOME/sysadm/config (~/.config/sysadm/config): INI
  sections named by --profile NAME or $SYSADM_PROFILE, [default] otherwise. Keys: url,
  bridge, server, socket, user, key, bridge_key, fingerprint, known_hosts, known_servers,
  timeout, allow_upstream_server. Where to connect and how to log in are each taken whole
  from one layer. Example:
    [default]
    url = wss://nas.lan:12150
    key = ~/.config/sysadm/id.pem
    [office]
    bridge = wss://relay.example.org
    server = office-nas
    key = ~/.config/sysadm/id.pem
"""


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the verb (after it, they override)."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("connection and login")
    g.add_argument("--socket", metavar="PATH", default=default(None),
                   help="the daemon's local socket (default: $SYSADM_SOCKET, else the daemon's default path)")
    g.add_argument("--url", metavar="URL", default=default(None),
                   help=f"remote server wss://host[:port] (port {SERVER_PORT} by default; $SYSADM_URL)")
    g.add_argument("--bridge", metavar="URL", default=default(None),
                   help=f"reach servers through the bridge wss://host[:port] (port {BRIDGE_PORT} by default; $SYSADM_BRIDGE)")
    g.add_argument("--server", metavar="NAME", default=default(None),
                   help="with --bridge ($SYSADM_SERVER): a pinned server's name or key fingerprint prefix, a connection ID (see "
                        "`peers`), or, on first use, the host name exactly one server claims (then pinned)")
    g.add_argument("--allow-upstream-server", action="store_true", dest="allow_upstream_server", default=default(False),
                   help="with --bridge: also log in to servers that cannot prove their identity (upstream "
                        "sysadm servers); such a login can be relayed by another bridge tenant")
    g.add_argument("--no-e2e", action="store_true", dest="no_e2e", default=default(False),
                   help="with --bridge: skip the end-to-end encrypted session and log in in upstream's base64 mode")
    g.add_argument("--require-e2e", action="store_true", dest="require_e2e", default=default(False),
                   help="with --bridge: refuse servers that do not do end-to-end encrypted sessions")
    g.add_argument("--known-servers", metavar="FILE", dest="known_servers", default=default(None),
                   help="servers behind bridges pinned by key (default: $XDG_CONFIG_HOME/sysadm/known_servers)")
    g.add_argument("--user", metavar="NAME", default=default(None),
                   help="log in with a password ($SYSADM_PASSWORD, or asked on the terminal)")
    g.add_argument("--key", metavar="FILE", default=default(None),
                   help="log in with this RSA private key (rpc/auth_ssl): PEM (PKCS#1 or PKCS#8) or OpenSSH format, "
                        "encrypted or not ($SYSADM_KEY; usually ~/.config/sysadm/id.pem)")
    g.add_argument("--bridge-key", metavar="FILE", default=default(None),
                   help="with --bridge: the key the bridge knows you by (default: --key)")
    g.add_argument("--token", metavar="TOKEN", default=default(None),
                   help="resume a session token ($SYSADM_TOKEN)")
    g.add_argument("--fingerprint", metavar="FP", default=default(None),
                   help="expect and pin this SHA-256 certificate fingerprint")
    g.add_argument("--known-hosts", metavar="FILE", dest="known_hosts", default=default(None),
                   help="pinned certificates (default: $XDG_CONFIG_HOME/sysadm/known_hosts)")
    g.add_argument("--profile", metavar="NAME", default=default(None),
                   help="use the settings of [NAME] in the profile file ($SYSADM_PROFILE; default: [default] if "
                        "there is one); see PROFILES below")
    g.add_argument("--timeout", metavar="SECONDS", type=float, default=default(None),
                   help="give up connecting or waiting for a reply after this long (0: never; default 30)")
    g.add_argument("--json", action="store_true", default=default(False), help="machine-readable JSON output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sysadm", description=DESCRIPTION, epilog=EXAMPLES + "\n" + PROFILES_HELP + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"sysadm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, func: Any, help: str, *, local: bool = False, prepare: Any = None, **kw: Any) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, parents=[common], help=help, description=help, **kw)
        p.set_defaults(func=func, local=local, prepare=prepare)
        return p

    p = verb("call", calls.call, "send one request and print the reply", prepare=calls.prepare_call)
    p.add_argument("namespace", metavar="NAMESPACE")
    p.add_argument("name", metavar="NAME")
    p.add_argument("args_json", metavar="ARGS-JSON", nargs="?", help="request args as JSON; - reads stdin (default {})")

    p = verb("run", jobs.run, "run commands as one dispatcher job, streaming its output; exits with its return code")
    p.add_argument("commands", metavar="CMD", nargs="+", help="one command line per argument (split by the server, no shell)")
    p.add_argument("--id", metavar="ID", help="job id (default cli-<user>-<time>-<random>)")
    p.add_argument("--detach", action="store_true",
                   help="print the job id and return at once (`sysadm job attach ID` follows it later)")

    # --- the jobs API (issue 10, helper D): `sysadm jobs`, `sysadm job show|log|wait|abort`;
    # register() returns the `job` verb's sub-actions (`job attach` joins them there).
    job_actions = jobverbs.register(verb, common)

    # --- files over the API (issue 10 item 7): `sysadm cp FILE server:PATH`, `sysadm cp server:PATH FILE`.
    cpverb.register(verb)

    p = verb("kill", jobs.kill, "kill pending or running jobs")
    p.add_argument("job_ids", metavar="ID", nargs="+")

    # --- job attach (sysadmd/client/jobs.py) ---
    jp = job_actions.add_parser("attach", parents=[common],
                                help="print a dispatcher job's output from its first byte, follow it while it runs, "
                                     "and exit with its code", description="print a dispatcher job's output from "
                                     "its first byte, follow it while it runs, and exit with its code (Ctrl-C "
                                     "detaches; the job goes on)")
    jp.add_argument("job_id", metavar="ID", help="the dispatcher job id (as `sysadm run --detach` printed it)")
    jp.set_defaults(func=jobs.attach)
    # --- end job attach ---

    p = verb("events", eventtail.events, "subscribe to events and print them as they come")
    p.add_argument("names", metavar="NAME", nargs="+", help="dispatcher, life-preserver, system-state")
    p.add_argument("--pretty", action="store_true", help="time, name and indented args instead of one JSON line")
    p.add_argument("--count", metavar="N", type=int, default=0, help="exit after N events")

    verb("query", calls.query, "list the APIs this server offers and your access to each")
    verb("identify", calls.identify, "show the server's host name and type (no login needed)")
    verb("info", info.info, "the machine at a glance: host, OS, kernel, uptime, CPU, memory, disks")  # J
    verb("peers", None, "with --bridge: list the servers the bridge offers you")
    fleetverbs.register(verb, common)  # fleet through the bridge (issue 13)

    keys = verb("keys", None, "manage the keys that may log in with rpc/auth_ssl")
    kv = keys.add_subparsers(dest="keys_verb", metavar="ACTION")
    kv.required = True
    kp = kv.add_parser("list", parents=[common], help="registered keys (all users' with full access)")
    kp.set_defaults(func=keyverbs.keys_list)
    kp = kv.add_parser("add", parents=[common], help="register a public key (or the public half of a private key)")
    kp.add_argument("file", metavar="FILE")
    kp.add_argument("--nickname", metavar="N")
    kp.add_argument("--email", metavar="E")
    kp.set_defaults(func=keyverbs.keys_add, prepare=keyverbs.prepare_keys_add)
    kp = kv.add_parser("revoke", parents=[common], help="revoke a key: nickname, md5 checksum, pub_key string or key file")
    kp.add_argument("handle", metavar="PUBKEY")
    kp.add_argument("--owner", metavar="USER", help="the key's user, when several match")
    kp.set_defaults(func=keyverbs.keys_revoke)
    kp = kv.add_parser("checksums", parents=[common], help="md5 checksums of all keys (what bridges pair by)")
    kp.set_defaults(func=keyverbs.keys_checksums)

    bridges = verb("bridges", None, "manage this server's outgoing bridge links")
    bv = bridges.add_subparsers(dest="bridges_verb", metavar="ACTION")
    bv.required = True
    bp = bv.add_parser("list", parents=[common], help="configured bridge links")
    bp.set_defaults(func=keyverbs.bridges_list)
    bp = bv.add_parser("add", parents=[common], help="add a bridge link")
    bp.add_argument("nickname", metavar="NICK")
    bp.add_argument("bridge_url", metavar="URL")
    bp.add_argument("--verify", choices=("pin", "ca", "none"), help="how the server checks the bridge certificate")
    bp.set_defaults(func=keyverbs.bridges_add)
    bp = bv.add_parser("remove", parents=[common], help="remove a bridge link")
    bp.add_argument("nickname", metavar="NICK")
    bp.set_defaults(func=keyverbs.bridges_remove)

    sysverbs.register(verbs, common, verb)  # users …, services … (sysadm/users, sysadm/services)
    fwverbs.register(verb, common)  # W: firewall … (sysadm/firewall)
    pkgverbs.register(verb, common)  # P: pkg … (sysadm/pkg, package jobs with a progress bar)
    svcverbs.register(verb, common)  # S1: svc … (sysadm/supervisor)

    hosts = verb("known-hosts", None, "list or forget pinned certificates", local=True)
    hv = hosts.add_subparsers(dest="hosts_verb", metavar="ACTION")
    hv.required = True
    hp = hv.add_parser("list", parents=[common], help="pinned endpoints and fingerprints")
    hp.set_defaults(func=known_hosts_list)
    hp = hv.add_parser("forget", parents=[common], help="remove the pinned certificate of HOST:PORT")
    hp.add_argument("endpoint", metavar="HOST:PORT")
    hp.set_defaults(func=known_hosts_forget)
    servers = verb("known-servers", None, "list or forget servers behind bridges pinned by their key", local=True)
    sv = servers.add_subparsers(dest="servers_verb", metavar="ACTION")
    sv.required = True
    sp = sv.add_parser("list", parents=[common], help="pinned names, key fingerprints and when first seen")
    sp.set_defaults(func=known_servers_list)
    sp = sv.add_parser("forget", parents=[common], help="remove the pinned key of server NAME")
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=known_servers_forget)
    return parser


def known_servers_list(options: Any, out: Any, err: Any) -> int:
    from sysadmd.client.knownservers import KnownServers

    store = KnownServers(options.known_servers)
    entries = store.entries()
    if options.json:
        import json

        out.write(json.dumps([{"name": e.name, "fingerprint": e.display, "sha256_hex": e.fingerprint,
                               "first_seen": e.first_seen} for e in entries], indent=2) + "\n")
    elif not entries:
        out.write(f"no pinned servers ({store.path})\n")
    else:
        for e in entries:
            out.write(f"{e.name} {e.display} first seen {e.first_seen}\n")
    return EXIT_OK


def known_servers_forget(options: Any, out: Any, err: Any) -> int:
    from sysadmd.client.knownservers import KnownServers

    store = KnownServers(options.known_servers)
    if store.forget(options.name):
        out.write(f"forgot the key of server {options.name}\n")
        return EXIT_OK
    err.write(f"sysadm: no server is pinned as {options.name} in {store.path} (`sysadm known-servers list`)\n")
    return 1


# --- local verbs (no connection) -------------------------------------------------------------

def known_hosts_list(options: Any, out: Any, err: Any) -> int:
    store = KnownHosts(options.known_hosts)
    entries = store.entries()
    if options.json:
        import json

        out.write(json.dumps(dict(entries), indent=2, sort_keys=True) + "\n")
    elif not entries:
        out.write(f"no pinned certificates ({store.path})\n")
    else:
        for endpoint, fingerprint in entries:
            out.write(f"{endpoint} {fingerprint}\n")
    return EXIT_OK


def known_hosts_forget(options: Any, out: Any, err: Any) -> int:
    store = KnownHosts(options.known_hosts)
    endpoint = options.endpoint
    if endpoint.startswith("wss://"):
        endpoint = parse_url(endpoint, SERVER_PORT).name
    if store.forget(endpoint):
        out.write(f"forgot the certificate of {endpoint}\n")
        return EXIT_OK
    err.write(f"sysadm: {endpoint} is not in {store.path} (`sysadm known-hosts list` shows the entries)\n")
    return 1


# --- connected verbs ------------------------------------------------------------------------

async def open_connection(ctx: Context) -> None:
    """Open the connection the options ask for, log in, and put it in ``ctx.conn``."""
    opts = ctx.options
    if opts.verb == "fleet":
        await fleetverbs.open_fleet(ctx)  # the bridge itself, not a server behind it
        return
    if opts.bridge:
        from sysadmd.client import bridged

        if getattr(opts, "no_e2e", False) and getattr(opts, "require_e2e", False):
            raise ClientError("--no-e2e and --require-e2e contradict each other: give one", EXIT_USAGE)

        await bridged.open_bridged(ctx)
        return
    if opts.server:
        raise ClientError("--server needs --bridge (it names a server behind a bridge)", EXIT_USAGE)
    if opts.allow_upstream_server:
        raise ClientError("--allow-upstream-server needs --bridge", EXIT_USAGE)
    if getattr(opts, "no_e2e", False) or getattr(opts, "require_e2e", False):
        raise ClientError("--no-e2e and --require-e2e need --bridge", EXIT_USAGE)
    if opts.bridge_key:
        raise ClientError("--bridge-key needs --bridge", EXIT_USAGE)
    # SYSADM_TOKEN was weighed against the other ways to log in by profile.apply.
    environ = {k: v for k, v in os.environ.items() if k != "SYSADM_TOKEN"}
    creds = resolve_credentials(opts.user, opts.key, opts.token, ctx.stdin, environ, err=ctx.err)
    if opts.url:
        endpoint = parse_url(opts.url, SERVER_PORT)
        ctx.target = endpoint.name
        ctx.conn = await open_tls(ctx.reactor, endpoint, ctx.timeout, KnownHosts(opts.known_hosts), opts.fingerprint, ctx.err)
        if is_bridge(ctx.conn) and opts.verb != "identify":
            url = opts.url
            raise ClientError(
                f"{url} is a sysadm bridge, not a server (its handshake says Server: sysadm-bridge)\n"
                f"  hint: reach a server behind it with --bridge {url} --key FILE --server NAME; "
                f"`sysadm --bridge {url} --key FILE peers` lists the servers it offers you", EXIT_USAGE)
    else:
        path = opts.socket or default_socket()
        ctx.target = path
        ctx.conn = await open_unix(ctx.reactor, path, ctx.timeout)
    await login(ctx.conn, ctx.reactor, creds, ctx.timeout, ctx.target)


def is_bridge(conn: Any) -> bool:
    """Whether the peer's WebSocket handshake says it is a bridge (upstream's and ours
    send ``Server: sysadm-bridge``; servers send ``sysadm-server``)."""
    headers = getattr(conn, "http_headers", None) or {}
    return "bridge" in str(headers.get("server", "")).lower()


async def execute(reactor: Any, options: argparse.Namespace, out: Any, err: Any, stdin: Any) -> int:
    """Run one parsed command line; the exit code. Never raises for expected failures."""
    ctx = Context(reactor, options, out, err, stdin)
    try:
        if options.prepare is not None:
            options.prepare(ctx)
        await open_connection(ctx)
        if options.verb == "peers":
            from sysadmd.client import bridged

            return await bridged.peers(ctx)
        return await options.func(ctx)
    except ClientError as e:
        err.write(f"sysadm: {e.message}\n")
        err.flush()
        return e.exit_code
    finally:
        await _close(ctx)


async def _close(ctx: Context) -> None:
    conn = ctx.conn
    if conn is None:
        return
    d = conn.close()
    d.addTimeout(3, ctx.reactor)
    try:
        await d
    except Exception:
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abortConnection()


class PipeGuard:
    """stdout/stderr that end the program the Unix way when their reader goes away.

    ``sysadm … | head`` closes the pipe early; like ``cat`` or ``seq`` we then die of
    SIGPIPE (status 141 to the shell) instead of printing a traceback. Python ignores
    SIGPIPE so that sockets see EPIPE; it is restored only at that last moment.
    """

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._die()
        return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._die()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @staticmethod
    def _die() -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
        os._exit(128 + signal.SIGPIPE)  # pragma: no cover - not reached


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    out, err = PipeGuard(sys.stdout), PipeGuard(sys.stderr)
    from sysadmd.client import profile

    try:
        profile.apply(options)
    except profile.ProfileError as e:
        err.write(f"sysadm: {e}\n")
        return EXIT_USAGE
    if options.verb == "peers" and not options.bridge:
        parser.error("peers needs --bridge URL (or SYSADM_BRIDGE, or bridge = in the profile)")
    if options.local:
        try:
            return options.func(options, out, err)
        except ClientError as e:
            err.write(f"sysadm: {e.message}\n")
            return e.exit_code

    async def react_main(reactor: Any) -> None:
        work = defer.ensureDeferred(execute(reactor, options, out, err, sys.stdin))
        stopped_by: List[int] = []

        def interrupted(signum: int) -> None:
            if not work.called:
                stopped_by.append(signum)
                work.cancel()

        # Twisted's own handlers would stop the reactor mid-verb (and report the closed
        # connection as an error); Ctrl-C while connecting or waiting for a reply ends the
        # verb instead (run and events install their own SIGINT handlers while they stream),
        # and SIGTERM ends any verb quietly with the conventional status 143.
        for signum in (signal.SIGINT, signal.SIGTERM):
            reactor.callWhenRunning(signal.signal, signum, lambda n, _: reactor.callFromThread(interrupted, n))
        try:
            code = await work
        except defer.CancelledError:
            if stopped_by and stopped_by[0] == signal.SIGTERM:
                code = EXIT_TERMINATED
            else:
                err.write("\nsysadm: interrupted\n")
                code = EXIT_INTERRUPTED
        raise SystemExit(code)

    try:
        task.react(lambda reactor: defer.ensureDeferred(react_main(reactor)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
