"""nudge.bench."""
