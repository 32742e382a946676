"""Dispatcher jobs: queued chains of external commands, streamed, stored, killable.

``commands`` splits command strings, ``runner`` runs one command in its own process
group, ``output`` caps and streams output, ``store`` keeps jobs on disk, ``job`` and
``queues`` model them, ``service`` is the :class:`~sysadmd.dispatcher.service.Dispatcher`,
``rpc`` the API.  :mod:`sysadmd.assembly` builds them.

This file imports nothing: importing one module of the package (say the pure
``commands``) must not load the rest (``tests/test_import_cycles.py``).
"""
