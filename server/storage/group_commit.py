"""Group commit: work from many callers in one durable (fsync'd) write transaction.

One fsync'd LMDB commit costs milliseconds, so one commit per call is far too slow. Every
submission is queued to a single writer thread, which takes everything queued so far into
one write transaction, commits (fsync), and only then answers each caller. Concurrent
callers therefore share commits, and nothing is acknowledged before it is on disk. A batch
that hits MDB_MAP_FULL is retried whole after the map grows; a batch that fails otherwise
fails every submission in it, with an error the caller can act on.

Two kinds of submission share a batch: jobs (``submit_job``: any writes, run in order),
and batched work a subclass writes together, all of a batch's in one call (event
ingestion, ``ingest.EventWriter``), before the jobs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from nudge.server.errors import NudgeError, Unavailable, disk_full
from nudge.server.storage.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Submission:
    """A job to run inside the next group commit, or batched work (``payload``, counting
    ``size`` toward the batch limit) for the subclass's ``_write_batched``."""

    future: Future[Any]
    job: Callable[[lmdb.Transaction], Any] | None = None
    payload: Any = None
    size: int = 1


class GroupCommitWriter:
    """The single writer of a store: batches submissions into durable group commits."""

    def __init__(
        self, store: Store, max_batch_size: int = 50_000, name: str = "nudge-group-commit"
    ) -> None:
        self.store = store
        self.max_batch_size = max_batch_size
        self._queue: deque[Submission] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_job(self, job: Callable[[lmdb.Transaction], T]) -> Future[T]:
        """Run ``job(txn)`` inside the next group commit; the future resolves after it.

        The job may run more than once (a batch is retried after the map grows), so it
        must only write through ``txn`` and keep in-memory effects for after the commit.
        """
        future: Future[T] = Future()
        self._enqueue(Submission(future, job=job))
        return future

    @property
    def queue_depth(self) -> int:
        """Submissions waiting for the next group commit (for a gauge)."""
        return len(self._queue)

    def _enqueue(self, submission: Submission) -> None:
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

    # -- what a subclass adds ------------------------------------------------------------

    def _write_batched(
        self, txn: lmdb.Transaction, payloads: list[Any]
    ) -> tuple[list[Any], list[Callable[[], None]]]:
        """Write the batch's payloads (in order) into ``txn``: a result for each, and the
        callbacks to run once the commit is durable. Runs again if the batch is retried."""
        raise NotImplementedError(f"{type(self).__name__} takes jobs only")

    def _batch_failed(self) -> None:
        """A batch failed as a whole: drop what was cached from it."""

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
                while self._queue and size + self._queue[0].size <= self.max_batch_size:
                    sub = self._queue.popleft()
                    size += sub.size
                    batch.append(sub)
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[Submission]) -> None:
        while True:
            try:
                results, after_commit = self._write(batch)
                break
            except lmdb.MapFullError:
                log.info("store map full; grown to %d bytes, retrying", self.store.map_size())
            except Exception as exc:  # the batch fails as a whole; callers may retry
                self._batch_failed()
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
        self.commits += 1
        for callback in after_commit:
            callback()
        for sub, result in zip(batch, results, strict=True):
            sub.future.set_result(result)

    def _write(self, batch: list[Submission]) -> tuple[list[Any], list[Callable[[], None]]]:
        results: list[Any] = [None] * len(batch)
        after_commit: list[Callable[[], None]] = []
        batched = [i for i, sub in enumerate(batch) if sub.job is None]
        with self.store.write() as txn:
            if batched:
                written, after_commit = self._write_batched(
                    txn, [batch[i].payload for i in batched]
                )
                for i, result in zip(batched, written, strict=True):
                    results[i] = result
            for i, sub in enumerate(batch):
                if sub.job is not None:
                    results[i] = sub.job(txn)
        return results, after_commit
