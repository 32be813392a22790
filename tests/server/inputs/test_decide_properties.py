"""Decide's own numbers and strings: the quick all-valid path never lets through what
the field-by-field rules refuse, on random property sets around every limit."""

from __future__ import annotations

import math
import random

import pytest

from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import (
    MAX_KEY_BYTES,
    MAX_STRING_BYTES,
    _plainly_valid,
    check_properties,
)


def slow_rules(numbers: dict[str, float], strings: dict[str, str]) -> bool:
    """The rules spelled out one value at a time (True: valid)."""
    keys = [*numbers, *strings]
    return (all(0 < len(k.encode()) <= MAX_KEY_BYTES for k in keys)
            and all(math.isfinite(v) for v in numbers.values())
            and all(len(s.encode()) <= MAX_STRING_BYTES for s in strings.values()))


def random_text(rng: random.Random, limit: int) -> str:
    length = rng.choice([0, 1, limit // 4, limit // 4 + 1, limit // 2, limit, limit + 1])
    alphabet = rng.choice(["abc", "é", "€", "😀", "a€😀"])
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("seed", range(4))
def test_quick_path_agrees_with_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        numbers = {random_text(rng, MAX_KEY_BYTES): rng.choice(
            [0.0, 1.5, -2.0, math.inf, -math.inf, math.nan]) for _ in range(rng.randint(0, 4))}
        strings = {random_text(rng, MAX_KEY_BYTES): random_text(rng, MAX_STRING_BYTES)
                   for _ in range(rng.randint(0, 3))}
        valid = slow_rules(numbers, strings)
        if _plainly_valid(numbers, strings):
            assert valid
        if valid:
            check_properties(numbers, strings)
        else:
            with pytest.raises(InvalidArgument):
                check_properties(numbers, strings)
