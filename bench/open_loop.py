"""Open-loop load: requests leave on a fixed schedule whether or not earlier ones answered.

A closed-loop client that waits for each answer sends less when the server slows down, so
its percentiles hide the queueing a real caller (a card network, a mobile backend) would
see. Here call ``i`` is due at ``t0 + i / rate``; its latency is counted from that due time
(not from when the client got round to sending it), so a stalled server or client shows up
in the tail ("coordinated omission" avoided). A sweep raises the rate until p99 leaves the
budget, and reports the highest rate that stayed within it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from nudge.bench.stats import Latency

# issue(i) -> a grpc future for call i (non-blocking: ``stub.Method.future(request)``).
Issue = Callable[[int], grpc.Future]


@dataclass(frozen=True)
class OpenLoopConfig:
    """The sweep: start at ``start_rate`` calls/s, multiply by ``growth`` per step."""

    start_rate: float = 250.0
    growth: float = 1.6
    max_steps: int = 7
    step_seconds: float = 1.5
    p99_ms: float = 5.0  # budget for the sweep (from budgets.toml [open_loop])
    rpcs: tuple[str, ...] = ("Echo", "ScoreTransaction", "Decide")


@dataclass(frozen=True)
class Step:
    """One offered rate: what was achieved and the latency from due time."""

    offered_per_s: float
    achieved_per_s: float
    errors: int
    latency: Latency

    def within(self, p99_ms: float) -> bool:
        """p99 within budget, the client kept the schedule, and nothing failed."""
        return (self.errors == 0 and self.achieved_per_s >= 0.95 * self.offered_per_s
                and self.latency.p99 <= p99_ms * 1000.0)

    def to_dict(self) -> dict:
        return {"offered_per_s": self.offered_per_s, "achieved_per_s": self.achieved_per_s,
                "errors": self.errors, "latency_us": self.latency.to_dict()}


def at_rate(issue: Issue, rate: float, seconds: float, start: int = 0,
            drain_timeout: float = 30.0) -> Step:
    """Send ``rate * seconds`` calls on schedule; wait for every answer."""
    n = max(1, int(rate * seconds))
    due = np.arange(n) / rate
    done = np.full(n, np.nan)
    failed = np.zeros(n, dtype=bool)
    remaining = [n]
    lock = threading.Lock()
    all_done = threading.Event()
    t0 = time.perf_counter() + 0.01
    due += t0

    def finished(i: int, fut: grpc.Future) -> None:
        done[i] = time.perf_counter()
        failed[i] = fut.exception() is not None
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    for i in range(n):
        wait = due[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # sleep, not spin: the answers' callbacks need the GIL
        fut = issue(start + i)
        fut.add_done_callback(lambda f, i=i: finished(i, f))
    sent_by = time.perf_counter()
    all_done.wait(drain_timeout)
    ok = np.isfinite(done)
    latency = Latency.of((done[ok] - due[ok]) if ok.any() else np.array([np.inf]))
    # The schedule spans (n - 1) / rate seconds: on time means achieved == offered.
    achieved = rate if n == 1 else min(rate, (n - 1) / max(sent_by - t0, 1e-9))
    return Step(offered_per_s=rate, achieved_per_s=achieved,
                errors=int(failed.sum() + (~ok).sum()), latency=latency)


@dataclass(frozen=True)
class Sweep:
    rpc: str
    steps: tuple[Step, ...]
    p99_ms: float

    @property
    def max_rate_within_budget(self) -> float:
        """Highest offered rate whose p99 stayed within budget (0: none did)."""
        ok = [s.offered_per_s for s in self.steps if s.within(self.p99_ms)]
        return max(ok, default=0.0)

    def to_dict(self) -> dict:
        return {"rpc": self.rpc, "p99_budget_ms": self.p99_ms,
                "max_rate_within_budget_per_s": self.max_rate_within_budget,
                "steps": [s.to_dict() for s in self.steps]}


def sweep(name: str, issue: Issue, config: OpenLoopConfig,
          progress: Callable[[str], None] = lambda _: None) -> Sweep:
    """Raise the rate step by step; stop after the first step outside the budget (twice)."""
    steps = []
    rate = config.start_rate
    start = 0
    for k in range(config.max_steps):
        progress(f"rpc: open loop {name} at {rate:,.0f}/s (step {k + 1}/{config.max_steps})")
        step = at_rate(issue, rate, config.step_seconds, start=start)
        start += int(rate * config.step_seconds) + 1
        if not step.within(config.p99_ms):  # one retry: a neighbour's burst is not our limit
            progress(f"rpc: open loop {name} at {rate:,.0f}/s (retry)")
            step = at_rate(issue, rate, config.step_seconds, start=start)
            start += int(rate * config.step_seconds) + 1
        steps.append(step)
        if not step.within(config.p99_ms):
            break
        rate *= config.growth
    return Sweep(name, tuple(steps), config.p99_ms)
