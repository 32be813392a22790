"""One model for the cluster, learned from every partition, exactly once.

Each node settles the decisions of the partitions it applies (goal events, ReportOutcome's
logged outcomes, expiry) in its own LMDB, appending them to its local rewards log as on
one machine. In cluster mode that node's learner thread does not learn from them: it
**ships** each decision it settled (the decision record with its reward) to the
JetStream stream ``NUDGE_REWARDS``, on a subject of its own
(``nudge.rewards.<hash of the decision id>``), published with
``Nats-Expected-Last-Subject-Sequence: 0``: JetStream stores the first and refuses every
later copy, whenever it comes. Copies do come: a node resends after a crash what it had
not yet marked shipped, and a node taking a partition it never held applies its log from
the start and settles its old decisions again. A per-decision subject makes the
deduplication exact and permanent, where ``Nats-Msg-Id`` would forget after its window.

**One learner.** The node holding the lease ``learner`` (the lease bucket's TTL, renewed
each lease round like a partition's) reads ``NUDGE_REWARDS`` in stream order from the
position its models were learned up to, learns with the same code as on one machine
(decisions/learner.py), and every ``PUBLISH_EVERY_SECONDS`` publishes the models: the
blob (every campaign's model) to the object store ``nudge_model_blobs``, then the head
(KV ``nudge_models``/``head``: the blob's name, the stream position, how many outcomes
the models learned) with a compare-and-set on the head's revision. The position travels
with the models, so a new leader resumes exactly where the last published models stop:
what the dead leader learned after its last publish is learned again from the stream, and
counts once. The compare-and-set fences a leader that lost its lease without knowing: its
next publish fails, and it stops and reloads.

Why a leader and not per-partition sufficient statistics merged: the posterior update is
sequential (each batch's posterior is the prior of the next) and the context statistics
feed the features, so merging needs every learner's maths to be written as mergeable
sums; one learner reuses the single-machine learner unchanged, and learning is a small
part of the work (a batch of 1,000 outcomes in milliseconds).

**Every node adopts** the published models: each lease round it reads the head and, when
it moved, loads the blob. GetServerInfo shows the model version and position each node
decides with, metrics ``nudge_cluster_model_position`` and
``nudge_cluster_learned_outcomes``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
    StreamConfig,
)

from nudge.server.cluster.jetstream import ensure_key_value, ensure_stream
from nudge.server.cluster.kv_lease import KvLease
from nudge.server.cluster.population_sync import BLOB_KEY as POPULATION_KEY
from nudge.server.cluster.population_sync import ClusterPopulation
from nudge.server.decisions.models import encode_model
from nudge.server.errors import Unavailable
from nudge.server.storage.tables import models as model_table
from nudge.server.storage.tables.decisions import DecisionRecord

if TYPE_CHECKING:
    from nudge.server.cluster.node import ClusterNode
    from nudge.server.decisions.learner import Learner

log = logging.getLogger("nudge.server.cluster")

REWARDS_STREAM = "NUDGE_REWARDS"
REWARDS_SUBJECT = "nudge.rewards"
MODELS_BUCKET = "nudge_models"
BLOBS_BUCKET = "nudge_model_blobs"
HEAD = "head"
LEARNER_KEY = "learner"  # in the lease bucket
# JetStream's answer to a publish whose subject already holds a message.
WRONG_LAST_SEQUENCE = 10071
PUBLISH_EVERY_SECONDS = 1.0
LEARN_EVERY_SECONDS = 0.1
SHIP_TIMEOUT_SECONDS = 10.0
ROUNDS_PER_LEASE = 4  # as the partitions' leases: a lease survives three missed rounds
ROUND_TIMEOUT_SECONDS = 5.0


def reward_subject(decision_id: str) -> str:
    """The subject of a decision's settled outcome (one message per decision, ever)."""
    return f"{REWARDS_SUBJECT}.{blake2b(decision_id.encode(), digest_size=16).hexdigest()}"


def encode_blob(models: dict[str, bytes], extra: dict[str, Any] | None = None) -> bytes:
    """Every campaign's model, and entries whose names start with "@" (the fraud
    population), as one JSON blob."""
    blob: dict[str, Any] = {n: base64.b64encode(m).decode() for n, m in models.items()}
    return json.dumps({**blob, **(extra or {})}).encode()


def decode_blob(raw: bytes) -> tuple[dict[str, model_table.StoredModel], dict[str, Any]]:
    """The models of a blob, and its "@" entries."""
    blob = json.loads(raw)
    return ({n: model_table.decode(base64.b64decode(m)) for n, m in blob.items()
             if not n.startswith("@")},
            {n: v for n, v in blob.items() if n.startswith("@")})


class ClusterModels:
    """Ships this node's settled outcomes, learns them when this node holds the learner's
    lease, and adopts the published models (see the module docstring). Runs on the
    cluster node's loop; ``ship`` is called from the learner thread."""

    def __init__(self, node: ClusterNode, learner: Learner,
                 population: ClusterPopulation | None = None) -> None:
        self.node = node
        self.learner = learner
        # The fraud population: shipped, summed and published with the models.
        self.population = population
        self.leading = False
        self.position = 0  # rewards stream sequence the models in use learned up to
        self.learned = 0  # outcomes those models learned (over every leader)
        self.shipped = 0
        self.published = 0
        self._head_revision = 0
        self._lease: KvLease | None = None  # the learner's, once the bucket is open
        self._fence = 0.0
        self._blobs: Any = None
        self._heads: Any = None
        self._subscription: Any = None
        self._buffer: list[tuple[int, DecisionRecord]] = []
        self._dirty = False
        self._last_publish = 0.0
        self._previous_blob: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Learning, publishing and adopting one at a time: a publish must never catch the
        # models halfway through a batch (ahead of the position it stores).
        self._models_lock = asyncio.Lock()
        learner.ship = self.ship
        learner.expires = node.expires_here

    # -- setup (on the loop) ---------------------------------------------------------------

    async def setup(self) -> None:
        js, replicas = self.node.js, self.node.replicas
        await ensure_stream(js, StreamConfig(
            name=REWARDS_STREAM, subjects=[f"{REWARDS_SUBJECT}.*"], num_replicas=replicas,
            storage=StorageType.FILE))
        self._heads = await ensure_key_value(js, KeyValueConfig(
            bucket=MODELS_BUCKET, replicas=replicas, history=1))
        try:
            self._blobs = await js.object_store(BLOBS_BUCKET)
        except nats.js.errors.NotFoundError:
            try:
                self._blobs = await js.create_object_store(BLOBS_BUCKET, ObjectStoreConfig(
                    bucket=BLOBS_BUCKET, replicas=replicas, storage=StorageType.FILE))
            except nats.js.errors.BadRequestError:
                self._blobs = await js.object_store(BLOBS_BUCKET)
        if self.population is not None:
            await self.population.setup()
        await self._follow()  # decide with the cluster's models from the first call

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._learn_loop()), loop.create_task(self._lease_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.leading:
            if self._dirty:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._publish(), ROUND_TIMEOUT_SECONDS)
            await self._stop_leading(release=True)

    # -- shipping (from the learner thread) ------------------------------------------------

    def ship(self, records: list[DecisionRecord]) -> None:
        """Publish decisions this node settled to the rewards stream; returns once
        JetStream stored each (or already held it), raises otherwise (the learner thread
        tries the same records again at its next step).

        Every one, whether or not this node still owns the user's partition: a node
        settles only while it owns a partition (applying its log, or expiring), and a
        lease can lapse between the settle and the ship — a NATS server dying makes the
        ship fail and the lease expire together. Skipping those would lose them for good
        when the same node takes the partition back (it resumes after the settle, so it
        never settles them again). Shipping them is safe: the stream keeps the first
        copy of a decision and refuses any other, so each is learned once."""
        if records and self.node.closing:  # kept in the rewards log: shipped after a restart
            raise Unavailable("cluster: closing; settled outcomes are shipped at the next start")
        if records:
            try:
                self.node.run(self._ship(records), SHIP_TIMEOUT_SECONDS + 2.0)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                raise Unavailable(f"cluster: settled outcomes not shipped yet ({exc!r}); "
                                  "retried at the next step") from None

    async def _ship(self, records: list[DecisionRecord]) -> None:
        async def one(record: DecisionRecord) -> None:
            try:
                await self.node.js.publish(
                    reward_subject(record.decision_id), record.to_bytes(),
                    headers={"Nats-Expected-Last-Subject-Sequence": "0"},
                    timeout=SHIP_TIMEOUT_SECONDS)
                self.shipped += 1
            except nats.js.errors.APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise  # shipped already (by this node before a crash, or another)

        await asyncio.gather(*(one(r) for r in records))

    # -- each lease round (on the loop) ----------------------------------------------------

    async def _lease_loop(self) -> None:
        """A loop of its own, beside the partitions' lease rounds: publishing or loading
        models never delays a partition lease's renewal."""
        while True:
            await asyncio.sleep(self.node.lease_seconds / ROUNDS_PER_LEASE)
            try:
                # Bounded: reading a blob waits on its chunks with no timeout of its own,
                # and a NATS server dying meanwhile must not stop this node adopting models.
                await asyncio.wait_for(self.lease_round(time.monotonic()),
                                       max(ROUND_TIMEOUT_SECONDS, self.node.lease_seconds * 2))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: learner round failed: %r", exc)

    async def lease_round(self, started: float) -> None:
        """Renew or take the learner's lease; follow the published models when not
        leading; publish when leading and something was learned."""
        if self._lease is None:
            self._lease = KvLease(self.node.kv, LEARNER_KEY, self.node.node_id)
        lease = self._lease
        if self.leading:
            try:
                if await lease.keep():
                    self._fence = started + self.node.lease_seconds * self.node.fence_fraction
                else:
                    log.warning("cluster: lost the learner's lease")
                    await self._stop_leading(release=False)
            except Exception as exc:
                log.warning("cluster: could not renew the learner's lease: %s", exc)
        elif not self.node.closing and await lease.take():  # False: another node leads
            self._fence = started + self.node.lease_seconds * self.node.fence_fraction
            await self._start_leading()
        if not self.leading:
            await self._follow()
        elif self._dirty and time.monotonic() - self._last_publish >= PUBLISH_EVERY_SECONDS:
            await self._publish()
        if self.population is not None and not self.node.closing:
            await self.population.ship()

    async def _start_leading(self) -> None:
        self._head_revision = 0  # read the head again, whatever this node adopted
        await self._follow()
        self.leading = True
        self._buffer = []
        start = self.position + 1

        async def deliver(msg: Any) -> None:
            self._buffer.append((msg.metadata.sequence.stream,
                                 DecisionRecord.from_bytes(msg.data)))

        self._subscription = await self.node.js.subscribe(
            f"{REWARDS_SUBJECT}.*", cb=deliver, ordered_consumer=True,
            idle_heartbeat=self.node.heartbeat_seconds,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=start))
        if self.population is not None:
            await self.population.start_leading()
        log.info("cluster: %s leads the learner, from position %d of %s (%d outcomes "
                 "learned)", self.node.node_id, self.position, REWARDS_STREAM, self.learned)

    async def _stop_leading(self, release: bool) -> None:
        self.leading = False
        self._dirty = False
        self._buffer = []
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        if self.population is not None:
            await self.population.stop_leading()
        if release and self._lease is not None:
            await self._lease.release()
        self._head_revision = 0  # adopt the published models again: ours may be ahead

    async def _learn_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LEARN_EVERY_SECONDS)
            if not self.leading or time.monotonic() >= self._fence:
                continue  # (past the fence the lease may have passed: learn nothing)
            if self.population is not None and await self.population.learn():
                self._dirty = True
            if not self._buffer:
                continue
            async with self._models_lock:
                records = [(s, r) for s, r in self._buffer if s > self.position]
                self._buffer = []
                if not records or not self.leading:
                    continue
                try:
                    await loop.run_in_executor(None, self.learner.learn_logged, records)
                except Exception:
                    log.exception("cluster: learning failed; reloading the published models")
                    await self._stop_leading(release=True)
                    continue
                self.position = records[-1][0]
                self.learned += len(records)
                self._dirty = True

    async def _publish(self) -> None:
        """Store the models with their position: the blob first, then the head by
        compare-and-set (a leader that lost the lease fails here and stops).

        What is learned while this publish awaits the servers is not in it: the models
        are marked clean when they are read, not when the publish ends, so that learning
        marks them dirty again and the next round publishes it (cleared at the end, a
        follower could stay behind the leader until something else was learned)."""
        async with self._models_lock:
            models = {n: encode_model(m) for n, m in dict(self.learner.engine.models).items()}
            position, learned = self.position, self.learned
            extra = ({} if self.population is None
                     else {POPULATION_KEY: self.population.published()})
            self._dirty = False
        try:
            await self._store_head(models, extra, position, learned)
        except BaseException:
            self._dirty = True  # not published: the next round tries again
            raise

    async def _store_head(self, models: dict[str, bytes], extra: dict[str, Any],
                          position: int, learned: int) -> None:
        name = (f"models-{position}-{extra.get(POPULATION_KEY, {}).get('position', 0)}-"
                f"{self.node.node_id.encode().hex()}")
        await self._blobs.put(name, encode_blob(models, extra))
        head = json.dumps({"blob": name, "position": position, "learned": learned,
                           "leader": self.node.node_id}).encode()
        try:
            if self._head_revision:
                self._head_revision = await self._heads.update(HEAD, head,
                                                               last=self._head_revision)
            else:
                self._head_revision = await self._heads.create(HEAD, head)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("cluster: another learner published meanwhile; this node stops "
                        "leading and adopts its models")
            with contextlib.suppress(Exception):
                await self._blobs.delete(name)
            await self._stop_leading(release=False)
            return
        self._last_publish = time.monotonic()
        self.published += 1
        if self._previous_blob is not None:  # the one before stays for slow readers
            with contextlib.suppress(Exception):
                await self._blobs.delete(self._previous_blob)
        self._previous_blob = name

    async def _follow(self) -> None:
        """Adopt the published models when the head moved."""
        try:
            entry = await self._heads.get(HEAD)
        except nats.js.errors.KeyNotFoundError:
            return  # nothing published yet: the initial models
        if entry.revision == self._head_revision or entry.value is None:
            return
        head = json.loads(entry.value)
        try:
            blob = await self._blobs.get(head["blob"])
        except nats.js.errors.NotFoundError:
            return  # replaced meanwhile: the next round reads the newer head
        stored, extra = decode_blob(blob.data or b"")
        if self.population is not None and POPULATION_KEY in extra:
            await self.population.adopt(*ClusterPopulation.read_published(
                extra[POPULATION_KEY]))
        async with self._models_lock:
            await asyncio.get_running_loop().run_in_executor(
                None, self.learner.adopt, stored, int(head["position"]))
            self.position, self.learned = int(head["position"]), int(head["learned"])
            self._head_revision = entry.revision

