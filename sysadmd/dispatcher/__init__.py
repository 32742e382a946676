"""Dispatcher jobs: queued chains of external commands, streamed, stored, killable.

``commands`` splits command strings, ``runner`` runs one command in its own process
group, ``output`` caps and streams output, ``store`` keeps jobs on disk, ``job`` and
``queues`` model them, ``service`` is the :class:`Dispatcher`, ``rpc`` the API.
"""

from sysadmd.dispatcher.rpc import install
from sysadmd.dispatcher.service import Dispatcher

__all__ = ["Dispatcher", "install"]
