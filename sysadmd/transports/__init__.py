"""Thin adapters that turn frames into pipeline calls: WebSocket, REST, Unix socket."""
