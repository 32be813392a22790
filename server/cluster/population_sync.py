"""One fraud population baseline for the cluster, learned from every node's transactions.

A customer's baseline lives with its partition, but the *population* row (what genuine
customers with a given history do: how often they show a new device, country or
merchant, their hours, amounts, velocity; the FRAUD-label counts and the supervised
weights) is one for the bank: a node that learned it only from its own partitions would
score with a third of the evidence, and a customer moved to another node would be scored
against a different population. The row is made of counts, so it merges by addition
(``risk.population_merge`` says which entries are not counts and how they are handled).

**Each node ships deltas.** Every learner round (a quarter lease) a node takes what its
population gained since the last delta (``RiskEngine.population_delta``) and publishes it
to the stream ``NUDGE_POPULATION`` with a ``Nats-Msg-Id`` of its own (this process's
random id and a counter): a publish that timed out is retried with the same delta and
id, so a delta stored but not acknowledged is stored once.

**The learner sums them.** The node holding the learner's lease (model_sync.py) reads
the stream in order from the position of the population it adopted, adds each delta to
the cluster's row, and publishes row and position with the models (the blob's
``@population`` entry; the head's compare-and-set fences it the same way). A new leader
resumes at the published position: every delta is in the cluster's row exactly once.

**Every node adopts** the published row plus its own deltas the row does not include yet
(shipped after its position, or not shipped) plus what it learned since its last delta:
its scores see the whole cluster's population within a round or two, and its own
learning at once.

**What counts once.** A transaction enters the population where it is learned live:
scored on its owner, folded when its hold expires there, or labelled there. A new owner
applying a partition's log up to where it took it (catch-up after a failover or a
hand-over) folds those records into the customer's row but not into the population
(``contributes=False``): the previous owner learned them live and shipped them. What a
node learned in the last round before it died, unshipped, is lost to the cluster's row
(the customers' rows have it, from the log); nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from nudge.kernels.risk_model import POP_LEN, new_population_state
from nudge.server.cluster.jetstream import ensure_stream
from nudge.server.risk import population_merge

if TYPE_CHECKING:
    from nudge.server.cluster.node import ClusterNode
    from nudge.server.risk.engine import RiskEngine

log = logging.getLogger("nudge.server.cluster")

POPULATION_STREAM = "NUDGE_POPULATION"
POPULATION_SUBJECT = "nudge.population"
# A delta's publish is retried (same id) within this window: JetStream stores it once.
DUPLICATE_WINDOW_SECONDS = 600.0
SHIP_TIMEOUT_SECONDS = 5.0
# The blob entry of the published population (campaign names cannot start with "@").
BLOB_KEY = "@population"


def encode_row(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def decode_row(raw: bytes) -> np.ndarray:
    row = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    if row.shape != (POP_LEN,):
        raise ValueError(f"population: {row.size} values, expected {POP_LEN}")
    return row


class ClusterPopulation:
    """This node's part in the cluster's fraud population (see the module docstring):
    ships deltas every round, sums everyone's while leading, adopts what is published.
    Runs on the cluster node's loop, driven by ``ClusterModels``."""

    def __init__(self, node: ClusterNode, risk: RiskEngine) -> None:
        self.node = node
        self.risk = risk
        # The cluster's row (additive form) and the stream position it includes.
        self.base = population_merge.to_additive(new_population_state())
        self.position = 0
        self.shipped = 0
        self._boot = os.urandom(6).hex()
        self._counter = 0
        self._unshipped: list[tuple[str, np.ndarray]] = []  # (Nats-Msg-Id, delta)
        self._in_flight: list[tuple[int, np.ndarray]] = []  # shipped, not in ``base`` yet
        self._buffer: list[tuple[int, np.ndarray]] = []  # read while leading
        self._subscription: Any = None
        self._lock = asyncio.Lock()  # a ship and an adoption never interleave

    async def setup(self) -> None:
        await ensure_stream(self.node.js, StreamConfig(
            name=POPULATION_STREAM, subjects=[POPULATION_SUBJECT],
            num_replicas=self.node.replicas, storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS))

    # -- every node ------------------------------------------------------------------------

    async def ship(self) -> None:
        """Publish what this node's population gained since the last round (and any delta
        a failed round left), in order; stops at the first failure (next round retries)."""
        async with self._lock:
            gained = self.risk.population_delta()
            if gained is not None:
                self._counter += 1
                self._unshipped.append((f"{self._boot}-{self._counter}", gained))
            while self._unshipped:
                msg_id, delta = self._unshipped[0]
                ack = await self.node.js.publish(
                    POPULATION_SUBJECT, encode_row(delta), headers={"Nats-Msg-Id": msg_id},
                    timeout=SHIP_TIMEOUT_SECONDS)
                self._unshipped.pop(0)
                self._in_flight.append((int(ack.seq), delta))
                self.shipped += 1

    async def adopt(self, base: np.ndarray, position: int) -> None:
        """Score with a published row (additive form, up to ``position``)."""
        async with self._lock:
            if position < self.position:
                return  # older than what this node has
            self.base, self.position = base, position
            self._apply()

    def _apply(self) -> None:
        """(Holding the lock.) The engine scores with ``base`` plus this node's deltas the
        base does not include."""
        self._in_flight = [(s, d) for s, d in self._in_flight if s > self.position]
        extra = np.zeros(POP_LEN)
        for _, delta in self._in_flight:
            extra += delta
        for _, delta in self._unshipped:
            extra += delta
        self.risk.adopt_population(self.base, extra)

    # -- the leader ------------------------------------------------------------------------

    async def start_leading(self) -> None:
        self._buffer = []

        async def deliver(msg: Any) -> None:
            self._buffer.append((msg.metadata.sequence.stream, decode_row(msg.data)))

        self._subscription = await self.node.js.subscribe(
            POPULATION_SUBJECT, cb=deliver, ordered_consumer=True,
            idle_heartbeat=self.node.heartbeat_seconds,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=self.position + 1))

    async def stop_leading(self) -> None:
        self._buffer = []
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def learn(self) -> bool:
        """Add the deltas read since the last call to the cluster's row (and score with
        it here); whether anything was added."""
        async with self._lock:
            deltas = [(s, d) for s, d in self._buffer if s > self.position]
            self._buffer = []
            if not deltas:
                return False
            base = self.base.copy()
            for _, delta in deltas:
                base += delta
            self.base, self.position = base, deltas[-1][0]
            self._apply()
            return True

    def published(self) -> dict[str, Any]:
        """The blob entry for the cluster's row as it is now."""
        return {"position": self.position, "values": encode_row(self.base).hex()}

    @staticmethod
    def read_published(entry: dict[str, Any]) -> tuple[np.ndarray, int]:
        return decode_row(bytes.fromhex(str(entry["values"]))), int(entry["position"])
