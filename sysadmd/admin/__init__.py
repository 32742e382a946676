"""The ``sysadmd`` console script: administration verbs on a server's state directory."""
