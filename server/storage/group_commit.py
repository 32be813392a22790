"""Group commit: work from many callers in one durable (fsync'd) write transaction.

One fsync'd LMDB commit costs milliseconds, so one commit per call is far too slow. Every
submission is queued to a single writer thread, which takes everything queued so far into
one write transaction, commits (fsync), and only then answers each caller. Concurrent
callers therefore share commits, and nothing is acknowledged before it is on disk. A batch
that hits MDB_MAP_FULL is retried whole after the map grows. Each submission runs in its
own nested transaction: one that fails (a bad key, a bug) is rolled back and fails alone,
with what it changed in memory undone (``on_abort``), while the others commit; a commit
that fails as a whole (a full disk) fails every submission in it.

Two kinds of submission share a batch: jobs (``submit_job``: any writes, run in order),
and batched work a subclass writes together, all of a batch's in one call (event
ingestion, ``ingest.EventWriter``), before the jobs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from nudge.server.errors import Internal, NudgeError, Unavailable, disk_full
from nudge.server.storage.store import Store

log = logging.getLogger(__name__)
# How long the writer lets a batch fill when the last one was an eighth of the largest
# (a bulk load, nudge bench ingest: TrackStream validating while the writer writes; see
# GroupCommitWriter.turn). With one event per new user each event dirties its own B-tree
# pages, so a commit of 24,000 events costs LMDB about 10 us of CPU an event and one of
# 16,000 about 14 (the raw floor, this box). Small traffic never waits: its batches are
# small.
LINGER_SECONDS = 0.15
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
        # Taken by the writer around a batch's writes (not its commit), and by callers
        # around per-event Python they can run at another time (Track's validation):
        # see ``turn``.
        self._turn = threading.Lock()
        self._cond = threading.Condition()
        self._closing = False
        self.commits = 0
        # The most the store's map grew in one commit (bytes): asked for before each
        # batch (Store.make_room), so a growing store does not redo commits on MAP_FULL.
        self._growth = 0
        # Batches redone because the map was full (for tests and a log line).
        self.map_full_retries = 0
        # Sizes queued and of the last batch taken: a bulk load's batches are let fill up
        # (``LINGER_SECONDS``).
        self._queued = 0
        self._last_batch = 0
        self._undo: list[Callable[[], None]] = []
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
    def turn(self) -> threading.Lock:
        """Held by the writer while it writes a batch (its commit, the fsync, is outside).

        LMDB's batch calls (``putmulti``, ``getmulti``) release the GIL for every row and
        take it back after: with another thread running Python beside them, each row's
        take-back is a hand-off between threads, and a put cost 3.5 µs instead of 0.75
        (50,000 puts beside a thread spinning in Python, this box, 2026-12-03). Track's
        validation is such a thread during a bulk stream. Holding this lock around it
        makes the two take turns: validation runs while the writer commits (fsync, no
        GIL) or waits, the batch's writes run with the GIL to themselves."""
        return self._turn

    @property
    def queue_depth(self) -> int:
        """Submissions waiting for the next group commit (for a gauge)."""
        return len(self._queue)

    def _enqueue(self, submission: Submission) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("server is shutting down; retry with the same event_ids")
            self._queue.append(submission)
            self._queued += submission.size
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

    def _begin_attempt(self) -> None:
        """A batch is about to be written (again, after the map grew)."""

    def on_abort(self, undo: Callable[[], None]) -> None:
        """(Writer thread, inside a job or event hook.) Run ``undo`` if the submission
        being written is rolled back: in-memory effects go with the writes."""
        self._undo.append(undo)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                half = self.max_batch_size // 2
                if (self._last_batch >= self.max_batch_size // 8 and self._queued < half
                        and not self._closing):
                    # A bulk load (the last batch was large): let this one fill to half the
                    # largest, or wait LINGER_SECONDS. Its callers validate while the
                    # writer waits; a large commit dirties fewer pages per event.
                    self._cond.wait_for(self._half_full, LINGER_SECONDS)
                if not self._queue:
                    return
                batch = [self._queue.popleft()]
                size = batch[0].size
                while self._queue and size + self._queue[0].size <= self.max_batch_size:
                    sub = self._queue.popleft()
                    size += sub.size
                    batch.append(sub)
                self._queued -= size
                self._last_batch = size
            self._commit_batch(batch)

    def _half_full(self) -> bool:
        return self._queued >= self.max_batch_size // 2 or self._closing

    def _commit_batch(self, batch: list[Submission]) -> None:
        store = self.store
        if self._growth:
            store.make_room(2 * self._growth)
        used = store.used_bytes()
        while True:
            undo: list[Callable[[], None]] = []
            try:
                results, errors, after_commit = self._write(batch, undo)
                break
            except lmdb.MapFullError:
                self._undo_all(undo)
                self.map_full_retries += 1
                log.info("store map full; grown to %d bytes, retrying", self.store.map_size())
            except Exception as exc:  # the commit fails as a whole; callers may retry
                self._undo_all(undo)
                self._batch_failed()
                failed = _caller_error(exc, self.store)
                for sub in batch:
                    sub.future.set_exception(failed)
                return
        self.commits += 1
        self._growth = max(self._growth, store.used_bytes() - used)
        for callback in after_commit:
            callback()
        for sub, result, error in zip(batch, results, errors, strict=True):
            if error is not None:
                sub.future.set_exception(error)
            else:
                sub.future.set_result(result)

    @staticmethod
    def _undo_all(undo: list[Callable[[], None]]) -> None:
        for fn in reversed(undo):
            try:
                fn()
            except Exception:
                log.exception("undoing a failed write's in-memory effects failed")

    def _nested(
        self, txn: lmdb.Transaction, undo: list[Callable[[], None]], run: Callable[[Any], T],
        retried: bool = False,
    ) -> tuple[T | None, NudgeError | None]:
        """``run(child)`` in a transaction nested in ``txn``: its writes and in-memory
        effects (``on_abort``) stay when it succeeds and are rolled back when it fails.
        MDB_MAP_FULL still fails the whole batch (retried after the map grows)."""
        self._undo = []
        try:
            with self.store.env.begin(write=True, parent=txn) as child:
                result = run(child)
        except lmdb.MapFullError:
            undo.extend(self._undo)
            raise
        except Exception as exc:
            self._undo_all(self._undo)
            self._batch_failed()
            if retried:  # written again one by one: the one that fails is logged then
                return None, Unavailable("")
            return None, _caller_error(exc, self.store)
        finally:
            mine, self._undo = self._undo, []
        undo.extend(mine)
        return result, None

    def _write(
        self, batch: list[Submission], undo: list[Callable[[], None]]
    ) -> tuple[list[Any], list[NudgeError | None], list[Callable[[], None]]]:
        results: list[Any] = [None] * len(batch)
        errors: list[NudgeError | None] = [None] * len(batch)
        after_commit: list[Callable[[], None]] = []
        batched = [i for i, sub in enumerate(batch) if sub.job is None]
        with self.store.write() as txn, self._turn:
            self._begin_attempt()
            if batched:
                payloads = [batch[i].payload for i in batched]
                together, error = self._nested(
                    txn, undo, lambda child: self._write_batched(child, payloads),
                    retried=len(batched) > 1)
                if error is None and together is not None:
                    written, after_commit = together
                    for i, result in zip(batched, written, strict=True):
                        results[i] = result
                elif len(batched) == 1:
                    errors[batched[0]] = error
                else:  # one of them failed: each alone, so only that one fails
                    for i in batched:
                        def one(child: lmdb.Transaction, p: Any = batch[i].payload) -> Any:
                            return self._write_batched(child, [p])

                        alone, errors[i] = self._nested(txn, undo, one)
                        if alone is not None:
                            results[i] = alone[0][0]
                            after_commit += alone[1]
            for i, sub in enumerate(batch):
                if sub.job is not None:
                    results[i], errors[i] = self._nested(txn, undo, sub.job)
        return results, errors, after_commit


def _caller_error(exc: BaseException, store: Store) -> NudgeError:
    """What a submission's caller is told when its write failed (logged here once)."""
    if isinstance(exc, NudgeError):
        log.error("write refused: %s", exc.message)
        return exc
    full = disk_full(exc, store.path)
    if full is not None:
        log.error("write refused: %s", full.message)
        return full
    if isinstance(exc, lmdb.Error) and not isinstance(exc, lmdb.BadValsizeError):
        log.error("write failed and was rolled back: %s", exc, exc_info=exc)
        return Unavailable("store write failed; retry later")
    # A bug, or a key LMDB cannot hold: the same request fails the same way again, so
    # UNAVAILABLE ("retry later") would have a producer resend it for ever (a poison
    # event stalling everything behind it). INTERNAL says: do not retry as it is.
    ref = uuid.uuid4().hex[:12]
    log.error("write failed and was rolled back (ref %s): %s", ref, exc, exc_info=exc)
    return Internal(f"store write failed on this request and would fail again; "
                    f"server log reference {ref}")
