"""Group-committed, durable event ingestion.

One fsync'd LMDB commit costs milliseconds, so one commit per event is far too slow.
Every Track call and every TrackStream message is queued to a single writer thread, which
takes everything queued so far into one write transaction, updates the users' state with
the ingestion kernel, commits (fsync), and only then answers each caller. Concurrent
callers therefore share commits, and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import lmdb
import numpy as np

from nudge.kernels import user_state
from nudge.server.errors import NudgeError, Unavailable, disk_full
from nudge.server.inputs.events import (
    AMOUNT_KEY,
    CONSENT_PREFIX,
    TZ_KEY,
    ValidEvent,
    time_zone,
)
from nudge.server.storage.store import TYPE_PREFIX, Store, UserProfile
from nudge.v1 import event_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

# Event types whose latest properties a user's profile keeps (for message templates).
MAX_PROPERTY_TYPES = 16
# Card transactions are the firehose and feed the risk baseline, not message templates:
# their properties are not copied into the profile (the event log keeps them).
NO_PROFILE_PROPERTIES = frozenset({"transaction"})
PROFILE_CACHE = 200_000


@dataclass(frozen=True)
class TrackResult:
    accepted: int
    duplicates: int


@dataclass
class _Submission:
    """Either events to ingest or a job to run inside the next group commit."""

    future: Future[Any]
    events: list[ValidEvent] = field(default_factory=list)
    job: Callable[[lmdb.Transaction], Any] | None = None

    @property
    def size(self) -> int:
        return max(1, len(self.events))


# Called inside the commit with the newly stored events (after user state is updated), so
# other parts (risk baselines, goal attribution) update in the same atomic transaction.
# It may return a callback to run once the commit is durable (for in-memory effects); a
# batch retried after the map grows calls the hook again and drops the first callback.
EventHook = Callable[[lmdb.Transaction, list[ValidEvent]], Callable[[], None] | None]


def local_hour(t: float, tz: str) -> float:
    """Hour of day in [0, 24) at epoch seconds ``t`` in time zone ``tz``."""
    if tz == "UTC":
        offset = 0.0
    else:
        when = datetime.fromtimestamp(t, time_zone(tz))
        delta = when.utcoffset()
        offset = delta.total_seconds() if delta is not None else 0.0
    return ((t + offset) % 86_400.0) / 3_600.0


class EventWriter:
    """The single writer: batches submissions into durable group commits."""

    def __init__(
        self, store: Store, half_life_seconds: float, max_batch_events: int = 50_000
    ) -> None:
        self.store = store
        self.half_life_seconds = half_life_seconds
        self.max_batch_events = max_batch_events
        self._queue: deque[_Submission] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.commits = 0
        self._event_hooks: list[EventHook] = []
        # Parsed profiles, written through: this thread is the only writer of profiles, so
        # the cache cannot go stale (it is dropped if a batch fails). Not for a shared
        # store, whose other processes write profiles too.
        self._profiles: dict[str, UserProfile] = {}
        self._thread = threading.Thread(target=self._run, name="nudge-event-writer", daemon=True)
        self._thread.start()

    def submit(self, events: list[ValidEvent]) -> Future[TrackResult]:
        """Queue validated events; the future resolves after their commit."""
        future: Future[TrackResult] = Future()
        if not events:
            future.set_result(TrackResult(0, 0))
            return future
        self._enqueue(_Submission(future, events=events))
        return future

    def submit_job(self, job: Callable[[lmdb.Transaction], T]) -> Future[T]:
        """Run ``job(txn)`` inside the next group commit; the future resolves after it.

        The job may run more than once (a batch is retried after the map grows), so it
        must only write through ``txn`` and keep in-memory effects for after the commit.
        """
        future: Future[T] = Future()
        self._enqueue(_Submission(future, job=job))
        return future

    @property
    def queue_depth(self) -> int:
        """Submissions waiting for the next group commit (for a gauge)."""
        return len(self._queue)

    def add_event_hook(self, hook: EventHook) -> None:
        self._event_hooks.append(hook)

    def _enqueue(self, submission: _Submission) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("server is shutting down; retry with the same event_ids")
            self._queue.append(submission)
            self._cond.notify()

    def close(self) -> None:
        """Stop accepting, commit everything queued, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft()]
                size = batch[0].size
                while self._queue and size + self._queue[0].size <= self.max_batch_events:
                    sub = self._queue.popleft()
                    size += sub.size
                    batch.append(sub)
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Submission]) -> None:
        while True:
            try:
                results, new_types, next_sequence, after_commit = self._write(batch)
                break
            except lmdb.MapFullError:
                log.info("store map full; grown to %d bytes, retrying", self.store.map_size())
            except Exception as exc:  # the batch fails as a whole; callers may retry
                self._profiles.clear()  # they may hold updates that were not stored
                if isinstance(exc, NudgeError):
                    log.error("write batch refused: %s", exc.message)
                    error: NudgeError = exc
                elif (full := disk_full(exc, self.store.path)) is not None:
                    log.error("write batch refused: %s", full.message)
                    error = full
                else:
                    log.exception("write batch failed to commit")
                    error = Unavailable(f"store write failed ({type(exc).__name__}); retry later")
                for sub in batch:
                    sub.future.set_exception(error)
                return
        self.store.type_slots.update(new_types)
        self.store.next_sequence = next_sequence
        self.commits += 1
        for callback in after_commit:
            callback()
        for sub, result in zip(batch, results, strict=True):
            sub.future.set_result(result)

    def _write(
        self, batch: list[_Submission]
    ) -> tuple[list[Any], dict[str, int], int, list[Callable[[], None]]]:
        new_types: dict[str, int] = {}
        after_commit: list[Callable[[], None]] = []
        with self.store.write() as txn:
            results, sequence = self._write_events(txn, batch, new_types, after_commit)
            for i, sub in enumerate(batch):
                if sub.job is not None:
                    results[i] = sub.job(txn)
        return results, new_types, sequence, after_commit

    def _write_events(
        self,
        txn: lmdb.Transaction,
        batch: list[_Submission],
        new_types: dict[str, int],
        after_commit: list[Callable[[], None]],
    ) -> tuple[list[Any], int]:
        store = self.store
        dbs = store.dbs
        results: list[Any] = []
        fresh: list[ValidEvent] = []
        sequence = store.next_sequence
        seen_in_batch: set[str] = set()
        for sub in batch:
            duplicates = 0
            for ev in sub.events:
                if ev.event_id in seen_in_batch or txn.get(
                    ev.event_id.encode(), db=dbs["seen"]
                ) is not None:
                    duplicates += 1
                    continue
                seen_in_batch.add(ev.event_id)
                fresh.append(ev)
            results.append(TrackResult(len(sub.events) - duplicates, duplicates))
        if not fresh:
            return results, sequence

        rows: dict[str, int] = {}
        for ev in fresh:
            rows.setdefault(ev.user_id, len(rows))
        state = user_state.new_records(len(rows))
        profiles: list[UserProfile] = []
        for user_id, row in rows.items():
            key = user_id.encode()
            raw = txn.get(key, db=dbs["users"])
            if raw is not None:
                state[row] = np.frombuffer(raw, dtype=np.float64)
            # A shared store's profiles are also written by other processes: read them.
            profile = None if store.shared else self._profiles.get(user_id)
            if profile is None:
                profile = UserProfile.from_bytes(txn.get(key, db=dbs["profiles"]))
                if not store.shared:
                    if len(self._profiles) >= PROFILE_CACHE:
                        self._profiles.clear()
                    self._profiles[user_id] = profile
            profiles.append(profile)
        changed = _apply_profile_updates(fresh, rows, profiles)

        n = len(fresh)
        row_idx = np.empty(n, np.int64)
        slots = np.empty(n, np.int64)
        times = np.empty(n, np.float64)
        amounts = np.empty(n, np.float64)
        hours = np.empty(n, np.float64)
        for i, ev in enumerate(fresh):
            row = rows[ev.user_id]
            row_idx[i] = row
            slots[i] = self._slot(ev.type, new_types, txn)
            times[i] = ev.time
            amounts[i] = ev.amount
            hours[i] = ev.local_hour = local_hour(ev.time, ev.tz or profiles[row].tz)
        user_state.apply_events(
            state, row_idx, slots, times, amounts, hours, self.half_life_seconds
        )

        for user_id, row in rows.items():
            key = user_id.encode()
            txn.put(key, state[row].tobytes(), db=dbs["users"])
            if row in changed:
                txn.put(key, profiles[row].to_bytes(), db=dbs["profiles"])
        log_cursor = txn.cursor(db=dbs["events"])
        seen = dbs["seen"]
        for ev in fresh:
            seq = sequence.to_bytes(8, "big")
            proto = ev.proto if ev.proto is not None else _event_proto(ev)
            if not proto.HasField("time"):
                proto.time.FromNanoseconds(round(ev.time * 1e9))
            log_cursor.put(seq, proto.SerializeToString(), append=True)
            txn.put(ev.event_id.encode(), seq, db=seen)
            sequence += 1
        for hook in self._event_hooks:
            callback = hook(txn, fresh)
            if callback is not None:
                after_commit.append(callback)
        return results, sequence

    def _slot(self, type_name: str, new_types: dict[str, int], txn: lmdb.Transaction) -> int:
        slot = self.store.type_slots.get(type_name)
        if slot is None:
            slot = new_types.get(type_name)
        if slot is not None:
            return slot
        used = len(self.store.type_slots) + len(new_types)
        if used >= user_state.OTHER_TYPE_SLOT:
            return user_state.OTHER_TYPE_SLOT
        new_types[type_name] = used
        txn.put(TYPE_PREFIX + type_name.encode(), str(used).encode(), db=self.store.dbs["meta"])
        return used


def _event_proto(ev: ValidEvent) -> event_pb2.Event:
    """The event log record for an event that did not arrive as a protobuf message."""
    strings = dict(ev.strings)
    strings.update(
        (f"{CONSENT_PREFIX}{channel}", "granted" if granted else "revoked")
        for channel, granted in ev.consents.items()
    )
    if ev.tz is not None:
        strings[TZ_KEY] = ev.tz
    numbers = dict(ev.numbers)
    if not math.isnan(ev.amount):
        numbers[AMOUNT_KEY] = ev.amount
    return event_pb2.Event(
        event_id=ev.event_id, user_id=ev.user_id, type=ev.type, numbers=numbers, strings=strings
    )


def _forget_oldest_types(profile: UserProfile) -> None:
    """Keep the properties of the MAX_PROPERTY_TYPES most recent event types only."""
    props = profile.last_properties
    while len(props) > MAX_PROPERTY_TYPES:
        del props[min(props, key=lambda k: props[k][0])]


def _apply_profile_updates(
    events: list[ValidEvent], rows: dict[str, int], profiles: list[UserProfile]
) -> set[int]:
    """Fold time zones and consents into profiles, last write (by event time) wins."""
    changed: set[int] = set()
    for ev in events:
        if ev.tz is None and not ev.consents and (
            ev.type in NO_PROFILE_PROPERTIES or (not ev.numbers and not ev.strings)
        ):
            continue
        row = rows[ev.user_id]
        profile = profiles[row]
        if (ev.numbers or ev.strings) and ev.type not in NO_PROFILE_PROPERTIES:
            previous = profile.last_properties.get(ev.type)
            if previous is None or ev.time >= previous[0]:
                profile.last_properties[ev.type] = (ev.time, ev.numbers, ev.strings)
                changed.add(row)
                _forget_oldest_types(profile)
        if ev.tz is not None and ev.time >= profile.tz_time:
            profile.tz, profile.tz_time = ev.tz, ev.time
            changed.add(row)
        for channel, granted in ev.consents.items():
            previous = profile.consents.get(channel)
            if previous is None or ev.time >= previous[1]:
                profile.consents[channel] = (granted, ev.time)
                changed.add(row)
    return changed


