"""Graceful shutdown: after closing its connections with 1001, a daemon waits (bounded)
until they are gone, so peers get the close frame instead of a dropped socket (1006)."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, task

STEP = 0.05


@defer.inlineCallbacks
def wait_until(clock: Any, done: Callable[[], bool], timeout: float):
    """Fire once ``done()`` is true or *timeout* seconds have passed."""
    deadline = clock.seconds() + timeout
    while not done() and clock.seconds() < deadline:
        yield task.deferLater(clock, STEP, lambda: None)
