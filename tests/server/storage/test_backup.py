"""nudge backup / nudge restore: a hot copy taken while writes go on holds every event
acknowledged before it started, and a server on the copy answers as the original did."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nudge.clients import Client, make_event
from nudge.clients.cli import main as nudge
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.server.storage.backup import backup, restore
from nudge.server.storage.readonly import ReadOnlyStore
from nudge.server.storage.store import Store
from nudge.server.storage.tables import events

STEADY = [f"steady-{i}" for i in range(20)]


def _nudge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nudge.clients.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _answers(c: Client, users: list[str]) -> list[bytes]:
    return [c.get_user(u).SerializeToString(deterministic=True) for u in users]


def test_backup_while_writing_then_restore_serves_the_same_answers(
    server: NudgeServer, client: Client, tmp_path: Path
) -> None:
    for i, user in enumerate(STEADY):
        client.track([make_event(user, "loan_simulated", numbers={"amount": 100.0 * i},
                                 strings={"tz": "Europe/Lisbon"}) for _ in range(3)])
    acknowledged: list[tuple[str, str]] = []  # (user, event id): ids are per user
    stop = threading.Event()

    def stream() -> None:  # other users keep writing through the backup
        with Client(f"127.0.0.1:{server.port}") as c:
            n = 0
            while not stop.is_set():
                batch = [make_event(f"busy-{n % 50}", "app_opened", event_id=f"busy-{n}-{j}")
                         for j in range(20)]
                c.track(batch)
                acknowledged.extend((e.user_id, e.event_id) for e in batch)
                n += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        while len(acknowledged) < 200:
            threading.Event().wait(0.01)
        before = list(acknowledged)  # acknowledged before the backup started
        copy = tmp_path / "copy"
        # Another process, as in production (LMDB opens an environment once per process).
        done = subprocess.run(
            [sys.executable, "-m", "nudge.clients.cli", "backup", str(copy),
             "--data-dir", str(server.store.path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "backed up to" in done.stdout
    finally:
        stop.set()
        writer.join()
    assert len(acknowledged) > len(before)  # writes did go on during the copy

    with ReadOnlyStore(copy) as view, view.read() as txn:
        missing = [e for e in before if not events.seen(txn, view.dbs, *e)]
    assert not missing
    original = _answers(client, STEADY)
    refused = _nudge("restore", str(copy), "--data-dir", str(server.store.path), "--force")
    assert refused.returncode == 1 and "stop it first" in refused.stderr

    restored_dir = tmp_path / "restored"
    assert nudge(["restore", str(copy), "--data-dir", str(restored_dir)]) == 0
    srv = create_server(Config(port=0, data_dir=restored_dir))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            assert _answers(c, STEADY) == original
            assert c.track([make_event(before[0][0], "app_opened", event_id=before[0][1])]
                           ).duplicates == 1  # the copy also holds the seen ids
    finally:
        srv.stop()
    # The copy itself serves too (nudge serve --data-dir COPY).
    srv = create_server(Config(port=0, data_dir=copy))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            assert _answers(c, STEADY) == original
    finally:
        srv.stop()


def test_backup_and_restore_refuse_to_overwrite(tmp_path: Path) -> None:
    Store(tmp_path / "data").close()
    copy = tmp_path / "copy"
    backup(tmp_path / "data", copy)
    with pytest.raises(FileExistsError):
        backup(tmp_path / "data", copy)
    target = tmp_path / "target"
    restore(copy, target)
    with pytest.raises(FileExistsError, match="--force"):
        restore(copy, target)
    restore(copy, target, force=True)
    with pytest.raises(FileNotFoundError):
        restore(tmp_path / "nothing", tmp_path / "t2")
