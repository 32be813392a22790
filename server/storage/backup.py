"""``nudge backup`` and ``nudge restore``: a consistent hot copy of a store, and putting
one in place.

The backup opens the store read-only beside the running server (``readonly.py``: it takes
LMDB's reader lock, so the server's writer cannot reuse the pages it reads) and runs LMDB's
copy with compaction (``mdb_env_copy2(MDB_CP_COMPACT)``) inside one read transaction: the
copy is the store as of one commit, and every write acknowledged before the backup started
was committed (fsync'd) before its reply, so it is in the copy. Compaction writes only the
live pages, renumbered: the copy is as small as the data, and free pages (which may still
hold bytes of deleted or erased records) are not copied. It costs the server nothing but
disk reads; writes go on meanwhile (the old pages they replace are kept until the copy
ends, so the live file may grow by what is written during the copy).

Why a command beside the server and not an RPC: it needs no network, token or running
server (the same command copies a stopped store), and an RPC that writes to a path the
caller names would give every admin token a way to write files on the server's host.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nudge.server.errors import StoreError
from nudge.server.storage.readonly import ReadOnlyStore
from nudge.server.storage.tables import meta

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"


@dataclass(frozen=True)
class Copied:
    path: Path
    bytes: int
    entries: dict[str, int]
    schema_version: int | None


def _describe(path: Path) -> Copied:
    with ReadOnlyStore(path) as view, view.read() as txn:  # checks the schema version
        entries = {name: int(txn.stat(db)["entries"]) for name, db in view.dbs.items()}
        version = meta.schema_version(txn, view.dbs)
    return Copied(path, (path / DATA_FILE).stat().st_size, entries, version)


def backup(data_dir: Path | str, target: Path | str) -> Copied:
    """Copy the store at ``data_dir`` (running or not) into the new folder ``target``."""
    target = Path(target)
    if (target / DATA_FILE).exists():
        raise FileExistsError(f"{target}: already holds a store; back up into a new folder")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # a copy of everything the bank knows about its customers
    with ReadOnlyStore(data_dir) as view:
        view.env.copy(str(target), compact=True)
    os.chmod(target / DATA_FILE, 0o600)
    return _describe(target)


def in_use(data_dir: Path) -> bool:
    """Whether a process has the store at ``data_dir`` open: LMDB holds a shared lock on
    the first byte of its lock file for as long as the environment is open. Call it from
    a process that does not have the store open (``nudge restore``): POSIX record locks
    belong to the process, and closing any descriptor of the file drops them all."""
    lock_path = data_dir / LOCK_FILE
    if not lock_path.exists():
        return False
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


def restore(backup_dir: Path | str, data_dir: Path | str, force: bool = False) -> Copied:
    """Put the copy at ``backup_dir`` in place as the store at ``data_dir`` (stopped)."""
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    _describe(backup_dir)  # refuses a folder that is not a store of this schema
    if in_use(data_dir):
        raise StoreError(f"{data_dir}: a server has this store open; stop it first")
    if (data_dir / DATA_FILE).exists() and not force:
        raise FileExistsError(
            f"{data_dir}: already holds a store; give --force to replace it"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / (DATA_FILE + ".restoring")
    shutil.copyfile(backup_dir / DATA_FILE, staging)
    os.chmod(staging, 0o600)
    with open(staging, "rb") as f:
        os.fsync(f.fileno())
    os.replace(staging, data_dir / DATA_FILE)
    (data_dir / LOCK_FILE).unlink(missing_ok=True)  # reader slots of the old store
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return _describe(data_dir)
