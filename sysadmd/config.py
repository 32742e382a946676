"""sysadmd's configuration keys and the resolved :class:`Config`.

Upstream ``sysadm.conf`` keys keep their names and defaults; our own keys follow the
same ``UPPER_CASE`` style.  ``conf/sysadmd.conf`` is generated from :data:`KEYS`
(``python -m sysadmd.config > conf/sysadmd.conf``) and a test keeps the two in step.
"""

from __future__ import annotations

import os
import re
from typing import List

from sysadmd.runtime.configfile import ConfigError, Key, Settings, render_sample
from sysadmd.runtime.paths import SYSTEM_SOCKET, default_state_dir  # the defaults the client relies on too


def normalize_origin(text: str):
    """``scheme://host[:port]`` in canonical form (lower case, default port dropped) for an
    http(s) origin, ``"null"`` for the opaque origin, else ``None``."""
    from urllib.parse import urlsplit

    text = text.strip()
    if text.lower() == "null":
        return "null"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    elif not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", host):
        return None
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _supervisor_port(text: str):
    """SUPERVISOR_PORT → a port number (served on 127.0.0.1 only) or ``None`` for none."""
    value = text.strip().lower()
    if value in ("", "none"):
        return None
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"expected a port number 0-65535 (served on 127.0.0.1 only) or none, got {text.strip()!r}")
    return int(value)


KEYS: List[Key] = [
    # --- upstream keys -------------------------------------------------------------
    Key("PORT", "endpoint", "12150", "WebSocket (and REST) listener: a port number or a Twisted endpoint\nstring such as tcp:12150:interface=127.0.0.1. TLS is always added."),
    Key("PORT_REST", "endpoint", "", "Extra REST-only HTTPS listener (upstream used 12151). Empty: none;\nREST is always served on PORT as well."),
    Key("BRIDGE_CONNECTIONS_ONLY", "bool", False, "true: listen on no TCP port at all; only outgoing bridge links\n(and the local socket) are used."),
    Key("BLACKLIST_BLOCK_MINUTES", "int", 60, "Minutes an address stays blocked after too many failed logins.", minimum=1),
    Key("BLACKLIST_AUTH_FAIL_LIMIT", "int", 5, "Failed logins from one address that trigger a block.", minimum=1),
    Key("BLACKLIST_AUTH_FAIL_RESET_MINUTES", "int", 10, "Quiet minutes after which an address's failure count restarts.", minimum=1),
    # --- ours: places --------------------------------------------------------------
    Key("STATE_DIR", "path", "", "State directory (certificate, keys, database, job output, socket).\nEmpty: /var/db/sysadmd as root, else ~/.local/state/sysadmd."),
    Key("SOCKET", "path", "", "Local Unix socket (WebSocket protocol, authenticated by peer uid).\nEmpty: /run/sysadmd/sysadmd.sock for the system daemon (root, STATE_DIR\nnot set), where every local user can reach it and the peer's uid decides\nits rights; otherwise <STATE_DIR>/sysadmd.sock. 'none' disables it."),
    Key("LISTEN_INTERFACE", "str", "::", "Address to bind when PORT / PORT_REST is a bare number ('::' is\nevery IPv6 and IPv4 address)."),
    Key("TLS_CERT", "path", "", "PEM certificate file. Empty: a self-signed certificate is generated\nonce in the state directory."),
    Key("TLS_KEY", "path", "", "PEM private key for TLS_CERT."),
    # --- ours: authentication ------------------------------------------------------
    Key("PAM_SERVICE", "str", "login", "PAM service used to check passwords."),
    Key("ALLOW_PASSWORD_AUTH", "bool", True, "false disables rpc/auth (user name and password)."),
    Key("FULL_ACCESS_GROUPS", "list", ("wheel", "sudo"), "Groups whose members get full access (root always has it)."),
    Key("LIMITED_ACCESS_GROUPS", "list", ("operator", "adm"), "Groups whose members get read-mostly access."),
    Key("BLACKLIST_EXEMPT_LOOPBACK", "bool", True, "Never block loopback addresses."),
    Key("TOKEN_TTL", "int", 900, "Seconds a session token stays valid after its last use.", minimum=10),
    Key("CHALLENGE_TTL", "int", 30, "Seconds an auth_ssl challenge may be answered.", minimum=1),
    Key("AUTH_TIMEOUT", "int", 30, "Seconds a connection may stay unauthenticated before it is closed.", minimum=1),
    Key("IDLE_TIMEOUT", "int", 1800, "Seconds without a request after which a connection is closed.", minimum=10),
    # --- ours: limits --------------------------------------------------------------
    Key("MAX_MESSAGE_BYTES", "int", 16 * 1024 * 1024, "Largest accepted WebSocket message or REST body (bytes); larger\nWebSocket messages close the connection with code 1009.", minimum=1024),
    Key("MAX_SESSION_BUFFER_BYTES", "int", 8 * 1024 * 1024, "Outgoing bytes a slow connection may have pending before it is\nclosed instead of growing the daemon's memory.", minimum=65536),
    Key("MAX_CONNECTIONS", "int", 4096, "Simultaneous connections accepted (all listeners together).", minimum=1),
    # --- ours: dispatcher ----------------------------------------------------------
    Key("MAX_PARALLEL_JOBS", "int", 0, "Jobs of no_queue running at once; 0 sizes it for the host\n(2 x CPU cores, at least 4).", minimum=0),
    Key("JOB_KILL_GRACE", "float", 5.0, "Seconds between SIGTERM and SIGKILL when a running job is killed.", minimum=0),
    Key("JOB_OUTPUT_CAP", "int", 65536, "Bytes of each command's output kept in events and replies (the\nwhole output stays in the job's file).", minimum=1024),
    Key("JOB_WORKDIR", "path", "/", "Working directory of dispatcher commands."),
    Key("JOB_PATH", "str", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PATH given to dispatcher commands (their whole environment is\nPATH, HOME, LANG, SHELL and the job marker SYSADMD_JOB; nothing else\nleaks from the daemon)."),
    Key("JOB_RETENTION_DAYS", "int", 30, "Days finished jobs and their output are kept.", minimum=1),
    # --- ours: events and logs -----------------------------------------------------
    Key("SYSTEM_STATE_INTERVAL", "int", 60, "Seconds between system-state events.", minimum=1),
    Key("STATE_LOAD_WARN", "float", 2.0, "1-minute load per CPU core that raises system-state to Warning.", minimum=0),
    Key("STATE_LOAD_CRIT", "float", 4.0, "1-minute load per CPU core that raises system-state to Critical.", minimum=0),
    Key("STATE_MEMORY_WARN", "float", 90.0, "Memory use (percent) that raises system-state to Warning.", minimum=0, maximum=100),
    Key("STATE_MEMORY_CRIT", "float", 97.0, "Memory use (percent) that raises system-state to Critical.", minimum=0, maximum=100),
    Key("STATE_DISK_WARN", "float", 90.0, "Disk use of any mount (percent) that raises system-state to Warning.", minimum=0, maximum=100),
    Key("STATE_DISK_CRIT", "float", 97.0, "Disk use of any mount (percent) that raises system-state to Critical.", minimum=0, maximum=100),
    Key("LOG_RETENTION_DAYS", "int", 30, "Days entries of rpc/logs (hostinfo, dispatcher, events) are kept.", minimum=1),
    # --- ours: bridge links --------------------------------------------------------
    Key("BRIDGE_RETRY_MAX", "float", 60.0, "Longest wait (seconds) between reconnection attempts to a bridge.", minimum=1),
    Key("BRIDGE_PING_INTERVAL", "float", 30.0, "Seconds between WebSocket pings on bridge links (0: none).", minimum=0),
    # --- ours: REST from browsers --------------------------------------------------
    Key("REST_ALLOWED_ORIGINS", "list", (), "Web origins (https://host[:port], comma separated) whose pages may\ncall the REST API from a browser. Requests carrying any other web\nOrigin than the server's own are refused (403). Empty: none."),
    # --- ours: key logins ----------------------------------------------------------
    Key("MAX_KEYS_PER_USER", "int", 32, "RSA keys one user may register through rpc/settings (the sysadmd\nadmin command is not limited).", minimum=1, maximum=100000),
    Key("KEY_LOGIN_MAX_TRIED", "int", 1024, "Registered keys an rpc/auth_ssl answer is checked against when the\nclient does not name its key by checksum (the oldest keys first).", minimum=1, maximum=1000000),
    Key("KEY_CHECK_THREADS", "int", 2, "Threads that verify key-login signatures (never the main thread).", minimum=1, maximum=64),
    # --- ours: password logins and tokens --------------------------------------------
    Key("PASSWORD_CHECK_WORKERS", "int", 4, "Password (PAM) checks run at once; more wait in a queue that serves\naddresses in turn, and one address never holds every worker.", minimum=1, maximum=64),
    Key("PASSWORD_CHECKS_PER_ADDRESS", "int", 4, "Password checks one address (or one client behind a bridge) may have\nrunning or queued; more are refused at once with 429.", minimum=1, maximum=1000),
    Key("AUTH_PENDING_MAX_REQUESTS", "int", 32, "Requests a connection may send while its login is being checked;\none more closes it (1008).", minimum=1),
    Key("AUTH_PENDING_MAX_BYTES", "int", 1048576, "Bytes of requests a connection may send while its login is being\nchecked; more closes it (1008).", minimum=1024),
    Key("RIGHTS_CACHE_SECONDS", "float", 5.0, "Seconds a user's group membership is cached; privileged calls look it\nup again after that, so a user removed from the access groups (or\ndeleted) loses the rights of an old login within this time.", minimum=0, maximum=300),
    Key("TOKEN_MAX_LIFETIME", "int", 43200, "Seconds a token lives at most after its login, however often it is\nused (TOKEN_TTL slides with use; this does not). 0: no limit.", minimum=0),
    # --- ours: bridged logins -------------------------------------------------------
    Key("BRIDGE_UPSTREAM_CLIENTS", "bool", True, "Accept upstream-style (unbound) key logins from clients behind a bridge.\nThey are open to a challenge relay by another bridge tenant; false\nrefuses them, so only sysadm clients that sign bound logins get in."),
    # --- ours: dispatcher output files ----------------------------------------------
    Key("JOB_OUTPUT_FILE_MAX", "int", 64 * 1024 * 1024, "Bytes of output one job's file keeps: each command's first bytes and,\nof a command cut short, its last JOB_OUTPUT_CAP bytes (less in long\nchains); history says how many bytes were cut.", minimum=8192),
    Key("JOB_OUTPUT_TOTAL_MAX", "int", 1024 * 1024 * 1024, "Bytes all job output files may take together; beyond it the files of\nthe oldest finished jobs are deleted first (their history says so).", minimum=65536),
    # --- ours: connection and message limits ----------------------------------------
    Key("MAX_UNAUTH_MESSAGE_BYTES", "int", 64 * 1024, "Largest WebSocket message accepted before the connection has logged\nin (bytes); larger ones close it with code 1009 as soon as their\nlength is known.", minimum=1024),
    Key("MAX_CONNECTIONS_PER_ADDRESS", "int", 64, "Simultaneous TCP connections from one IP address, counted from the\nmoment they are accepted (loopback included). 0: no cap.", minimum=0),
    Key("HANDSHAKE_TIMEOUT", "float", 15.0, "Seconds a new connection has, from being accepted, to finish TLS and\nthe WebSocket upgrade or its HTTP request, however slowly its bytes\narrive; then it is closed.", minimum=0.1),
    # --- sysadm/systemmanager and sysadm/fs (issue 12) ------------------------------
    Key("ALLOW_POWER_OFF", "bool", False, "true: sysadm/systemmanager halt and reboot (full access) run\n`shutdown -h now` / `shutdown -r now`. false: they are refused, so\ntests and demos cannot power the machine off."),
    Key("SYSINFO_CACHE_SECONDS", "float", 1.0, "Seconds a systeminfo, memorystats, cpupercentage or procinfo reading\nis shared by every client before /proc is read again.", minimum=0.1, maximum=60),
    Key("DIRLIST_MAX_ENTRIES", "int", 5000, "Entries sysadm/fs dirlist returns at most (the first by name); the\nreply says how many were left out.", minimum=10, maximum=100000),
    # --- ours: the job store (issue 10) ---------------------------------------------
    Key("JOB_STORE_MAX_BYTES", "int", 2 * 1024 * 1024 * 1024, "Bytes finished jobs may take together (their rows and output files);\nbeyond it the oldest finished jobs are deleted, rows and files, even\nbefore JOB_RETENTION_DAYS.", minimum=1024 * 1024),
    # --- sysadm/users and sysadm/services (issue 12) --------------------------------
    Key("USERS_PREFIX", "path", "", "sysadm/users: directory holding the etc/passwd, etc/group and etc/shadow\nto manage (passed to the shadow tools as --prefix). Empty: the system's\nown. Passwords can only be set on the system's own database."),
    Key("SERVICES_INITD_DIR", "path", "/etc/init.d", "sysadm/services: the SysV init script directory; the runlevel links\nare in rc?.d beside it. Used when systemd does not run the host."),
    # --- file transfers (issue 10) ---------------------------------------------------
    Key("DOWNLOAD_TOKEN_TTL", "int", 3600, "Seconds a core/download token stays valid (for repeated and ranged\nGETs of /_download/<job>); its spool file is deleted after that.", minimum=10, maximum=7 * 86400),
    Key("UPLOAD_MAX_BYTES", "int", 4 * 1024 * 1024 * 1024, "Largest POST /_upload body (bytes); larger ones are answered 413\nas soon as that is known.", minimum=1024 * 1024),
    Key("TRANSFER_SPOOL_MAX_BYTES", "int", 8 * 1024 * 1024 * 1024, "Bytes the transfer spool (<state_dir>/transfers) may hold: files\nprepared for download and uploads being received.", minimum=1024 * 1024),
    # --- the web console (issue 14) --------------------------------------------------
    Key("CONSOLE", "bool", True, "true: serve the web console (a browser UI talking to the WebSocket API)\nat https://host:PORT/ and its files under /console/. false: / is\nREST's 404."),
    # --- sysadm/firewall (issue 12) -------------------------------------------------
    Key("FIREWALL_NFT", "str", "nft", "sysadm/firewall: the nft program (a path, or a name looked up in\n/usr/sbin:/usr/bin:/sbin:/bin). The class is routed only when it exists."),
    # --- sysadm/pkg and sysadm/update (issue 12) ------------------------------------
    Key("PKG_APT_CONFIG", "path", "", "sysadm/pkg and sysadm/update: an apt configuration file given to every\napt tool the daemon runs (as APT_CONFIG), e.g. to use other sources or\nlist directories. Empty: apt's own configuration."),
    Key("PKG_SEARCH_MAX", "int", 200, "Packages sysadm/pkg pkg_search returns at most (exact name first, then\nnames starting with the term, names holding it, descriptions).", minimum=1, maximum=10000),
    Key("PKG_LOG_READ_MAX", "int", 1024 * 1024, "Bytes of each apt log sysadm/update readlogs returns at most (its last\nbytes).", minimum=4096, maximum=64 * 1024 * 1024),
    # --- the supervisor's ;; wire (issue 11) -------------------------------------------
    Key("SUPERVISOR_PORT", "str", "7777", "The seed's supervisor wire (JSON ending in ';;'): a port number served\non 127.0.0.1 only (no other address can be given), 0 for any free port,\nor none. The peer's uid decides what it may do. A busy port is logged\nand the daemon runs on without it."),
    Key("SUPERVISOR_SOCKET", "path", "", "The same wire on a Unix socket (mode 0666, peer uid by SO_PEERCRED).\nEmpty: /run/sysadmd/supervisor.sock for the system daemon (root,\nSTATE_DIR not set), else <STATE_DIR>/supervisor.sock. 'none' disables it."),
    Key("SUPERVISOR_MAX_CONNECTIONS", "int", 64, "Supervisor wire connections open at once (TCP and socket together);\nmore are closed at once.", minimum=1),
    Key("SUPERVISOR_MAX_MESSAGE_BYTES", "int", 1024 * 1024, "Longest supervisor wire query, ';;' and the base64 definition included;\na longer one is answered invalid and skipped up to its ';;'.", minimum=4096),
    Key("SUPERVISOR_IDLE_TIMEOUT", "float", 300.0, "Seconds a supervisor wire connection may sit idle (no query waiting or\nrunning) before it is closed. 0: never.", minimum=0),
    # --- E: sysadm/services logs (issue 14) --------------------------------------------
    Key("SERVICES_LOG_DIR", "path", "/var/log", "sysadm/services logs of a SysV service: the directory holding syslog\n(or messages, daemon.log) and the services' own <name>.log or\n<name>/*.log files."),
    # helper D: sysadm/services on systemd (D-Bus) and OpenRC (issue 12) ------------------
    Key("SERVICES_INIT", "str", "auto", "sysadm/services: the init system whose services are managed. auto:\nsystemd when /run/systemd/system exists, OpenRC when /run/openrc exists\nor PID 1 is openrc-init, else SysV scripts (SERVICES_INITD_DIR).", choices=("auto", "systemd", "openrc", "sysv")),
    Key("SERVICES_SYSTEMD_BUS", "str", "", "sysadm/services on systemd: the D-Bus address of systemd's bus\n(unix:path=… or unix:abstract=…). Empty: the system bus,\nunix:path=/run/dbus/system_bus_socket."),
    Key("SERVICES_SYSTEMD_JOB_TIMEOUT", "float", 120.0, "Seconds a systemd start, stop or restart job may take before the\nrequest is answered with an error (the job itself goes on).", minimum=0.1, maximum=3600),
    # --- helper A: fleet end to end (issue 13 item 6) -------------------------------
    Key("FLEET_ALLOW_PLAINTEXT", "bool", False, "true: as a fleet agent, also run commands and publish events whose payload\nis not sealed to this server's bridge key (still signed by a registered\nkey). For benchmarks and debugging only: the bridge can read those."),
    Key("FLEET_AGENT_NAME", "str", "", "The name this server gives itself as a fleet agent (fleet/hello). Empty:\nits host name. Clients pin agent keys by this name (known_servers)."),
    # --- F: the console's fleet view (issue 14 item 6) --------------------------------
    Key("CONSOLE_CONNECT_SRC", "str", "", "Bridges the web console may connect to besides those this server is\nlinked to (which are always allowed): wss:// origins\n(wss://host[:port]), separated by spaces. They go into the console's\nContent-Security-Policy connect-src. Empty: only the linked bridges."),
]


def wss_origin(text: str):
    """``wss://host[:port]`` in canonical form for a wss origin (F: the console's
    connect-src), else ``None``: no path, query, user or other scheme."""
    text = text.strip()
    if not text.lower().startswith("wss://"):
        return None
    origin = normalize_origin("https://" + text[len("wss://"):])
    if origin is None or origin == "null":
        return None
    return "wss://" + origin[len("https://"):]


KEY_NAMES = [k.name for k in KEYS]


class Config(Settings):
    KEYS = KEYS

    def validate(self) -> None:
        values = self._values
        system_daemon = not values["STATE_DIR"] and os.geteuid() == 0
        if not values["STATE_DIR"]:
            values["STATE_DIR"] = default_state_dir()
        if not values["SOCKET"]:
            values["SOCKET"] = SYSTEM_SOCKET if system_daemon else os.path.join(values["STATE_DIR"], "sysadmd.sock")
        elif values["SOCKET"].lower() == "none":
            values["SOCKET"] = ""
        if bool(values["TLS_CERT"]) != bool(values["TLS_KEY"]):
            raise ConfigError("TLS_KEY: TLS_CERT and TLS_KEY must be given together")
        if values["STATE_LOAD_CRIT"] < values["STATE_LOAD_WARN"]:
            raise ConfigError("STATE_LOAD_CRIT: must not be below STATE_LOAD_WARN")
        origins = []
        for text in values["REST_ALLOWED_ORIGINS"]:
            origin = normalize_origin(text)
            if origin is None or origin == "null":
                raise ConfigError(f"REST_ALLOWED_ORIGINS: {text!r} is not a web origin such as https://admin.example.org:8443")
            origins.append(origin)
        values["REST_ALLOWED_ORIGINS"] = tuple(origins)
        # S2: the supervisor wire: a loopback port or none; its socket beside the main one's default
        try:
            values["SUPERVISOR_PORT"] = _supervisor_port(values["SUPERVISOR_PORT"])
        except ValueError as e:
            raise ConfigError(f"SUPERVISOR_PORT: {e}") from None
        if not values["SUPERVISOR_SOCKET"]:
            values["SUPERVISOR_SOCKET"] = os.path.join(
                os.path.dirname(SYSTEM_SOCKET) if system_daemon else values["STATE_DIR"], "supervisor.sock")
        elif values["SUPERVISOR_SOCKET"].lower() == "none":
            values["SUPERVISOR_SOCKET"] = ""
        # F: the console's extra connect-src origins, each wss://host[:port]
        sources = []
        for text in values["CONSOLE_CONNECT_SRC"].split():
            origin = wss_origin(text)
            if origin is None:
                raise ConfigError(f"CONSOLE_CONNECT_SRC: {text!r} is not a wss:// origin such as wss://bridge.example.org:12149")
            sources.append(origin)
        values["CONSOLE_CONNECT_SRC"] = " ".join(dict.fromkeys(sources))

    @property
    def max_parallel_jobs(self) -> int:
        configured = self._values["MAX_PARALLEL_JOBS"]
        if configured:
            return configured
        return max(4, 2 * (os.cpu_count() or 1))


load = Config.load


def sample() -> str:
    return render_sample("sysadmd configuration (twistd -n sysadmd --config FILE)", KEYS)


if __name__ == "__main__":
    print(sample())
