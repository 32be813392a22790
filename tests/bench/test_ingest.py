"""``nudge bench ingest`` at a tiny size: the stream is stored whole, and the floor writes
exactly what the server stored. No timing is asserted (a shared box's figures are noise)."""

from __future__ import annotations

from pathlib import Path

from nudge.bench import ingest
from nudge.server.storage.readonly import open_readonly


def test_every_new_user_is_stored_and_the_floor_rewrites_the_same_bytes(tmp_path: Path) -> None:
    result = ingest.run(ingest.IngestConfig(users=1_500, batch=400, kinds=("bare",)))
    r = result["kinds"]["bare"]
    assert r["events"] == 1_500 and r["events_per_s"] > 0
    assert r["floor_events_per_s"] > 0 and r["share_of_floor"] > 0
    assert r["commits"] and r["events_per_commit"] <= 1_500
    # A bare event's rows: the logged event, its seen id and the user's record.
    assert 150 < r["bytes_per_event"] < 600
    assert set(result["metrics"]) == {f"ingest.bare.{m}" for m in
                                      ("events_per_s", "share_of_floor",
                                       "server_cpu_us_per_event")}


def test_stored_rows_are_read_back_per_event_in_log_order(tmp_path: Path) -> None:
    from nudge.bench.server_process import ServerProcess
    from nudge.clients.client import Client

    data = tmp_path / "data"
    proc = ServerProcess(data, tmp_path / "server.log")
    try:
        with Client(proc.target, timeout=60) as client:
            client.wait_until_serving(120)
            for request in ingest._requests("rich", "probe", 30, 7):
                client.decisions.TrackStream(iter([request]), timeout=60)
    finally:
        proc.terminate()
    stored = ingest._stored(data, "probe")
    assert len(stored) == 30
    assert [[name for name, _, _ in rows] for rows in stored] == [
        ["events", "seen", "users", "profiles"]] * 30
    sequences = [int.from_bytes(rows[0][1], "big") for rows in stored]
    assert sequences == sorted(sequences)
    with open_readonly(data) as store, store.read() as txn:
        assert txn.stat(store.dbs["users"])["entries"] == 30
    rate, cpu = ingest.raw_floor(stored, 8, tmp_path / "floor")
    assert rate > 0 and cpu >= 0
