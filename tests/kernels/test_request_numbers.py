"""kernels/request_numbers.py against the dict path it replaces in Decide: the request
parsed by protobuf, its numbers copied to a dict, checked by ``_plainly_valid`` and picked
by name (NaN where absent), on random requests, merged requests (a later entry for a key
wins) and cut-off bytes."""

from __future__ import annotations

import math

import numpy as np

from nudge.kernels import request_numbers as kernel
from nudge.kernels.request_numbers import name_table, request_numbers
from nudge.server.inputs import events
from nudge.server.inputs.events import _SHORT_KEY, _plainly_valid
from nudge.v1 import decision_service_pb2 as pb

NAMES = ("z00", "z01", "amount", "é_score", "k" * _SHORT_KEY, "x")
FIELD = pb.DecideRequest.DESCRIPTOR.fields_by_name["numbers"].number


def _key(rng: np.random.Generator) -> str:
    kind = rng.integers(6)
    if kind < 3:
        return str(NAMES[rng.integers(len(NAMES))])
    if kind == 3:
        return "".join(rng.choice(list("abcdé€z0_"), size=rng.integers(0, 8)))
    if kind == 4:  # around the plain key length, in bytes and in characters
        return "é" * int(rng.integers(_SHORT_KEY // 2 - 1, _SHORT_KEY + 2))
    return "q" * int(rng.integers(_SHORT_KEY - 1, _SHORT_KEY + 3))


def _value(rng: np.random.Generator) -> float:
    kind = rng.integers(16)
    special = (math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1e18, -1e18,
               np.nextafter(1e18, math.inf), -1.7e308)
    return special[kind] if kind < len(special) else float(rng.normal(scale=1e3))


def _request(rng: np.random.Generator) -> pb.DecideRequest:
    request = pb.DecideRequest(user_id="u" * int(rng.integers(0, 300)),
                               campaign="c", top_k=int(rng.integers(-3, 5)),
                               dry_run=bool(rng.integers(2)))
    if rng.integers(2):
        request.time.seconds, request.time.nanos = int(rng.integers(1 << 40)), 7
    if rng.integers(4) == 0:
        request.strings["s"] = "v"  # another map: skipped by the pass
    for _ in range(int(rng.integers(0, 40))):
        request.numbers[_key(rng)] = _value(rng)
    return request


def _reference(wire: bytes) -> tuple[bool, list[float], int]:
    """What Decide's dict path makes of these bytes: plainly valid?, the values by name."""
    numbers = dict(pb.DecideRequest.FromString(wire).numbers.items())
    return (_plainly_valid(numbers, {}), [numbers.get(n, math.nan) for n in NAMES],
            len(numbers))


def _kernel(wire: bytes) -> tuple[int, np.ndarray]:
    names, at, slots = name_table(NAMES)
    out = np.full(len(NAMES), 123.0)
    return request_numbers(np.frombuffer(wire, np.uint8), FIELD, names, at, slots,
                           _SHORT_KEY, out), out


def _same(a: list[float], b: np.ndarray) -> bool:
    return np.array_equal(np.array(a).view(np.uint64), b.view(np.uint64)) or all(
        (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) ==
                                              math.copysign(1, y))
        for x, y in zip(a, b.tolist(), strict=True))


def test_numbers_match_the_dict_path_on_random_and_merged_requests() -> None:
    rng = np.random.default_rng(17)
    taken = 0
    for i in range(3_000):
        wire = _request(rng).SerializeToString()
        if i % 3 == 0:  # protobuf merges concatenated messages: later map entries win
            wire += _request(rng).SerializeToString()
        valid, values, unique = _reference(wire)
        count, out = _kernel(wire)
        if count >= 0:
            taken += 1
            assert valid, wire  # only what the dict path passes
            assert count >= unique
            assert _same(values, out), (values, out)
        elif valid:
            # Refused although the dict path passes: a key of at most _SHORT_KEY characters
            # but more bytes, or (merged) an entry breaking a rule that a later one replaced.
            keys = pb.DecideRequest.FromString(wire).numbers
            assert i % 3 == 0 or any(len(k.encode()) > _SHORT_KEY for k in keys)
    assert taken > 100  # the all-plain case is the next test's


def test_every_plainly_valid_map_is_read() -> None:
    rng = np.random.default_rng(3)
    for _ in range(1_000):
        request = pb.DecideRequest(user_id="u", campaign="c")
        for _ in range(int(rng.integers(0, 40))):
            request.numbers[str(NAMES[rng.integers(len(NAMES))]) if rng.integers(2)
                            else f"n{rng.integers(100)}"] = float(rng.normal())
        count, out = _kernel(request.SerializeToString())
        assert count == len(request.numbers)
        assert _same([request.numbers.get(n, math.nan) for n in NAMES], out)


def test_cut_off_bytes_are_refused_or_read_without_reading_past_the_end() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        wire = _request(rng).SerializeToString()
        cut = wire[: int(rng.integers(0, len(wire) + 1))]
        count, out = _kernel(cut)
        assert count >= -1
        if count >= 0:  # a cut that happens to end between fields is a message too
            valid, values, _ = _reference(cut)
            assert valid and _same(values, out)


def test_a_large_name_table_finds_every_name_and_nothing_else() -> None:
    """Many names share hash slots: each is still found, and near misses are not."""
    names = (*(f"n{j}" for j in range(150)), "", "n", "n1 ")
    table = name_table(names)
    rng = np.random.default_rng(9)
    for _ in range(200):
        request = pb.DecideRequest()
        for j in rng.choice(len(names) - 3, size=int(rng.integers(1, 60)), replace=False):
            request.numbers[names[j]] = float(j)
        request.numbers["n1000"] = -1.0  # not a name
        out = np.empty(len(names))
        count = request_numbers(np.frombuffer(request.SerializeToString(), np.uint8),
                                FIELD, *table, _SHORT_KEY, out)
        assert count == len(request.numbers)
        expected = [request.numbers.get(n, math.nan) for n in names]
        assert _same(expected, out)


def test_the_kernel_bounds_numbers_as_the_event_rules_do() -> None:
    assert kernel.MAX_NUMBER == events.MAX_NUMBER
    for value, taken in ((1e18, True), (-1e18, True), (float(np.nextafter(1e18, 2e18)), False),
                         (-1.7e308, False)):
        count, _ = _kernel(pb.DecideRequest(numbers={"x": value}).SerializeToString())
        assert (count == 1) == taken
