"""The LMDB store: one environment, named databases, durable group-committed writes.

Databases, each with the module that owns its keys and values (``server/storage/tables/``):

- ``meta``: schema version and event type registry (``tables.meta``); single keys of
  other tables live here too, named by their owners (``tables.models``,
  ``tables.risk_baselines``).
- ``users``, ``profiles``: per-user state records and profiles (``tables.users``).
- ``events``, ``seen``: the event log and the event ids it holds (``tables.events``).
- ``risk``: per-user risk baselines (``tables.risk_baselines``).
- ``transactions``: scored transactions and their labels (``tables.transactions``).
- ``decisions``: decision records, the audit trail and learner input (``tables.decisions``).
- ``open``: decisions awaiting their goal, by user (``tables.open_decisions``).
- ``deadlines``: decisions by goal window end, for expiry (``tables.deadlines``).
- ``rewards``: settled decisions in order, the learner's log (``tables.rewards``).
- ``models``: learned policy snapshots (``tables.models``).
- ``contacts``: recent contacts per user, for frequency caps (``tables.contacts``).
- ``deliveries``, ``outbox``, ``user_deliveries``: the outbox (``tables.deliveries``).
- ``triggered``: journey triggers awaiting their decision (``tables.triggered``).
- ``insights``: per-user insights summaries (``tables.insights``).

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
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np

from nudge.kernels import user_state
from nudge.server.errors import StoreError, StoreFull
from nudge.server.storage.tables import events, meta, migrations, users
from nudge.server.storage.tables.users import UserProfile

DATABASES = (
    "meta", "users", "profiles", "seen", "events", "risk", "transactions",
    "decisions", "open", "deadlines", "rewards", "models", "contacts",
    "deliveries", "outbox", "user_deliveries", "triggered", "insights",
)
MAX_DBS = 32
T = TypeVar("T")
log = logging.getLogger(__name__)


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


def has_data(txn: lmdb.Transaction, dbs: dict[str, Any]) -> bool:
    """Whether a store holds users or events (one without a schema version is refused)."""
    return any(txn.stat(dbs[name])["entries"] for name in (users.USERS, events.EVENTS)
               if name in dbs)


# LMDB maps its lock file (sparse) and writes reader slots into it: on a full disk, a write
# to a page not yet allocated kills the process with SIGBUS. Allocate the pages up front.
LOCK_FILE_BYTES = 64 << 10


def _make_private(path: Path) -> None:
    """The folder 0700 and the store's files 0600, whatever the umask: the store holds
    every user's behaviour."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for name in ("data.mdb", "lock.mdb"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path / name, 0o600)


def _reserve_lock_file(path: Path) -> None:
    fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CREAT, 0o600)
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
            _make_private(self.path)
            _reserve_lock_file(self.path)
            self.env = lmdb.open(
                str(self.path),
                mode=0o600,
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
        self._type_names_key: tuple[int, int] | None = None
        self.next_sequence = self._last_sequence() + 1

    # -- opening -------------------------------------------------------------------------

    def _check_schema(self) -> None:
        with self.env.begin(write=True) as txn:
            found = meta.schema_version(txn, self.dbs)
            if meta.check_schema(txn, self.dbs, self.path, has_data(txn, self.dbs)):
                if found is None:
                    meta.put_schema_version(txn, self.dbs)
                else:  # an older layout: upgraded in place, in this one transaction
                    done = migrations.migrate(txn, self.dbs, found)
                    log.warning("store at %s migrated from schema version %d to %d (%s)",
                                self.path, found, meta.SCHEMA_VERSION,
                                ", ".join(f"{n} {k} keys" for k, n in done.items()))

    def _load_type_registry(self, txn: lmdb.Transaction | None = None) -> dict[str, int]:
        if txn is None:
            with self.env.begin() as own:
                return self._load_type_registry(own)
        return meta.type_slots(txn, self.dbs)

    def _last_sequence(self, txn: lmdb.Transaction | None = None) -> int:
        if txn is None:
            with self.env.begin() as own:
                return self._last_sequence(own)
        return events.last_sequence(txn, self.dbs)

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

    def with_user_bytes(
        self, user_id: str, use: Callable[[bytes | memoryview, bytes | memoryview | None], T]
    ) -> T | None:
        """``use(record, profile)`` on the user's stored bytes (``users.stored_bytes``),
        inside one read transaction; None if no event was ever stored. ``use`` must not
        keep the views: they are valid only until it returns."""
        with self.read() as txn:
            found = users.stored_bytes(txn, self.dbs, user_id)
            return None if found is None else use(*found)

    def get_user(self, user_id: str) -> UserView | None:
        """The user's record as plain arrays, or None if no event was ever stored."""
        with self.read() as txn:
            record = users.record(txn, self.dbs, user_id)
            if record is None:
                return None
            profile = users.profile(txn, self.dbs, user_id)
        return UserView.from_record(user_id, record, profile)

    def type_names(self) -> dict[int, str]:
        """Slot -> event type name (cached)."""
        key = (id(self.type_slots), len(self.type_slots))
        if self._type_names_key != key:  # a reset replaces the dict; new types grow it
            names = {slot: name for name, slot in self.type_slots.items()}
            names[user_state.OTHER_TYPE_SLOT] = "(other)"
            self._type_names, self._type_names_key = names, key
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

    def make_room(self, nbytes: int) -> None:
        """Grow the map now (doubling, as after MDB_MAP_FULL) if fewer than ``nbytes`` are
        free at its end, so the next write does not fill it and have to be redone whole
        (the group commit's writer asks before each batch: a store growing from empty
        to 1,000,000 new users hit MAP_FULL five times, each time redoing a commit of
        ~24,000 events, about a tenth of the run's work). Never past max_map_size: there
        the write is tried, and fails with StoreFull only if it does not fit. Freed pages
        LMDB reuses make this an overestimate, which only grows the map a little sooner."""
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        size = int(info["map_size"])
        if used + nbytes <= size or size >= self.max_map_size:
            return
        with self._gate.exclusive():
            while used + nbytes > size and size < self.max_map_size:
                size = min(size * 2, self.max_map_size)
            self.env.set_mapsize(size)

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
