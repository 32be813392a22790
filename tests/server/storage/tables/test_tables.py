"""The table modules own the bytes: the layouts stay what stores already hold."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import orjson

from nudge.kernels import context as ctx
from nudge.kernels import learner as lrn
from nudge.kernels import risk_model, user_state
from nudge.server.storage.store import Store
from nudge.server.storage.tables import (
    contacts,
    deadlines,
    decisions,
    deliveries,
    meta,
    models,
    open_decisions,
    rewards,
    risk_baselines,
    triggered,
    users,
)
from nudge.server.storage.tables.codecs import encode_sparse


def test_key_layouts() -> None:
    assert open_decisions.key("u1", "d1") == b"u1\x00d1"
    key = deadlines.key(1.5, "d1")
    assert key == (1500).to_bytes(8, "big") + b"d1"
    assert deadlines.decision_id(key) == "d1"
    d = deliveries.Delivery("x1", "d1", "u1", "c", "sms", "m", "t", "o", due_at=2.0)
    assert d.index_key() == (2000).to_bytes(8, "big") + b"x1"
    assert deliveries.delivery_id(d.index_key()) == "x1"


def test_tables_round_trip_in_a_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dbs = store.dbs
    try:
        with store.write() as txn:
            open_decisions.add(txn, dbs, "u1", "d1")
            open_decisions.add(txn, dbs, "u10", "d2")
            deadlines.add(txn, dbs, 10.0, "d1")
            deadlines.add(txn, dbs, 30.0, "d2")
            assert rewards.append(txn, dbs, "d1") == 1
            assert rewards.append(txn, dbs, "d2") == 2
            contacts.add(txn, dbs, "u1", [(100.0, "sms", "c", "d1")], memory=50.0)
            contacts.add(txn, dbs, "u1", [(100.0, "sms", "c", "d1"), (200.0, "push", "c", "d2")],
                         memory=150.0)
            triggered.put(txn, dbs, "u1", "e1", 0, {"campaign": "c"})
        with store.read() as txn:
            assert open_decisions.of_user(txn, dbs, "u1") == ["d1"]
            assert deadlines.due(txn, dbs, 20.0, 10) == [deadlines.key(10.0, "d1")]
            assert list(rewards.since(txn, dbs, 2)) == [(2, "d2")]
            assert rewards.last(txn, dbs) == 2
            assert contacts.rows(txn, dbs, "u1") == [[100.0, "sms", "c", "d1"],
                                                     [200.0, "push", "c", "d2"]]
            assert triggered.pending(txn, dbs) == [(b"u1\x00e1\x000", {"campaign": "c"})]
    finally:
        store.close()


def test_model_codec_round_trips() -> None:
    snapshot = lrn.initial_snapshot(3, 2, 1.0)
    stats = ctx.ContextStats(mean=np.zeros(2), var=np.ones(2), count=np.zeros(2))
    stored = models.decode(models.encode(snapshot, stats, ["bias", "f"], ["a", "b", "c"]))
    assert stored.features == ["bias", "f"] and stored.components == ["a", "b", "c"]
    np.testing.assert_array_equal(stored.snapshot.mean_t, snapshot.mean_t)
    np.testing.assert_array_equal(stored.stats.var, stats.var)
    assert stored.snapshot.version == snapshot.version


def test_model_codec_keeps_the_priors_and_the_shared_intercept() -> None:
    snapshot = dataclasses.replace(lrn.initial_snapshot(3, 2, 0.5, 4.0), offset=-3.2,
                                   offset_var=0.01)
    stats = ctx.ContextStats(mean=np.zeros(1), var=np.ones(1), count=np.zeros(1))
    back = models.decode(models.encode(snapshot, stats, ["bias", "f"], ["a", "b", "c"]))
    s = back.snapshot
    assert (s.prior_precision, s.slope_precision, s.offset, s.offset_var) == (0.5, 4.0, -3.2,
                                                                              0.01)
    # A model stored before either (one prior, no intercept) reads with both defaulted.
    buffer = io.BytesIO()
    old = {k: v for k, v in np.load(io.BytesIO(models.encode(snapshot, stats, ["bias", "f"],
                                                             ["a", "b", "c"]))).items()
           if k not in ("offset", "component_prior")}
    old["prior"] = np.array([0.5])
    np.savez(buffer, **old)
    s = models.decode(buffer.getvalue()).snapshot
    assert (s.prior_precision, s.slope_precision, s.offset) == (0.5, 0.5, 0.0)
    np.testing.assert_array_equal(s.prior, np.full((3, 2), 0.5))


def test_model_codec_keeps_a_learned_prior_per_component() -> None:
    prior = np.array([[0.5, 4.0], [0.5, 17.0], [0.5, 0.25]])
    snapshot = dataclasses.replace(lrn.initial_snapshot(3, 2, 0.5, 4.0), prior=prior)
    stats = ctx.ContextStats(mean=np.zeros(1), var=np.ones(1), count=np.zeros(1))
    back = models.decode(models.encode(snapshot, stats, ["bias", "f"], ["a", "b", "c"]))
    np.testing.assert_array_equal(back.snapshot.prior, prior)


def test_user_records_are_sparse_and_dense_ones_still_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    new_user = np.zeros(user_state.RECORD_LEN)
    new_user[[0, 1, 2, 3, 20, 84, 148, 230]] = rng.normal(size=8)
    new_user[5] = np.nan  # kept as a value, not dropped as zero
    full = rng.normal(size=user_state.RECORD_LEN)  # every slot set: stored dense
    for state in (new_user, full, np.zeros(user_state.RECORD_LEN)):
        raw = users.encode_record(state)
        assert len(raw) <= user_state.RECORD_BYTES
        back = users.decode_record(raw)
        assert back.flags.writeable
        np.testing.assert_array_equal(back, state)
    assert len(users.encode_record(new_user)) == 29 + 9 * 8
    assert len(users.encode_record(full)) == user_state.RECORD_BYTES
    store = Store(tmp_path)
    try:
        with store.write() as txn:  # a record as schema version 1 wrote it
            txn.put(b"old", new_user.tobytes(), db=store.dbs[users.USERS])
        with store.read() as txn:
            np.testing.assert_array_equal(users.record(txn, store.dbs, "old"), new_user)
    finally:
        store.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.write() as txn:
        txn.put(meta.SCHEMA_KEY, b"1", db=store.dbs[meta.NAME])
    store.close()
    store = Store(tmp_path)
    try:
        with store.read() as txn:
            assert meta.schema_version(txn, store.dbs) == meta.SCHEMA_VERSION
    finally:
        store.close()


def test_risk_baselines_are_sparse_and_dense_ones_still_read(tmp_path: Path) -> None:
    state = risk_model.new_user_state()
    state[[3, 40, 200]] = [2.5, -3.0, 4.0]
    legacy = np.zeros(326)  # the surprisal model's layout (version 1): never read as state
    legacy[[0, 3]] = [1.0, 2.0]
    store = Store(tmp_path)
    try:
        with store.write() as txn:
            risk_baselines.put_baseline(txn, store.dbs, "new", state)
            txn.put(b"dense", state.tobytes(), db=store.dbs[risk_baselines.NAME])
            txn.put(b"legacy-dense", legacy.tobytes(), db=store.dbs[risk_baselines.NAME])
            txn.put(b"legacy-sparse", encode_sparse(legacy), db=store.dbs[risk_baselines.NAME])
        with store.read() as txn:
            raw = txn.get(b"new", db=store.dbs[risk_baselines.NAME])
            nonzero = int((state != 0).sum())
            assert len(raw) == (risk_model.USER_LEN + 7) // 8 + nonzero * 8
            for user in ("new", "dense"):
                np.testing.assert_array_equal(risk_baselines.baseline(txn, store.dbs, user),
                                              state)
            for user in ("legacy-dense", "legacy-sparse"):
                assert risk_baselines.baseline(txn, store.dbs, user) is None
                assert risk_baselines.stored(txn, store.dbs, user)
    finally:
        store.close()


def test_risk_version_2_rows_read_migrated(tmp_path: Path) -> None:
    """Customers and the population stored before the takeover-episode filter (layout
    version 2, shorter rows) read back in the current layout with all they learned."""
    old = np.zeros(risk_model.USER_LEN_V2)
    old[[0, 1, 40, 200]] = [risk_model.PREV_MODEL_VERSION, 7.0, -3.0, 4.0]
    old_pop = np.zeros(risk_model.POP_LEN_V2)
    old_pop[[0, 5, 900]] = [risk_model.PREV_MODEL_VERSION, 2.0, 3.0]
    store = Store(tmp_path)
    try:
        with store.write() as txn:
            risk_baselines.put_baseline(txn, store.dbs, "sparse", old)
            txn.put(b"dense", old.tobytes(), db=store.dbs[risk_baselines.NAME])
            txn.put(risk_baselines.POPULATION_KEY, old_pop.tobytes(),
                    db=store.dbs[risk_baselines.META])
        with store.read() as txn:
            for user in ("sparse", "dense"):
                state = risk_baselines.baseline(txn, store.dbs, user)
                assert state is not None and state.shape == (risk_model.USER_LEN,)
                np.testing.assert_array_equal(state, risk_model.migrate_user_state(old))
            pop = risk_baselines.population(txn, store.dbs)
            assert pop is not None
            np.testing.assert_array_equal(pop, risk_model.migrate_population_state(old_pop))
    finally:
        store.close()


def _decision(x: object, raw: object, status: str = "open") -> decisions.DecisionRecord:
    return decisions.DecisionRecord(
        "d1", "u1", "c", 100.0, "v1", 7, x, raw, 3, [3, 1], 0.25, 0, False, "", [("a", "b")],
        200.0, status=status, actions=[{"message": "m", "score": 0.5}], messages=1)


def _as_json(record: decisions.DecisionRecord) -> bytes:
    """A record as stores wrote it before the binary format (every field JSON, NaN null)."""
    return orjson.dumps(record.__dict__, option=orjson.OPT_SERIALIZE_NUMPY)


def test_decision_records_store_the_context_as_float64_bytes_and_read_back_bit_for_bit(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    x = rng.normal(size=36) * 10.0 ** rng.integers(-300, 300, size=36)
    raw = rng.normal(size=37)
    raw[[0, 5, 36]] = np.nan
    record = _decision(x, raw)
    stored = record.to_bytes()
    assert stored[0] == decisions.FORMAT_BINARY
    n_x, n_raw = int.from_bytes(stored[1:5], "little"), int.from_bytes(stored[5:9], "little")
    assert (n_x, n_raw) == (36, 37)
    assert stored[9:9 + 8 * 36] == x.astype("<f8").tobytes()
    assert len(stored) < len(_as_json(record)) * 0.75  # text floats were most of the bytes
    back = decisions.DecisionRecord.from_bytes(stored)
    assert back.x == x.tolist()  # every bit (== on floats; no NaN in x)
    assert back.raw[1:5] == raw[1:5].tolist() and back.raw[0] is None and back.raw[36] is None
    assert back.trace == [("a", "b")] and back.actions == record.actions
    meta_fields = decisions.decode_meta(stored)
    assert "x" not in meta_fields and meta_fields["status"] == "open"
    assert meta_fields["user_id"] == "u1" and meta_fields["time"] == 100.0
    # A loaded record (lists, None for missing) stored again is the same bytes.
    assert back.to_bytes() == stored


def test_decision_records_stored_as_json_still_read_as_the_binary_ones_do(
        tmp_path: Path) -> None:
    raw = np.array([1.5, np.nan, -2.0, np.inf])
    record = _decision(np.array([1.0, 0.1, 3e-9]), raw, status="settled")
    old, new = _as_json(record), record.to_bytes()
    assert old[:1] == b"{" and new[:1] != b"{"
    assert decisions.decode(old) == decisions.decode(new)
    assert decisions.decode(new)["raw"] == [1.5, None, -2.0, None]  # as JSON stores them
    assert decisions.DecisionRecord.from_bytes(old) == decisions.DecisionRecord.from_bytes(new)
    assert decisions.decode_meta(old)["status"] == decisions.decode_meta(new)["status"]
    store = Store(tmp_path)
    dbs = store.dbs
    try:
        with store.write() as txn:
            txn.put(b"d1", old, db=dbs[decisions.NAME])
            other = _decision([2.0], [None])
            other.decision_id, other.user_id = "d2", "u2"
            decisions.put(txn, dbs, other)
            # The settled JSON record is not reopened by a stale open copy.
            stale = _decision([1.0], [1.0])
            assert decisions.put_new(txn, dbs, [stale]) == [False]
        with store.read() as txn:
            assert decisions.get(txn, dbs, "d1") == decisions.DecisionRecord.from_bytes(old)
            assert decisions.get_fields(txn, dbs, "d2")["x"] == [2.0]  # type: ignore[index]
            assert decisions.get_meta(txn, dbs, "d2") == {  # type: ignore[union-attr]
                k: v for k, v in decisions.get_fields(txn, dbs, "d2").items()  # type: ignore[union-attr]
                if k not in ("x", "raw")}
            assert decisions.get_meta(txn, dbs, "d1")["status"] == "settled"  # type: ignore[index]
            by_id = {f["decision_id"]: f for f in decisions.stored_fields(txn, dbs)}
            assert by_id["d1"]["raw"] == [1.5, None, -2.0, None]
            assert by_id["d2"]["raw"] == [None]
            assert decisions.of_user(txn, dbs, "u2") == ["d2"]
            assert decisions.of_user(txn, dbs, "u1") == ["d1"]
            assert decisions.settled_before(txn, dbs, b"", 10, 150.0) == (["d1"], b"")
    finally:
        store.close()
