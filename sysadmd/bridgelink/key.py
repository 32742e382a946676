"""The server's own bridge key: what this server signs bridge challenges with.

An RSA-2048 private key in ``<state_dir>/bridge_key.pem`` (mode 0600), made on the
daemon's first start or by ``sysadmd bridge_export_key``, whichever comes first.  The
bridge administrator imports its public half (``sysadm-bridge import_ssl_file``).
"""

from __future__ import annotations

import os
from typing import Tuple

from cryptography.hazmat.primitives.asymmetric import rsa

from sysadmd.runtime import crypto
from sysadmd.runtime.statedir import ensure_private_dir, write_private_file

KEY_FILE = "bridge_key.pem"
KEY_BITS = 2048


def key_path(state_dir: str) -> str:
    return os.path.join(state_dir, KEY_FILE)


def load_or_create(state_dir: str) -> Tuple[rsa.RSAPrivateKey, bool]:
    """The bridge key, and whether it was just created."""
    path = key_path(state_dir)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return crypto.load_private_key(f.read()), False
    ensure_private_dir(state_dir)
    key = crypto.generate_private_key(KEY_BITS)
    # Written aside, then linked into place: link() fails if the daemon and the admin
    # command both made a key at the same moment, and the loser uses the winner's.
    tmp = f"{path}.new.{os.getpid()}"
    write_private_file(tmp, crypto.private_pem(key))
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path, "rb") as f:
            return crypto.load_private_key(f.read()), False
    finally:
        os.unlink(tmp)
    return key, True


def public_key_pem(state_dir: str) -> str:
    """The SPKI PEM public key to give the bridge (creates the key pair if needed)."""
    key, _ = load_or_create(state_dir)
    return crypto.public_pem(key)
