"""The insights summaries are written behind Track's commits: what a crash leaves
unwritten is folded from the event log on the next start, erasure drops what is pending,
and the inline fold (a shared store) stores the same entries."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from nudge.bench.insight_worlds import WORLDS, World, generate, summary_entries, world_events
from nudge.clients import Client
from nudge.server.inputs.events import validate_event
from nudge.server.offline import insights
from nudge.server.storage.erasure import erase_user
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.insights_summary import InsightsSummary
from nudge.server.storage.store import Store
from nudge.server.storage.tables import insights as table
from nudge.v1 import insights_service_pb2 as pb
from nudge.v1 import insights_service_pb2_grpc as pb_grpc

WORLD = generate("baseline", 3, replace(WORLDS["baseline"], users=300))


def _rows(world: World, store: Store, users: range) -> dict[str, list[tuple]]:
    """Each user's stored entries (compacted, key names, not ids) beside the world's own."""
    offsets, entries, ids = summary_entries(world)
    want_names = {v: k for k, v in ids.items()}
    got: dict[str, list[tuple]] = {}
    want: dict[str, list[tuple]] = {}
    with store.read() as txn:
        names = {v: k for k, v in table.key_ids(txn, store.dbs).items()}
        for u in users:
            stored = table.entries(txn, store.dbs, world.user_id(u))
            got[world.user_id(u)] = _named(stored, names)
            want[world.user_id(u)] = _named(entries[offsets[u]:offsets[u + 1]], want_names)
    return {"got": [got[k] for k in sorted(got)], "want": [want[k] for k in sorted(want)]}


def _named(entries: np.ndarray, names: dict[int, str]) -> list[tuple]:
    if entries.size == 0:
        return []
    merged = np.frombuffer(table.compact(entries.tobytes()), table.ENTRY)
    return sorted((int(e["hour"]), names[int(e["key"])], int(e["count"]),
                   round(float(e["amount"]), 2)) for e in merged)


def _users_with_summaries(store: Store) -> int:
    with store.read() as txn:
        return sum(1 for _ in table.user_ids(txn, store.dbs))


def test_a_killed_server_s_pending_summaries_are_folded_from_the_log_on_restart(
    server_process, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "nudge.toml"
    # Nothing is flushed for a minute: every summary is still pending when the server dies.
    config.write_text("[server]\ninsights_flush_seconds = 60\n")
    proc = server_process(data, "--config", str(config))
    with Client(proc.target, timeout=30) as client:
        client.wait_until_serving()
        for batch in world_events(WORLD, 2_000):
            assert client.track(batch).accepted == len(batch)
    proc.kill()  # SIGKILL: the acknowledged events are on disk, their summaries are not

    store = Store(data)
    try:
        assert _users_with_summaries(store) == 0
    finally:
        store.close()

    proc = server_process(data, "--config", str(config))
    with Client(proc.target, timeout=30) as client:
        client.wait_until_serving()
        reply = pb_grpc.InsightsServiceStub(client.channel).RetentionDrivers(
            pb.RetentionDriversRequest(max_drivers=5))
    assert proc.terminate() == 0
    assert "logged events folded into the summaries on start" in proc.log_path.read_text()

    store = Store(data)
    try:
        rows = _rows(WORLD, store, range(WORLD.spec.users))
        assert rows["got"] == rows["want"] and sum(map(len, rows["got"])) > WORLD.spec.users
        with store.read() as txn:
            n_events = sum(1 for _ in world_events(WORLD, 1) )
            assert table.position(txn, store.dbs) == n_events + 1  # sequences start at 1
    finally:
        store.close()
    direct = insights.retention_drivers(
        insights.from_entries(*summary_entries(WORLD)),
        insights.RetentionQuery(insights.Cohort(None, None, time.time()), max_drivers=5))
    assert reply.cohort_users == direct.cohort_users == WORLD.spec.users
    assert [(d.event_type, d.min_count) for d in reply.drivers] == \
        [(d.event_type, d.min_count) for d in direct.drivers]


def _events(world: World) -> list[list]:
    return [[validate_event(ev, i, world.now) for i, ev in enumerate(batch)]
            for batch in world_events(world, 1_000)]


def test_written_behind_inline_and_caught_up_summaries_are_the_same(tmp_path: Path) -> None:
    """Three ways to the same summaries: behind (flushed), inline in the Track commit
    (a shared store's way), and folded from the log by ``catch_up`` alone."""
    stores = {}
    for mode in ("behind", "inline", "log"):
        store = Store(tmp_path / mode)
        writer = EventWriter(store, 7 * 86_400.0)
        summary = InsightsSummary(store, writer, 0.0 if mode == "inline" else 30.0)
        if mode != "log":
            writer.add_event_hook(summary)
        for batch in _events(WORLD):
            writer.submit(batch).result()
        if mode == "behind":
            assert summary.pending_events() > 0 and _users_with_summaries(store) == 0
            summary.flush()
            assert summary.pending_events() == 0
        if mode == "inline":
            # A store of the version that folded inline has no position: its summaries are
            # taken as complete up to the log's end, not folded a second time.
            with store.env.begin(write=True) as txn:
                end = table.position(txn, store.dbs)
                assert end is not None
                txn.delete(table.POSITION, db=store.dbs["meta"])
            assert summary.catch_up(writer) == 0
            with store.read() as txn:
                assert table.position(txn, store.dbs) == end
        if mode == "log":
            assert _users_with_summaries(store) == 0
            assert summary.catch_up(writer) == sum(map(len, _events(WORLD)))
            assert summary.catch_up(writer) == 0  # the position moved past them
        summary.close()
        writer.close()
        stores[mode] = store
    try:
        rows = {mode: _rows(WORLD, store, range(0, WORLD.spec.users, 7))
                for mode, store in stores.items()}
        for mode in rows:
            assert rows[mode]["got"] == rows[mode]["want"], mode
    finally:
        for store in stores.values():
            store.close()


def test_erasure_drops_the_user_s_pending_entries(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    writer = EventWriter(store, 7 * 86_400.0)
    summary = InsightsSummary(store, writer, 30.0)
    writer.add_event_hook(summary)
    writer.add_forget_hook("insights", summary.forget)
    try:
        for batch in _events(WORLD):
            writer.submit(batch).result()
        gone, kept = WORLD.user_id(0), WORLD.user_id(1)
        # Nothing of the user is in the table yet, all of it pending: reported as erased.
        assert erase_user(writer, gone).deleted["insights"] == 1
        summary.flush()
        with store.read() as txn:
            assert table.entries(txn, store.dbs, gone).size == 0
            assert table.entries(txn, store.dbs, kept).size > 0
    finally:
        summary.close()
        writer.close()
        store.close()


def test_the_value_property_is_configurable(tmp_path: Path) -> None:
    """``insights_value_property = "principal"``: the goal events' principal, not their
    amount, is what the summaries sum (events without it count 0)."""
    from nudge.clients import make_event

    store = Store(tmp_path / "d")
    writer = EventWriter(store, 7 * 86_400.0)
    summary = InsightsSummary(store, writer, 30.0, value_property="principal")
    writer.add_event_hook(summary)
    try:
        t = 1_790_000_000.0
        raw = [make_event("u1", "loan_completed", time=t, event_id="a",
                          numbers={"amount": 5.0, "principal": 1_000.0}),
               make_event("u1", "loan_completed", time=t + 60, event_id="b",
                          numbers={"amount": 7.0})]
        writer.submit([validate_event(ev, i, t + 3_600) for i, ev in enumerate(raw)]).result()
        summary.flush()
        with store.read() as txn:
            got = table.entries(txn, store.dbs, "u1")
        assert sorted(got["amount"].tolist()) == [0.0, 1_000.0]
    finally:
        summary.close()
        writer.close()
        store.close()
