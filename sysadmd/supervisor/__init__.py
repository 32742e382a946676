"""Supervised named programs: definitions, the state machine, the verbs (docs/protocol.md §6.18)."""
