"""Who gets which rights: uid 0 and FULL_ACCESS_GROUPS full, LIMITED_ACCESS_GROUPS limited.

Rights are decided at login and looked up again for every privileged call through
:meth:`Rights.current`, which caches each user's answer for ``cache_seconds`` (the
lookups read passwd and group data, possibly over NSS), so removing a user from the
access groups, or deleting the account, ends the rights of its old logins that soon.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Any, Dict, Iterable, Optional, Set, Tuple

CACHE_ENTRIES = 4096  # users whose rights are cached at once (more: the expired go first)


class Rights:
    def __init__(self, full_groups: Iterable[str], limited_groups: Iterable[str], *,
                 clock: Any = None, cache_seconds: float = 0.0):
        self.full_groups = set(full_groups)
        self.limited_groups = set(limited_groups)
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: Dict[str, Tuple[Optional[bool], float]] = {}

    def current(self, user: str) -> Optional[bool]:
        """:meth:`for_user`, answered from a cache younger than ``cache_seconds``."""
        if self.clock is None or self.cache_seconds <= 0:
            return self.for_user(user)
        now = self.clock.seconds()
        hit = self._cache.get(user)
        if hit is not None and hit[1] > now:
            return hit[0]
        value = self.for_user(user)
        if len(self._cache) >= CACHE_ENTRIES:
            for name in [n for n, (_, until) in self._cache.items() if until <= now]:
                del self._cache[name]
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
        self._cache[user] = (value, now + self.cache_seconds)
        return value

    def forget(self, user: Optional[str] = None) -> None:
        """Drop cached answers (of one user, or all)."""
        if user is None:
            self._cache.clear()
        else:
            self._cache.pop(user, None)

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
