"""The LMDB store and the group-committing writer, without gRPC."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest

from nudge.kernels import user_state as u
from nudge.server.errors import Internal, SchemaMismatch
from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.ingest import (
    MAX_CONSENT_CHANNELS,
    MAX_PROPERTY_TYPES,
    RESERVED_TYPE_SLOTS,
    EventWriter,
)
from nudge.server.storage.store import Store
from nudge.server.storage.tables.meta import SCHEMA_KEY

HALF_LIFE = 86_400.0


def ev(event_id: str, user: str = "u1", type: str = "app_opened", t: float = 1.7e9,
       amount: float = float("nan"), tz: str | None = None,
       consents: dict[str, bool] | None = None) -> ValidEvent:
    return ValidEvent(event_id, user, type, t, amount, tz, consents or {})


def write(store: Store, events: list[ValidEvent]) -> tuple[int, int]:
    writer = EventWriter(store, HALF_LIFE)
    try:
        result = writer.submit(events).result(timeout=30)
    finally:
        writer.close()
    return result.accepted, result.duplicates


def test_reopen_after_close_keeps_users_types_and_sequence(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert write(store, [ev("a"), ev("b", type="loan_simulated", amount=5000.0)]) == (2, 0)
    store.close()

    store = Store(tmp_path)
    view = store.get_user("u1")
    assert view is not None
    assert view.scalars[u.S_EVENT_COUNT] == 2
    assert set(store.type_slots) == {"app_opened", "loan_simulated"}
    assert view.totals[store.type_slots["loan_simulated"]] == 1
    assert view.scalars[u.S_AMOUNT_MEAN] == 5000.0
    assert store.next_sequence == 3
    assert write(store, [ev("a"), ev("c")]) == (1, 1)
    assert store.counts()["events"] == 3
    store.close()


def test_replayed_event_ids_change_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write(store, [ev("a", amount=10.0), ev("b")])
    before = store.get_user("u1")
    assert write(store, [ev("a", amount=99.0), ev("b"), ev("a")]) == (0, 3)
    after = store.get_user("u1")
    assert before is not None and after is not None
    np.testing.assert_array_equal(before.scalars, after.scalars)
    assert store.counts()["events"] == 2
    store.close()


def test_duplicate_within_one_batch_is_counted_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert write(store, [ev("a"), ev("a")]) == (1, 1)
    view = store.get_user("u1")
    assert view is not None and view.scalars[u.S_EVENT_COUNT] == 1
    store.close()


def test_map_grows_by_itself_when_full(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=1 << 16)
    events = [ev(f"e{i}", user=f"user-{i % 500}") for i in range(5_000)]
    assert write(store, events) == (5_000, 0)
    assert store.map_size() > 1 << 16
    assert store.counts()["users"] == 500
    assert store.counts()["seen"] == 5_000
    store.close()


def test_a_growing_store_makes_room_before_a_batch_instead_of_redoing_it(
    tmp_path: Path,
) -> None:
    # Each batch is 1,000 new users; the map starts at 64 KiB and must double many times.
    store = Store(tmp_path, map_size=1 << 16)
    writer = EventWriter(store, HALF_LIFE)
    try:
        first = [ev(f"e{i}", user=f"user-{i}") for i in range(1_000)]
        assert writer.submit(first).result(timeout=30).accepted == 1_000
        redone = writer.map_full_retries
        assert redone > 0  # the first batch found the map too small: nothing to go by yet
        for batch in range(1, 8):
            events = [ev(f"e{i}", user=f"user-{i}")
                      for i in range(batch * 1_000, (batch + 1) * 1_000)]
            assert writer.submit(events).result(timeout=30).accepted == 1_000
    finally:
        writer.close()
    # Grown ahead of each later batch (by what one commit grew it), never redone.
    assert writer.map_full_retries == redone
    assert store.counts()["users"] == 8_000
    store.close()


def test_the_writer_holds_its_turn_while_writing_and_not_after(tmp_path: Path) -> None:
    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE)
    seen: list[bool] = []
    writer.add_event_hook(lambda txn, events: seen.append(writer.turn.locked()) or None)
    try:
        assert writer.submit([ev("a")]).result(timeout=30).accepted == 1
        assert not writer.turn.locked()  # committed and answered: the turn is free
        with writer.turn:  # a caller holding it delays the next batch, does not lose it
            later = writer.submit([ev("b")])
            assert not later.done()
        assert later.result(timeout=30).accepted == 1
    finally:
        writer.close()
    assert seen == [True, True]
    store.close()


def test_after_a_bulk_batch_a_small_one_still_commits_without_filling(tmp_path: Path) -> None:
    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE, max_batch_events=8)
    try:
        bulk = [ev(f"b{i}", user=f"user-{i}") for i in range(8)]
        assert writer.submit(bulk).result(timeout=30).accepted == 8
        # The writer lets the next batch fill to half the largest, but not for ever.
        assert writer.submit([ev("lone")]).result(timeout=30).accepted == 1
        together = [writer.submit([ev(f"t{i}")]) for i in range(4)]
        assert [f.result(timeout=30).accepted for f in together] == [1, 1, 1, 1]
    finally:
        writer.close()
    assert store.counts()["seen"] == 13
    store.close()


def test_making_room_stops_at_max_map_size_without_failing(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=1 << 16, max_map_size=1 << 18)
    store.make_room(1 << 30)
    assert store.map_size() == 1 << 18
    store.make_room(1 << 30)  # at the limit: the write itself will say whether it fits
    assert store.map_size() == 1 << 18
    store.close()


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(SCHEMA_KEY, b"99")
    env.close()
    with pytest.raises(SchemaMismatch, match="schema version 99"):
        Store(tmp_path)


def test_data_without_schema_version_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write(store, [ev("a")])
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.delete(SCHEMA_KEY)
    env.close()
    with pytest.raises(SchemaMismatch, match="no schema version"):
        Store(tmp_path)


def test_profile_is_last_write_wins_by_event_time(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write(store, [
        ev("late", t=2_000.0, tz="Europe/Paris", consents={"push": False}),
        ev("early", t=1_000.0, tz="Asia/Tokyo", consents={"push": True, "sms": True}),
    ])
    view = store.get_user("u1")
    assert view is not None
    assert view.profile.tz == "Europe/Paris"
    assert view.profile.consents["push"] == (False, 2_000.0)
    assert view.profile.consents["sms"] == (True, 1_000.0)
    store.close()


def test_types_beyond_capacity_share_the_other_slot(tmp_path: Path) -> None:
    store = Store(tmp_path)
    events = [ev(f"e{i}", type=f"type_{i}") for i in range(u.N_TYPES + 5)]
    write(store, events)
    view = store.get_user("u1")
    assert view is not None
    # Types no campaign names stop short of the last slots (kept for campaign types).
    assert len(store.type_slots) == u.OTHER_TYPE_SLOT - RESERVED_TYPE_SLOTS
    assert view.totals[u.OTHER_TYPE_SLOT] == 6 + RESERVED_TYPE_SLOTS
    assert store.type_names()[u.OTHER_TYPE_SLOT] == "(other)"
    store.close()


def test_local_hour_uses_the_users_time_zone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # 2026-11-24 01:00 UTC is Monday 22:00 in São Paulo (UTC-3).
    t = 1_795_482_000.0
    write(store, [ev("tz", t=t - 60, tz="America/Sao_Paulo"), ev("a", t=t)])
    view = store.get_user("u1")
    assert view is not None
    assert view.hours[22] > 0 and view.hours[21] > 0
    assert view.hours[1] == 0
    store.close()


def test_profile_keeps_the_latest_properties_per_event_type(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = ev("a", type="loan_simulated", t=1_000.0)
    first.numbers, first.strings = {"amount": 5000.0}, {"currency": "USD"}
    older = ev("b", type="loan_simulated", t=500.0)
    older.numbers, older.strings = {"amount": 1.0}, {"currency": "EUR", "step": "x"}
    other = ev("c", type="flow_abandoned", t=2_000.0)
    other.strings = {"step": "documentation"}
    write(store, [first, older, other])
    view = store.get_user("u1")
    assert view is not None
    props = view.profile.properties()
    assert props == {"amount": 5000.0, "currency": "USD", "step": "documentation"}
    assert view.profile.properties(("loan_simulated",)) == {"amount": 5000.0, "currency": "USD"}
    store.close()


def test_profile_forgets_the_oldest_event_types_beyond_its_bound(tmp_path: Path) -> None:
    store = Store(tmp_path)
    events = []
    for i in range(MAX_PROPERTY_TYPES + 4):
        e = ev(f"e{i}", type=f"type_{i}", t=1_000.0 + i)
        e.numbers = {"i": float(i)}
        events.append(e)
    write(store, events)
    view = store.get_user("u1")
    assert view is not None
    kept = view.profile.last_properties
    assert len(kept) == MAX_PROPERTY_TYPES
    assert "type_0" not in kept and f"type_{MAX_PROPERTY_TYPES + 3}" in kept
    store.close()


def test_consent_channels_past_the_bound_are_not_recorded_known_ones_still_change(
    tmp_path: Path,
) -> None:
    """A producer writing a new consent channel per event cannot grow a profile without
    bound; a channel it already holds still follows last-write-wins (a revocation lands)."""
    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE)
    try:
        grants = [ev(f"g{i}", t=1_000.0 + i, consents={f"ch{i}": True})
                  for i in range(MAX_CONSENT_CHANNELS + 5)]
        writer.submit(grants[:40]).result(timeout=30)  # two commits: cached profile too
        writer.submit(grants[40:]).result(timeout=30)
        writer.submit([ev("revoke", t=5_000.0, consents={"ch0": False, "late": True})]
                      ).result(timeout=30)
        assert writer.consents_ignored == 6
    finally:
        writer.close()
    view = store.get_user("u1")
    assert view is not None
    consents = view.profile.consents
    assert len(consents) == MAX_CONSENT_CHANNELS
    assert set(consents) == {f"ch{i}" for i in range(MAX_CONSENT_CHANNELS)}
    assert consents["ch0"] == (False, 5_000.0)
    store.close()


def test_jobs_and_event_hooks_commit_with_the_events(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=1 << 16)
    writer = EventWriter(store, HALF_LIFE)
    hooked: list[list[str]] = []
    writer.add_event_hook(lambda txn, events: hooked.append([e.event_id for e in events]))
    big = b"x" * 3_000

    def job(txn) -> int:
        for i in range(40):  # overflows the 64 KiB map: the batch is retried after growing
            txn.put(f"job-{i}".encode(), big, db=store.dbs["meta"])
        return 7

    try:
        events = writer.submit([ev("a"), ev("b")])
        result = writer.submit_job(job)
        assert events.result(timeout=30).accepted == 2
        assert result.result(timeout=30) == 7
    finally:
        writer.close()
    assert hooked[-1] == ["a", "b"]
    with store.read() as txn:
        assert bytes(txn.get(b"job-39", db=store.dbs["meta"])) == big
    store.close()


def test_a_map_that_cannot_grow_refuses_writes_and_keeps_reads(tmp_path: Path) -> None:
    from nudge.server.errors import StoreFull

    store = Store(tmp_path, map_size=1 << 16, max_map_size=1 << 17)
    assert write(store, [ev("first")]) == (1, 0)
    writer = EventWriter(store, HALF_LIFE)
    try:
        big = [ev(f"e{i}", user=f"user-{i}") for i in range(5_000)]
        with pytest.raises(StoreFull, match="max_map_size"):
            writer.submit(big).result(timeout=30)
        assert writer.submit([ev("small")]).result(timeout=30).accepted == 1
    finally:
        writer.close()
    view = store.get_user("u1")
    assert view is not None and view.scalars[u.S_EVENT_COUNT] == 2
    assert store.map_size() == 1 << 17
    store.close()


def test_a_job_or_events_failing_inside_a_group_commit_fail_alone(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE)
    undone: list[str] = []

    def hook(txn, events):
        if any(e.user_id == "boom" for e in events):
            writer.on_abort(lambda: undone.append("boom"))  # in-memory effects roll back
            raise RuntimeError("a hook failed on this submission's events")

    writer.add_event_hook(hook)
    gate = threading.Event()
    try:
        held = writer.submit_job(lambda txn: gate.wait(10))  # the next ones share a batch
        bad_job = writer.submit_job(
            lambda txn: txn.put(b"k" * 600, b"", db=store.dbs["meta"]))
        good_job = writer.submit_job(
            lambda txn: "ok" if txn.put(b"good", b"1", db=store.dbs["meta"]) else "?")
        good_events = writer.submit([ev("e1", user="fine"), ev("e2", user="fine")])
        bad_events = writer.submit([ev("e3", user="boom")])
        more_events = writer.submit([ev("e4", user="fine", type="later_type")])
        gate.set()
        held.result(timeout=30)
        assert good_job.result(timeout=30) == "ok"
        assert good_events.result(timeout=30).accepted == 2
        assert more_events.result(timeout=30).accepted == 1
        # Neither would succeed if retried: INTERNAL, not UNAVAILABLE's "retry later".
        with pytest.raises(Internal, match="would fail again; server log reference"):
            bad_job.result(timeout=30)
        with pytest.raises(Internal):
            bad_events.result(timeout=30)
    finally:
        writer.close()
    assert undone and set(undone) == {"boom"}
    with store.read() as txn:
        assert bytes(txn.get(b"good", db=store.dbs["meta"])) == b"1"
    assert store.get_user("fine") is not None and store.get_user("boom") is None
    assert store.next_sequence == 4 and "later_type" in store.type_slots
    store.close()
    reopened = Store(tmp_path)
    assert reopened.next_sequence == 4
    reopened.close()


def test_store_files_are_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "data")
        write_ok = EventWriter(store, HALF_LIFE)
        write_ok.submit([ev("p1")]).result(timeout=30)
        write_ok.close()
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600, name


def test_named_types_always_have_a_slot_and_junk_never_evicts_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE)
    try:
        writer.name_types(["loan_completed", "app_opened"]).result(timeout=30)
        junk = [ev(f"j{i}", user="spammer", type=f"junk_{i}") for i in range(80)]
        writer.submit(junk).result(timeout=30)
        writer.submit([ev("g1", user="newcomer", type="loan_completed")]).result(timeout=30)
        slots = store.type_slots
        assert "loan_completed" in slots and slots["loan_completed"] != u.OTHER_TYPE_SLOT
        view = store.get_user("newcomer")
        assert view is not None and view.totals[slots["loan_completed"]] == 1
        # Unknown types stop at the limit, leaving room for campaigns loaded later.
        assert len(slots) <= u.OTHER_TYPE_SLOT - RESERVED_TYPE_SLOTS
        assert writer.other_events > 0
        # A campaign reloaded with a new type still finds a slot.
        writer.name_types(["loan_completed", "app_opened", "loan_renewed"]).result(timeout=30)
        assert store.type_slots["loan_renewed"] != u.OTHER_TYPE_SLOT
        # An admin resets the registry: the junk types' slots are freed and zeroed.
        removed = writer.reset_types().result(timeout=30)
        assert "junk_0" in removed and "loan_completed" not in removed
        assert set(store.type_slots) == {"loan_completed", "app_opened", "loan_renewed"}
        spam = store.get_user("spammer")
        assert spam is not None and spam.totals[: u.OTHER_TYPE_SLOT].sum() == 0
        writer.submit([ev("n1", type="new_kind")]).result(timeout=30)
        assert "new_kind" in store.type_slots
        freed = store.type_slots["new_kind"]
        assert store.get_user("u1").totals[freed] == 1
    finally:
        writer.close()
    store.close()
    reopened = Store(tmp_path)
    assert "junk_0" not in reopened.type_slots and "new_kind" in reopened.type_slots
    reopened.close()


def test_a_version_2_store_is_migrated_in_place_at_open(tmp_path: Path) -> None:
    """Versions 1 and 2 kept event and transaction ids global; version 3 keys them by
    user. Opening a version 2 store rewrites those keys in one transaction."""
    from nudge.server.storage.tables import events as event_table
    from nudge.server.storage.tables import meta
    from nudge.server.storage.tables import transactions as tx_table
    from nudge.server.storage.tables.transactions import TransactionRecord
    from nudge.v1 import event_pb2

    store = Store(tmp_path)
    record = TransactionRecord("ana", 0.1, [], 3, False, True)
    with store.env.begin(write=True) as txn:  # the version 2 layout, byte for byte
        for seq, (event_id, user) in enumerate([("e-1", "ana"), ("e-2", "bea")], start=1):
            payload = event_pb2.Event(event_id=event_id, user_id=user, type="app_opened")
            txn.put(seq.to_bytes(8, "big"), payload.SerializeToString(),
                    db=store.dbs[event_table.EVENTS])
            txn.put(event_id.encode(), seq.to_bytes(8, "big"), db=store.dbs[event_table.SEEN])
        txn.put(b"t-1", record.to_bytes(), db=store.dbs[tx_table.NAME])
        txn.put(meta.SCHEMA_KEY, b"2", db=store.dbs[meta.NAME])
    store.close()
    store = Store(tmp_path)
    with store.read() as txn:
        assert meta.schema_version(txn, store.dbs) == meta.SCHEMA_VERSION == 3
        assert event_table.seen(txn, store.dbs, "ana", "e-1")
        assert event_table.seen(txn, store.dbs, "bea", "e-2")
        assert not event_table.seen(txn, store.dbs, "bea", "e-1")
        assert tx_table.get(txn, store.dbs, ("ana", "t-1")) == record
        assert tx_table.get(txn, store.dbs, ("bea", "t-1")) is None
        assert txn.get(b"t-1", db=store.dbs[tx_table.NAME]) is None
    writer = EventWriter(store, HALF_LIFE)
    try:
        assert writer.submit([ev("e-1", user="ana")]).result(timeout=30).duplicates == 1
        assert writer.submit([ev("e-1", user="bea")]).result(timeout=30).accepted == 1
    finally:
        writer.close()
    store.close()


def _table(store: Store, name: str) -> dict[bytes, bytes]:
    with store.env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=store.dbs[name])}


def test_a_long_lived_writer_stores_what_a_fresh_writer_per_commit_does(
        tmp_path: Path) -> None:
    """The writer keeps state between commits (the state matrix's rows, cached profiles):
    commits of 300, then 7, then 120 events, mixing new users with returning ones whose
    profiles change, store exactly the bytes that a new writer for each commit stores."""
    rng = np.random.default_rng(17)

    def commit_events(c: int, size: int) -> list[ValidEvent]:
        out = []
        for i in range(size):
            user = f"u{rng.integers(0, 200)}"
            e = ev(f"c{c}-{i}", user=user, type=["app_opened", "loan_simulated"][i % 2],
                   t=1.7e9 + c * 100 + i, amount=float(rng.integers(1, 900)),
                   tz=["Europe/Paris", None, "America/Sao_Paulo"][i % 3],
                   consents={"push": bool(i % 2)} if i % 5 == 0 else None)
            if i % 4 == 0:
                e.numbers, e.strings = {"x": float(i)}, {"step": f"s{i % 7}"}
            out.append(e)
        return out

    commits = [commit_events(c, size) for c, size in enumerate((300, 7, 120))]
    kept, fresh = Store(tmp_path / "kept"), Store(tmp_path / "fresh")
    writer = EventWriter(kept, HALF_LIFE)
    try:
        for events in commits:
            writer.submit(events).result(timeout=30)
            write(fresh, [ValidEvent(e.event_id, e.user_id, e.type, e.time, e.amount, e.tz,
                                     dict(e.consents), None, dict(e.numbers),
                                     dict(e.strings)) for e in events])
    finally:
        writer.close()
    for name in ("users", "profiles"):
        assert _table(kept, name) == _table(fresh, name)
    assert len(_table(kept, "profiles")) > 50
    kept.close()
    fresh.close()
