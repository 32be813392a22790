"""Joining nodes' insights summaries (server/offline/insights_merge.py): key ids differ per
node and are mapped by name; every user's entries are kept as they were."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.server.offline.insights_merge import merge_parts, part_from_bytes
from nudge.server.storage.tables.insights import ENTRY


def _entries(rows: list[tuple[int, int, int, float]]) -> np.ndarray:
    return np.array(rows, dtype=ENTRY)


def test_key_ids_are_mapped_by_name_and_users_kept_whole() -> None:
    a = part_from_bytes(["app_opened", "card_added"],
                        np.array([2, 1], "<u4").tobytes(),
                        _entries([(10, 0, 1, 0.0), (11, 1, 2, 5.0), (12, 0, 1, 0.0)]).tobytes())
    b = part_from_bytes(["card_added", "loan_completed", "app_opened"],
                        np.array([3], "<u4").tobytes(),
                        _entries([(20, 2, 1, 0.0), (21, 0, 1, 0.0), (22, 1, 1, 9.5)]).tobytes())
    pop = merge_parts([a, b])
    assert pop.n_users == 3
    np.testing.assert_array_equal(pop.offsets, [0, 2, 3, 6])
    names = [pop.names[k] for k in pop.keys]
    assert names == ["app_opened", "card_added", "app_opened",
                     "app_opened", "card_added", "loan_completed"]
    np.testing.assert_array_equal(pop.hours, [10, 11, 12, 20, 21, 22])
    np.testing.assert_array_equal(pop.counts, [1, 2, 1, 1, 1, 1])
    np.testing.assert_allclose(pop.amounts, [0, 5, 0, 0, 0, 9.5])
    assert merge_parts([]).n_users == 0


def test_a_malformed_part_is_refused() -> None:
    one = _entries([(1, 0, 1, 0.0)]).tobytes()
    with pytest.raises(ValueError, match="add up"):
        part_from_bytes(["a"], np.array([2], "<u4").tobytes(), one)
    with pytest.raises(ValueError, match="whole"):
        part_from_bytes(["a"], np.array([1], "<u4").tobytes(), one[:-1])
    with pytest.raises(ValueError, match="named"):
        part_from_bytes([], np.array([1], "<u4").tobytes(), one)
