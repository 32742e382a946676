"""pytest set-up shared by every test file.

**The ``slow`` marker** marks tests that start real daemons (twistd subprocesses) or other
real child processes, or wait seconds of real time (deadlines, ping floods);
``./scripts/test.sh -m "not slow" -n 2`` runs the rest as a fast inner loop (in two
pytest-xdist processes: under 30 s on 2 cores), and CI
(``.ci/run``) runs everything.

**TLS keys of in-process daemons are reused between tests.**  Making an RSA-2048 key
costs ~35 ms and every in-process daemon or bridge makes one for its self-signed
certificate (:func:`sysadmd.runtime.tls.make_self_signed`) and its bridge-link key: without
the pool, half of the fast loop's CPU time.
Within one test the n-th such key is still a fresh, distinct key; the next test gets
the same n-th key again (each certificate is still new: its serial and dates differ).
The same holds for each daemon's bridge-link key (:mod:`sysadmd.bridgelink.key`), from
a separate pool.  Client keys the tests make, and daemons started as child processes,
generate theirs as before.  ``SYSADMD_TEST_FRESH_KEYS=1`` turns the
pool off.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Tuple

_pool: Dict[Tuple[str, int], List[object]] = {}
_used: Dict[Tuple[str, int], int] = {}


def _pooled(kind: str, fresh: Callable[[int], object]) -> Callable[..., object]:
    def pooled_key(bits: int = 2048) -> object:
        slot = (kind, bits)
        keys = _pool.setdefault(slot, [])
        index = _used.get(slot, 0)
        _used[slot] = index + 1
        if index == len(keys):
            keys.append(fresh(bits))
        return keys[index]

    return pooled_key


class _LinkCrypto:
    """:mod:`sysadmd.runtime.crypto` as :mod:`sysadmd.bridgelink.key` sees it: pooled key making."""

    def __init__(self, real: Any):
        self._real = real
        self.generate_private_key = _pooled("link", real.generate_private_key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real daemons or child processes, or waits seconds of real time "
                                       "(deselect with -m \"not slow\")")
    if os.environ.get("SYSADMD_TEST_FRESH_KEYS", "") in ("", "0"):
        from sysadmd.runtime import crypto, tls
        from sysadmd.bridgelink import key

        tls.generate_private_key = _pooled("tls", crypto.generate_private_key)
        key.crypto = _LinkCrypto(crypto)

def pytest_runtest_setup(item):
    _used.clear()
