"""Events: the hub that fans them out, and their producers (system-state, …)."""
