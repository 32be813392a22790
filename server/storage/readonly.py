"""A read-only view of a store, for offline tools (``nudge explain``, ``nudge evaluate``).

Safe beside a running server: it takes LMDB's reader lock (``lock=True``), so the server's
writer cannot reuse the pages a read transaction here still sees (without it a reader of a
live store may read pages being overwritten). It checks the schema version like
``Store`` does, and writes nothing: no schema version, no database, no map growth.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import lmdb

from nudge.server.errors import StoreError
from nudge.server.storage.store import DATABASES, MAX_DBS, has_data
from nudge.server.storage.tables import meta


class ReadOnlyStore:
    """The store at ``path``, opened read-only; ``dbs`` are the databases it holds."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise FileNotFoundError(f"{self.path}: no nudge store here (data.mdb missing)")
        try:
            self.env = lmdb.open(str(self.path), readonly=True, lock=True, max_dbs=MAX_DBS,
                                 subdir=True)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        try:
            self.dbs = self._open_dbs()
            with self.env.begin() as txn:
                if meta.NAME not in self.dbs:
                    raise StoreError(f"{self.path}: not a nudge store (no meta database)")
                meta.check_schema(txn, self.dbs, self.path, has_data(txn, self.dbs))
        except BaseException:
            self.env.close()
            raise

    def _open_dbs(self) -> dict[str, lmdb._Database]:
        dbs = {}
        for name in DATABASES:
            try:
                dbs[name] = self.env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:  # made by a nudge that did not have it yet: empty
                continue
        return dbs

    def read(self) -> lmdb.Transaction:
        """A read transaction (use it as a context manager); values are buffers valid
        inside it."""
        return self.env.begin(buffers=True)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_readonly(path: Path | str) -> ReadOnlyStore:
    """Open the store at ``path`` for reading beside a running server (see the module)."""
    return ReadOnlyStore(path)
