"""nudge.server."""
