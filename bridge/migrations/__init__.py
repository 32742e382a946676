"""Schema migrations of the bridge's database (``<state_dir>/bridge.sqlite``).

The mechanism is :mod:`sysadmd.runtime.db`; this package holds the steps, numbered like
sysadmd's (see :mod:`sysadmd.migrations` for how to add one).  The bridge applies the
missing steps at start (after keeping a copy, ``bridge.sqlite.before-v<N>``), as does the
``sysadm-bridge`` admin command when it opens the database.  The blacklist's tables live
here too: the bridge blocks addresses with sysadmd's :class:`~sysadmd.runtime.blacklist.Blacklist`.
"""

from sysadmd.runtime.db import Schema

SCHEMA = Schema(
    name="sysadm-bridge",
    application_id=0x53594142,  # "SYAB"
    package=__name__,
    tables=frozenset({"bridge_keys", "auth_failures", "blacklist",
                     "fleet_agents", "fleet_commands", "fleet_events", "fleet_health"}),
)
