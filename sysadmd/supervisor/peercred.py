"""Who is at the other end of a local connection: the peer process's uid.

* Unix sockets: ``SO_PEERCRED`` (the kernel's record of the connecting process).
* TCP on loopback (Linux): the peer's own socket is a row of ``/proc/net/tcp`` (or
  ``tcp6``) whose *local* address is the peer address we see and whose *remote*
  address is ours; that row names its owner's uid and its inode.  A row with inode 0
  (a socket already being torn down, or a TIME_WAIT leftover) owns nothing and is
  skipped, and so is any row not in the ESTABLISHED state.

The tables are read line by line and at most :data:`MAX_TABLE_BYTES` of each, so a
host with very many sockets costs a bounded read per connection, never an unbounded
one; a peer past that bound is reported as unknown (whoever asked then refuses it).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import Iterable, Tuple

PROC_TCP = "/proc/net/tcp"
PROC_TCP6 = "/proc/net/tcp6"
MAX_TABLE_BYTES = 16 * 1024 * 1024  # per table: ~100 000 sockets' rows
MAX_LINE_BYTES = 512  # a row is ~150 bytes; anything longer is not a row
ESTABLISHED = "01"


class PeerUnknown(Exception):
    """The peer's uid cannot be told; ``str()`` says why."""


def unix_peer_uid(sock: socket.socket) -> int:
    """The uid of the process that connected the Unix socket *sock* (``SO_PEERCRED``)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as e:
        raise PeerUnknown(f"SO_PEERCRED failed: {e.strerror}") from None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def _decode_address(text: str) -> Tuple[ipaddress._BaseAddress, int]:
    """``"0100007F:1E61"`` → ``(IPv4Address('127.0.0.1'), 7777)``: the kernel prints the
    address as 32-bit words in host byte order, the port in hex."""
    address_hex, _, port_hex = text.partition(":")
    raw = bytes.fromhex(address_hex)
    if len(raw) not in (4, 16):
        raise ValueError(f"address of {len(raw)} bytes")
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port_hex, 16)


def _canonical(host: str) -> ipaddress._BaseAddress:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _rows(lines: Iterable[bytes]) -> Iterable[Tuple[str, str, str, int, int]]:
    """``(local, remote, state, uid, inode)`` of each row; the header and bad rows are skipped."""
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(b":") or not fields[0][:-1].isdigit():
            continue
        try:
            yield (fields[1].decode("ascii"), fields[2].decode("ascii"), fields[3].decode("ascii"),
                   int(fields[7]), int(fields[9]))
        except (UnicodeDecodeError, ValueError):
            continue


def _bounded_lines(path: str, limit: int) -> Iterable[bytes]:
    read = 0
    with open(path, "rb") as table:
        while read < limit:
            line = table.readline(MAX_LINE_BYTES)
            if not line:
                return
            read += len(line)
            yield line
    raise PeerUnknown(f"{path} is longer than {limit} bytes; the peer was not within them")


def _encode_address(address: ipaddress._BaseAddress, port: int) -> bytes:
    """The inverse of :func:`_decode_address`, as the table's bytes (upper-case hex)."""
    raw = address.packed
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{raw.hex().upper()}:{port:04X}".encode("ascii")


def _needles(table: str, address: ipaddress._BaseAddress, port: int):
    """How *address*:*port* is written in *table* (``tcp``: IPv4 only; ``tcp6``: IPv6 and
    IPv4-mapped IPv6), or ``None`` when that table cannot hold it."""
    if table.endswith("6"):
        if address.version == 4:
            address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
        return _encode_address(address, port)
    return _encode_address(address, port) if address.version == 4 else None


def tcp_peer_uid(peer: Tuple[str, int], local: Tuple[str, int], *,
                 tables: Tuple[str, ...] = (PROC_TCP, PROC_TCP6), limit: int = MAX_TABLE_BYTES) -> int:
    """The uid owning the loopback TCP socket at *peer* that is connected to our *local*
    ``(host, port)``.  Raises :class:`PeerUnknown` when no live row matches.  Blocking
    file reads: call it from a thread when the tables may be long."""
    try:
        peer_address, peer_port = _canonical(peer[0]), int(peer[1])
        local_address, local_port = _canonical(local[0]), int(local[1])
    except ValueError as e:
        raise PeerUnknown(f"not an IP address: {e}") from None
    if not peer_address.is_loopback:
        raise PeerUnknown(f"{peer[0]} is not a loopback address")
    problems = []
    for path in tables:
        want_local = _needles(path, peer_address, peer_port)  # the peer's socket: its local end is the peer
        want_remote = _needles(path, local_address, local_port)
        if want_local is None or want_remote is None:
            continue
        try:
            for line in _bounded_lines(path, limit):
                if want_local not in line:  # the cheap test first: most rows are other sockets
                    continue
                for row_local, row_remote, state, uid, inode in _rows((line,)):
                    if (row_local.encode() == want_local and row_remote.encode() == want_remote
                            and state == ESTABLISHED and inode != 0):
                        return uid
        except FileNotFoundError:
            continue  # no IPv6 on this host
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
        except PeerUnknown as e:
            problems.append(str(e))
    why = "; ".join(problems) or "no established socket in the kernel's tables"
    raise PeerUnknown(f"no owner found for {peer[0]}:{peer[1]} ({why})")
