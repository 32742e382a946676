"""``sysadm/zfs``: pools and datasets from OpenZFS's own tools (docs/protocol.md §6.14).

Routed only when ``zpool`` and ``zfs`` are installed (in /sbin, /usr/sbin or /usr/local/sbin);
otherwise the class is absent from ``rpc/query``.  Both actions are read-only, open to
every authenticated user::

    {"action":"list_pools"} → {"list_pools":{pool:{size,alloc,free,frag,expandsz,dedup,altroot,capacity,health}}}
                              ({"list_pools":{}} when there is no pool)
    {"action":"datasets","zpool":"tank"} → {"tank":{used,avail,refer,mountpoint},"tank/home":{…}}

Values are the tools' parsable (``-p``) output as strings: sizes in bytes, ``frag`` and
``capacity`` in percent without the sign, ``-`` where the tool has no value.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable, run_tool, text_arg
from sysadmd.wire.envelope import ApiError

TOOL_DIRS = ("/sbin", "/usr/sbin", "/usr/local/sbin")
POOL_COLUMNS = ["name", "size", "alloc", "free", "frag", "expandsz", "dedup", "altroot", "cap", "health"]
POOL_KEYS = ["size", "alloc", "free", "frag", "expandsz", "dedup", "altroot", "capacity", "health"]
DATASET_COLUMNS = ["name", "used", "avail", "refer", "mountpoint"]
POOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,254}\Z")


def tool(name: str, dirs=TOOL_DIRS) -> Optional[str]:
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def available(config: Any) -> bool:
    return tool("zpool") is not None and tool("zfs") is not None


def _rows(text: str, width: int, what: str) -> List[List[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            raise ApiError("500", f"unexpected {what} output line (expected {width} tab-separated fields): {line[:200]!r}")
        rows.append(fields)
    return rows


def parse_pools(text: str) -> Dict[str, Dict[str, str]]:
    """``zpool list -H -p -o name,size,alloc,free,frag,expandsz,dedup,altroot,cap,health``."""
    out = {}
    for fields in _rows(text, len(POOL_COLUMNS), "zpool list"):
        out[fields[0]] = dict(zip(POOL_KEYS, fields[1:]))
    return out


def parse_datasets(text: str) -> Dict[str, Dict[str, str]]:
    """``zfs list -H -p -r -o name,used,avail,refer,mountpoint <pool>``."""
    out = {}
    for fields in _rows(text, len(DATASET_COLUMNS), "zfs list"):
        out[fields[0]] = dict(zip(DATASET_COLUMNS[1:], fields[1:]))
    return out


class Zfs:
    def __init__(self, reactor: Any, zpool: str, zfs: str):
        self.reactor, self.zpool, self.zfs = reactor, zpool, zfs

    @defer.inlineCallbacks
    def list_pools(self, session: Session, args: Dict[str, Any]):
        text = yield run_tool(self.reactor, [self.zpool, "list", "-H", "-p", "-o", ",".join(POOL_COLUMNS)])
        return {"list_pools": parse_pools(text)}

    @defer.inlineCallbacks
    def datasets(self, session: Session, args: Dict[str, Any]):
        pool = text_arg(args, "zpool", max_chars=255)
        if not POOL_NAME.match(pool):
            raise ApiError("400", f"'zpool' {pool[:40]!r} is not a pool name (a letter, then letters, digits, _ . : -)")
        text = yield run_tool(self.reactor, [self.zfs, "list", "-H", "-p", "-r", "-o", ",".join(DATASET_COLUMNS),
                                             "--", pool])
        return parse_datasets(text)


def route(api: Any, reactor: Any, config: Any) -> Zfs:
    zfs = Zfs(reactor, tool("zpool"), tool("zfs"))
    table = ActionTable("zfs")
    table.add("list_pools", zfs.list_pools, wrap=False)
    table.add("datasets", zfs.datasets, wrap=False)
    table.route(api, limited="read")
    return zfs
