"""validate_transaction's quick checks accept exactly what the full ones do."""

from __future__ import annotations

import random

import pytest

from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import check_id
from nudge.server.inputs.transactions import COUNTRY, CURRENCY, _id_ok, _upper_code

ALPHABET = "ABCZabcz09 _-\n\x00ÀÉßǅ€😀"


def _checked(value: str) -> bool:
    try:
        check_id(value, "id")
    except InvalidArgument:
        return False
    return True


def test_quick_checks_equal_the_full_ones_on_random_strings() -> None:
    rng = random.Random(17)
    for _ in range(20_000):
        code = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))
        assert _upper_code(code, 3) == bool(CURRENCY.fullmatch(code)), code
        assert _upper_code(code, 2) == bool(COUNTRY.fullmatch(code)), code
        n = rng.choice([0, 1, 31, 32, 33, 42, 43, 127, 128, 129])
        ident = "".join(rng.choice(ALPHABET if rng.random() < 0.3 else "ab")
                        for _ in range(n))
        assert _id_ok(ident) == _checked(ident), repr(ident)


@pytest.mark.parametrize("value", ["x" * 128, "é" * 64, "😀" * 32])
def test_ids_at_the_byte_limit_pass(value: str) -> None:
    assert _id_ok(value) and _checked(value)
    assert not _id_ok(value + "x") and not _checked(value + "x")
