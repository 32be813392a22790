"""Durable ingest at the disk's limit: TrackStream with one event per new user, beside raw
LMDB group commits of the same bytes.

The worst case for ingest is a stream where every event is a new user's first: no record
or profile is cached, every key lands on a different B-tree page, and the store grows by a
user per event. ``run`` starts ``nudge serve`` (the shipped campaign, so the event hooks
run as in production) in a child process, streams ``users`` events to ``users`` distinct
users through one TrackStream call, and times it to the reply, which comes only after the
last event's commit is on disk. Two event kinds:

- ``bare``: an app event with no properties (``app_opened``): state record, event log,
  seen id;
- ``rich``: a loan simulation carrying a time zone, a consent and two properties
  (``loan_simulated``): the profile is written too.

The floor, in the same run and process as the bench (not the server's): the same keys and
values the server stored, put by a plain loop into a fresh LMDB environment and committed
(fsync'd) in commits as large as the server's mean commit. It is what the disk and LMDB
allow for those bytes with no validation, no state kernel, no protobuf and no gRPC; the
server's rate over it is the share of the disk's limit ingest reaches.

Beside the rates: the server process's CPU time per event (``/proc/<pid>/stat``, all its
threads), which moves far less than wall time on a shared box.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb

from nudge.bench.server_process import ServerProcess
from nudge.clients.client import Client
from nudge.server.storage.readonly import open_readonly
from nudge.server.storage.tables import keys
from nudge.v1 import decision_service_pb2, event_pb2

KINDS = ("bare", "rich")
COMMITS_METRIC = "nudge_group_commits_total"


@dataclass(frozen=True)
class IngestConfig:
    users: int = 1_000_000
    batch: int = 1_000  # events per TrackStream message
    kinds: tuple[str, ...] = KINDS


def _event(kind: str, run: str, user: int, t: int) -> event_pb2.Event:
    # Ids in no particular order, as a bank's are: each new user lands on a random page.
    scattered = hashlib.blake2b(b"%d" % user, digest_size=8).hexdigest()
    ev = event_pb2.Event(event_id=f"{run}-{user}", user_id=f"{scattered}-{run}")
    ev.time.seconds = t
    if kind == "bare":
        ev.type = "app_opened"
    else:
        ev.type = "loan_simulated"
        ev.numbers["amount"] = 5_000.0 + user % 1_000
        ev.strings.update({"tz": "America/Sao_Paulo", "consent.push": "granted",
                           "step": "documentation", "currency": "BRL"})
    return ev


def _requests(kind: str, run: str, users: int, batch: int
              ) -> list[decision_service_pb2.TrackStreamRequest]:
    """Every message of the stream, built before the clock starts."""
    t = int(time.time()) - 60
    return [
        decision_service_pb2.TrackStreamRequest(
            events=[_event(kind, run, u, t) for u in range(start, min(users, start + batch))])
        for start in range(0, users, batch)
    ]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commits(metrics_url: str | None) -> float | None:
    if metrics_url is None:
        return None
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(COMMITS_METRIC + " "):
                return float(line.split()[1])
    return None


def _stored(data_dir: Path, run: str) -> list[list[tuple[str, bytes, bytes]]]:
    """What the run stored, per event in log order (``(database, key, value)`` for its
    log entry, seen id, state record and profile), read back after the server stopped:
    the floor writes exactly these bytes in the order the server wrote them."""
    marker = run.encode()
    out: list[list[tuple[str, bytes, bytes]]] = []
    with open_readonly(data_dir) as store, store.read() as txn:
        dbs = store.dbs
        for seq, payload in txn.cursor(db=dbs["events"]):
            payload = bytes(payload)
            if marker not in payload:
                continue
            ev = event_pb2.Event.FromString(payload)
            user = ev.user_id.encode()
            pair = keys.pair(ev.user_id, ev.event_id)
            rows = [("events", bytes(seq), payload)]
            for name, key in (("seen", pair), ("users", user), ("profiles", user)):
                value = txn.get(key, db=dbs[name])
                if value is not None:
                    rows.append((name, key, bytes(value)))
            out.append(rows)
    return out


def raw_floor(stored: list[list[tuple[str, bytes, bytes]]], commit_events: int,
              folder: Path) -> tuple[float, float]:
    """Events/s of plain puts of the stored bytes, in the server's order, fsync'd every
    ``commit_events`` events, and the CPU µs per event it took (LMDB writing the dirty
    pages is most of it)."""
    env = lmdb.open(str(folder), map_size=1 << 34, max_dbs=8)
    try:
        dbs = {name: env.open_db(name.encode()) for name in ("events", "seen", "users",
                                                               "profiles")}
        step = max(1, commit_events)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, len(stored), step):
            with env.begin(write=True) as txn:
                for rows in stored[start:start + step]:
                    for name, key, value in rows:
                        txn.put(key, value, db=dbs[name])
        wall = time.perf_counter() - t0
        return len(stored) / wall, (time.process_time() - cpu0) / len(stored) * 1e6
    finally:
        env.close()


def _one_kind(kind: str, config: IngestConfig, tmp: Path,
              progress: Callable[[str], None]) -> dict:
    run = f"{kind}{time.time_ns() % 10**9}"
    data = tmp / f"data-{kind}"
    progress(f"ingest {kind}: building {config.users:,} events")
    requests = _requests(kind, run, config.users, config.batch)
    proc = ServerProcess(data, tmp / f"server-{kind}.log", "--metrics-port", "0")
    try:
        with Client(proc.target, timeout=600) as client:
            client.wait_until_serving(120)
            commits0 = _commits(proc.metrics_url)
            progress(f"ingest {kind}: streaming {config.users:,} new users")
            cpu0 = _cpu_seconds(proc.proc.pid)
            t0 = time.perf_counter()
            reply = client.decisions.TrackStream(iter(requests), timeout=600)
            wall = time.perf_counter() - t0
            cpu = _cpu_seconds(proc.proc.pid) - cpu0
            commits1 = _commits(proc.metrics_url)
        if reply.accepted != config.users:
            raise RuntimeError(f"ingest {kind}: {reply.accepted} of {config.users} accepted")
    finally:
        proc.terminate()
    commits = (commits1 - commits0) if commits0 is not None and commits1 is not None else None
    commit_events = config.users / commits if commits else config.batch
    progress(f"ingest {kind}: the raw LMDB floor")
    stored = _stored(data, run)
    floor, floor_cpu = raw_floor(stored, round(commit_events), tmp / f"floor-{kind}")
    rate = config.users / wall
    return {"events": config.users, "seconds": wall, "events_per_s": rate,
            "server_cpu_us_per_event": cpu / config.users * 1e6,
            "commits": commits, "events_per_commit": commit_events,
            "bytes_per_event": sum(len(k) + len(v) for rows in stored for _, k, v in rows)
            / config.users,
            "floor_events_per_s": floor, "floor_cpu_us_per_event": floor_cpu,
            "share_of_floor": rate / floor}


def run(config: IngestConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    out: dict = {"users": config.users, "batch": config.batch, "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="nudge-ingest-") as tmp:
        for kind in config.kinds:
            out["kinds"][kind] = _one_kind(kind, config, Path(tmp), progress)
    out["metrics"] = {
        f"ingest.{kind}.{name}": r[name]
        for kind, r in out["kinds"].items()
        for name in ("events_per_s", "share_of_floor", "server_cpu_us_per_event")
    }
    return out

