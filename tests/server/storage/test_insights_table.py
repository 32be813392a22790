"""The insights summary table: appends, compaction as a user passes 64, 128 ... entries,
the key registry (and what happens when it is full), erasure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.insights_summary import InsightsSummary
from nudge.server.storage.store import Store
from nudge.server.storage.tables import insights as table


def _entries(hours, keys, amounts=None) -> bytes:
    e = np.zeros(len(hours), table.ENTRY)
    e["hour"], e["key"], e["count"] = hours, keys, 1
    e["amount"] = 0.0 if amounts is None else amounts
    return e.tobytes()


def test_compact_merges_a_key_s_day_and_drops_past_the_horizon() -> None:
    first = 500_000
    hours = [first, first + 5, first + 23, first + 24, first + 30, first + 24 * 400]
    raw = _entries(hours, [1, 1, 2, 1, 1, 1], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    out = np.frombuffer(table.compact(raw), table.ENTRY)
    cells = {(int(e["hour"]), int(e["key"])): (int(e["count"]), float(e["amount"]))
             for e in out}
    assert cells == {(first, 1): (2, 3.0), (first, 2): (1, 3.0), (first + 24, 1): (2, 9.0)}


def test_append_compacts_when_a_power_of_two_is_crossed(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    try:
        with store.env.begin(write=True) as txn:
            for i in range(63):  # one key, one day: all merge into one entry
                table.append(txn, store.dbs, "u", _entries([400_000 + i % 20], [3]))
            assert len(table.entries(txn, store.dbs, "u")) == 63
            table.append(txn, store.dbs, "u", _entries([400_000], [3]))
            merged = table.entries(txn, store.dbs, "u")
            assert len(merged) == 1 and int(merged["count"][0]) == 64
    finally:
        store.close()


def test_registry_ids_and_a_full_registry(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "d")
    try:
        with store.env.begin(write=True) as txn:
            a = table.register_key(txn, store.dbs, "app_opened")
            assert table.register_key(txn, store.dbs, "app_opened") == a == 1
            monkeypatch.setattr(table, "MAX_KEYS", 3)
            assert table.register_key(txn, store.dbs, "b") == 2
            assert table.register_key(txn, store.dbs, "c") == table.OTHER_KEY
        hook = InsightsSummary(store)
        ev = ValidEvent("e1", "u1", "c", 3_600.0 * 400_000, 7.0, None,
                        strings={"flow": "loan", "step": "docs"})
        with store.env.begin(write=True) as txn:
            hook(txn, [ev])
            got = table.entries(txn, store.dbs, "u1")
        # The type counts in (other); the flow step has no key left and is not recorded
        # (never as a second activity entry).
        assert [(int(e["key"]), float(e["amount"])) for e in got] == [(table.OTHER_KEY, 7.0)]
    finally:
        store.close()


def test_a_flow_step_name_longer_than_an_lmdb_key_registers_and_reads_back(
    tmp_path: Path,
) -> None:
    """A flow and a step may be 1,024 bytes each (the event strings' limit); their key
    name then exceeds LMDB's 511-byte key and is kept under its digest."""
    store = Store(tmp_path / "d")
    long_name = table.flow_key_name("flow_abandoned", "f" * 1024, "é" * 512)
    near = "a" * table.MAX_PLAIN_NAME_BYTES  # the longest name kept as it is
    try:
        with store.env.begin(write=True) as txn:
            a = table.register_key(txn, store.dbs, long_name)
            b = table.register_key(txn, store.dbs, near)
            c = table.register_key(txn, store.dbs, near + "b")
            assert len({a, b, c}) == 3 and table.OTHER_KEY not in {a, b, c}
            assert table.register_key(txn, store.dbs, long_name) == a
        with store.env.begin() as txn:
            assert table.key_id(txn, store.dbs, long_name) == a
            assert table.key_id(txn, store.dbs, near + "b") == c
            assert table.key_ids(txn, store.dbs) == {table.OTHER_NAME: table.OTHER_KEY,
                                                     long_name: a, near: b, near + "b": c}
            assert table.parse_key_name(long_name) == ("flow_abandoned", "f" * 1024, "é" * 512)
    finally:
        store.close()
