"""The LMDB store: one environment, named databases, durable group-committed writes.

Databases:

- ``meta``: schema version, event type registry (``type/<name>`` -> slot).
- ``users``: user id -> fixed-layout record (kernels/user_state.py), raw float64 bytes.
- ``profiles``: user id -> JSON with time zone and consents (strings, last write wins by
  event time).
- ``seen``: event id -> event log sequence number (idempotency).
- ``events``: 8-byte big-endian sequence -> serialized Event (replay and insights).
- ``risk``: user id -> risk baseline (kernels/risk.py layout), raw float64 bytes; the
  population baseline lives in ``meta`` under ``risk/population``.
- ``transactions``: transaction id -> JSON of its score, reasons, hold and label
  (idempotency of ScoreTransaction, and the features a GENUINE label folds in).
- ``decisions``: decision id -> JSON record (context, choice, propensity, model version,
  seed, guardrail trace, outcome): the audit trail and the learner's input.
- ``open``: user id + NUL + decision id -> empty, decisions awaiting their goal.
- ``deadlines``: 8-byte window end (ms) + decision id -> empty, for expiry with reward 0.
- ``rewards``: 8-byte sequence -> decision id, settled decisions in order; the learner
  consumes it from the sequence stored with its model, so nothing is learned twice.
- ``models``: campaign -> the learned policy snapshot and context statistics.
- ``contacts``: user id -> recent contacts (time, channel, campaign) for frequency caps.
- ``deliveries``: delivery id -> JSON (the outbox's records: scheduled, leased, sent,
  failed, cancelled); ``outbox``: 8-byte due time (ms) + delivery id -> empty, what is
  due or whose lease expires, in time order; ``user_deliveries``: user id + NUL +
  delivery id -> empty, for cancellation and cross-channel coordination.
- ``triggered``: event id -> JSON of a trigger that fired, until its decision is made
  and scheduled (so a crash between the two loses no journey).

Every write transaction commits with fsync before anything is acknowledged (``sync=True``).
The map grows by doubling when a write hits MDB_MAP_FULL; LMDB only allows resizing when
no transaction of this process is open, so reads pass through ``_ReadGate``.

A ``shared`` store is opened by several server processes at once (``nudge serve
--workers N``): LMDB lets their readers run in parallel and serialises their writers on
its own lock. What this process caches from the store (the type registry, the next event
sequence) is then re-read inside every write transaction, and a map grown by another
process is adopted when a transaction reports MDB_MAP_RESIZED.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import user_state
from nudge.server.errors import SchemaMismatch, StoreError, StoreFull

SCHEMA_VERSION = 1
SCHEMA_KEY = b"schema_version"
TYPE_PREFIX = b"type/"
DATABASES = (
    "meta", "users", "profiles", "seen", "events", "risk", "transactions",
    "decisions", "open", "deadlines", "rewards", "models", "contacts",
    "deliveries", "outbox", "user_deliveries", "triggered",
)
MAX_DBS = 32


class _ReadGate:
    """Lets many readers in at once, and a resize in alone.

    LMDB's ``mdb_env_set_mapsize`` must not run while this process has a transaction open.
    Readers pay one uncontended lock per entry and exit (every RPC reads): a resize, rare,
    waits for them by polling rather than making every reader signal a condition.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._resizing = False

    def enter(self) -> None:
        while True:
            with self._lock:
                if not self._resizing:
                    self._readers += 1
                    return
            time.sleep(0.0002)

    def leave(self) -> None:
        with self._lock:
            self._readers -= 1

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            self._resizing = True
        try:
            while True:
                with self._lock:
                    if not self._readers:
                        break
                time.sleep(0.0002)
            yield
        finally:
            with self._lock:
                self._resizing = False


class _ReadTxn:
    """A short read transaction as a plain context manager (no generator: it runs on
    every RPC)."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        while True:
            self._store._gate.enter()
            try:
                self._txn = self._store.env.begin(buffers=True)
                return self._txn
            except lmdb.MapResizedError:
                self._store._gate.leave()
                self._store.adopt_map_size()
            except BaseException:
                self._store._gate.leave()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._txn is not None:
                self._txn.abort()
        finally:
            self._store._gate.leave()


@dataclass
class UserProfile:
    """The string side of a user's state, each part with the event time that set it:
    time zone, consents, and the properties of the latest event of each recent type
    (message templates are filled from these)."""

    tz: str = "UTC"
    tz_time: float = float("-inf")
    consents: dict[str, tuple[bool, float]] = field(default_factory=dict)
    # event type -> (time, numbers, strings) of the latest event of that type.
    last_properties: dict[str, tuple[float, dict[str, float], dict[str, str]]] = field(
        default_factory=dict
    )

    def to_bytes(self) -> bytes:
        # orjson: profiles are rewritten for every user in every commit, so JSON speed
        # shows in ingestion throughput. It writes -inf as null, hence the mapping.
        return orjson.dumps(
            {
                "tz": self.tz,
                "tz_time": None if self.tz_time == float("-inf") else self.tz_time,
                "consents": self.consents,
                "props": self.last_properties,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview | None) -> UserProfile:
        if raw is None:
            return cls()
        data: dict[str, Any] = orjson.loads(raw)
        consents = {k: (bool(v[0]), float(v[1])) for k, v in data["consents"].items()}
        props = {k: (float(v[0]), v[1], v[2]) for k, v in data["props"].items()}
        tz_time = float("-inf") if data["tz_time"] is None else float(data["tz_time"])
        return cls(data["tz"], tz_time, consents, props)

    def properties(self, types: tuple[str, ...] | None = None) -> dict[str, float | str]:
        """Latest value of every property across the given event types (all when None);
        a newer event's value wins."""
        chosen = [
            v for k, v in self.last_properties.items() if types is None or k in types
        ]
        merged: dict[str, float | str] = {}
        for _, numbers, strings in sorted(chosen, key=lambda v: v[0]):
            merged.update(numbers)
            merged.update(strings)
        return merged


@dataclass(frozen=True)
class UserView:
    """A user's record as plain arrays, one per field (copies: safe after the txn ends)."""

    user_id: str
    scalars: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    type_last: np.ndarray
    hours: np.ndarray
    profile: UserProfile

    @classmethod
    def from_record(cls, user_id: str, record: np.ndarray, profile: UserProfile) -> UserView:
        u = user_state
        return cls(
            user_id=user_id,
            scalars=record[: u.N_SCALARS],
            counts=record[u.COUNTS : u.COUNTS + u.N_TYPES],
            totals=record[u.TOTALS : u.TOTALS + u.N_TYPES],
            type_last=record[u.TYPE_LAST : u.TYPE_LAST + u.N_TYPES],
            hours=record[u.HOURS : u.HOURS + u.N_HOURS],
            profile=profile,
        )


# LMDB maps its lock file (sparse) and writes reader slots into it: on a full disk, a write
# to a page not yet allocated kills the process with SIGBUS. Allocate the pages up front.
LOCK_FILE_BYTES = 64 << 10


def _reserve_lock_file(path: Path) -> None:
    fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"no space left on the disk ({exc.strerror})") from exc
    finally:
        os.close(fd)


class Store:
    """One LMDB environment with nudge's named databases."""

    def __init__(
        self,
        path: Path | str,
        map_size: int = 64 << 20,
        max_map_size: int = 1 << 40,
        shared: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_map_size = max_map_size
        self.shared = shared
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            _reserve_lock_file(self.path)
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=MAX_DBS,
                subdir=True,
                sync=True,
                metasync=True,
                readahead=False,
                max_spare_txns=8,
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        self._gate = _ReadGate()
        self._write_lock = threading.Lock()
        try:
            self.dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
            self._check_schema()
        except lmdb.Error as exc:  # e.g. a new store on a full disk
            self.env.close()
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        self.type_slots: dict[str, int] = self._load_type_registry()
        self._type_names: dict[int, str] = {}
        self.next_sequence = self._last_sequence() + 1

    # -- opening -------------------------------------------------------------------------

    def _check_schema(self) -> None:
        with self.env.begin(db=self.dbs["meta"], write=True) as txn:
            raw = txn.get(SCHEMA_KEY)
            if raw is None:
                if self._has_data(txn):
                    raise SchemaMismatch(
                        f"store at {self.path} has data but no schema version; refusing to "
                        "guess its layout"
                    )
                txn.put(SCHEMA_KEY, str(SCHEMA_VERSION).encode())
                return
        found = int(bytes(raw))
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(
                f"store at {self.path} has schema version {found}, this nudge reads version "
                f"{SCHEMA_VERSION}; migrate it or point --data-dir elsewhere"
            )

    def _has_data(self, txn: lmdb.Transaction) -> bool:
        return any(txn.stat(self.dbs[name])["entries"] for name in ("users", "events"))

    def _load_type_registry(self, txn: lmdb.Transaction | None = None) -> dict[str, int]:
        if txn is None:
            with self.env.begin() as own:
                return self._load_type_registry(own)
        slots: dict[str, int] = {}
        cursor = txn.cursor(db=self.dbs["meta"])
        if cursor.set_range(TYPE_PREFIX):
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(TYPE_PREFIX):
                    break
                slots[key[len(TYPE_PREFIX) :].decode()] = int(bytes(value))
        return slots

    def _last_sequence(self, txn: lmdb.Transaction | None = None) -> int:
        if txn is None:
            with self.env.begin() as own:
                return self._last_sequence(own)
        cursor = txn.cursor(db=self.dbs["events"])
        if cursor.last():
            return int.from_bytes(bytes(cursor.key()), "big")
        return 0

    def refresh_types(self, txn: lmdb.Transaction | None = None) -> None:
        """Re-read the event type registry (a shared store's other processes add types).

        Replaces the dict rather than mutating it: readers iterating the old one are safe.
        """
        if txn is None:
            with self.read() as own:
                slots = self._load_type_registry(own)
        else:
            slots = self._load_type_registry(txn)
        if slots != self.type_slots:
            self.type_slots = slots

    # -- reading -------------------------------------------------------------------------

    def read(self) -> _ReadTxn:
        """A short read transaction; values are zero-copy buffers valid inside it."""
        return _ReadTxn(self)

    def get_user_values(self, user_id: str) -> tuple[list[float], UserProfile] | None:
        """The user's record as one plain list (RECORD_LEN floats, the layout of
        kernels/user_state.py) and the profile; None if no event was ever stored. For
        readers that need Python values, not arrays (GetUser): one C call, no NumPy."""
        key = user_id.encode()
        with self.read() as txn:
            raw = txn.get(key, db=self.dbs["users"])
            if raw is None:
                return None
            values = raw.cast("d").tolist()
            profile = UserProfile.from_bytes(txn.get(key, db=self.dbs["profiles"]))
        return values, profile

    def get_user(self, user_id: str) -> UserView | None:
        """The user's record as plain arrays, or None if no event was ever stored."""
        key = user_id.encode()
        with self.read() as txn:
            raw = txn.get(key, db=self.dbs["users"])
            if raw is None:
                return None
            record = np.frombuffer(raw, dtype=np.float64).copy()
            profile = UserProfile.from_bytes(txn.get(key, db=self.dbs["profiles"]))
        return UserView.from_record(user_id, record, profile)

    def type_names(self) -> dict[int, str]:
        """Slot -> event type name (cached; the registry only grows)."""
        if len(self._type_names) != len(self.type_slots) + 1:
            names = {slot: name for name, slot in self.type_slots.items()}
            names[user_state.OTHER_TYPE_SLOT] = "(other)"
            self._type_names = names
        return self._type_names

    def counts(self) -> dict[str, int]:
        with self.read() as txn:
            return {name: txn.stat(db)["entries"] for name, db in self.dbs.items()}

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def used_bytes(self) -> int:
        """Bytes of the map in use (last page number × page size)."""
        return int((self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"])

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """One durable write transaction (fsync on commit). Only one at a time.

        Raises lmdb.MapFullError to the caller after growing the map, so the caller
        retries its whole batch in a fresh transaction.
        """
        with self._write_lock:
            while True:
                try:
                    txn = self.env.begin(write=True)
                    break
                except lmdb.MapResizedError:
                    self.adopt_map_size()
            try:
                with txn:
                    if self.shared:  # another process may have written since our last look
                        self.refresh_types(txn)
                        self.next_sequence = self._last_sequence(txn) + 1
                    yield txn
            except lmdb.MapFullError:
                self.grow()
                raise

    def adopt_map_size(self) -> None:
        """Take the map size another process of a shared store grew the map to."""
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def grow(self) -> None:
        """Double the map size (LMDB needs no open transaction in this process), up to
        max_map_size; past it, writes fail with StoreFull and reads go on."""
        current = self.map_size()
        if current >= self.max_map_size:
            raise StoreFull(
                f"the store is full: its map reached max_map_size ({self.max_map_size} "
                "bytes); reads still work — free disk space and raise max_map_size"
            )
        with self._gate.exclusive():
            self.env.set_mapsize(min(current * 2, self.max_map_size))

    def close(self) -> None:
        with self._gate.exclusive():
            self.env.sync(True)
            self.env.close()
