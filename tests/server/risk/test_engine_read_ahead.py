"""ScoreTransaction reads the store before taking the risk engine's lock; what it read is
used only while no overlay entry has left since (a commit drops them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


def _engine(path: Path) -> tuple[Store, EventWriter, RiskEngine]:
    store = Store(path)
    writer = EventWriter(store, 86_400.0)
    return store, writer, RiskEngine(store, writer)


def test_a_row_read_back_is_taken_decoded_only_when_its_bytes_are_stored(
        engine: RiskEngine) -> None:
    """The decoded-row cache: a read-ahead that finds in the store exactly the bytes this
    engine last stored for the user takes a writable copy of their decoding; any other
    bytes there (written behind its back) are decoded as they are."""
    from nudge.server.storage.tables import risk_baselines

    engine.score([_tx("t1")])
    engine.flush()
    raw, cached = engine._decoded["u1"]
    ahead = engine._read_ahead(_tx("t2"))
    assert isinstance(ahead.state, np.ndarray)
    assert ahead.state is not cached and ahead.state.flags.writeable
    with engine.store.read() as txn:
        stored = risk_baselines.baseline(txn, engine.store.dbs, "u1")
        assert bytes(risk_baselines.stored_bytes(txn, engine.store.dbs, "u1")) == raw
    assert stored is not None and ahead.state.tobytes() == stored.tobytes()
    # Another row stored behind the engine's back (another worker, an import): not the
    # cached one, so it is decoded.
    other = stored.copy()
    other[5] += 1.0
    engine.writer.submit_job(
        lambda txn: risk_baselines.put_baseline(txn, engine.store.dbs, "u1", other)).result()
    ahead = engine._read_ahead(_tx("t3"))
    assert isinstance(ahead.state, np.ndarray)
    assert ahead.state.tobytes() == other.tobytes()
    # Erased behind its back: nothing is read, whatever the cache holds.
    engine.writer.submit_job(
        lambda txn: risk_baselines.delete(txn, engine.store.dbs, "u1")).result()
    assert engine._read_ahead(_tx("t4")).state is None


def test_scores_with_the_decoded_rows_equal_scores_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two engines on twin stores score the same random transactions, flushing between
    some; one forgets its decoded rows before every score: every answer and every stored
    row is the same."""
    from nudge.server.storage.tables import risk_baselines

    rng = np.random.default_rng(11)
    decodes: list[int] = []
    decode = risk_baselines.decode_baseline

    def counted(raw: bytes) -> np.ndarray | None:
        decodes.append(1)
        return decode(raw)

    monkeypatch.setattr(risk_baselines, "decode_baseline", counted)
    decoded_by = [0, 0]  # rows decoded while scoring: cached, plain
    pairs = [_engine(tmp_path / name) for name in ("cached", "plain")]
    (_, _, cached), (_, _, plain) = pairs
    try:
        for i in range(300):
            user = f"u{rng.integers(0, 12)}"
            tx = ValidTransaction(f"t{i}", user, float(rng.exponential(40.0)), "BRL",
                                  str(rng.choice(["5411", "5812", "4111"])),
                                  str(rng.choice(["BR", "BR", "BR", "US"])), "",
                                  str(rng.choice(["d1", "d1", "d2"])),
                                  1_800_000_000.0 + 60.0 * i, local_hour=12.0)
            plain._decoded.clear()
            before = len(decodes)
            a = cached.score([tx])
            decoded_by[0] += len(decodes) - before
            before = len(decodes)
            b = plain.score([tx])
            decoded_by[1] += len(decodes) - before
            assert a == b, i
            if rng.random() < 0.5:
                cached.flush()
                plain.flush()
        assert decoded_by[0] < decoded_by[1] // 4  # the cache answered most reads
        assert decoded_by[1] > 50
        cached.flush()
        plain.flush()
        for u in range(12):
            rows = []
            for store, _, _ in pairs:
                with store.read() as txn:
                    raw = risk_baselines.stored_bytes(txn, store.dbs, f"u{u}")
                    rows.append(None if raw is None else bytes(raw))
            assert rows[0] == rows[1]
    finally:
        for store, writer, engine in pairs:
            engine.close()
            writer.close()
            store.close()
