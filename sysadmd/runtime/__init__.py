"""The runtime: what both daemons (sysadmd, sysadm-bridge) and the client run on.

Belongs here: configuration files and their keys' parsing (:mod:`~sysadmd.runtime.configfile`),
SQLite connections and schema migrations (:mod:`~sysadmd.runtime.db`), state directories and
default paths (:mod:`~sysadmd.runtime.statedir`, :mod:`~sysadmd.runtime.paths`), TLS contexts and certificates
(:mod:`~sysadmd.runtime.tls`), key material (:mod:`~sysadmd.runtime.crypto`), listeners and
connection limits (:mod:`~sysadmd.runtime.listeners`), start-up and shutdown helpers
(:mod:`~sysadmd.runtime.startup`, :mod:`~sysadmd.runtime.shutdown`), configuration reloads
(:mod:`~sysadmd.runtime.reload`) and the failed-login blacklist
(:mod:`~sysadmd.runtime.blacklist`).  Each daemon's own key table and numbered migrations
stay with that daemon (``sysadmd/config.py``, ``sysadmd/migrations/``; ``bridge/``).

The rule: a module here imports only the standard library, third-party packages, this
package and :mod:`sysadmd.wire` -- nothing daemon-only (no request pipeline, sessions,
dispatcher, PAM, psutil), so the bridge and the client can stand on it alone.
``tests/test_layers.py`` checks it; see ``docs/architecture.md`` ("Layers").
"""
