"""ScoreTransaction reads the store before taking the risk engine's lock; what it read is
used only while no overlay entry has left since (a commit drops them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.server.inputs.transactions import ValidTransaction
from nudge.server.risk.engine import RiskEngine
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store


def _tx(transaction_id: str, user_id: str = "u1", amount: float = 20.0) -> ValidTransaction:
    return ValidTransaction(transaction_id, user_id, amount, "BRL", "5411", "BR", "", "d1",
                            1_800_000_000.0, local_hour=12.0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[RiskEngine]:
    store = Store(tmp_path / "data")
    writer = EventWriter(store, 86_400.0)
    engine = RiskEngine(store, writer)
    yield engine
    engine.close()
    writer.close()
    store.close()


def test_a_commit_between_the_reads_and_the_lock_is_not_missed(engine: RiskEngine) -> None:
    (first,) = engine.score([_tx("t1")])
    ahead = engine._read_ahead(_tx("t2"))  # the overlay holds u1's row: not read
    engine.flush()  # stored, then dropped from the overlay
    assert not engine._still_valid(ahead, _tx("t2"))
    # The score itself reads again in the lock: the row learned from t1 is there.
    (second,) = engine.score([_tx("t2")])
    assert second.baseline_count == first.baseline_count + 1


def test_reads_stay_valid_while_nothing_leaves_the_overlay(engine: RiskEngine) -> None:
    engine.score([_tx("t1")])
    engine.flush()
    ahead = engine._read_ahead(_tx("t2"))  # from the store now
    engine.score([_tx("x1", user_id="u2")])  # another user's score adds, drops nothing
    assert engine._still_valid(ahead, _tx("t2"))
    (again,) = engine.score([_tx("t1")])  # a replay answers its first answer
    assert again.baseline_count == 0
    (second,) = engine.score([_tx("t2")])
    assert second.baseline_count == 1
