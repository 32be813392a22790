"""The delayed flusher: flushes after a wake-up, and backs off while the store refuses."""

from __future__ import annotations

import threading
import time

from nudge.server.storage.write_behind import MAX_BACKOFF_SECONDS, DelayedFlusher


def test_a_wake_up_flushes_once_after_the_delay() -> None:
    flushed = threading.Event()
    calls: list[float] = []

    def flush() -> bool:
        flusher.taken()
        calls.append(time.monotonic())
        flushed.set()
        return True

    flusher = DelayedFlusher("test-flusher", flush, delay=0.001)
    flusher.wake()
    assert flushed.wait(5)
    time.sleep(0.05)
    flusher.close()
    assert len(calls) == 2  # the wake-up's flush and the closing one
    assert flusher.failures == 0


def test_refused_flushes_back_off_instead_of_retrying_every_millisecond() -> None:
    calls = 0

    def flush() -> bool:
        nonlocal calls
        calls += 1  # refused: still pending, so the flusher keeps being woken
        return False

    flusher = DelayedFlusher("test-flusher", flush, delay=0.001, pending=lambda: True)
    flusher.wake()
    time.sleep(0.5)
    flusher.close()
    # 1, 2, 4 … ms: about ten tries in half a second (without backoff: hundreds).
    assert 2 <= calls <= 15
    assert flusher.failures >= 2
    assert flusher.wait_before_flush() <= MAX_BACKOFF_SECONDS


def test_one_stored_flush_ends_the_backoff() -> None:
    results = iter([False, False, False, True])
    done = threading.Event()

    def flush() -> bool:
        ok = next(results, True)
        if ok:
            done.set()
        return ok

    flusher = DelayedFlusher("test-flusher", flush, delay=0.001, pending=lambda: not done.is_set())
    flusher.wake()
    assert done.wait(5)
    time.sleep(0.02)
    assert flusher.failures == 0 and flusher.wait_before_flush() == 0.001
    flusher.close()


def test_a_flush_that_raises_does_not_stop_the_flusher() -> None:
    outcomes = iter([RuntimeError("store closed"), True])
    done = threading.Event()

    def flush() -> bool:
        outcome = next(outcomes, True)
        if isinstance(outcome, Exception):
            raise outcome
        done.set()
        return outcome

    flusher = DelayedFlusher("test-flusher", flush, delay=0.001, pending=lambda: not done.is_set())
    flusher.wake()
    assert done.wait(5)  # tried again after the failure
    flusher.close()
