"""sysadm-bridge's configuration keys and the resolved :class:`BridgeConfig`.

Same ``KEY=VALUE`` format and parser as sysadmd (:mod:`sysadmd.runtime.configfile`).
``conf/sysadm-bridge.conf`` is generated from :data:`KEYS`
(``python -m bridge.config > conf/sysadm-bridge.conf``) and a test keeps the two in step.
"""

from __future__ import annotations

import os
from typing import List

from sysadmd.runtime.configfile import ConfigError, Key, Settings, render_sample

DEFAULT_CONFIG = "/etc/sysadm-bridge.conf"


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/db/sysadm-bridge"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "sysadm-bridge")


KEYS: List[Key] = [
    # --- listening -----------------------------------------------------------------
    Key("PORT", "endpoint", "12149", "Relay listener: a port number or a Twisted endpoint string such as\ntcp:12149:interface=127.0.0.1. TLS is always added."),
    Key("LISTEN_INTERFACE", "str", "::", "Address to bind when PORT is a bare number ('::' is every IPv6 and\nIPv4 address)."),
    Key("STATE_DIR", "path", "", "State directory (TLS certificate, registered keys, blacklist).\nEmpty: /var/db/sysadm-bridge as root, else ~/.local/state/sysadm-bridge."),
    Key("TLS_CERT", "path", "", "PEM certificate file. Empty: a self-signed certificate is generated\nonce in the state directory (upstream peers accept self-signed ones)."),
    Key("TLS_KEY", "path", "", "PEM private key for TLS_CERT."),
    # --- blacklist (upstream's blacklist_settings) ---------------------------------
    Key("BLACKLIST_BLOCK_MINUTES", "int", 60, "Minutes an address stays blocked after too many failed auth_ssl tries.", minimum=1),
    Key("BLACKLIST_AUTH_FAIL_LIMIT", "int", 2, "Failed auth_ssl tries from one address that trigger a block.", minimum=1),
    Key("BLACKLIST_AUTH_FAIL_RESET_MINUTES", "int", 60, "Quiet minutes after which an address's failure count restarts.", minimum=1),
    Key("BLACKLIST_EXEMPT_LOOPBACK", "bool", True, "Never block loopback addresses."),
    # --- authentication ------------------------------------------------------------
    Key("AUTH_TIMEOUT", "float", 30.0, "Seconds a peer may stay unauthenticated before it is closed (1008).", minimum=0.1),
    Key("CHALLENGE_TTL", "float", 30.0, "Seconds an auth_ssl test_string may be answered.", minimum=0.1),
    Key("KEYS_REFRESH_INTERVAL", "float", 300.0, "Seconds between list_ssl_checksums requests to each authenticated\npeer, so keys registered on a server take effect without a reconnect.\n0: ask once, right after authentication (upstream's behaviour).", minimum=0),
    Key("REVOCATION_POLL_INTERVAL", "float", 1.0, "Seconds between checks of the key database for keys removed with\nthe sysadm-bridge command; their live connections are then closed.", minimum=0.1),
    # --- liveness and limits -------------------------------------------------------
    Key("PING_INTERVAL", "float", 30.0, "Seconds between WebSocket pings; a peer that does not answer within\nthe same time is dropped (and its partners told). 0: no pings; else at\nleast 2 (autobahn rounds its ping timers down to whole seconds).", minimum=0),
    Key("MAX_MESSAGE_BYTES", "int", 16 * 1024 * 1024, "Largest accepted WebSocket message (bytes); larger ones close the\nconnection with code 1009.", minimum=1024),
    Key("MAX_CONNECTIONS", "int", 4096, "Simultaneous peer connections; more are closed with code 1013.", minimum=1),
    Key("MAX_PEER_BUFFER_BYTES", "int", 4 * 1024 * 1024, "Relayed bytes that may wait for a slow receiver. While a receiver's\nsocket is full its senders are paused; past this amount the receiver\nis closed (1008) instead of growing the bridge's memory.", minimum=65536),
    Key("RECEIVER_STALL_TIMEOUT", "float", 20.0, "Seconds a receiver may keep its socket full without draining anything\nbefore it is closed (1008), so the senders it holds back resume.\nKeep it below PING_INTERVAL: paused senders cannot answer pings.", minimum=0.1),
    # --- connection limits ----------------------------------------------------------
    Key("MAX_CONNECTIONS_PER_ADDRESS", "int", 64, "Simultaneous connections from one IP address, counted from the moment\nthey are accepted (loopback included). 0: no cap.", minimum=0),
    Key("HANDSHAKE_TIMEOUT", "float", 15.0, "Seconds a new connection has, from being accepted, to finish TLS and\nthe WebSocket upgrade, however slowly its bytes arrive; then it is closed.", minimum=0.1),
    # --- fleet (issue 13, helper fleet) ------------------------------------------------
    Key("FLEET_PING_INTERVAL", "float", 1.0, "Seconds between the fleet pings that measure each agent's round-trip\ntime and notice a silent one (fleet agents). 0: no pings.", minimum=0),
    # --- helper A: fleet liveness (issue 13) ------------------------------------------
    Key("FLEET_PONG_TIMEOUT", "float", 2.0, "Seconds a fleet agent may leave a ping unanswered before it is announced\noffline (a link gone silent without closing, a stopped process); it is\nonline again with its next message. 0: never.", minimum=0),
    # --- helper G: the listener's TLS engine (issue 13) ----------------------------------
    Key("BRIDGE_TLS_ENGINE", "str", "stdlib", "TLS implementation of the relay listener: stdlib (Python's ssl module\nreads and writes the socket; less CPU per relayed message) or pyopenssl\n(Twisted's TLS over pyOpenSSL, as sysadmd's listeners). Same certificate\nand policy on both; stdlib needs a tcp: or tcp6: PORT.", choices=("stdlib", "pyopenssl")),
]

KEY_NAMES = [k.name for k in KEYS]


class BridgeConfig(Settings):
    KEYS = KEYS

    def validate(self) -> None:
        values = self._values
        if not values["STATE_DIR"]:
            values["STATE_DIR"] = default_state_dir()
        if bool(values["TLS_CERT"]) != bool(values["TLS_KEY"]):
            raise ConfigError("TLS_KEY: TLS_CERT and TLS_KEY must be given together")
        if 0 < values["PING_INTERVAL"] < 2:
            raise ConfigError(f"PING_INTERVAL: {values['PING_INTERVAL']:g} is below 2 (use 0 to turn pings off)")
        if not values["PORT"]:
            raise ConfigError("PORT: the bridge needs a listening port")


load = BridgeConfig.load


def sample() -> str:
    return render_sample("sysadm-bridge configuration (twistd -n sysadm-bridge --config FILE)", KEYS)


if __name__ == "__main__":
    print(sample())
