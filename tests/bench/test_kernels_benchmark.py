"""The kernel cases under pytest-benchmark itself, grouped by kernel.

Benchmarks are disabled in the default run (``--benchmark-disable``: each case runs once, as a
test); time them with ``pytest tests/bench/test_kernels_benchmark.py --benchmark-enable``
(sizes: ``nudge bench kernels`` takes them as options).
"""

from __future__ import annotations

import pytest

from nudge.bench import kernels_bench

CONFIG = kernels_bench.KernelsConfig(ingest_batches=(1, 100), policy_combos=(20, 200, 3600),
                                     policy_modes=("squarecb",), learner_batch=50,
                                     risk_batch=2_000)
CASES = list(kernels_bench.cases(CONFIG))


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    kernels_bench.warm_up()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel(benchmark, case: kernels_bench.KernelCase) -> None:
    prepared = case.prepare()  # expensive set-up outside the timed call
    benchmark.group = case.group
    benchmark.extra_info["items_per_call"] = prepared.items_per_call
    if prepared.reset is None:
        benchmark(prepared.call)
    else:
        benchmark.pedantic(prepared.call, setup=prepared.reset, rounds=5)
