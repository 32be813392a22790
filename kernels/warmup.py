"""Compile (or load from cache) and call every kernel once, before the server says SERVING."""

from __future__ import annotations

import importlib
import time

# Every module with kernels; each has a ``warm_up()`` calling each kernel signature once.
KERNEL_MODULES = (
    "nudge.kernels.user_state",
    "nudge.kernels.sparse_codec",
    "nudge.kernels.user_state_wire",
    "nudge.kernels.risk_model",
    "nudge.kernels.context",
    "nudge.kernels.user_context",
    "nudge.kernels.learner",
    "nudge.kernels.rng",
    "nudge.kernels.policy",
    "nudge.kernels.contributions",
    "nudge.kernels.insights",
    "nudge.kernels.request_numbers",
)


def warm_up_all() -> dict[str, float]:
    """Warm every kernel module; returns seconds spent per module."""
    spent: dict[str, float] = {}
    for name in KERNEL_MODULES:
        start = time.perf_counter()
        importlib.import_module(name).warm_up()
        spent[name] = time.perf_counter() - start
    return spent
