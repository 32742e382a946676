"""Outgoing links to bridges, so a server behind NAT can be managed from anywhere.

:class:`~sysadmd.bridgelink.links.BridgeLinks` keeps one reconnecting connection per
stored link (:class:`~sysadmd.bridgelink.store.BridgeLinkStore`);
:func:`sysadmd.bridgelink.settings.add_actions` adds the ``rpc/settings`` actions
``list_bridges``, ``add_bridge`` and ``remove_bridge``.  :mod:`sysadmd.assembly` builds
and connects them.

This file imports nothing: importing one module of the package must not load the rest
(``tests/test_import_cycles.py``).
"""
