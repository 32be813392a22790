"""Generated gRPC contract of nudge (package nudge.v1)."""
