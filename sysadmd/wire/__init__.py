"""The wire: what sysadmd, sysadm-bridge and the ``sysadm`` client all speak.

Belongs here: the JSON envelope (:mod:`~sysadmd.wire.envelope`), the RFC 6455 frame codec
(:mod:`~sysadmd.wire.frames`), the WebSocket base every protocol of ours builds on
(:mod:`~sysadmd.wire.wsbase`), ``wss://`` URLs (:mod:`~sysadmd.wire.wssurl`), the
WebSocket close codes (:mod:`~sysadmd.wire.close`) and the signed texts of bridged logins
(:mod:`~sysadmd.wire.bound`).

The rule: a module here imports only the standard library, third-party packages, this
package and :mod:`sysadmd.runtime` -- nothing daemon-only (no request pipeline, sessions,
dispatcher, PAM, psutil), so the bridge and the client can stand on it alone.
``tests/test_layers.py`` checks it; see ``docs/architecture.md`` ("Layers").
"""
