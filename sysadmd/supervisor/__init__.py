"""Supervised named programs (issue 11, seed 003): definitions, the state machine, the verbs."""
