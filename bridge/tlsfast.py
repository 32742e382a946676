"""The bridge's TLS on the standard library's ``ssl`` module, under Twisted's reactor.

Twisted's own TLS (``TLSMemoryBIOProtocol`` over pyOpenSSL) spends many Python calls on
each record (Twisted's layer and pyOpenSSL's cffi wrappers); for the bridge, which does
little more than copy frames from one peer to another, that was about as much CPU as the
server spends answering the request.  Here each accepted TCP socket gets an
``ssl.SSLObject`` between two memory BIOs, so encrypting or decrypting a whole read or
write is one C call.

* :class:`TLSServer` is a ``tcp.Server`` whose ``socket`` stays the plain TCP socket:
  plaintext is encrypted as it is written, and Twisted's buffering, producers
  (pause/resume, ``bufferSize``), ``wsbase.write_through``, ``loseConnection`` /
  ``abortConnection`` and the connection guard work on the ciphertext unchanged.
  ``doRead`` makes one ``recv`` (as Twisted does), finishes the handshake first, then
  decrypts every whole record the bytes hold and hands the plaintext to the protocol in
  one call; a partial record waits in the BIO for the rest (no busy loop: the reactor
  reports the socket again only when bytes arrive).  Small writes made in one reactor
  turn are encrypted together once the turn's events are handled (one record, one
  send; :mod:`bridge.turnloop`, or ``callLater(0)`` as Twisted's TLS does on a reactor
  it cannot hook); plaintext written before the handshake is done goes out once it
  is.  An orderly close sends close_notify after everything written before it; an abort
  sends nothing.  (``SSLContext.wrap_socket``, OpenSSL reading the socket itself, was
  tried first: it reads each record with two ``recv`` calls plus one that fails, and the
  bridge's kernel time doubled at 8 and 32 connections.)
* :func:`server_context` builds the ``ssl.SSLContext`` with the policy
  :func:`sysadmd.runtime.tls.server_context` gives pyOpenSSL: TLS 1.2 minimum, the same
  TLS 1.2 cipher list (read from that pyOpenSSL context), no compression, server cipher
  preference, no TLS 1.2 session tickets (TLS 1.3 ones as OpenSSL sends them on both);
  plus no renegotiation, and ALPN ``http/1.1`` chosen when a client offers it (browsers,
  curl).
* :class:`TLSEndpoint` listens on a ``tcp:``/``tcp6:`` endpoint string with
  :class:`TLSPort`.

``BRIDGE_TLS_ENGINE`` (bridge/config.py) picks this engine or Twisted's.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, endpoints, main, tcp
from twisted.internet.error import CannotListenError

from bridge.turnloop import turn_loop
from sysadmd.runtime import tls

ALPN = ["http/1.1"]
AGGREGATE_BYTES = 64_000  # plaintext gathered from one reactor turn before it is encrypted at once
_IN_TURN = object()  # TLSServer._flush_call while the reactor's TurnLoop will flush it


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """The stdlib context for the certificate and key files, with the pyOpenSSL policy."""
    reference = tls.server_context(cert_path, key_path).getContext()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    # TLS 1.2 suites as Twisted configured them (TLS 1.3 suites are OpenSSL's defaults on both).
    names = [name for name in SSL.Connection(reference, None).get_cipher_list() if not name.startswith("TLS_")]
    ctx.set_ciphers(":".join(names))
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_DH_USE
                    | ssl.OP_SINGLE_ECDH_USE | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION)
    ctx.set_alpn_protocols(ALPN)
    return ctx


class TLSServer(tcp.Server):
    """An accepted connection with TLS done by the ``ssl`` module (see the module docstring).

    ``self.socket`` stays the plain TCP socket: Twisted's buffer, producers, write-through
    and closing see ciphertext.  Plaintext is encrypted as it is written and decrypted as
    it is read, by an ``ssl.SSLObject`` between two memory BIOs (C code per record)."""

    _handshaking = True
    _tls_closed = False  # close_notify sent: nothing more may be written

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: "TLSPort", sessionno: int,
                 reactor: Any) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = server.ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._pending: list = []  # plaintext written, not yet encrypted (see write)
        self._pending_len = 0
        self._flush_call: Any = None  # a DelayedCall, or _IN_TURN while the turn loop has us
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self._turn = turn_loop(reactor, (TLSServer,))

    # --- reading ------------------------------------------------------------------------
    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            if e.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        incoming = self._incoming
        incoming.write(data)
        tls = self._tls
        if self._handshaking:
            why = self._handshake()
            if why is not None or self._handshaking:
                return why
        chunks = []
        ended = None
        # Read while OpenSSL has bytes to work on; a partial record stays in the BIO.
        while incoming.pending or tls.pending():
            try:
                data = tls.read(self.bufferSize)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = main.CONNECTION_DONE
                break
            except ssl.SSLError:
                ended = main.CONNECTION_LOST
                break
            if not data:  # the peer's close_notify
                ended = main.CONNECTION_DONE
                break
            chunks.append(data)
        if self._outgoing.pending:  # alerts, a TLS 1.3 key update's answer
            tcp.Server.write(self, self._outgoing.read())
        if chunks:
            # What tcp.Connection._dataReceived does for non-empty data, without its call.
            self.protocol.dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return ended

    def _handshake(self) -> Any:
        """Drive the handshake; None while it goes on or once done, else why the connection ends."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            self._flush_tls()  # the alert, if any
            return main.CONNECTION_LOST
        else:
            self._handshaking = False
        self._flush_tls()
        if not self._handshaking:
            self._flush_pending()  # what was written during the handshake
        return None

    def _flush_tls(self) -> None:
        if self._outgoing.pending:
            tcp.Server.write(self, self._outgoing.read())

    # --- writing ------------------------------------------------------------------------
    # Small writes made in one reactor turn are encrypted together when the turn's
    # events are handled (one record and one send for many frames; bridge.turnloop), as
    # Twisted's TLS does at the start of the next turn (its _AggregateSmallWrites, same
    # size limit).
    def write(self, data: bytes) -> None:
        if self._tls_closed or not data or not self.connected:
            return
        pending = self._pending
        pending.append(bytes(data))
        self._pending_len += len(data)
        if self._handshaking:
            return  # sent once the handshake is done
        if self._pending_len > AGGREGATE_BYTES:
            self._flush_pending()
        elif self._flush_call is None:
            turn = self._turn
            if turn is not None:
                self._flush_call = _IN_TURN
                turn.mark(self)
            else:
                self._flush_call = self.reactor.callLater(0, self._scheduled_flush)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._flush_pending()

    def _flush_pending(self) -> None:
        call = self._flush_call
        if call is not None:
            if call is not _IN_TURN:
                call.cancel()
            self._flush_call = None  # still in the turn loop's list: that flush finds nothing
        pending = self._pending
        if not pending or self._handshaking or self._tls_closed:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._pending_len = 0
        self._tls.write(data)
        out = self._outgoing.read()
        if not self._tempDataLen and self.offset == len(self.dataBuffer) and self.connected \
                and not self.disconnecting:
            # Nothing older is waiting in Twisted's buffer: send now (wsbase.write_through
            # does the same one layer down, after five calls through Twisted's write path).
            try:
                sent = self.socket.send(out)
            except OSError:
                sent = 0  # no room, or broken: Twisted's path retries and reports it
            if sent == len(out):
                return
            out = out[sent:]
        tcp.Server.write(self, out)

    # --- closing --------------------------------------------------------------------------
    def _send_close_notify(self) -> None:
        if self._handshaking or self._tls_closed:
            return
        self._flush_pending()
        self._tls_closed = True
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: close_notify is written, the peer's answer not waited for
        self._flush_tls()

    def loseConnection(self, *args: Any, **kwargs: Any) -> None:
        if self.connected and not self.disconnecting:
            self._send_close_notify()  # after everything written so far, in order
        super().loseConnection(*args, **kwargs)

    def loseWriteConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self._send_close_notify()
        super().loseWriteConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._flush_call is not None and self._flush_call is not _IN_TURN:
            self._flush_call.cancel()
        self._flush_call = None
        self._pending = []
        super().connectionLost(reason)


class TLSPort(tcp.Port):
    """A TCP port whose accepted connections are :class:`TLSServer`."""

    transport = TLSServer

    def __init__(self, port: int, factory: Any, ssl_context: ssl.SSLContext, backlog: int = 50,
                 interface: str = "", reactor: Any = None) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self.ssl_context = ssl_context


class TLSEndpoint:
    """``listen`` on a ``tcp:``/``tcp6:`` endpoint string with :class:`TLSPort`."""

    def __init__(self, reactor: Any, description: str, ssl_context: ssl.SSLContext) -> None:
        parsed = endpoints.serverFromString(reactor, description)
        if not isinstance(parsed, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
            raise ValueError(f"BRIDGE_TLS_ENGINE=stdlib listens on tcp: or tcp6: endpoints only, not {description!r} "
                             f"(use BRIDGE_TLS_ENGINE=pyopenssl for it)")
        self.reactor = reactor
        self.port = parsed._port
        self.backlog = parsed._backlog
        self.interface = parsed._interface
        self.ssl_context = ssl_context

    def listen(self, factory: Any) -> defer.Deferred:
        try:
            port = TLSPort(self.port, factory, self.ssl_context, self.backlog, self.interface, self.reactor)
            port.startListening()
        except CannotListenError:
            return defer.fail()
        return defer.succeed(port)
