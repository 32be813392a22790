"""Decision ids and policy seeds drawn one at a time (Decide) and many at once
(DecideBatch): the same form, UUID4 hex ids and 63-bit seeds, never repeated."""

from __future__ import annotations

import uuid

from nudge.server.decisions.engine import _IdPool


def test_ids_drawn_many_at_once_are_uuid4_with_63_bit_seeds() -> None:
    pool = _IdPool()
    drawn = [pool.take() for _ in range(600)] + pool.take_many(2_000) + pool.take_many(1)
    for decision_id, seed in drawn:
        parsed = uuid.UUID(hex=decision_id)
        assert parsed.hex == decision_id and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert isinstance(seed, int) and 0 <= seed < 2**63
    assert len({d for d, _ in drawn}) == len(drawn)
    seeds = [s for _, s in pool.take_many(4_000)]
    assert max(seeds) >= 2**62  # the top bit of the 63 is drawn too
