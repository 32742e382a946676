"""sysadmd: a Twisted reimplementation of the TrueOS SysAdm server."""

__version__ = "0.1.0"
