"""Timing of one call under test, with pytest-benchmark's statistics.

pytest-benchmark is a test plugin, not a library a command can call, so ``nudge bench``
reproduces its method here: calibrate how many iterations make one round long enough for
the timer, time rounds until a time or round limit, and report per-call min / max / mean /
stddev / median / IQR / ops (plus p99, which tail budgets need). The same cases also run
under pytest-benchmark itself (``tests/bench/test_kernels_benchmark.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

# One round must be long enough that perf_counter's resolution and call overhead vanish.
MIN_ROUND_S = 20e-6


@dataclass(frozen=True)
class Timing:
    """Per-call seconds over ``rounds`` rounds of ``iterations`` calls each."""

    rounds: int
    iterations: int
    min: float
    max: float
    mean: float
    stddev: float
    median: float
    iqr: float
    p99: float
    items_per_call: int = 1

    @property
    def ops(self) -> float:
        """Calls per second at the mean (as pytest-benchmark's ``ops``)."""
        return 1.0 / self.mean

    @property
    def items_per_s(self) -> float:
        """Items (events, transactions, rewards) per second at the median."""
        return self.items_per_call / self.median

    @property
    def p50_us(self) -> float:
        return self.median * 1e6

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "ops": self.ops, "items_per_s": self.items_per_s,
                "p50_us": self.p50_us, "p99_us": self.p99 * 1e6}


def measure(call: Callable[[], object], *, max_time: float = 0.5, max_rounds: int = 20_000,
            min_rounds: int = 5, reset: Callable[[], object] | None = None,
            items_per_call: int = 1) -> Timing:
    """Time ``call`` (already warmed by the caller or not: the first call is discarded).

    ``reset`` runs before every round, outside the timed region (e.g. a fresh copy of
    state the call mutates); with a reset, each round is one iteration.
    """
    if reset:
        reset()
    call()  # first call: compilation or cache load, caches, allocations
    iterations = 1
    if reset is None:
        t = time.perf_counter()
        call()
        one = max(time.perf_counter() - t, 1e-9)
        iterations = max(1, int(np.ceil(MIN_ROUND_S / one)))
    rounds: list[float] = []
    deadline = time.perf_counter() + max_time
    while len(rounds) < max_rounds and (len(rounds) < min_rounds
                                        or time.perf_counter() < deadline):
        if reset:
            reset()
        t = time.perf_counter()
        for _ in range(iterations):
            call()
        rounds.append((time.perf_counter() - t) / iterations)
    s = np.asarray(rounds)
    q1, median, q3, p99 = np.percentile(s, [25, 50, 75, 99])
    return Timing(rounds=s.size, iterations=iterations, min=float(s.min()), max=float(s.max()),
                  mean=float(s.mean()), stddev=float(s.std(ddof=1)) if s.size > 1 else 0.0,
                  median=float(median), iqr=float(q3 - q1), p99=float(p99),
                  items_per_call=items_per_call)
