"""Handlers of the ``rpc`` namespace, one module per concern."""
