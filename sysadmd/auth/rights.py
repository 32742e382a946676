"""Who gets which rights: uid 0 and FULL_ACCESS_GROUPS full, LIMITED_ACCESS_GROUPS limited."""

from __future__ import annotations

import grp
import os
import pwd
from typing import Iterable, Optional, Set


class Rights:
    def __init__(self, full_groups: Iterable[str], limited_groups: Iterable[str]):
        self.full_groups = set(full_groups)
        self.limited_groups = set(limited_groups)

    def for_user(self, user: str) -> Optional[bool]:
        """``True`` full access, ``False`` limited, ``None`` no access (or no such user)."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        return self._decide(entry.pw_uid, _group_names(user, entry.pw_gid))

    def for_uid(self, uid: int) -> Optional[bool]:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return True if uid == 0 else None
        return self._decide(uid, _group_names(entry.pw_name, entry.pw_gid))

    def _decide(self, uid: int, groups: Set[str]) -> Optional[bool]:
        if uid == 0 or groups & self.full_groups:
            return True
        if groups & self.limited_groups:
            return False
        return None


def user_for_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def _group_names(user: str, primary_gid: int) -> Set[str]:
    names = set()
    try:
        gids = os.getgrouplist(user, primary_gid)
    except OSError:
        gids = [primary_gid]
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names
