"""nudge.clients."""
