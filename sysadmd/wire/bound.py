"""Bridged logins bound to the server's identity (issue 7 item 2).

Upstream's bridged login signs a bare challenge ``T``.  A client that signs whatever
challenge a peer hands it can be made to sign one that a *different* server issued: an
attacker posing as a server behind the bridge fetches ``T`` from the real server and
replays the signature there.  Our client and server add two signatures on top of the
upstream exchange; upstream peers never see them.

Stage 1 (client → server) ``{"md5_key": M, "client_nonce": N}`` with ``N`` 32 random
bytes in hex.  Our server's reply keeps upstream's fields and adds::

    "server_key":           PEM of the server's bridge public key (the key it logs in to the bridge with)
    "server_connection_id": I, the server's own connection ID on the bridge ("" if the bridge does not tell)
    "server_proof":         base64(RSA PKCS#1 v1.5 SHA-256 signature by that key over
                            b"sysadm-server-proof/1\\n" + N + "\\n" + T + "\\n" + M + "\\n" + I)

where ``T`` is the challenge itself (the decoded ``test_string``).  The proof shows the
key's holder answered *this* client's nonce for *this* challenge, so the client can pin
the server's key like an ssh host key before it signs anything.  ``I`` binds the proof
to the bridge connection: the client checks that ``I`` is the ID it is talking to, so a
peer that passes the real server's messages through (it has its own ID) is caught even
though the key it shows is the real one.

Stage 2 (client → server) ``{"encrypted_string": S, "bound": 1}`` where ``S`` is
base64(RSA PKCS#1 v1.5 SHA-256 signature by the client's key over
``b"sysadm-bridged-login/1\\n" + sha256_hex(server SPKI DER) + "\\n" + I + "\\n" + T``).
A server accepts it only for its own fingerprint and connection ID: a login relayed from
another server's challenge, or through another connection, fails.  It is a hashed signature with
DigestInfo, never the raw type-1 signature upstream uses, so neither form can be passed
off as the other.

Policy on the server: a session that sent ``client_nonce`` must finish with a bound
stage 2; raw stage 2 on bridged sessions (upstream clients) is allowed unless
``BRIDGE_UPSTREAM_CLIENTS`` is false (:mod:`sysadmd.auth.boundlogin`, the daemon's side).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from typing import Any, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sysadmd.runtime import crypto

PROOF_CONTEXT = b"sysadm-server-proof/1\n"
LOGIN_CONTEXT = b"sysadm-bridged-login/1\n"
NONCE_BYTES = 32
MAX_SIGNATURE_B64 = 2048  # a 4096-bit RSA signature is 684 base64 characters
MAX_SERVER_KEY_PEM = 4096
_NONCE = re.compile(r"^[0-9a-f]{64}$")

class ProofError(ValueError):
    """The server's proof is missing, malformed or wrong; the message says which."""


# --- shared ---------------------------------------------------------------------------------
def fingerprint(key: Any) -> str:
    """sha256 hex of the key's SubjectPublicKeyInfo DER (public or private key)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def display_fingerprint(fp_hex: str) -> str:
    """``SHA256:<base64, no padding>`` as ssh shows host keys."""
    return "SHA256:" + base64.b64encode(bytes.fromhex(fp_hex)).decode("ascii").rstrip("=")


def valid_nonce(nonce: Any) -> bool:
    return isinstance(nonce, str) and bool(_NONCE.match(nonce))


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def proof_message(nonce: str, challenge: str, md5_key: str, connection_id: str) -> bytes:
    return (PROOF_CONTEXT + nonce.encode("ascii") + b"\n" + challenge.encode("latin-1") + b"\n"
            + md5_key.encode("utf-8") + b"\n" + connection_id.encode("utf-8"))


def login_message(server_fp: str, connection_id: str, challenge: str) -> bytes:
    return LOGIN_CONTEXT + server_fp.encode("ascii") + b"\n" + connection_id.encode("utf-8") + b"\n" + challenge.encode("latin-1")


def _sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _verify(public_key: rsa.RSAPublicKey, signature_b64: Any, message: bytes) -> bool:
    if not isinstance(signature_b64, str) or not signature_b64 or len(signature_b64) > MAX_SIGNATURE_B64:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


# --- server side ----------------------------------------------------------------------------
def server_proof(private_key: rsa.RSAPrivateKey, nonce: str, challenge: str, md5_key: str, connection_id: str) -> dict:
    """The fields our server adds to the stage-1 reply."""
    return {"server_key": crypto.public_pem(private_key), "server_connection_id": connection_id,
            "server_proof": _sign(private_key, proof_message(nonce, challenge, md5_key, connection_id))}


def verify_bound_login(public_key: rsa.RSAPublicKey, signature_b64: Any, server_fp: str, connection_id: str,
                       challenge: str) -> bool:
    return _verify(public_key, signature_b64, login_message(server_fp, connection_id, challenge))


# --- client side ----------------------------------------------------------------------------
def check_server_proof(reply_args: Any, nonce: str, challenge: str, md5_key: str,
                       connection_id: str) -> Tuple[rsa.RSAPublicKey, str]:
    """``(server public key, fingerprint hex)`` when the stage-1 reply proves the server's
    key *and* that it is the server at *connection_id* (the ID we sent stage 1 to).

    Raises :class:`ProofError` (no proof at all: ``missing`` is set on it; a server that
    cannot say its connection ID: ``unbound_channel``).
    """
    if not isinstance(reply_args, dict) or ("server_key" not in reply_args and "server_proof" not in reply_args):
        error = ProofError("the server sent no identity proof (server_key/server_proof): an upstream server, "
                           "or something posing as one")
        error.missing = True  # type: ignore[attr-defined]
        raise error
    pem, proof = reply_args.get("server_key"), reply_args.get("server_proof")
    if not isinstance(pem, str) or not pem or len(pem) > MAX_SERVER_KEY_PEM:
        raise ProofError("server_key must be a PEM public key string")
    if not isinstance(proof, str) or not proof:
        raise ProofError("server_proof must be a base64 string")
    try:
        public = crypto.load_public_key(pem)
    except crypto.KeyFormatError as e:
        raise ProofError(f"server_key is not a usable public key: {e}") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ProofError("server_key is not an RSA key")
    claimed_id = reply_args.get("server_connection_id", "")
    if not isinstance(claimed_id, str):
        raise ProofError("server_connection_id must be a string")
    if not _verify(public, proof, proof_message(nonce, challenge, md5_key, claimed_id)):
        raise ProofError("server_proof does not verify with server_key for our nonce and this challenge")
    if not claimed_id:
        error = ProofError("the server proved its key but not its bridge connection (its bridge does not tell "
                           "connection IDs: an upstream bridge?), so a relay cannot be ruled out")
        error.unbound_channel = True  # type: ignore[attr-defined]
        error.fingerprint = fingerprint(public)  # type: ignore[attr-defined]
        raise error
    if claimed_id != connection_id:
        raise ProofError(f"the proof comes from the server at bridge connection {claimed_id[:80]}, not {connection_id}: "
                         "the peer we asked is relaying another connection's answers")
    return public, fingerprint(public)


def sign_bound_login(private_key: rsa.RSAPrivateKey, server_fp: str, connection_id: str, challenge: str) -> str:
    return _sign(private_key, login_message(server_fp, connection_id, challenge))

