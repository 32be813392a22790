"""Waiting for a commit within the caller's deadline."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import grpc

from nudge.server.errors import DeadlineExceeded

T = TypeVar("T")
# Without a deadline grpc reports a huge time_remaining that thread waits reject.
MAX_WAIT_SECONDS = 86_400.0


def wait_within_deadline(future: Future[T], context: grpc.ServicerContext, what: str) -> T:
    """The future's result, or DEADLINE_EXCEEDED saying ``what`` may still happen."""
    remaining = context.time_remaining()
    if remaining is not None and remaining > MAX_WAIT_SECONDS:
        remaining = None
    try:
        return future.result(timeout=remaining)
    except FutureTimeout:
        raise DeadlineExceeded(f"deadline passed before the commit; {what}") from None
