"""``sysadm/firewall``: upstream's firewall class on nftables (docs/protocol.md §6.13).

Actions and replies (unwrapped, as upstream's firewall class answers)::

    {"action":"known_ports"} → {"22/tcp":{"name":"ssh","port":"22/tcp","description":…},…}
    {"action":"list_open"}   → {"openports":["22/tcp","8000-8010/udp"]}
    {"action":"status"}      → {"is_running":"true","is_enabled":"false","backend":"nftables"[,"managed_by":"ufw"]}
    {"action":"open","ports":"80/tcp" | ["80/tcp","53/udp"]} → {"result":"success"}
    close (same), start, stop, restart, enable, disable → {"result":"success"}

**The rules.** sysadmd owns one nftables table, ``inet sysadmd``, with one base chain
``input`` (hook input, policy drop) that accepts established/related traffic, loopback,
ICMP and ICMPv6 (IPv6 neighbour discovery needs it), sysadmd's own listening ports
(always: the firewall never locks the administrator out of sysadmd) and the open ports.
"Running" means that table exists; ``stop`` deletes it (other tables are never touched).

**Atomic changes.** Every change is one ``nft -f -`` script that creates the table
(so the delete cannot fail), deletes it and writes it again whole.  nft applies a script
as one transaction: if any line fails, nothing of it is applied and the host keeps the
rules it had.  The open-port list and the enabled flag live in ``firewall.json`` in the
state directory, written (atomically) only after the rules were applied.  ``enable``
means the rules are applied when the daemon starts; a change made while the firewall is
stopped is only stored.

**Other managers.** When ufw (``ENABLED=yes`` in /etc/ufw/ufw.conf) or firewalld (a
running ``firewalld`` process) manages the host, sysadmd's table would fight them: the
reading actions still answer, every change is refused (409) with a message naming the
manager, and nothing is applied at start.

Ports are ``N/tcp``, ``N/udp`` or ranges ``N-M/tcp`` (1-65535, N < M); nothing else
reaches nft, and nft runs with an argv (no shell).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.runtime.statedir import write_private_file
from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable, names_arg, spawn, tool_message
from sysadmd.wire.envelope import ApiError

log = Logger()

FAMILY = "inet"
TABLE = "sysadmd"
STATE_FILE = "firewall.json"
SERVICES_FILE = "/etc/services"
UFW_CONF = "/etc/ufw/ufw.conf"
DEFAULT_OPEN = ["22/tcp"]  # first start only: keep ssh reachable until the administrator says otherwise
MAX_PORTS = 1024  # open ports kept at most
MAX_SERVICES_BYTES = 4 << 20
PORT_SPEC = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?/(tcp|udp)\Z")
NFT_TIMEOUT = 30.0
SUCCESS = {"result": "success"}


# --- ports ----------------------------------------------------------------------------------

def parse_port(text: Any, where: str = "'ports'") -> str:
    """``N/tcp``, ``N/udp`` or ``N-M/proto`` with 1 <= N < M <= 65535, normalised
    (no leading zeros); 400 naming *where* otherwise."""
    match = PORT_SPEC.match(text) if isinstance(text, str) else None
    if match is None:
        shown = repr(text)[:40]
        raise ApiError("400", f"{where} {shown} is not a port: expected N/tcp, N/udp or N-M/tcp (1-65535)")
    low, high, proto = int(match.group(1)), match.group(2), match.group(3)
    if not 1 <= low <= 65535:
        raise ApiError("400", f"{where} {text!r}: port {low} is outside 1-65535")
    if high is None:
        return f"{low}/{proto}"
    top = int(high)
    if not low < top <= 65535:
        raise ApiError("400", f"{where} {text!r}: a range needs N < M <= 65535")
    return f"{low}-{top}/{proto}"


def ports_arg(args: Dict[str, Any]) -> List[str]:
    names = names_arg(args, "ports", max_items=MAX_PORTS, max_chars=16)
    return [parse_port(name, f"'ports'[{i}]") for i, name in enumerate(names)]


def port_key(spec: str) -> Tuple[str, int, int]:
    numbers, proto = spec.split("/")
    low, _, high = numbers.partition("-")
    return proto, int(low), int(high or low)


def endpoint_port(text: str) -> Optional[int]:
    """The TCP port of a listener setting (``12150``, ``tcp:12150:interface=…``,
    ``ssl:port=12150``); None when it names none (0, unix, empty)."""
    text = (text or "").strip()
    if text.isdigit():
        return int(text) or None
    parts = text.split(":")
    if len(parts) < 2 or parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        value = part[5:] if part.startswith("port=") else part
        if value.isdigit():
            return int(value) or None
    return None


def admin_ports_of(config: Any) -> List[int]:
    """sysadmd's own TCP ports (kept open while the firewall runs)."""
    if config.bridge_connections_only:
        return []
    found = [endpoint_port(config.port), endpoint_port(config.port_rest)]
    return sorted({p for p in found if p})


# --- /etc/services ------------------------------------------------------------------------

def known_ports(path: str = SERVICES_FILE) -> Dict[str, Dict[str, str]]:
    """``{"22/tcp": {"name","port","description"}}`` from a services(5) file: the
    description is the comment on the line, else the aliases."""
    out: Dict[str, Dict[str, str]] = {}
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SERVICES_BYTES).decode("utf-8", "replace")
    except OSError as e:
        raise ApiError("500", f"cannot read {path}: {e.strerror}") from None
    for line in data.splitlines():
        body, _, comment = line.partition("#")
        fields = body.split()
        if len(fields) < 2 or "/" not in fields[1]:
            continue
        number, _, proto = fields[1].partition("/")
        if not number.isdigit() or proto not in ("tcp", "udp"):
            continue
        key = f"{int(number)}/{proto}"
        description = comment.strip() or " ".join(fields[2:])
        out.setdefault(key, {"name": fields[0], "port": key, "description": description})
    return out


# --- the ruleset ----------------------------------------------------------------------------

def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def running_script(open_ports: Sequence[str], admin_ports: Sequence[int]) -> str:
    """The whole-table replacement that makes the firewall run with *open_ports*."""
    tcp = [f"{p}" for p in admin_ports] + [s.split("/")[0] for s in open_ports if s.endswith("/tcp")]
    udp = [s.split("/")[0] for s in open_ports if s.endswith("/udp")]
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    ct state established,related accept",
        "    ct state invalid drop",
        '    iifname "lo" accept',
        "    meta l4proto { icmp, ipv6-icmp } accept",
    ]
    if admin_ports:
        lines.append(f"    tcp dport {_set(str(p) for p in admin_ports)} accept comment \"admin port\"")
    open_tcp = tcp[len(admin_ports):]
    if open_tcp:
        lines.append(f"    tcp dport {_set(open_tcp)} accept")
    if udp:
        lines.append(f"    udp dport {_set(udp)} accept")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def stopped_script() -> str:
    """Removes sysadmd's table (and nothing else); fine when it is absent."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


# --- ufw / firewalld --------------------------------------------------------------------------

def other_manager(ufw_conf: str = UFW_CONF, proc: str = "/proc") -> Optional[str]:
    """"ufw" or "firewalld" when one of them manages this host's firewall, else None."""
    try:
        with open(ufw_conf) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key.strip() == "ENABLED" and value.strip().strip("'\"").lower() == "yes":
                    return "ufw"
    except OSError:
        pass
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "comm")) as f:
                if f.read().strip() == "firewalld":
                    return "firewalld"
        except OSError:
            continue
    return None


# --- the class ---------------------------------------------------------------------------------

def nft_path(config: Any) -> Optional[str]:
    path = config.firewall_nft
    if os.sep not in path:
        path = shutil.which(path, path="/usr/sbin:/usr/bin:/sbin:/bin") or ""
    return path if path and os.access(path, os.X_OK) else None


def available(config: Any) -> bool:
    """Routed when nft is installed and the daemon runs as root (only root may change
    the rules; sysadmd then owns its table)."""
    return nft_path(config) is not None and os.geteuid() == 0


class Firewall(service.Service):
    """The open-port list, the enabled flag and the nft calls; one change at a time."""

    name = "firewall"
    backend = "nftables"

    def __init__(self, reactor: Any, nft: str, state_dir: str, admin_ports: Callable[[], List[int]], *,
                 services_file: str = SERVICES_FILE, manager: Callable[[], Optional[str]] = other_manager):
        self.reactor = reactor
        self.nft = nft
        self.state_path = os.path.join(state_dir, STATE_FILE)
        self.admin_ports = admin_ports
        self.services_file = services_file
        self.manager = manager
        self.lock = defer.DeferredLock()
        self.open_ports, self.enabled = self._load()

    # state file
    def _load(self) -> Tuple[List[str], bool]:
        try:
            with open(self.state_path, "rb") as f:
                data = json.loads(f.read(1 << 20))
            ports = [parse_port(p, f"{self.state_path}: port") for p in data["open"]]
            return sorted(set(ports), key=port_key), bool(data["enabled"])
        except FileNotFoundError:
            return list(DEFAULT_OPEN), False
        except (OSError, ValueError, KeyError, TypeError, ApiError) as e:
            # Kept aside for the administrator; the daemon still starts (it is the way in).
            aside = f"{self.state_path}.unreadable"
            try:
                os.replace(self.state_path, aside)
            except OSError:
                aside = "(could not be moved)"
            log.error("firewall state {path} unreadable ({why}); moved to {aside}; starting with {ports}, not enabled",
                      path=self.state_path, why=getattr(e, "detail", e), aside=aside, ports=", ".join(DEFAULT_OPEN))
            return list(DEFAULT_OPEN), False

    def _save(self, ports: List[str], enabled: bool) -> None:
        write_private_file(self.state_path, json.dumps({"open": ports, "enabled": enabled}, indent=1).encode())
        self.open_ports, self.enabled = ports, enabled

    # nft
    @defer.inlineCallbacks
    def nft_run(self, argv_tail: Sequence[str], script: Optional[str] = None):
        """Run nft; fires with ``(code, out, err)``.  *script* goes in through a private
        file handed to ``nft -f`` (one transaction)."""
        if script is None:
            result = yield spawn(self.reactor, [self.nft, *argv_tail], timeout=NFT_TIMEOUT)
            return result
        path = f"{self.state_path}.nft"
        write_private_file(path, script.encode())
        try:
            result = yield spawn(self.reactor, [self.nft, "-f", path], timeout=NFT_TIMEOUT)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        return result

    @defer.inlineCallbacks
    def apply(self, script: str):
        """Apply one whole-table script; a failure is a 400 with nft's message (and the
        host keeps the rules it had: nft -f is one transaction)."""
        result = yield self.nft_run([], script)
        if result[0] != 0:
            raise ApiError("400", tool_message([self.nft, "-f"], result) + " (no rule was changed)")

    @defer.inlineCallbacks
    def is_running(self):
        argv = ["list", "table", FAMILY, TABLE]
        code, out, err = yield self.nft_run(argv)
        if code == 0:
            return "chain input" in out
        if "No such file or directory" in err:  # nft's words for a table that does not exist
            return False
        raise ApiError("400", tool_message([self.nft, *argv], (code, out, err)))

    def running_script(self) -> str:
        ports = self.admin_ports()
        if not ports:
            log.warn("firewall: no fixed TCP port of this daemon to keep open (PORT is 0, a socket or bridge-only); "
                     "only the local socket and bridge links reach it while the rules run")
        return running_script(self.open_ports, ports)

    def _refuse_if_managed(self, what: str) -> None:
        manager = self.manager()
        if manager:
            raise ApiError("409", f"{manager} manages this host's firewall; this daemon will not {what} beside it "
                                  f"(use {manager} itself, or turn it off first)")

    def _locked(self, work):
        return self.lock.run(work)

    # startup
    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        manager = self.manager()
        if manager:
            log.warn("firewall enabled but {manager} manages this host: sysadmd's rules not applied", manager=manager)
            return
        d = self._locked(lambda: self.apply(self.running_script()))
        d.addCallback(lambda _: log.info("firewall started ({backend}, table {family} {table}): open {ports}",
                                         backend=self.backend, family=FAMILY, table=TABLE,
                                         ports=", ".join(self.open_ports) or "nothing"))
        d.addErrback(lambda f: log.error("firewall not started: {why}", why=getattr(f.value, "detail", f.value)))

    # actions
    def known_ports(self, session: Session, args: Dict[str, Any]) -> Dict[str, Any]:
        return known_ports(self.services_file)

    def list_open(self, session: Session, args: Dict[str, Any]) -> Dict[str, Any]:
        return {"openports": list(self.open_ports)}

    @defer.inlineCallbacks
    def status(self, session: Session, args: Dict[str, Any]):
        running = yield self.is_running()
        reply = {"is_running": "true" if running else "false", "is_enabled": "true" if self.enabled else "false",
                 "backend": self.backend}
        manager = self.manager()
        if manager:
            reply["managed_by"] = manager
        return reply

    def _change_ports(self, adding: bool):
        def handler(session: Session, args: Dict[str, Any]):
            ports = ports_arg(args)
            self._refuse_if_managed("change ports")

            @defer.inlineCallbacks
            def work():
                current = set(self.open_ports)
                wanted = current | set(ports) if adding else current - set(ports)
                if len(wanted) > MAX_PORTS:
                    raise ApiError("400", f"at most {MAX_PORTS} ports can be open")
                new = sorted(wanted, key=port_key)
                if (yield self.is_running()):
                    yield self.apply(running_script(new, self.admin_ports()))
                self._save(new, self.enabled)
                return dict(SUCCESS)

            return self._locked(work)
        return handler

    def start(self, session: Session, args: Dict[str, Any]):
        self._refuse_if_managed("start its rules")
        return self._locked(lambda: self.apply(self.running_script()).addCallback(lambda _: dict(SUCCESS)))

    def stop(self, session: Session, args: Dict[str, Any]):
        self._refuse_if_managed("stop its rules")
        return self._locked(lambda: self.apply(stopped_script()).addCallback(lambda _: dict(SUCCESS)))

    def _set_enabled(self, value: bool):
        def handler(session: Session, args: Dict[str, Any]):
            self._refuse_if_managed("enable its rules" if value else "disable its rules")

            def work():
                self._save(self.open_ports, value)
                return dict(SUCCESS)

            return self._locked(work)
        return handler


def route(api: Any, reactor: Any, config: Any) -> Firewall:
    firewall = Firewall(reactor, nft_path(config), config.state_dir, lambda: admin_ports_of(config))
    table = ActionTable("firewall")
    table.add("known_ports", firewall.known_ports, wrap=False)
    table.add("list_open", firewall.list_open, wrap=False)
    table.add("status", firewall.status, wrap=False)
    table.add("open", firewall._change_ports(True), full_access=True, wrap=False)
    table.add("close", firewall._change_ports(False), full_access=True, wrap=False)
    table.add("start", firewall.start, full_access=True, wrap=False)
    table.add("stop", firewall.stop, full_access=True, wrap=False)
    table.add("restart", firewall.start, full_access=True, wrap=False)  # a whole-table replacement is a restart
    table.add("enable", firewall._set_enabled(True), full_access=True, wrap=False)
    table.add("disable", firewall._set_enabled(False), full_access=True, wrap=False)
    table.route(api, limited="read")
    return firewall
