"""Event ingestion: Track's validated events applied to the store in group commits.

Every Track call and every TrackStream message is submitted to the group commit
(``group_commit.GroupCommitWriter``); all the events of one commit are applied together:
duplicates dropped (``seen``), the users' state updated with the ingestion kernel, profiles
folded, the events appended to the log, and the event hooks (risk baselines, goal
attribution, journeys) run in the same transaction. Nothing is acknowledged before the
commit is on disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from operator import attrgetter, methodcaller
from typing import Any

import lmdb
import numpy as np

from nudge.kernels import sparse_codec, user_state
from nudge.server.inputs.events import (
    AMOUNT_KEY,
    CONSENT_PREFIX,
    TZ_KEY,
    ValidEvent,
    time_zone,
)
from nudge.server.storage import partition_rows
from nudge.server.storage.group_commit import GroupCommitWriter, Submission
from nudge.server.storage.store import Store
from nudge.server.storage.tables import events as event_table
from nudge.server.storage.tables import keys, meta, users
from nudge.server.storage.tables.users import UserProfile
from nudge.v1 import event_pb2

log = logging.getLogger(__name__)
# The fields read from every event of a commit (C-level getters: a map over them costs
# less than a comprehension).
_USER_ID, _EVENT_ID, _TYPE, _TIME, _AMOUNT, _TZ, _PROTO = (
    attrgetter(name) for name in ("user_id", "event_id", "type", "time", "amount", "tz",
                                  "proto"))
_SERIALIZE = methodcaller("SerializeToString")
_HAS_TIME = methodcaller("HasField", "time")

# Event types whose latest properties a user's profile keeps (for message templates).
MAX_PROPERTY_TYPES = 16
# Consent channels one customer's profile holds. A bank has a handful (push, email, sms,
# ...); a producer that writes ``consent.<campaign id>`` or junk would otherwise grow the
# profile without bound (3,150 channels: a 166 KB GetUser reply taking 36 ms, rewritten by
# every event). A channel past the limit is not recorded, which is safe for consent
# (a channel with no record has no consent), and is counted
# (``nudge_consent_channels_ignored_total``). Not refused: the check needs the stored
# profile, which only the writer has, and in a cluster the event is already in the log.
MAX_CONSENT_CHANNELS = 64
# Card transactions are the firehose and feed the risk baseline, not message templates:
# their properties are not copied into the profile (the event log keeps them).
NO_PROFILE_PROPERTIES = frozenset({"transaction"})
PROFILE_CACHE = 200_000
# Slots of the event type registry that types no loaded campaign names never take: room
# for the types of campaigns loaded (or reloaded) later. Named types may use every slot.
RESERVED_TYPE_SLOTS = 16


@dataclass(frozen=True)
class TrackResult:
    accepted: int
    duplicates: int


# Called inside the commit with the newly stored events (after user state is updated), so
# other parts (risk baselines, goal attribution) update in the same atomic transaction.
# It may return a callback to run once the commit is durable (for in-memory effects); a
# batch retried after the map grows calls the hook again and drops the first callback.
EventHook = Callable[[lmdb.Transaction, list[ValidEvent]], Callable[[], None] | None]
# Imported events' payloads (serialized Event), for what is derived from them.
ImportHook = Callable[[lmdb.Transaction, list[bytes]], Callable[[], None] | None]


def local_hour(t: float, tz: str) -> float:
    """Hour of day in [0, 24) at epoch seconds ``t`` in time zone ``tz``."""
    if tz == "UTC":
        offset = 0.0
    else:
        when = datetime.fromtimestamp(t, time_zone(tz))
        delta = when.utcoffset()
        offset = delta.total_seconds() if delta is not None else 0.0
    return ((t + offset) % 86_400.0) / 3_600.0


class LoggedEvents(list[ValidEvent]):
    """Events applied from the cluster's replicated log: one partition's, up to stream
    sequence ``seq``, which is stored with them in the same transaction (so a restart
    resumes after exactly what was applied, and nothing is applied twice)."""

    def __init__(self, events: Iterable[ValidEvent], partition: int, seq: int) -> None:
        super().__init__(events)
        self.partition = partition
        self.seq = seq


class EventWriter(GroupCommitWriter):
    """The store's single writer: Track's events and every other write, group-committed."""

    def __init__(
        self, store: Store, half_life_seconds: float, max_batch_events: int = 50_000
    ) -> None:
        self.half_life_seconds = half_life_seconds
        self._event_hooks: list[EventHook] = []
        self._import_hooks: list[ImportHook] = []
        self._forget_hooks: list[tuple[str, Callable[[str], bool]]] = []
        # Parsed profiles, written through: this thread is the only writer of profiles, so
        # the cache cannot go stale (it is dropped if a batch fails). Not for a shared
        # store, whose other processes write profiles too.
        self._profiles: dict[str, UserProfile] = {}
        self._new_types: dict[str, int] = {}
        self._sequence = store.next_sequence
        # Types the loaded campaigns name (goals, triggers, features): always a slot.
        self._named: frozenset[str] = frozenset()
        # Events counted in the shared "(other)" slot (for a gauge).
        self.other_events = 0
        # Consent channels not recorded: their profile held MAX_CONSENT_CHANNELS already.
        self.consents_ignored = 0
        self._consents_logged = -math.inf  # monotonic time of the last warning
        # The state matrix of a commit's users, kept from one commit to the next (see
        # _state_rows).
        self._scratch = user_state.new_records(0)
        super().__init__(store, max_batch_events, name="nudge-event-writer")

    @property
    def max_batch_events(self) -> int:
        return self.max_batch_size

    def submit(self, events: list[ValidEvent]) -> Future[TrackResult]:
        """Queue validated events; the future resolves after their commit."""
        future: Future[TrackResult] = Future()
        if not events:
            future.set_result(TrackResult(0, 0))
            return future
        self._enqueue(Submission(future, payload=events, size=len(events)))
        return future

    def submit_logged(self, events: LoggedEvents) -> Future[TrackResult]:
        """Queue events applied from the cluster's log (cluster.node): written like
        Track's, with the partition's log position in the same transaction (even when
        every event is a duplicate or none is left)."""
        future: Future[TrackResult] = Future()
        self._enqueue(Submission(future, payload=events, size=max(1, len(events))))
        return future

    def add_event_hook(self, hook: EventHook) -> None:
        self._event_hooks.append(hook)

    def add_import_hook(self, hook: ImportHook) -> None:
        """``hook(txn, payloads)`` runs inside a partition import with the imported
        events that still need what it derives from events (the insights summary's
        entries, when the exporter had not folded them yet); what it returns runs once
        the import is durable. Event hooks do not run for imported events: their effects
        (decisions settled, journeys triggered, risk state) came with the snapshot."""
        self._import_hooks.append(hook)

    def add_forget_hook(self, name: str, forget: Callable[[str], bool]) -> None:
        """``forget(user_id)`` runs inside erasure's job: a hook that holds a user's data
        in memory for a later commit (the insights summary's write-behind) drops it, and
        says whether it held any (erasure reports it under ``name``)."""
        self._forget_hooks.append((name, forget))

    def forget_cached(self, user_id: str) -> set[str]:
        """Drop what is held in memory of the user (erasure; the writer thread calls it in
        a job): the cached profile, and what the forget hooks hold. Returns the names of
        the hooks that held some."""
        self._profiles.pop(user_id, None)
        return {name for name, forget in self._forget_hooks if forget(user_id)}

    def _batch_failed(self) -> None:
        self._profiles.clear()  # they may hold updates that were not stored

    def _begin_attempt(self) -> None:
        # What this commit has added so far: its submissions may be written one by one
        # (nested transactions), each after the ones before.
        self._new_types = {}
        self._sequence = self.store.next_sequence

    def _write_batched(
        self, txn: lmdb.Transaction, payloads: list[list[ValidEvent]]
    ) -> tuple[list[Any], list[Callable[[], None]]]:
        new_types, first = self._new_types, self._sequence
        known = set(new_types)

        def undo() -> None:  # these events were rolled back: so are their types and sequence
            for name in set(new_types) - known:
                del new_types[name]
            self._sequence = first

        self.on_abort(undo)
        after_commit: list[Callable[[], None]] = []
        results, self._sequence = self._write_events(
            txn, payloads, new_types, after_commit, first)
        store = self.store
        for payload in payloads:
            if isinstance(payload, LoggedEvents):
                meta.put_applied_position(txn, store.dbs, payload.partition, payload.seq)

        def stored() -> None:
            store.type_slots.update(new_types)
            store.next_sequence = max(store.next_sequence, self._sequence)

        return results, [stored, *after_commit]

    def _write_events(
        self,
        txn: lmdb.Transaction,
        batch: list[list[ValidEvent]],
        new_types: dict[str, int],
        after_commit: list[Callable[[], None]],
        sequence: int,
    ) -> tuple[list[Any], int]:
        """Write a commit's events: every per-event step is a list comprehension or one
        batch call (LMDB's getmulti/putmulti in key order, one kernel call for the state,
        one for encoding every record), because at tens of thousands of events per
        second each Python call per event shows in the throughput."""
        store = self.store
        dbs = store.dbs
        results: list[Any] = []
        fresh: list[ValidEvent] = []
        fresh_keys: list[bytes] = []
        seen_keys = [keys.pairs(map(_USER_ID, submitted), map(_EVENT_ID, submitted))
                     for submitted in batch]
        every_key = [k for ks in seen_keys for k in ks]
        held = event_table.held(txn, dbs, every_key)
        if not held and len(set(every_key)) == len(every_key):
            # The bulk case: nothing stored before and no id twice in the commit.
            fresh = [ev for submitted in batch for ev in submitted]
            fresh_keys = every_key
            results = [TrackResult(len(submitted), 0) for submitted in batch]
        else:
            for submitted, submitted_keys in zip(batch, seen_keys, strict=True):
                duplicates = 0
                for ev, key in zip(submitted, submitted_keys, strict=True):
                    if key in held:  # stored before, or earlier in this commit
                        duplicates += 1
                        continue
                    held.add(key)
                    fresh.append(ev)
                    fresh_keys.append(key)
                results.append(TrackResult(len(submitted) - duplicates, duplicates))
        if not fresh:
            return results, sequence

        # A row per user, numbered in key order (UTF-8 sorts as code points do): the
        # lookups and puts below want their keys sorted, and get them sorted already.
        user_ids = list(map(_USER_ID, fresh))
        ids = sorted(set(user_ids))
        rows = dict(zip(ids, range(len(ids)), strict=True))
        user_keys = [user_id.encode() for user_id in ids]
        row_of_key = dict(zip(user_keys, range(len(user_keys)), strict=True))
        state = self._state_rows(len(rows))
        for key, stored in users.stored_records(txn, dbs, user_keys):
            state[row_of_key[key]] = stored
        profiles = self._profiles_of(txn, rows, user_keys, row_of_key)
        changed, ignored = _apply_profile_updates(fresh, rows, profiles)
        if ignored:
            self.consents_ignored += ignored
            if time.monotonic() - self._consents_logged >= 60.0:  # at most once a minute
                self._consents_logged = time.monotonic()
                log.warning("consent channels not recorded (%d so far): a customer's "
                            "profile holds at most %d", self.consents_ignored,
                            MAX_CONSENT_CHANNELS)
        if not store.shared:
            for row in changed:
                self._cache_profile(user_keys[row].decode(), profiles[row])

        n = len(fresh)
        slot_of = {name: self._slot(name, new_types, txn)
                   for name in dict.fromkeys(ev.type for ev in fresh)}
        row_list = list(map(rows.__getitem__, user_ids))
        row_idx = np.array(row_list, np.int64)
        slots = np.fromiter(map(slot_of.__getitem__, map(_TYPE, fresh)), np.int64, n)
        times = np.fromiter(map(_TIME, fresh), np.float64, n)
        amounts = np.fromiter(map(_AMOUNT, fresh), np.float64, n)
        self.other_events += int(np.count_nonzero(slots == user_state.OTHER_TYPE_SLOT))
        hours = _local_hours(fresh, times, row_list, profiles)
        user_state.apply_events(
            state, row_idx, slots, times, amounts, hours, self.half_life_seconds
        )

        buffer, offsets = sparse_codec.encode_rows(state)
        raw, ends = buffer.tobytes(), offsets.tolist()
        users.put_encoded_records(
            txn, dbs, list(zip(user_keys, map(raw.__getitem__, map(slice, ends, ends[1:])),
                               strict=True)))
        if changed:
            users.put_profiles(txn, dbs, [(user_keys[row], profile)
                                          for row in changed
                                          if (profile := profiles[row]) is not None])
        sequence = event_table.append_all(txn, dbs, sequence, fresh_keys, _log_records(fresh))
        for hook in self._event_hooks:
            callback = hook(txn, fresh)
            if callback is not None:
                after_commit.append(callback)
        return results, sequence

    def _state_rows(self, n: int) -> np.ndarray:
        """``n`` zeroed state rows for a commit's users: the first ``n`` rows of a matrix
        kept between commits, zeroed in place. A fresh ``new_records`` matrix of a large
        commit (24,000 users: 45 MB) is mapped anew by the allocator each time, and the
        kernel then took a page fault for every other row it touched (py-spy of the server
        under ``nudge bench ingest``: ~10% of bare ingest's samples inside apply_events);
        zeroing pages already mapped costs a memset. It holds the largest commit's rows
        (at most max_batch_events x 1,856 bytes) for the life of the writer."""
        if self._scratch.shape[0] < n:
            self._scratch = user_state.new_records(n)
            return self._scratch
        rows = self._scratch[:n]
        rows.fill(0.0)
        return rows

    def _profiles_of(
        self, txn: lmdb.Transaction, rows: dict[str, int], user_keys: list[bytes],
        row_of_key: dict[bytes, int],
    ) -> list[UserProfile | None]:
        """Each row's profile: cached, stored, or None when it has none yet (a new user's
        is made only if an event changes it). A shared store's profiles are also written
        by other processes: always read them."""
        profiles: list[UserProfile | None] = [None] * len(rows)
        if self.store.shared:
            missing = user_keys
        else:
            cache = self._profiles
            missing = []
            for user_id, row in rows.items():
                cached = cache.get(user_id)
                if cached is None:
                    missing.append(user_keys[row])
                else:
                    profiles[row] = cached
        for key, profile in users.stored_profiles(txn, self.store.dbs, missing):
            row = row_of_key[key]
            profiles[row] = profile
            if not self.store.shared:
                self._cache_profile(key.decode(), profile)
        return profiles

    def _cache_profile(self, user_id: str, profile: UserProfile | None) -> None:
        if profile is None:
            return
        if len(self._profiles) >= PROFILE_CACHE and user_id not in self._profiles:
            self._profiles.clear()
        self._profiles[user_id] = profile

    def _slot(self, type_name: str, new_types: dict[str, int], txn: lmdb.Transaction) -> int:
        slot = self.store.type_slots.get(type_name)
        if slot is None:
            slot = new_types.get(type_name)
        if slot is not None:
            return slot
        taken = set(self.store.type_slots.values()) | set(new_types.values())
        limit = user_state.OTHER_TYPE_SLOT
        if type_name not in self._named:
            limit -= RESERVED_TYPE_SLOTS
        if len(taken) >= limit:  # the caller counts the events that land here
            return user_state.OTHER_TYPE_SLOT
        slot = min(set(range(user_state.OTHER_TYPE_SLOT)) - taken)  # reset frees slots
        new_types[type_name] = slot
        meta.put_type_slot(txn, self.store.dbs, type_name, slot)
        return slot

    # -- the type registry (admin) -------------------------------------------------------

    def name_types(self, names: Iterable[str]) -> Future[list[str]]:
        """The loaded campaigns name these types: give each a slot now (before any junk
        can take the last ones), and never count them with unknown types. Returns the
        ones left without a slot (the registry is full: reset it)."""
        wanted = sorted(set(names))
        self._named = frozenset(wanted)
        future: Future[list[str]] = Future()
        if all(name in self.store.type_slots for name in wanted):
            future.set_result([])  # nothing to write (e.g. a restart on a full disk)
            return future

        def job(txn: lmdb.Transaction) -> tuple[list[str], dict[str, int]]:
            new_types: dict[str, int] = {}
            for name in wanted:
                self._slot(name, new_types, txn)
            return [n for n in wanted if n not in new_types
                    and n not in self.store.type_slots], new_types

        def done(committed: Future[tuple[list[str], dict[str, int]]]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
                return
            missing, new_types = committed.result()
            self.store.type_slots = {**self.store.type_slots, **new_types}
            future.set_result(missing)

        self.submit_job(job).add_done_callback(done)
        return future

    def import_partition(
        self, rows: partition_rows.PartitionRows, stale: list[tuple[str, bytes]],
    ) -> Future[partition_rows.Imported]:
        """Replace a partition's rows (``stale``: ``partition_rows.stale_rows``) with a
        cluster snapshot's (``partition_rows``), in one commit. Here, not as a plain
        job, because the import takes event sequences and may register event types: both
        are this writer's to hand out, and the store's counters must move before the
        next commit begins (the future's callback runs in this thread, right after the
        commit)."""
        new_types: dict[str, int] = {}

        def job(txn: lmdb.Transaction) -> partition_rows.Imported:
            first = self._sequence
            known = set(self._new_types)

            def undo() -> None:
                for name in set(self._new_types) - known:
                    del self._new_types[name]
                self._sequence = first

            self.on_abort(undo)
            imported = partition_rows.import_rows(
                txn, self.store.dbs, rows, stale,
                lambda name: self._slot(name, self._new_types, txn), first)
            new_types.clear()
            new_types.update((n, s) for n, s in self._new_types.items() if n not in known)
            self._sequence = imported.end
            for user_id in imported.users:
                self.forget_cached(user_id)
            later.clear()
            if imported.unfolded:
                later.extend(h for hook in self._import_hooks
                             if (h := hook(txn, imported.unfolded)) is not None)
            return imported

        later: list[Callable[[], None]] = []

        def committed(done: Future[partition_rows.Imported]) -> None:
            if done.exception() is None:
                self.store.type_slots = {**self.store.type_slots, **new_types}
                self.store.next_sequence = max(self.store.next_sequence, done.result().end)
                for callback in later:
                    callback()

        future: Future[partition_rows.Imported] = Future()
        future.add_done_callback(committed)
        self._enqueue(Submission(future, job=job))
        return future

    def type_registry(self) -> list[tuple[str, int, bool]]:
        """(type, slot, named by a loaded campaign) for every registered type, by slot."""
        named = self._named
        return sorted(((n, s, n in named) for n, s in self.store.type_slots.items()),
                      key=lambda t: t[1])

    def reset_types(self) -> Future[list[str]]:
        """Free the slots of every type no loaded campaign names, zeroing them in every
        user's record (a type given the slot later starts from nothing). Returns the
        types removed; their later events get slots again, first come first served."""
        store = self.store

        def job(txn: lmdb.Transaction) -> list[str]:
            registered = meta.type_slots(txn, store.dbs)
            removed = sorted(n for n in registered if n not in self._named)
            for name in removed:
                meta.delete_type_slot(txn, store.dbs, name)
            if removed:
                users.clear_type_slots(txn, store.dbs, [registered[n] for n in removed])
            return removed

        future: Future[list[str]] = Future()

        def done(committed: Future[list[str]]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
                return
            removed = committed.result()
            store.type_slots = {n: s for n, s in store.type_slots.items() if n not in removed}
            self.other_events = 0
            future.set_result(removed)

        self.submit_job(job).add_done_callback(done)
        return future


def log_record(ev: ValidEvent) -> bytes:
    """The record an event is logged as (the event log here; the replicated log in
    cluster mode): its protobuf message, with the time set."""
    return _serialized(ev)


def _log_records(events: list[ValidEvent]) -> list[bytes]:
    """``_serialized`` of every event; the events that arrived as protobuf messages with
    their time set (a bulk stream's) are serialized by one C-level map."""
    protos = list(map(_PROTO, events))
    if None not in protos and all(map(_HAS_TIME, protos)):
        return list(map(_SERIALIZE, protos))
    return [_serialized(ev) for ev in events]


def _serialized(ev: ValidEvent) -> bytes:
    """The event log record of an event (its protobuf message, with the time set)."""
    proto = ev.proto if ev.proto is not None else _event_proto(ev)
    if not proto.HasField("time"):
        seconds, nanos = divmod(round(ev.time * 1e9), 1_000_000_000)
        proto.time.seconds, proto.time.nanos = seconds, nanos
    return proto.SerializeToString()


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


def _local_hours(
    events: list[ValidEvent], times: np.ndarray, rows: list[int],
    profiles: list[UserProfile | None],
) -> np.ndarray:
    """Each event's hour of day in its time zone (the event's own, else its user's
    profile's, else UTC), also kept on the event (``local_hour``) for the event hooks."""
    hours = (times % 86_400.0) / 3_600.0  # UTC, the common case, for all at once
    zones = list(map(_TZ, events))
    if any(zones) or any(p is not None and p.tz != "UTC" for p in profiles):
        for i, ev in enumerate(events):
            tz = zones[i]
            if tz is None:
                profile = profiles[rows[i]]
                tz = "UTC" if profile is None else profile.tz
            if tz != "UTC":
                hours[i] = local_hour(ev.time, tz)
    # setattr by a C-level map: the same as ``ev.local_hour = hour`` for each.
    deque(map(setattr, events, repeat("local_hour"), hours.tolist()), maxlen=0)
    return hours


def _apply_profile_updates(
    events: list[ValidEvent], rows: dict[str, int], profiles: list[UserProfile | None]
) -> tuple[set[int], int]:
    """Fold time zones and consents into profiles, last write (by event time) wins; a
    user without a profile gets one when an event changes it. Returns the rows changed
    and how many consent channels were past ``MAX_CONSENT_CHANNELS`` (not recorded)."""
    changed: set[int] = set()
    ignored = 0
    # Only events with a time zone, a consent or properties can change a profile.
    for ev in [ev for ev in events if ev.tz is not None or ev.consents or ev.numbers
               or ev.strings]:
        if ev.tz is None and not ev.consents and (
            ev.type in NO_PROFILE_PROPERTIES or (not ev.numbers and not ev.strings)
        ):
            continue
        row = rows[ev.user_id]
        profile = profiles[row]
        if profile is None:
            profile = profiles[row] = UserProfile()
        if (ev.numbers or ev.strings) and ev.type not in NO_PROFILE_PROPERTIES:
            previous = profile.last_properties.get(ev.type)
            if previous is None or ev.time >= previous[0]:
                profile.last_properties[ev.type] = (ev.time, ev.numbers, ev.strings)
                changed.add(row)
                if len(profile.last_properties) > MAX_PROPERTY_TYPES:
                    _forget_oldest_types(profile)
        if ev.tz is not None and ev.time >= profile.tz_time:
            profile.tz, profile.tz_time = ev.tz, ev.time
            changed.add(row)
        for channel, granted in ev.consents.items():
            consent = profile.consents.get(channel)
            if consent is None and len(profile.consents) >= MAX_CONSENT_CHANNELS:
                ignored += 1
            elif consent is None or ev.time >= consent[1]:
                profile.consents[channel] = (granted, ev.time)
                changed.add(row)
    return changed, ignored


