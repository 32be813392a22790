"""Closed-loop concurrent throughput: ``concurrency`` client threads each send the next call
as soon as the previous one answers.

Measured in short slices that alternate the floor (Echo) with the RPC under test, so a noisy
neighbour on the shared box slows both alike; the figure to read is the ratio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# prepare(i) -> a zero-argument blocking call; i is unique per call within one run.
Prepare = Callable[[int], Callable[[], object]]


@dataclass(frozen=True)
class Throughput:
    calls: int
    seconds: float
    errors: int

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


def closed_loop(prepare: Prepare, concurrency: int, seconds: float, start: int = 0) -> Throughput:
    """Calls answered per second by ``concurrency`` threads over ``seconds``."""
    stop = time.perf_counter() + seconds
    counts = [0] * concurrency
    errors = [0] * concurrency

    def worker(k: int) -> None:
        i = start + k * 10_000_000
        while time.perf_counter() < stop:
            call = prepare(i)
            i += 1
            try:
                call()
                counts[k] += 1
            except Exception:  # a failed call is counted, not fatal: the run reports it
                errors[k] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Throughput(sum(counts), time.perf_counter() - t0, sum(errors))


def interleaved_throughput(floor: Prepare, operations: dict[str, Prepare], concurrency: int,
                           seconds: float, slices: int = 4,
                           progress: Callable[[str], None] = lambda _: None,
                           ) -> dict[str, Throughput]:
    """Each operation's and the floor's throughput, measured in alternating slices.

    Every operation gets ``seconds`` in total, split into ``slices``; the floor gets one
    slice before each operation slice (so it is measured ``len(operations)`` times as long).
    """
    per_slice = seconds / slices
    totals: dict[str, list[float]] = {"Echo": [0, 0.0, 0], **{n: [0, 0.0, 0] for n in operations}}
    offset = 0
    for s in range(slices):
        for name, prepare in operations.items():
            progress(f"rpc: throughput {name} ×{concurrency}, slice {s + 1}/{slices}")
            for key, prep in (("Echo", floor), (name, prepare)):
                r = closed_loop(prep, concurrency, per_slice, start=offset)
                offset += 1_000_000_000
                totals[key][0] += r.calls
                totals[key][1] += r.seconds
                totals[key][2] += r.errors
    return {k: Throughput(int(c), float(t), int(e)) for k, (c, t, e) in totals.items()}
