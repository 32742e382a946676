"""Outgoing links to bridges, so a server behind NAT can be managed from anywhere.

``store`` keeps the link table, ``links`` the service that keeps one reconnecting
connection per link (``link``, ``protocol``, ``outbox``, ``tlsverify``), ``clients`` the
sessions of the clients reached through a link, ``settings`` the ``rpc/settings`` actions
``list_bridges``, ``add_bridge`` and ``remove_bridge``, ``key`` the server's bridge key;
:func:`sysadmd.bridgelink.attach.install` attaches all of it to a server.

This file imports nothing: importing one module of the package must not load the rest
(``tests/test_import_cycles.py``).
"""
