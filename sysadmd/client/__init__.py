"""The ``sysadm`` command-line client and the Twisted API client it is built on."""
