"""How a link checks the bridge's TLS certificate: ``none``, ``pin`` or ``ca``.

* ``none``: any certificate (upstream servers checked almost nothing);
* ``pin``: any certificate the first time; its SHA-256 fingerprint is then stored and a
  bridge presenting another certificate is refused during the handshake (trust on
  first use, like ssh's known hosts);
* ``ca``: the system's trusted CAs and a hostname check.

TLS 1.2 is the minimum in every mode.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Optional

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from sysadmd.runtime.tls import fingerprint_der


def certificate_fingerprint(x509) -> str:
    """``AB:CD:…`` SHA-256 fingerprint of a pyOpenSSL certificate."""
    return fingerprint_der(x509.to_cryptography().public_bytes(serialization.Encoding.DER))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class PinningCreator:
    """TLS connections that accept a certificate only if it matches the current pin.

    *expected* is asked at every handshake (the pin is set after the first connection);
    ``None`` accepts anything.  *refused(seen, expected)* is told about a mismatch.
    """

    def __init__(self, hostname: str, expected: Callable[[], Optional[str]],
                 refused: Callable[[str, str], None]):
        self.hostname = hostname
        self.expected = expected
        self.refused = refused
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self.hostname):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection

    def _verify(self, connection, x509, errno, depth, ok) -> bool:
        if depth != 0:
            return True  # only the bridge's own certificate is pinned, not its issuers
        expected = self.expected()
        if expected is None:
            return True
        seen = certificate_fingerprint(x509)
        if seen == expected:
            return True
        self.refused(seen, expected)
        return False


def connection_creator(verify: str, hostname: str, expected: Callable[[], Optional[str]],
                       refused: Callable[[str, str], None]):
    """The TLS connection creator for a link's *verify* mode."""
    if verify == "ca":
        return ssl.optionsForClientTLS(hostname)
    if verify == "pin":
        return PinningCreator(hostname, expected, refused)
    return PinningCreator(hostname, lambda: None, refused)
