"""The benchmark floor: a bare Twisted + autobahn TLS WebSocket server that parses each
request's JSON and answers with a reply shaped like rpc/query's. No sessions, no
auth, no routing: what any Python server on this stack must at least spend.  It gets
the same transport fixes as ours (sysadmd.wire.wsbase.WireMixin: TCP_NODELAY, no debug-log
work per chunk), so the ratio measures our request pipeline, not those fixes.

usage: python -m bench.floor_server CERT KEY   (prints "listening on port N")
"""

import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from sysadmd.runtime.tls import server_context
from sysadmd.wire.wsbase import WireMixin

ANSWER = {"rpc/dispatcher": "read/write", "rpc/logs": "read/write", "rpc/settings": "read/write"}


class Floor(WireMixin, WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        request = json.loads(payload.decode("utf-8"))
        reply = {"args": ANSWER, "id": request.get("id", ""), "name": "response", "namespace": request.get("namespace", "")}
        self.sendMessage(json.dumps(reply, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def main():
    cert, key = sys.argv[1], sys.argv[2]
    factory = WebSocketServerFactory()
    factory.protocol = Floor
    factory.setProtocolOptions(autoFragmentSize=0, perMessageCompressionAccept=lambda offers: None)
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(server_context(cert, key), False, factory), interface="127.0.0.1")
    print(f"listening on port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
