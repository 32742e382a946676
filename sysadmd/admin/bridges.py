"""Bridge link verbs (bridge_add, …)."""
