"""Certificates pinned on first use, like ssh's ``known_hosts``.

File: ``$XDG_CONFIG_HOME/sysadm/known_hosts`` (default ``~/.config/sysadm/known_hosts``),
directory 0700, file 0600.  One line per endpoint::

    # comments and blank lines are kept
    127.0.0.1:12150 3A:F0:…:9C
    [::1]:12149 77:01:…:E2

The first connection to ``host:port`` stores the certificate's SHA-256 fingerprint;
a later connection presenting another certificate is refused until the user removes
the line (``sysadm known-hosts forget host:port``) or pins the new one explicitly
(``--fingerprint``).
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from sysadmd.client.errors import EXIT_CERTIFICATE, EXIT_USAGE, ClientError
from sysadmd.runtime.statedir import ensure_private_dir, write_private_file

_HEX = re.compile(r"^[0-9A-F]{64}$")


def default_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sysadm", "known_hosts")


def endpoint_name(host: str, port: int) -> str:
    """``host:port`` as stored: lower-case host, IPv6 addresses in brackets."""
    host = host.lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_fingerprint(text: str) -> str:
    """``AB:CD:…`` from any spelling (colons or not, any case, optional ``SHA256:``)."""
    raw = text.strip()
    if raw.upper().startswith(("SHA256:", "SHA-256:")):
        raw = raw.split(":", 1)[1]
    digits = raw.replace(":", "").replace(" ", "").upper()
    if not _HEX.match(digits):
        raise ClientError(f"not a SHA-256 fingerprint: {text!r} (expected 64 hex digits, colons optional)", EXIT_USAGE)
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


class CertificateChanged(ClientError):
    def __init__(self, endpoint: str, expected: str, got: str, path: str, explicit: bool):
        if explicit:
            text = (
                f"the certificate of {endpoint} does not match --fingerprint\n"
                f"  expected SHA-256 {expected}\n"
                f"  got      SHA-256 {got}\n"
                "Refusing to connect: check the fingerprint the server logs at start-up."
            )
        else:
            text = (
                f"WARNING: the certificate of {endpoint} has CHANGED since it was pinned!\n"
                f"  expected SHA-256 {expected}\n"
                f"  got      SHA-256 {got}\n"
                "Someone may be intercepting the connection, or the server got a new certificate.\n"
                f"If the change is expected, remove the old entry from {path} with\n"
                f"  sysadm known-hosts forget {endpoint}\n"
                "and connect again (or pass --fingerprint with the new value)."
            )
        super().__init__(text, EXIT_CERTIFICATE)



def read_lines(path: str) -> List[str]:
    """The lines of a pin file (known_hosts, known_servers); none if it does not exist yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []

class KnownHosts:
    def __init__(self, path: Optional[str] = None):
        self.path = path or default_path()

    # --- file ---------------------------------------------------------------------
    def _lines(self) -> List[str]:
        return read_lines(self.path)

    def entries(self) -> List[Tuple[str, str]]:
        found = []
        for line in self._lines():
            parts = line.split()
            if len(parts) >= 2 and not line.lstrip().startswith("#"):
                found.append((parts[0], parts[1]))
        return found

    def lookup(self, endpoint: str) -> Optional[str]:
        for name, fingerprint in self.entries():
            if name == endpoint:
                return fingerprint
        return None

    def _write(self, lines: List[str]) -> None:
        ensure_private_dir(os.path.dirname(self.path))
        write_private_file(self.path, ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))

    def store(self, endpoint: str, fingerprint: str) -> None:
        """Pin *fingerprint* for *endpoint*, replacing any earlier entry."""
        kept = [line for line in self._lines() if line.split()[:1] != [endpoint]]
        kept.append(f"{endpoint} {fingerprint}")
        self._write(kept)

    def forget(self, endpoint: str) -> bool:
        lines = self._lines()
        kept = [line for line in lines if line.split()[:1] != [endpoint]]
        if len(kept) == len(lines):
            return False
        self._write(kept)
        return True

    # --- the check made on every TLS connection -----------------------------------
    def verify(self, endpoint: str, got: Optional[str], explicit: Optional[str] = None) -> Optional[str]:
        """Accept or refuse *got* for *endpoint*; returns a note to show, or ``None``.

        Raises :class:`CertificateChanged` on a mismatch.
        """
        if got is None:
            raise ClientError(f"{endpoint} presented no TLS certificate; refusing to continue", EXIT_CERTIFICATE)
        if explicit is not None:
            wanted = normalize_fingerprint(explicit)
            if wanted != got:
                raise CertificateChanged(endpoint, wanted, got, self.path, explicit=True)
            if self.lookup(endpoint) != got:
                self.store(endpoint, got)
                return f"Pinned certificate for {endpoint} SHA-256 {got}"
            return None
        pinned = self.lookup(endpoint)
        if pinned is None:
            self.store(endpoint, got)
            return f"Pinned certificate for {endpoint} SHA-256 {got}"
        if pinned != got:
            raise CertificateChanged(endpoint, pinned, got, self.path, explicit=False)
        return None
