"""The read-only open the offline tools use: schema checked, safe beside a live store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from nudge.server.errors import SchemaMismatch
from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.readonly import open_readonly
from nudge.server.storage.store import Store
from nudge.server.storage.tables import meta

HALF_LIFE = 86_400.0


def ev(event_id: str, user: str = "u1") -> ValidEvent:
    return ValidEvent(event_id, user, "app_opened", 1.7e9, float("nan"), None, {})


# LMDB allows one open of an environment per process: the reader runs in its own, as
# ``nudge explain`` does beside a server.
READER = """
import json, sys
from nudge.server.storage.readonly import open_readonly
from nudge.server.storage.tables import events, meta, users
with open_readonly(sys.argv[1]) as view, view.read() as txn:
    flags = view.env.flags()
    print(json.dumps({
        "readonly": flags["readonly"], "lock": flags["lock"],
        "users": [u for u in ("u1", "u2") if users.record(txn, view.dbs, u) is not None],
        "last": events.last_sequence(txn, view.dbs),
        "types": meta.type_slots(txn, view.dbs),
    }))
"""


def read_beside(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_reads_a_live_store_with_the_reader_lock(tmp_path: Path) -> None:
    store = Store(tmp_path)
    writer = EventWriter(store, HALF_LIFE)
    try:
        writer.submit([ev("a")]).result(timeout=30)
        seen = read_beside(tmp_path)
        assert seen["readonly"] and seen["lock"]
        assert seen["users"] == ["u1"] and seen["last"] == 1
        # The server keeps writing; the next reader sees its commits.
        writer.submit([ev("b", user="u2")]).result(timeout=30)
        seen = read_beside(tmp_path)
        assert seen["users"] == ["u1", "u2"] and seen["last"] == 2
        assert seen["types"] == {"app_opened": 0}
    finally:
        writer.close()
        store.close()


def test_refuses_a_store_with_another_schema_version(tmp_path: Path) -> None:
    Store(tmp_path).close()
    env = lmdb.open(str(tmp_path), max_dbs=32)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        txn.put(meta.SCHEMA_KEY, b"99")
    env.close()
    with pytest.raises(SchemaMismatch, match="schema version 99"):
        open_readonly(tmp_path)


def test_refuses_a_folder_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.mdb missing"):
        open_readonly(tmp_path)
