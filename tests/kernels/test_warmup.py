"""Every kernel module is warmed before SERVING, so no request pays for compilation."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import nudge.kernels
from nudge.kernels.warmup import KERNEL_MODULES, warm_up_all


def test_every_module_with_kernels_is_warmed() -> None:
    with_kernels = set()
    for info in pkgutil.iter_modules(nudge.kernels.__path__):
        module = __import__(f"nudge.kernels.{info.name}", fromlist=["_"])
        source = Path(module.__file__).read_text()
        if "@njit" in source or "njit(" in source:
            with_kernels.add(module.__name__)
    assert with_kernels == set(KERNEL_MODULES)


def test_warm_up_all_calls_each_module() -> None:
    assert set(warm_up_all()) == set(KERNEL_MODULES)
