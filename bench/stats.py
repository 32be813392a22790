"""Latency statistics shared by the benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Percentiles in microseconds over ``n`` samples."""

    n: int
    p50: float
    p90: float
    p99: float
    p999: float
    mean: float

    @classmethod
    def of(cls, seconds: list[float] | np.ndarray) -> Latency:
        us = np.asarray(seconds, dtype=np.float64) * 1e6
        p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
        return cls(int(us.size), float(p50), float(p90), float(p99), float(p999), float(us.mean()))

    def ratio_to(self, floor: Latency) -> dict[str, float]:
        return {k: getattr(self, k) / getattr(floor, k) for k in ("p50", "p90", "p99", "p999")}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
