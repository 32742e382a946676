"""Jobs: one persistent job model for all long-running work, its store and its queries."""
