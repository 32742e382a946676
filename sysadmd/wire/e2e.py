"""End-to-end encryption of a live bridged session between our client and our server
(issue 13 item 6; docs/protocol.md §8.6).  Upstream peers keep upstream's base64 mode.

The bridge relays the session's payloads; with this on it sees only ciphertext.  A fresh
X25519 key pair on each side gives forward secrecy: the session keys cannot be recomputed
from the long-term keys later.  The long-term RSA keys both sides already trust bind the
exchange to identities: the server signs the transcript with its bridge key (the client
checks the key against the agent id it expects: sha256 hex of its SubjectPublicKeyInfo
DER), and the client signs it with its registered key (the server checks it against its
registered keys).

Handshake (relay payloads of plain JSON, ``namespace`` ``rpc``, ``name`` ``e2e``)::

    client → server  args {"step":"hello","v":1,"key":MD5 (the key list's base64 checksum),"eph":B64(32),"nonce":B64(16)}
    server → client  args {"step":"accept","eph":B64(32),"nonce":B64(16),
                           "server_key":B64(SPKI DER),"sig":B64(RSA sig)}   (name "response")
    client → server  "!" frame (encrypted) of {"namespace":"rpc","name":"e2e",
                           "args":{"step":"finish","sig":B64(RSA sig)},"id":…}

Transcript ``T`` = ``"sysadm-e2e/1\\n" + MD5 + "\\n" + eph_c + "\\n" + nonce_c + "\\n" +
eph_s + "\\n" + nonce_s + "\\n" + sha256_hex(server SPKI DER)`` (the base64 texts as sent).
Signatures are RSA PKCS#1 v1.5 SHA-256 over ``"server\\n" + T`` and ``"client\\n" + T``.
Keys: HKDF-SHA256 (salt sha256(T), info ``"sysadm-e2e/1 keys"``, 64 bytes) of the X25519
shared secret; the first 32 bytes key client → server, the last 32 server → client.

Connection binding (additive): our server also sends ``"server_connection_id": I`` (its own
connection ID on the bridge, "" if the bridge does not tell) and ``"connection_tag":
B64(HMAC-SHA256(K_b, "sysadm-e2e-connection/1\\n" + I))`` with ``K_b`` = HKDF-SHA256 (salt
sha256(T), info ``"sysadm-e2e/1 connection"``, 32 bytes) of the X25519 shared secret.  Only
the holder of the signed ephemeral key can make the tag, so a client that sent its hello to
another connection ID knows the peer it asked is relaying another connection's answers.

Every later payload either way is ``"!" + b64(ChaCha20-Poly1305(key, nonce, JSON))``; the
nonce is a 96-bit big-endian counter per direction starting at 0, so a dropped, replayed
or reordered frame fails to open and ends the session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any, Dict, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
LABEL = "sysadm-e2e/1"
FRAME_MARK = "!"
NONCE_BYTES = 16
#: An encrypted frame longer than this is refused before decoding (64 MiB of plaintext).
MAX_FRAME_CHARS = 90 * 1024 * 1024
MAX_SIGNATURE_B64 = 2048
MAX_SPKI_B64 = 4096


class E2EError(ValueError):
    """A handshake message or frame that is malformed, forged, replayed or out of order."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str, size: Optional[int] = None, limit: int = 4096) -> bytes:
    if not isinstance(text, str) or len(text) > limit:
        raise E2EError(f"{what}: expected base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise E2EError(f"{what}: not base64") from None
    if size is not None and len(data) != size:
        raise E2EError(f"{what}: expected {size} bytes, got {len(data)}")
    return data


def spki_der(public_key: rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def agent_id_of(public_key: rsa.RSAPublicKey) -> str:
    """The id an agent has on the bridge (sha256 hex of its bridge key's SPKI DER)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def transcript(key_md5: str, eph_c: str, nonce_c: str, eph_s: str, nonce_s: str, server_id: str) -> bytes:
    return "\n".join((LABEL, key_md5, eph_c, nonce_c, eph_s, nonce_s, server_id)).encode("utf-8")


def _sign(private_key: rsa.RSAPrivateKey, role: str, text: bytes) -> str:
    return b64(private_key.sign(role.encode("ascii") + b"\n" + text, padding.PKCS1v15(), hashes.SHA256()))


def _verify(public_key: rsa.RSAPublicKey, role: str, text: bytes, signature_b64: Any) -> None:
    signature = unb64(signature_b64, "sig", limit=MAX_SIGNATURE_B64)
    try:
        public_key.verify(signature, role.encode("ascii") + b"\n" + text, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        raise E2EError(f"the {role}'s signature does not match its key") from None


def _shared(own: X25519PrivateKey, peer_eph: bytes) -> bytes:
    try:
        return own.exchange(X25519PublicKey.from_public_bytes(peer_eph))
    except ValueError:
        raise E2EError("eph: not a usable X25519 public key") from None


def connection_tag(shared: bytes, text: bytes, connection_id: str) -> str:
    """The tag that binds the server's bridge connection ID to this handshake."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(text).digest(),
               info=f"{LABEL} connection".encode("ascii")).derive(shared)
    return b64(hmac.new(key, b"sysadm-e2e-connection/1\n" + connection_id.encode("utf-8"), hashlib.sha256).digest())


def _keys(own: X25519PrivateKey, peer_eph: bytes, text: bytes) -> Tuple[bytes, bytes]:
    return _derive(_shared(own, peer_eph), text)


def _derive(shared: bytes, text: bytes) -> Tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(text).digest(),
               info=f"{LABEL} keys".encode("ascii")).derive(shared)
    return okm[:32], okm[32:]


class Session:
    """One direction's key and counter each way; :meth:`seal` and :meth:`open` frames."""

    def __init__(self, send_key: bytes, receive_key: bytes):
        self._send = ChaCha20Poly1305(send_key)
        self._receive = ChaCha20Poly1305(receive_key)
        self.sent = 0
        self.received = 0

    # One frame per request and one per reply, so these stay lean: binascii directly (no
    # base64-module wrappers; strict mode refuses what validate=True refuses), one nonce
    # conversion, the AEAD objects made once per session.
    def seal(self, plaintext: bytes) -> str:
        nonce = self.sent.to_bytes(12, "big")
        self.sent += 1
        return FRAME_MARK + binascii.b2a_base64(self._send.encrypt(nonce, plaintext, None), newline=False).decode("ascii")

    def open(self, frame: str) -> bytes:
        if not isinstance(frame, str) or not frame.startswith(FRAME_MARK):
            raise E2EError("a plain frame inside an encrypted session")
        if len(frame) > MAX_FRAME_CHARS:
            raise E2EError(f"an encrypted frame over {MAX_FRAME_CHARS} characters")
        try:
            data = binascii.a2b_base64(frame[1:], strict_mode=True)
        except (binascii.Error, ValueError):
            raise E2EError("an encrypted frame that is not base64") from None
        nonce = self.received.to_bytes(12, "big")
        try:
            plaintext = self._receive.decrypt(nonce, data, None)
        except Exception:  # InvalidTag: altered, replayed, reordered or dropped
            raise E2EError("an encrypted frame that does not open (altered, replayed or out of order)") from None
        self.received += 1
        return plaintext


def is_frame(text: Any) -> bool:
    return isinstance(text, str) and text.startswith(FRAME_MARK)


class ClientHandshake:
    """The client's side: :meth:`hello`, then :meth:`accept` the server's reply."""

    def __init__(self, private_key: rsa.RSAPrivateKey, key_md5: str):
        self.private_key = private_key
        self.key_md5 = key_md5
        self._eph = X25519PrivateKey.generate()
        self.eph = b64(self._eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        self.nonce = b64(os.urandom(NONCE_BYTES))
        #: After :meth:`accept`: the connection ID the server bound to the handshake (its tag
        #: checked), or ``None`` if it sent none.
        self.server_connection_id: Optional[str] = None

    def hello(self) -> Dict[str, Any]:
        return {"step": "hello", "v": VERSION, "key": self.key_md5, "eph": self.eph, "nonce": self.nonce}

    def accept(self, reply: Any) -> Tuple[Session, str, Dict[str, Any]]:
        """(session, the server's agent id, the ``finish`` args to send encrypted).  The
        caller must check the agent id against the server it meant to reach."""
        if not isinstance(reply, dict) or reply.get("step") != "accept":
            raise E2EError("expected the server's accept step")
        eph_s = unb64(reply.get("eph"), "eph", 32)
        unb64(reply.get("nonce"), "nonce", NONCE_BYTES)
        der = unb64(reply.get("server_key"), "server_key", limit=MAX_SPKI_B64)
        try:
            server_key = serialization.load_der_public_key(der)
        except (ValueError, TypeError):
            raise E2EError("server_key: not a public key") from None
        if not isinstance(server_key, rsa.RSAPublicKey):
            raise E2EError("server_key: not an RSA key")
        server_id = hashlib.sha256(der).hexdigest()
        text = transcript(self.key_md5, self.eph, self.nonce, reply["eph"], reply["nonce"], server_id)
        _verify(server_key, "server", text, reply.get("sig"))
        shared = _shared(self._eph, eph_s)
        send, receive = _derive(shared, text)
        del self._eph  # forward secrecy: nothing left to recompute the keys from
        if "server_connection_id" in reply:
            claimed = reply["server_connection_id"]
            if not isinstance(claimed, str) or len(claimed) > 200:
                raise E2EError("server_connection_id: expected the server's connection ID (text)")
            tag = reply.get("connection_tag")
            if not isinstance(tag, str) or not hmac.compare_digest(tag, connection_tag(shared, text, claimed)):
                raise E2EError("connection_tag: does not match the handshake (altered on the way)")
            self.server_connection_id = claimed
        return Session(send, receive), server_id, {"step": "finish", "sig": _sign(self.private_key, "client", text)}


class ServerHandshake:
    """The server's side: :meth:`accept` a hello, then :meth:`finish` with the client's key."""

    def __init__(self, server_key: rsa.RSAPrivateKey):
        self.server_key = server_key
        self.text = b""
        self.key_md5 = ""

    def accept(self, hello: Any, connection_id: Optional[str] = None) -> Tuple[Session, Dict[str, Any]]:
        """The session (usable at once for the client's ``finish`` frame) and the reply args;
        with *connection_id* (the server's own bridge connection ID) the reply binds it."""
        if not isinstance(hello, dict) or hello.get("step") != "hello":
            raise E2EError("expected the client's hello step")
        if hello.get("v") != VERSION:
            raise E2EError(f"v: version {VERSION} expected")
        key_md5 = hello.get("key")
        if not isinstance(key_md5, str) or len(key_md5) != 24:
            raise E2EError("key: expected the md5 checksum of a registered key (24 base64 characters)")
        unb64(key_md5, "key", 16)
        eph_c = unb64(hello.get("eph"), "eph", 32)
        unb64(hello.get("nonce"), "nonce", NONCE_BYTES)
        own = X25519PrivateKey.generate()
        eph_s = b64(own.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        nonce_s = b64(os.urandom(NONCE_BYTES))
        der = spki_der(self.server_key.public_key())
        self.key_md5 = key_md5
        self.text = transcript(key_md5, hello["eph"], hello["nonce"], eph_s, nonce_s, hashlib.sha256(der).hexdigest())
        shared = _shared(own, eph_c)
        client_to_server, server_to_client = _derive(shared, self.text)
        reply = {"step": "accept", "eph": eph_s, "nonce": nonce_s, "server_key": b64(der),
                 "sig": _sign(self.server_key, "server", self.text)}
        if connection_id is not None:
            reply["server_connection_id"] = connection_id
            reply["connection_tag"] = connection_tag(shared, self.text, connection_id)
        return Session(server_to_client, client_to_server), reply

    def finish_signature(self, args: Any) -> bytes:
        """The signature bytes of a decrypted ``finish`` (format checks only), for a
        checker that verifies them against registered keys with :meth:`finish_matches`."""
        if not isinstance(args, dict) or args.get("step") != "finish":
            raise E2EError("expected the client's finish step")
        return unb64(args.get("sig"), "sig", limit=MAX_SIGNATURE_B64)

    def finish_matches(self, client_key: Any, signature: bytes) -> bool:
        """Whether *signature* is the client's signature of this handshake by *client_key*."""
        try:
            client_key.verify(signature, b"client\n" + self.text, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError, AttributeError):
            return False
        return True

    def finish(self, client_key: rsa.RSAPublicKey, args: Any) -> None:
        """Check the client's ``finish`` (decrypted) against *client_key*, the registered
        key whose md5 the hello named; :class:`E2EError` if it does not match."""
        if not isinstance(args, dict) or args.get("step") != "finish":
            raise E2EError("expected the client's finish step")
        _verify(client_key, "client", self.text, args.get("sig"))
