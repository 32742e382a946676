"""The bridge's TLS on the standard library's ``ssl`` module, under Twisted's reactor.

Twisted's own TLS (``TLSMemoryBIOProtocol`` over pyOpenSSL) moves every record through
memory BIOs with Python code on each side: for the bridge, which does little more than
copy frames from one peer to another, that was about half of its CPU per relayed
request.  Here an accepted TCP socket is wrapped with ``SSLContext.wrap_socket``
(non-blocking, the handshake driven from the reactor's read events) so OpenSSL reads
and writes the socket itself; a whole read or write is one C call.

* :class:`TLSServer` is a ``tcp.Server``: Twisted's buffering, producers (pause/resume,
  ``bufferSize``), ``loseConnection``/``abortConnection`` and the connection guard work
  unchanged on it.  What differs: ``doRead`` first finishes the handshake, then reads
  whole records until OpenSSL wants more bytes from the socket (at most ``bufferSize``
  bytes per call, like Twisted's single ``recv``; decrypted bytes OpenSSL still holds are
  read on the next reactor turn, as no epoll event would announce them); a write that
  OpenSSL cannot finish counts as 0 bytes written and is repeated with at least as many
  bytes, in order, as OpenSSL requires; an orderly close sends TLS close_notify first.
* :func:`server_context` builds the ``ssl.SSLContext`` with the policy
  :func:`sysadmd.runtime.tls.server_context` gives pyOpenSSL: TLS 1.2 minimum, the same
  TLS 1.2 cipher list (read from that pyOpenSSL context), no compression, server cipher
  preference, no session tickets; plus no renegotiation, and ALPN ``http/1.1`` chosen when
  a client offers it (browsers, curl).
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

from sysadmd.runtime import tls

_WOULD_BLOCK = (errno.EWOULDBLOCK, errno.ENOBUFS)
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
ALPN = ["http/1.1"]


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
    ctx.num_tickets = 0  # no TLS 1.3 tickets either (Twisted turns the session cache off)
    ctx.set_alpn_protocols(ALPN)
    return ctx


class _TLSSocket(ssl.SSLSocket):
    """An SSLSocket whose ``send`` remembers how many bytes an unfinished write had:
    OpenSSL must be given at least that many again (the same bytes first)."""

    retry_len = 0

    def send(self, data: Any, flags: int = 0) -> int:
        sslobj = self._sslobj
        if sslobj is None:
            raise OSError(errno.EBADF, "the TLS connection is closed")
        try:
            sent = sslobj.write(data)
        except _WANT:
            if len(data) > self.retry_len:
                self.retry_len = len(data)
            raise
        if self.retry_len:
            self.retry_len = 0
        return sent


class TLSServer(tcp.Server):
    """An accepted connection with TLS done by the ``ssl`` module (see the module docstring)."""

    _handshaking = True
    _handshake_wants_write = False
    _reading = False
    _read_later: Any = None

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: "TLSPort", sessionno: int,
                 reactor: Any) -> None:
        sock.setblocking(False)
        wrapped = server.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        super().__init__(wrapped, protocol, client, server, sessionno, reactor)

    # --- reading ------------------------------------------------------------------------
    def startReading(self) -> None:
        self._reading = True
        super().startReading()
        if not self._handshaking and self.socket.pending():
            self._schedule_read()

    def stopReading(self) -> None:
        self._reading = False
        super().stopReading()

    def _schedule_read(self) -> None:
        if self._read_later is None:
            self._read_later = self.reactor.callLater(0, self._read_pending)

    def _read_pending(self) -> None:
        self._read_later = None
        if self._reading and not self.disconnected:
            why = self.doRead()
            if why is not None:
                self.reactor._disconnectSelectable(self, why, True)

    def _handshake(self) -> Any:
        """Drive the handshake; None while it goes on or once done, else why the connection ends."""
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            if self._handshake_wants_write:
                self._handshake_wants_write = False
                self._stop_writing_if_idle()
            return None
        except ssl.SSLWantWriteError:
            self._handshake_wants_write = True
            tcp.Server.startWriting(self)
            return None
        except (ssl.SSLError, OSError):
            return main.CONNECTION_LOST
        self._handshaking = False
        if self._handshake_wants_write:
            self._handshake_wants_write = False
        # Whatever the protocol wrote during the handshake goes out now (or once there is room).
        self._stop_writing_if_idle()
        return None

    def _stop_writing_if_idle(self) -> None:
        if self._handshaking or not (self._tempDataLen or self.offset < len(self.dataBuffer)):
            self.stopWriting()
        else:
            tcp.Server.startWriting(self)

    def doRead(self) -> Any:
        if self._handshaking:
            why = self._handshake()
            if why is not None or self._handshaking:
                return why
        sslobj = self.socket._sslobj
        if sslobj is None:
            return main.CONNECTION_LOST
        size = self.bufferSize
        chunks = []
        total = 0
        ended = None
        while total < size:
            try:
                data = sslobj.read(size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                break  # a TLS 1.3 key update's answer waits for room; the reactor calls again
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = main.CONNECTION_DONE
                break
            except (ssl.SSLError, OSError):
                ended = main.CONNECTION_LOST
                break
            if not data:
                ended = main.CONNECTION_DONE
                break
            chunks.append(data)
            total += len(data)
        if chunks:
            why = self._dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if why is not None:
                return why
            if ended is None and self._reading and sslobj.pending():
                self._schedule_read()
        return ended

    # --- writing ------------------------------------------------------------------------
    def doWrite(self) -> Any:
        if self._handshaking:
            if self.disconnecting:
                return main.CONNECTION_DONE  # closed before TLS was up: nothing can be sent
            if self._handshake_wants_write:
                return self._handshake()
            # Bytes written before the handshake is done wait for it (_stop_writing_if_idle).
            self.stopWriting()
            return None
        return super().doWrite()

    def writeSomeData(self, data: Any) -> Any:
        if self._handshaking:
            return 0
        sock = self.socket
        limit = sock.retry_len if sock.retry_len > self.SEND_LIMIT else self.SEND_LIMIT
        if len(data) > limit:
            data = memoryview(data)[:limit]
        try:
            return sock.send(data)
        except _WANT:
            return 0
        except (ssl.SSLError, OSError) as e:
            if e.args and e.args[0] in _WOULD_BLOCK:
                return 0
            return main.CONNECTION_LOST

    # --- closing --------------------------------------------------------------------------
    def _send_close_notify(self) -> None:
        sslobj = self.socket._sslobj
        if sslobj is None or self._handshaking:
            return
        try:
            sslobj.shutdown()  # sends close_notify; the peer's answer is not waited for
        except (ssl.SSLError, OSError, ValueError):
            pass

    def _closeWriteConnection(self) -> None:
        self._send_close_notify()
        try:
            socket.socket.shutdown(self.socket, socket.SHUT_WR)  # not SSLSocket's: it drops the TLS state
        except OSError:
            pass
        from twisted.internet.interfaces import IHalfCloseableProtocol

        p = IHalfCloseableProtocol(self.protocol, None)
        if p:
            try:
                p.writeConnectionLost()
            except BaseException:
                from twisted.python import failure, log

                f = failure.Failure()
                log.err()
                self.connectionLost(f)

    def _closeSocket(self, orderly: bool) -> None:
        if self._read_later is not None:
            if self._read_later.active():
                self._read_later.cancel()
            self._read_later = None
        if orderly:
            self._send_close_notify()
        super()._closeSocket(orderly)


class TLSPort(tcp.Port):
    """A TCP port whose accepted connections are :class:`TLSServer`."""

    transport = TLSServer

    def __init__(self, port: int, factory: Any, ssl_context: ssl.SSLContext, backlog: int = 50,
                 interface: str = "", reactor: Any = None) -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        ssl_context.sslsocket_class = _TLSSocket
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
