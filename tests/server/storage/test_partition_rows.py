"""A partition's rows move between two stores that number things differently (event type
slots, insights keys, event sequences): after the import the new store says, by name,
what the old one said, holds nothing else of the partition, and leaves the other
partitions alone."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from nudge.clients import make_event
from nudge.kernels import user_state
from nudge.server.cluster.partitions import partition_of
from nudge.server.inputs.events import validate_event
from nudge.server.storage import partition_rows
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.insights_summary import InsightsSummary
from nudge.server.storage.store import Store
from nudge.server.storage.tables import (
    contacts,
    deadlines,
    deliveries,
    insights,
    meta,
    open_decisions,
    risk_baselines,
    users,
)
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables import events as event_table
from nudge.server.storage.tables.decisions import DecisionRecord
from nudge.server.storage.tables.deliveries import Delivery

PARTITIONS = 4
MOVED = 1


def part(user_id: str) -> int:
    return partition_of(user_id, PARTITIONS)


class Node:
    """A store with its writer and insights summary (written behind, as served)."""

    def __init__(self, path: Path, flush_seconds: float = 0.05) -> None:
        self.store = Store(path)
        self.writer = EventWriter(self.store, 86_400.0)
        self.summary = InsightsSummary(self.store, self.writer, flush_seconds=flush_seconds)
        self.writer.add_event_hook(self.summary)
        self.writer.add_forget_hook("insights", self.summary.forget)
        self.writer.add_import_hook(self.summary.fold_imported)

    def track(self, rng: random.Random, users: list[str], types: list[str], n: int,
              tag: str, flush: bool = True) -> None:
        now = time.time()
        events = []
        for i in range(n):
            ev = make_event(rng.choice(users), rng.choice(types), event_id=f"{tag}{i}",
                            numbers={"amount": round(rng.uniform(1, 100), 2)},
                            strings={"step": "kyc", "flow": "loan"} if i % 7 == 0 else None)
            ev.time.FromSeconds(int(now) - rng.randrange(0, 30 * 86_400))
            events.append(validate_event(ev, i, now))
        assert self.writer.submit(events).result(30).accepted == n
        if flush:
            self.summary.flush()

    def job(self, fn) -> None:  # type: ignore[no-untyped-def]
        self.writer.submit_job(fn).result(30)

    def close(self) -> None:
        self.summary.close()
        self.writer.close()
        self.store.close()


def _view(node: Node, user_ids: list[str]) -> dict[str, object]:
    """What the store says of these users, by name (no store-local number in it)."""
    store, dbs = node.store, node.store.dbs
    out: dict[str, object] = {}
    with store.read() as txn:
        slots = meta.type_slots(txn, dbs)
        names = {v: k for k, v in insights.key_ids(txn, dbs).items()}
        for u in sorted(user_ids):
            rec = users.record(txn, dbs, u)
            if rec is not None:
                by_type = {name: (round(rec[user_state.COUNTS + s], 9),
                                  rec[user_state.TOTALS + s], rec[user_state.TYPE_LAST + s])
                           for name, s in slots.items() if rec[user_state.TOTALS + s]}
                out[f"state/{u}"] = (rec[:user_state.N_SCALARS].tolist(), by_type,
                                     rec[user_state.HOURS:].tolist())
            out[f"profile/{u}"] = users.profile(txn, dbs, u).to_bytes()
            entries = np.frombuffer(insights.compact(insights.entries(txn, dbs, u).tobytes()),
                                    insights.ENTRY)
            out[f"insights/{u}"] = sorted((int(e["hour"]), names[int(e["key"])],
                                           int(e["count"]), round(float(e["amount"]), 3))
                                          for e in entries)
            out[f"contacts/{u}"] = contacts.rows(txn, dbs, u)
            out[f"open/{u}"] = open_decisions.of_user(txn, dbs, u)
            out[f"deliveries/{u}"] = sorted(deliveries.ids_of_user(txn, dbs, u))
            out[f"held/{u}"] = risk_baselines.held_at(txn, dbs, u)
        evs = sorted((u, e, bytes(p)) for _, p in txn.cursor(db=dbs["events"])
                     for e, u in [event_table.event_ids(bytes(p))] if u in user_ids)
        out["events"] = [(u, e) for u, e, _ in evs]
        # Every seen id points at its own event in this store's log.
        seen = []
        for key, seq in txn.cursor(db=dbs["seen"]):
            u, _, e = bytes(key).decode().partition("\x00")
            if u in user_ids:
                payload = txn.get(bytes(seq), db=dbs["events"])
                assert payload is not None and event_table.event_ids(bytes(payload)) == (e, u)
                seen.append((u, e))
        out["seen"] = sorted(seen)
        out["decisions"] = sorted(r["decision_id"] for r in decision_table.stored_fields(txn, dbs)
                                  if r["user_id"] in user_ids)
        mine = set(out["decisions"])  # type: ignore[arg-type]
        out["deadlines"] = sorted(d for k, _ in txn.cursor(db=dbs["deadlines"])
                                  if (d := deadlines.decision_id(bytes(k))) in mine)
        theirs = {d for u in user_ids for d in deliveries.ids_of_user(txn, dbs, u)}
        out["outbox"] = sorted(d for k, _ in txn.cursor(db=dbs["outbox"])
                               if (d := deliveries.delivery_id(bytes(k))) in theirs)
        out["risk"] = sorted(bytes(k).decode() for k, _ in txn.cursor(db=dbs["risk"])
                             if bytes(k).decode() in user_ids)
    return out


def _summaries(node: Node, user_ids: list[str]) -> dict[str, bytes]:
    with node.store.read() as txn:
        return {u: insights.entries(txn, node.store.dbs, u).tobytes() for u in user_ids}


def _put_summaries(node: Node, summaries: dict[str, bytes], position: int) -> None:
    def job(txn):  # type: ignore[no-untyped-def]
        for u, raw in summaries.items():
            insights.delete(txn, node.store.dbs, u)
            if raw:
                insights.append(txn, node.store.dbs, u, raw)
        insights.put_position(txn, node.store.dbs, position)

    node.job(job)


def _decision(u: str, i: int, now: float) -> DecisionRecord:
    return DecisionRecord(f"d-{u}-{i}", u, "c", now, "v1", i, [0.0], [None], 1, [1, 2], 0.5,
                          0, False, "", [], now + 3600.0)


def _rows_of_other_kinds(node: Node, user_ids: list[str], tag: str) -> None:
    now = time.time()
    dbs = node.store.dbs

    def fill(txn):  # type: ignore[no-untyped-def]
        for i, u in enumerate(user_ids):
            d = _decision(u, i, now)
            decision_table.put(txn, dbs, d)
            open_decisions.add(txn, dbs, u, d.decision_id)
            deadlines.add(txn, dbs, d.window_end + i, d.decision_id)
            contacts.add(txn, dbs, u, [(now, "sms", "c", d.decision_id)], 86_400.0)
            dl = Delivery(f"dl-{tag}-{u}", d.decision_id, u, "c", "sms", "m", "hi", "",
                          now + 60.0)
            deliveries.put(txn, dbs, dl)
            deliveries.add_to_user(txn, dbs, dl)
            risk_baselines.put_held_at(txn, dbs, u, now - i)
            txn.put(u.encode(), np.full(4, float(i)).tobytes(), db=dbs["risk"])

    node.job(fill)


@pytest.mark.timeout(120)
def test_a_partition_moves_to_a_store_that_numbers_types_keys_and_events_otherwise(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    population = [f"user-{i}" for i in range(60)]
    moved = [u for u in population if part(u) == MOVED]
    others = [u for u in population if part(u) != MOVED]
    assert len(moved) >= 8 and others
    # The source's summaries are written behind slowly: its last events are not folded
    # when it exports (the importer folds those itself).
    source = Node(tmp_path / "a", flush_seconds=600.0)
    target = Node(tmp_path / "b", flush_seconds=600.0)
    try:
        # The source registers types in one order, the target in another and with types
        # the source never saw: slots and insights keys differ between them.
        source.track(rng, population, ["login", "card_tx", "loan_view", "app_opened"], 600, "a")
        target.track(rng, population, ["push_open", "app_opened", "card_tx"], 300, "b")
        _rows_of_other_kinds(source, moved + others[:3], "a")
        _rows_of_other_kinds(target, moved[:3] + others[:5], "b")  # stale rows of MOVED
        with source.store.read() as s_txn, target.store.read() as t_txn:
            assert meta.type_slots(s_txn, source.store.dbs) != meta.type_slots(
                t_txn, target.store.dbs)
        source.track(rng, population, ["login", "card_tx"], 100, "late", flush=False)
        source.job(lambda txn: meta.put_applied_position(txn, source.store.dbs, MOVED, 4242))
        others_before = _view(target, others)

        with source.store.read() as txn:
            exported = partition_rows.export(txn, source.store.dbs, part, {MOVED})[MOVED]
        assert exported.position == 4242
        assert 0 < len(exported.unfolded) < len(exported.rows["events"])
        source.summary.flush()
        want = _view(source, moved)
        blob = exported.to_bytes()
        rows = partition_rows.PartitionRows.from_bytes(blob)
        assert rows.count() == exported.count() > 0
        with target.store.read() as txn:
            stale = partition_rows.stale_rows(txn, target.store.dbs, part, MOVED)
        assert stale  # the target's own rows of the partition, replaced
        imported = target.writer.import_partition(rows, stale).result(30)
        assert set(moved) <= imported.users
        assert len(imported.unfolded) == len(exported.unfolded)
        as_imported = _summaries(target, moved)  # the unfolded ones still pending
        target.summary.flush()

        got = _view(target, moved)
        for key in want:
            assert got[key] == want[key], key
        assert _view(target, others) == others_before
        with target.store.read() as txn:
            assert meta.applied_position(txn, target.store.dbs, MOVED) == 4242
            slots = meta.type_slots(txn, target.store.dbs)
        assert target.store.type_slots == slots
        assert {"login", "loan_view", "push_open"} <= set(slots)

        # New events after the import get sequences past the imported ones. A crash
        # before the summaries' position passed the imported events (here: the summaries
        # and their position put back to just after the import's commit) and the
        # restart's catch-up folds the events the exporter had not folded and the new
        # ones, and not the others a second time.
        target.track(rng, moved, ["login"], 20, "c")
        after = _view(target, moved)
        assert after != got
        _put_summaries(target, as_imported, imported.first)
        target.close()
        target = Node(tmp_path / "b")
        assert target.summary.catch_up(target.writer) == 20 + imported.end - imported.first
        assert _view(target, moved) == after
    finally:
        source.close()
        target.close()


def test_a_malformed_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="not a partition snapshot"):
        partition_rows.PartitionRows.from_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a partition snapshot"):
        import zlib
        partition_rows.PartitionRows.from_bytes(zlib.compress(b"something else"))


def test_slot_remapping_matches_a_slow_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        record = rng.random(user_state.RECORD_LEN)
        move = rng.integers(0, user_state.N_TYPES, user_state.N_TYPES)
        got = partition_rows.remap_slots(record, move)
        want = record.copy()
        n = user_state.N_TYPES
        for block in (user_state.COUNTS, user_state.TOTALS, user_state.TYPE_LAST):
            want[block:block + n] = 0.0
        for s in range(n):
            t = move[s]
            want[user_state.COUNTS + t] += record[user_state.COUNTS + s]
            want[user_state.TOTALS + t] += record[user_state.TOTALS + s]
            want[user_state.TYPE_LAST + t] = max(want[user_state.TYPE_LAST + t],
                                                 record[user_state.TYPE_LAST + s])
        np.testing.assert_allclose(got, want)
