"""One nudge node of a cluster: the replicated log on NATS JetStream, partition leases,
and this node's LMDB as a materialised view of the partitions it owns.

**The log is the truth.** In cluster mode Track does not write LMDB: a call's events are
published to the JetStream stream ``NUDGE_LOG``, one record per partition they fall in
(subject ``nudge.events.<partition>``, ``replicas`` copies, 3 by default), and Track
answers only once JetStream has acknowledged every record, i.e. a majority of the NATS
servers hold it on disk. A record carries a ``Nats-Msg-Id`` (a hash of its user and
event ids), so a retried call within the stream's duplicate window is acknowledged as a
duplicate and logged once; any other replay (later, or in another batch) is logged again
and dropped when applied (the per-user seen-event check), so it still counts once in the
state — but Track's reply then counts it as accepted, not as a duplicate.

**LMDB is the state.** The owner of a partition applies that partition's subject from the
stream, in order, through the store's single writer (group commit), and stores the stream
sequence it applied up to in the same LMDB transaction (``ingest.LoggedEvents``). After a
crash or a move it resumes after exactly that sequence: nothing is applied twice, nothing
skipped. A node taking a partition it never owned applies it from the stream's start.

**Leases in JetStream KV, not consumer exclusivity.** The bucket ``nudge_leases`` (same
replicas as the log) has a TTL of ``cluster_lease_seconds``: ``part.<p>`` holds the owner's
node id, created with ``create`` (fails if someone holds it) and renewed with a
compare-and-set ``update`` on the revision read, every quarter lease. A node that dies
stops renewing, the key expires with the TTL, and the survivor that rendezvous hashing
prefers takes it. We chose KV over an exclusive (single-subscriber) consumer because a
lease also has to tell *every* node who owns what (for forwarding and GetServerInfo) and
has to fence: a node serves a partition only until a little before its lease could have
expired since the last renewal it saw succeed (``FENCE_FRACTION``), so a node cut off
from NATS stops answering for it before anyone else can take it. A lease that lapsed
while the bucket had no leader (a NATS server died) is taken back by its holder at its
next round if no one else took it (``kv_lease.KvLease.keep``). ``node.<hex id>`` keys
(same TTL) are the membership list, with each node's gRPC address.

**Decisions, outcomes, journeys and acknowledgements go through the log too**, on the
user's partition subject, told apart by the header ``Nudge-Kind``. Decide's record
(``decision``, ``Nats-Msg-Id`` the decision id, and the contacts it plans in the header
``Nudge-Contacts``) is published before Decide answers.
ReportOutcome (``outcome``), a journey's deliveries with the trigger they answer
(``journey``) and AckDelivery (``ack``) are published by the owner of the user's
partition, which answers once it applied the record itself (a node that knows the record
but no longer serves the partition says NotServedHere: the owner is asked). The owner
applies each in the group commit that stores the position: it stores a logged decision
it lacks (a new owner after a failover) with its planned contacts, so the caps count
them there as on the node that decided, settles an outcome once (a replay finds it
settled), schedules a journey's deliveries (same ids) and forgets its trigger, and
records SENT or FAILED (a fallback gets an id derived from the failed delivery, the same
on every store). Leases to adapters are not logged: a new owner streams again what the
old one leased and never heard back about, and never what was acknowledged SENT.

**Fraud scoring too.** ScoreTransaction answers from the owner's memory as on one machine,
then logs the records it answered (``scored``) and replies once JetStream stored them; a
store that lacks them (a new owner after a failover) stores each as answered and folds
the ones that were learned into the customer's and the population's rows. LabelTransaction
is logged (``label``) by the owner, which answers once it applied it; a new owner applies
the same label to the same record (the scored record precedes it in the log).

Everything NATS runs on one asyncio loop in a thread of its own; the gRPC threads call in
through ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)

from nudge.kernels.risk_model import P_HOUR_TOTAL
from nudge.server.cluster.jetstream import ensure_key_value, ensure_stream
from nudge.server.cluster.kv_lease import KvLease
from nudge.server.cluster.model_sync import ClusterModels
from nudge.server.cluster.partitions import partition_of, preferred_owner
from nudge.server.cluster.peer_auth import load_peer_key
from nudge.server.cluster.population_sync import ClusterPopulation
from nudge.server.cluster.snapshots import PartitionSnapshots
from nudge.server.config import Config, ConfigError
from nudge.server.decisions.pending import CONTACT_MEMORY
from nudge.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotServedHere,
    Unavailable,
)
from nudge.server.hosts import is_loopback
from nudge.server.inputs.events import ValidEvent, validate_event
from nudge.server.storage.ingest import EventWriter, LoggedEvents, TrackResult, log_record
from nudge.server.storage.store import Store
from nudge.server.storage.tables import contacts as contact_table
from nudge.server.storage.tables import deadlines, meta, open_decisions, triggered
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables.decisions import DecisionRecord
from nudge.server.storage.tables.deliveries import Delivery
from nudge.server.storage.tables.transactions import TransactionRecord, TxKey
from nudge.v1 import decision_service_pb2 as pb

if TYPE_CHECKING:
    from nudge.server.decisions.engine import DecisionEngine
    from nudge.server.decisions.guardrails import Contact
    from nudge.server.decisions.journeys import Journeys
    from nudge.server.decisions.learner import Learner
    from nudge.server.decisions.outbox import Outbox
    from nudge.server.risk.engine import RiskEngine

log = logging.getLogger("nudge.server.cluster")
T = TypeVar("T")

STREAM = "NUDGE_LOG"
EVENTS_SUBJECT = "nudge.events"
BUCKET = "nudge_leases"
# Replays of one event id within this window are acknowledged as duplicates by JetStream.
DUPLICATE_WINDOW_SECONDS = 600.0
# A node serves an owned partition until this fraction of a lease after the start of
# its last successful renewal: the lease itself expires at 1.0, so nobody else can own it
# while this node still answers for it.
FENCE_FRACTION = 0.75
# Lease rounds per lease period: a lease survives three missed rounds.
ROUNDS_PER_LEASE = 4
# A partition whose consumer delivered nothing for this many leases while its log went on
# is subscribed to again (``ClusterNode._watch_round``).
STALL_LEASES = 2.0
# The shortest idle heartbeat asked of JetStream for an ordered consumer.
HEARTBEAT_FLOOR_SECONDS = 0.25
# How long the servers keep a lease read's consumer once it is left (the minimum).
WATCHER_INACTIVE_SECONDS = 2.0
START_TIMEOUT_SECONDS = 60.0
PUBLISH_TIMEOUT_SECONDS = 5.0
# Events of one Track call and partition share a log record, up to this many (NATS
# refuses messages over 1 MiB by default; 256 events of the largest allowed size would
# not fit, ordinary ones use a few hundred bytes each).
EVENTS_PER_RECORD = 256
# What a log record holds (header ``Nudge-Kind``; none: events).
KIND = "Nudge-Kind"
# A decision's planned contacts (JSON rows ``[time, channel, campaign, decision_id]``, as
# ``tables/contacts.py`` stores them): a new owner counts them against the caps.
CONTACTS = "Nudge-Contacts"
DECISION = "decision"
OUTCOME = "outcome"
ACK = "ack"  # a delivery's SENT or FAILED acknowledgement
JOURNEY = "journey"  # a journey's deliveries and the trigger they answer
SCORED = "scored"  # ScoreTransaction's records, as answered
LABEL = "label"  # LabelTransaction
# Kinds whose publisher (the owner) answers its caller with what applying them did.
ANSWERED = (OUTCOME, ACK, JOURNEY, LABEL)
# Outcomes applied lately, by stream sequence: ReportOutcome's reply (the publish's
# acknowledgement and the apply race; both run on the loop).
RECENT_RESULTS = 10_000


@dataclass(frozen=True)
class Route:
    """Where a call for one user goes: here (``local``), to ``address`` (the owner), or
    nowhere yet (``reason``: the caller is told UNAVAILABLE and retries)."""

    partition: int
    local: bool = False
    address: str | None = None
    owner: str | None = None
    reason: str = ""
    # No owner known here: the preferred owner's address, which a single call may ask
    # (one forwarded hop; a node that does not serve the partition answers UNAVAILABLE).
    likely_address: str | None = None


@dataclass
class _Owned:
    """A partition this node holds the lease of, and where its apply stands."""

    partition: int
    lease: KvLease
    applied: int  # stream sequence stored in LMDB with the state
    target: int  # the log's last sequence for the partition when the lease was taken
    queued: int = 0  # last sequence handed to the writer (or buffered)
    # Records delivered, not yet handed to the writer: (sequence, kind, payload).
    buffer: list[tuple[int, str, Any]] = field(default_factory=list)
    pending: int = 0  # messages the consumer said were still to come
    subscription: Any = None
    failed: bool = False
    taken_at: float = field(default_factory=time.monotonic)
    # Set once the partition first caught up (logged: how long a move's catch-up took).
    ready_after: float | None = None
    # When the consumer last delivered a record (or was subscribed): the watchdog's clock.
    last_delivery: float = field(default_factory=time.monotonic)
    # Taken, its snapshot not yet restored (or looked for): not subscribed, not served.
    restoring: bool = False

    @property
    def ready(self) -> bool:
        return not self.restoring and self.applied >= self.target


class ClusterNode:
    """This node's part in the cluster (see the module docstring)."""

    def __init__(self, config: Config, store: Store, writer: EventWriter) -> None:
        if config.cluster is None:
            raise ValueError("cluster: not configured")
        self.urls = [u.strip() for u in config.cluster.split(",") if u.strip()]
        self.nats_tls = nats_tls_context(config)
        if self.nats_tls is None and not all(
                is_loopback(urlsplit(u if "://" in u else f"nats://{u}").hostname or "")
                for u in self.urls):
            log.warning("cluster: connections to NATS at %s are plain text (set "
                        "cluster_nats_ca_file for TLS): every event crosses the network "
                        "in the clear", ",".join(self.urls))
        self.node_id = config.node_id or ""
        self.address = config.advertise or ""
        self.partitions = config.partitions
        self.lease_seconds = config.cluster_lease_seconds
        self.replicas = config.cluster_replicas
        self.store = store
        self.writer = writer
        self._owned: dict[int, _Owned] = {}
        self._owners: dict[int, str] = {}
        self._members: dict[str, str] = {}
        self._member_since: dict[str, float] = {}
        self._last_members: set[str] = set()
        self._fence = 0.0
        self.moves = 0  # partitions taken or given up by this node
        self.resubscribed = 0  # consumers the watchdog replaced
        self._member_failing = False
        self.published = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="nudge-cluster", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._kv_js: Any = None
        self._kv: Any = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._decisions: DecisionEngine | None = None
        self._risk: RiskEngine | None = None
        self._outbox: Outbox | None = None
        self._results: OrderedDict[int, Any] = OrderedDict()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self.models: ClusterModels | None = None
        self.fence_fraction = FENCE_FRACTION
        # The secret the nodes sign node-to-node calls with (peer_auth.py), once connected.
        self.peer_key: bytes | None = None
        self.snapshot_seconds = config.cluster_snapshot_seconds
        self.snapshot_records = config.cluster_snapshot_records
        self.snapshots: PartitionSnapshots | None = None

    # -- for cluster/model_sync.py ---------------------------------------------------------

    @property
    def js(self) -> Any:
        return self._js

    @property
    def kv(self) -> Any:
        return self._kv

    @property
    def closing(self) -> bool:
        return self._closing

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the cluster's loop from another thread; its result."""
        return self._call(coro, timeout)

    def expires_here(self, user_id: str) -> bool | None:
        """Whether this node expires the user's open decisions: True when it serves the
        partition, False when another node owns it (that node expires them), None while
        nobody serves it (a failover, or this node catching up: keep them)."""
        partition = partition_of(user_id, self.partitions)
        owned = self._owned.get(partition)
        if owned is not None:
            # Not while it catches up (or restores): the store does not yet know whether
            # the decision's goal came, and what the log will settle it with.
            return True if owned.ready else None
        owner = self._owners.get(partition)
        return None if owner is None or owner == self.node_id else False

    # -- from other threads ----------------------------------------------------------------

    def bind(self, address: str) -> None:
        """The gRPC address this node listens on (known once the port is bound): others
        forward to it unless ``advertise`` says otherwise; the default node id."""
        self.node_id = self.node_id or address
        self.address = self.address or address

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self) -> None:
        """Connect to NATS and make sure the stream and the lease bucket exist (waits for
        the JetStream cluster to elect its leaders)."""
        self._thread.start()
        self._call(self._connect(), START_TIMEOUT_SECONDS + 5.0)

    def start(self) -> None:
        """Join: register as a member and start taking partitions (once SERVING)."""
        self._call(self._start(), START_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Give up every partition (so survivors take them at once) and disconnect."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._close(), 15.0)
        except Exception:
            log.exception("cluster node did not close cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def publish_events(self, events: list[ValidEvent]) -> Future[TrackResult]:
        """Append events to the replicated log; resolves once JetStream stored them all."""
        return asyncio.run_coroutine_threadsafe(self._publish(events), self._loop)

    def attach(self, decisions: DecisionEngine, outbox: Outbox, journeys: Journeys,
               learner: Learner, risk: RiskEngine) -> None:
        """Decisions, outcomes, journeys' deliveries and delivery acknowledgements go
        through the log from now on, and journeys and the outbox serve only the
        partitions this node serves (see the docstring); settled outcomes go to the
        cluster's one learner and this node decides with its models (model_sync.py)."""
        self.models = ClusterModels(self, learner, ClusterPopulation(self, risk))
        self._decisions = decisions
        self._outbox = outbox
        decisions.log_decision = self.publish_decision
        decisions.outcomes.log_outcome = self.publish_outcome
        outbox.serves = journeys.serves = self.serves
        outbox.log_ack = self._publisher(ACK, "delivery_id")
        journeys.log_scheduled = self._publisher(JOURNEY, "a journey's user")
        self._risk = risk
        risk.log_scored = self.publish_scored
        risk.log_label = self._publisher(LABEL, "transaction_id")

    def publish_scored(self, records: list[tuple[TxKey, TransactionRecord]]) -> Future[Any]:
        """Append scored transactions' records to their users' partitions of the log;
        resolves once JetStream stored them all."""
        return asyncio.run_coroutine_threadsafe(self._publish_scored(records), self._loop)

    async def _publish_scored(self, records: list[tuple[TxKey, TransactionRecord]]) -> None:
        by_partition: dict[int, list[list[str]]] = {}
        for (user_id, transaction_id), record in records:
            by_partition.setdefault(partition_of(user_id, self.partitions), []).append(
                [user_id, transaction_id, record.to_bytes().decode()])
        await asyncio.gather(*(
            self._publish_record(partition, SCORED, json.dumps(mine).encode(),
                                 blake2b(json.dumps(mine).encode(), digest_size=16).hexdigest())
            for partition, mine in by_partition.items()))

    def serves(self, user_id: str) -> bool:
        """This node serves the user's partition now (owned, caught up, lease fresh)."""
        return self.route(user_id).local

    def _publisher(self, kind: str, what: str) -> Any:
        def publish(user_id: str, payload: dict[str, Any]) -> Future[Any]:
            return asyncio.run_coroutine_threadsafe(
                self._publish_applied(user_id, kind, payload, what), self._loop)

        return publish

    def publish_decision(self, record: DecisionRecord, planned: list[Contact]) -> Future[int]:
        """Append a decision's record, with the contacts it plans, to the log; resolves
        once JetStream stored it."""
        partition = partition_of(record.user_id, self.partitions)
        headers = {CONTACTS: json.dumps([list(c) for c in planned])} if planned else None
        return asyncio.run_coroutine_threadsafe(self._publish_record(
            partition, DECISION, record.to_bytes(), record.decision_id, headers), self._loop)

    def publish_outcome(self, user_id: str, decision_id: str, reward: float) -> Future[bool]:
        """Append an outcome to the log (here, on the owner of the decision's user) and
        resolve with whether it was attributed, once this node applied it."""
        return asyncio.run_coroutine_threadsafe(self._publish_applied(
            user_id, OUTCOME, {"decision_id": decision_id, "reward": reward},
            f"decision_id: {decision_id!r}"), self._loop)

    def route(self, user_id: str) -> Route:
        """Where a call about ``user_id`` (as stored) is answered."""
        return self.route_partition(partition_of(user_id, self.partitions))

    def route_partition(self, partition: int) -> Route:
        """Where a call about a user of ``partition`` is answered."""
        owned = self._owned.get(partition)
        if owned is not None:
            if time.monotonic() >= self._fence:
                return Route(partition, reason=f"partition {partition}: lease not renewed "
                                               "lately (NATS unreachable?)")
            if not owned.ready:
                return Route(partition, reason=f"partition {partition} is catching up on "
                                               f"{self.node_id} after a move")
            return Route(partition, local=True, owner=self.node_id)
        owner = self._owners.get(partition)
        address = self._members.get(owner) if owner is not None else None
        if owner is None or address is None or owner == self.node_id:
            # The last lease read saw no owner: a hand-over in flight, or a read from just
            # before the new owner took it. A NATS server's death can keep that view for
            # the whole JetStream election (a cluster fault run: 14 s, for a partition
            # handed over a second before the kill). The preferred owner is where
            # hand-overs go and who takes a free partition: name it as likely.
            likely = preferred_owner(partition, self._members)
            return Route(partition, reason=f"partition {partition} has no live owner yet",
                         likely_address=(self._members.get(likely)
                                         if likely not in (None, self.node_id) else None))
        return Route(partition, address=address, owner=owner)

    def peers(self) -> list[str]:
        """The gRPC addresses of the other live nodes."""
        return [a for node, a in self._members.items() if node != self.node_id]

    def partition_map(self) -> dict[int, str]:
        """Partition -> owner node id, as this node last read the leases."""
        return dict(self._owners)

    def ready_partitions(self) -> list[int]:
        return sorted(p for p, o in self._owned.items() if o.ready)

    def caught_up(self, budget: float) -> frozenset[int]:
        """The partitions this node owns whose store has applied every record the log
        held for them when this was called (their last sequence, read from JetStream
        now), waiting up to ``budget`` seconds for them to get there. A record
        acknowledged before the call that this store lacks is in no such partition: an
        unknown decision or delivery id is "not found" for these (forwarding.py)."""
        if budget <= 0 or not self._thread.is_alive():
            return frozenset()
        try:
            return self._call(self._caught_up(budget), budget + 2.0)
        except Exception as exc:
            log.warning("cluster: could not read the log's end: %r", exc)
            return frozenset()

    def model_state(self) -> tuple[int, int, bool]:
        """(rewards stream position, outcomes learned, leads the learner) of the models
        this node decides with."""
        m = self.models
        return (0, 0, False) if m is None else (m.position, m.learned, m.leading)

    def population_state(self) -> tuple[int, float]:
        """(NUDGE_POPULATION position adopted, genuine transactions learned) of the fraud
        population this node scores with (population_sync.py)."""
        m = self.models
        if m is None or m.population is None:
            return (0, 0.0)
        return (m.population.position, float(m.population.risk.population()[P_HOUR_TOTAL]))

    def snapshot_counts(self) -> tuple[int, int]:
        """(snapshots stored, partitions restored from one) by this node."""
        s = self.snapshots
        return (0, 0) if s is None else (s.taken, s.restored)

    def replication_lag(self) -> int:
        """Log entries of owned partitions not yet applied here (for a gauge)."""
        return sum(o.pending + (o.queued - o.applied) for o in list(self._owned.values()))

    # -- on the loop -----------------------------------------------------------------------

    async def _connect(self) -> None:
        self._wake = asyncio.Event()
        self._nc = await nats.connect(
            servers=self.urls, name=f"nudge-{self.node_id}", max_reconnect_attempts=-1,
            reconnect_time_wait=0.25, connect_timeout=2, tls=self.nats_tls,
            error_cb=self._on_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        # Lease operations time out within a lease round: a round stuck on a NATS server
        # that just died would let every lease this node holds expire.
        self._kv_js = self._nc.jetstream(timeout=self._round_seconds)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:  # a JetStream cluster that just started elects its meta leader first
            try:
                await self._ensure_stream()
                self._kv = await self._ensure_bucket()
                self.peer_key = await load_peer_key(self._js, self.replicas)
                self.snapshots = PartitionSnapshots(
                    self._js, self.store, self.writer,
                    lambda user_id: partition_of(user_id, self.partitions), self.replicas,
                    self.snapshot_seconds, self.snapshot_records, STREAM, EVENTS_SUBJECT,
                    self._flush_engines)
                await self.snapshots.setup()
                if self.models is not None:
                    await self.models.setup()
                break
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError,
                    nats.js.errors.APIError, nats.js.errors.NoStreamResponseError) as exc:
                # (NoStreamResponse: a bucket just created has no stream leader yet)
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"cluster: JetStream not ready at {self.urls}: {exc}") from None
                await asyncio.sleep(0.5)
        log.info("cluster: node %s connected to %s (stream %s, R%d, %d partitions)",
                 self.node_id, self._nc.connected_url.netloc, STREAM, self.replicas,
                 self.partitions)

    async def _on_error(self, exc: Exception) -> None:
        if not self._closing:
            log.warning("cluster: NATS: %s", exc)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("cluster: disconnected from NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        if not self._closing:
            log.warning("cluster: reconnected to NATS at %s", self._nc.connected_url.netloc)

    async def _ensure_stream(self) -> None:
        await ensure_stream(self._js, StreamConfig(
            name=STREAM, subjects=[f"{EVENTS_SUBJECT}.*"], num_replicas=self.replicas,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_SECONDS,
        ))

    async def _ensure_bucket(self) -> Any:
        return await ensure_key_value(self._kv_js, KeyValueConfig(
            bucket=BUCKET, ttl=self.lease_seconds, replicas=self.replicas, history=1,
        ))

    async def _start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS / 2
        while True:  # a bucket just created may still be electing its leader
            try:
                await self._renew_round(quiet=False)  # a membership that fails: retried
                await self._lease_round()
                break
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"cluster: cannot join: {exc!r}") from None
                await asyncio.sleep(0.25)
        self._tasks = [asyncio.create_task(self._every_round(self._renew_round, "renewal")),
                       asyncio.create_task(self._every_round(self._lease_round, "lease round")),
                       asyncio.create_task(self._every_round(self._watch_round,
                                                             "consumer watch")),
                       asyncio.create_task(self._apply_loop())]
        if self.snapshot_seconds > 0:
            assert self.snapshots is not None
            self._tasks.append(asyncio.create_task(self.snapshots.run(
                lambda: {p: o.applied for p, o in self._owned.items() if o.ready},
                lambda p: self.route_partition(p).local)))
        if self.models is not None:
            self.models.start()

    async def _close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self.models is not None:
            await self.models.close()  # publishes what it learned, releases the lead
        for owned in list(self._owned.values()):
            await self._give_up(owned, release=True)
        if self._kv is not None:
            try:
                await self._kv.delete(self._member_key)
            except Exception:
                log.warning("cluster: could not remove membership key")
        if self._nc is not None:
            await self._nc.drain()

    async def _caught_up(self, budget: float) -> frozenset[int]:
        deadline = time.monotonic() + budget
        owned = dict(self._owned)

        ends = await asyncio.gather(*(asyncio.wait_for(self._log_end(p), budget)
                                      for p in owned),
                                    return_exceptions=True)
        targets = {p: end for p, end in zip(owned, ends, strict=True) if isinstance(end, int)}
        while True:
            done = frozenset(p for p, end in targets.items()
                             if not owned[p].restoring and owned[p].applied >= end)
            if len(done) == len(targets) or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(0.02)

    # -- the log ---------------------------------------------------------------------------

    async def _publish(self, events: list[ValidEvent]) -> TrackResult:
        if self._js is None or self._closing:
            raise Unavailable("cluster: not connected; retry with the same event_ids")
        by_partition: dict[int, list[ValidEvent]] = {}
        for ev in events:
            by_partition.setdefault(partition_of(ev.user_id, self.partitions), []).append(ev)
        acks, sizes = [], []
        for partition, mine in by_partition.items():
            for start in range(0, len(mine), EVENTS_PER_RECORD):
                chunk = mine[start:start + EVENTS_PER_RECORD]
                record, msg_id = _log_record(chunk)
                acks.append(self._js.publish(
                    f"{EVENTS_SUBJECT}.{partition}", record,
                    headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT_SECONDS,
                ))
                sizes.append(len(chunk))
        try:
            done = await asyncio.gather(*acks)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise Unavailable(f"the replicated log did not acknowledge the events ({exc}); "
                              "retry with the same event_ids (replays count once)") from None
        duplicates = sum(n for ack, n in zip(done, sizes, strict=True) if ack.duplicate)
        self.published += len(events)
        return TrackResult(len(events) - duplicates, duplicates)

    async def _publish_record(
        self, partition: int, kind: str, data: bytes, msg_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> int:
        if self._js is None or self._closing:
            raise Unavailable("cluster: not connected; retry with the same ids")
        headers = {KIND: kind, **(extra or {})}
        if msg_id is not None:
            headers["Nats-Msg-Id"] = f"{kind}:{msg_id}"
        try:
            ack = await self._js.publish(f"{EVENTS_SUBJECT}.{partition}", data,
                                         headers=headers, timeout=PUBLISH_TIMEOUT_SECONDS)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise Unavailable(f"the replicated log did not acknowledge the {kind} ({exc}); "
                              "retry with the same ids") from None
        return int(ack.seq)

    async def _publish_applied(
        self, user_id: str, kind: str, payload: dict[str, Any], what: str
    ) -> Any:
        """Publish a record about a user of a partition this node serves and answer with
        what applying it here did (its result, or the error it met)."""
        route = self.route(user_id)
        if not route.local:  # the owner applies it (and answers): asked next
            # (a label names its user: it was routed to this node, which lost the partition
            # meanwhile; the caller retries and reaches the new owner)
            raise (Unavailable if kind == LABEL else NotServedHere)(
                f"{what} is not served on {self.node_id} ({route.reason or 'moved'})")
        data = json.dumps(payload).encode()
        seq = await self._publish_record(route.partition, kind, data)
        result = self._results.get(seq)
        if result is None:
            waiter = self._waiters.setdefault(seq, self._loop.create_future())
            try:
                result = await asyncio.wait_for(asyncio.shield(waiter),
                                                PUBLISH_TIMEOUT_SECONDS * 2)
            except TimeoutError:
                raise Unavailable(f"{what}: the {kind} is logged but partition "
                                  f"{route.partition} moved before applying it here; a retry "
                                  "finds it applied") from None
            finally:
                self._waiters.pop(seq, None)
        if isinstance(result, Exception):
            raise result
        return result

    def _applied(self, seq: int, result: Any) -> None:
        waiter = self._waiters.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        self._results[seq] = result
        while len(self._results) > RECENT_RESULTS:
            self._results.popitem(last=False)

    # -- leases ----------------------------------------------------------------------------

    @property
    def _member_key(self) -> str:
        return "node." + self.node_id.encode().hex()

    @property
    def _round_seconds(self) -> float:
        return self.lease_seconds / ROUNDS_PER_LEASE

    @property
    def heartbeat_seconds(self) -> float:
        """The idle heartbeat of this node's ordered consumers (a partition's log, the
        learner's rewards). The client recreates an ordered consumer once two heartbeats
        are missed; its default (5 s, so 10-20 s) left a partition whose consumer lived
        on a NATS server that died stalled mid catch-up for longer than the failover
        budget. A lease round's length keeps that within about two rounds, for one small
        message per consumer and round while idle."""
        return max(HEARTBEAT_FLOOR_SECONDS, self._round_seconds)

    async def _every_round(self, round_: Callable[[], Awaitable[None]], what: str) -> None:
        """``round_`` every ``_round_seconds`` from the last one's *start*, not its end: a
        round that timed out (a loaded host, a NATS server dying) is followed at once by
        the next instead of a full round later.

        Two of these run: the renewals (which only need the lease bucket's stream leader)
        and the lease round (membership, reading the bucket, takes and hand-overs, which
        need the JetStream meta leader and take several round trips). Renewing inside the
        lease round let a slow read on a loaded host delay the next renewal past the
        fence, and the node stopped answering for partitions nobody else wanted."""
        next_at = time.monotonic()
        while True:
            next_at += self._round_seconds
            now = time.monotonic()
            if next_at < now - self._round_seconds:  # far behind: no burst of rounds
                next_at = now
            await asyncio.sleep(max(0.0, next_at - now))
            try:
                await round_()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: %s failed: %s", what, exc)

    async def _read_leases(self) -> dict[str, Any]:
        """Every live key of the lease bucket (deleted and expired ones are absent)."""
        # Each read is a consumer on the bucket; the client's default keeps a stopped one
        # on the servers for 5 minutes, and at four reads per lease per node hundreds pile
        # up, which the JetStream leaders must carry through a server's death.
        watcher = await self._kv.watchall(
            inactive_threshold=max(WATCHER_INACTIVE_SECONDS, self._round_seconds * 2))
        entries: dict[str, Any] = {}
        try:
            while True:
                entry = await watcher.updates(timeout=self._round_seconds)
                if entry is None:
                    break
                if entry.operation is None and entry.value is not None:
                    entries[entry.key] = entry
                else:
                    entries.pop(entry.key, None)
        finally:
            await watcher.stop()
        return entries

    async def _renew_round(self, quiet: bool = True) -> None:
        """Renew every lease this node holds, from the revisions it wrote (an update needs
        only the bucket's stream leader; reading the bucket needs the JetStream meta
        leader, which a dead NATS server may have been), and move the fence on when all
        were renewed. All at once: one round trip, not one per partition in turn.
        ``quiet`` False (at start): a membership that cannot be put raises."""
        started = time.monotonic()
        for owned in [o for o in self._owned.values() if o.failed]:
            await self._give_up(owned, release=True)
        held = list(self._owned.values())
        # Membership is renewed here too: it says this node is alive, and other nodes
        # route to a partition's owner only while its member key is there, so it must
        # not wait on the lease round's reads (which a JetStream meta-leader election or
        # a loaded host can hold up past the key's TTL).
        kept, _ = await asyncio.gather(
            asyncio.gather(*(o.lease.keep() for o in held), return_exceptions=True),
            self._put_member(quiet))
        renewed = True
        for owned, result in zip(held, kept, strict=True):
            if self._owned.get(owned.partition) is not owned:
                continue  # handed over or given up meanwhile (by the lease round)
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                renewed = False
            elif not result:
                log.warning("cluster: lost partition %d (its lease lapsed; another node holds "
                            "it)", owned.partition)
                await self._give_up(owned, release=False)
        if renewed:
            self._fence = started + self.lease_seconds * FENCE_FRACTION

    async def _put_member(self, quiet: bool = True) -> None:
        """Register (or renew) this node's member key; ``quiet``: a failure is logged,
        not raised (the renewals go on; the next round puts it again)."""
        try:
            await self._kv.put(self._member_key, json.dumps(
                {"id": self.node_id, "address": self.address}).encode())
        except Exception as exc:
            if not quiet:
                raise
            if not self._member_failing:  # once per outage, not every round
                log.warning("cluster: could not renew this node's membership: %r", exc)
            self._member_failing = True
            return
        if self._member_failing:
            log.info("cluster: membership renewed again")
            self._member_failing = False

    async def _lease_round(self) -> None:
        """The partition map, takes and hand-overs (renewals and membership:
        ``_renew_round``)."""
        started = time.monotonic()
        entries = await self._read_leases()
        members: dict[str, str] = {}
        owners: dict[int, str] = {}
        for key, entry in entries.items():
            if key.startswith("node."):
                info = json.loads(entry.value)
                members[info["id"]] = info["address"]
            elif key.startswith("part."):
                owners[int(key[5:])] = entry.value.decode()
        members[self.node_id] = self.address
        for node in list(self._member_since):
            if node not in members:
                del self._member_since[node]
        for node in members:
            self._member_since.setdefault(node, started)
        # Take free partitions only when two reads in a row agree on who is alive: after
        # the lease bucket was unavailable every key has expired, and the first read,
        # before the others re-registered, would make this node "preferred" for all.
        settled = set(members) == self._last_members
        self._last_members = set(members)
        free: list[int] = []
        for partition in range(self.partitions):
            wanted = preferred_owner(partition, members)
            owner = owners.get(partition)
            if partition in self._owned:
                if (wanted != self.node_id and self._owned[partition].ready
                        and wanted is not None and self._stable(wanted, started)):
                    log.info("cluster: handing partition %d to %s", partition, wanted)
                    await self._give_up(self._owned[partition], release=True)
                    owners.pop(partition, None)
            elif owner is None and wanted == self.node_id and settled and not self._closing:
                free.append(partition)
        # A dead node's partitions are taken together (three round trips each: the lease,
        # the log's end, the consumer), not one after another: failover is one take long.
        taken = await asyncio.gather(*(self._take(p) for p in free), return_exceptions=True)
        for partition, took in zip(free, taken, strict=True):
            if isinstance(took, BaseException):  # its lease (if taken) lapses unrenewed
                log.warning("cluster: could not take partition %d: %r", partition, took)
            elif took:
                owners[partition] = self.node_id
        for partition, before in self._owners.items():
            if partition not in owners and before in members and before != self.node_id:
                # Its last owner is alive but its lease key is gone: calls for it are
                # UNAVAILABLE here until someone holds it again. A hand-over (released
                # for the preferred node) or a lapse under load: said once, so a fault
                # run's "no live owner" can be traced to which.
                log.info("cluster: partition %d has no lease; its last owner %s is still "
                         "a member (handed over, or its lease lapsed)", partition, before)
        self._members, self._owners = members, owners

    def _stable(self, node: str, now: float) -> bool:
        """A member seen for a whole lease: partitions are handed to it. (A member list
        that flickers while NATS elects a leader must not move partitions back and
        forth; a dead owner's partitions move by lease expiry, not by hand-over.)"""
        return now - self._member_since.get(node, now) >= self.lease_seconds

    async def _take(self, partition: int) -> bool:
        """Take the lease of a free partition, restore it from its newest snapshot when
        that is ahead of this store (``snapshots.py``), and apply the log after that."""
        lease = KvLease(self._kv, f"part.{partition}", self.node_id)
        if not await lease.take():
            return False  # someone else took it first
        with self.store.read() as txn:
            applied = meta.applied_position(txn, self.store.dbs, partition)
        last = await self._log_end(partition)
        owned = _Owned(partition, lease, applied, last, queued=applied, restoring=True)
        self._owned[partition] = owned
        self.moves += 1
        log.info("cluster: took partition %d (applied up to %d, log at %d)",
                 partition, applied, last)
        self._tasks.append(asyncio.create_task(self._restore(owned)))
        return True

    async def _restore(self, owned: _Owned) -> None:
        """(A task per partition taken.) The snapshot, then the log's consumer."""
        try:
            assert self.snapshots is not None
            position = await self.snapshots.restore(
                owned.partition, owned.applied, self._forget_cached)
        except Exception as exc:
            log.warning("cluster: partition %d: its snapshots could not be read (%r); "
                        "giving it back", owned.partition, exc)
            if self._owned.get(owned.partition) is owned:
                await self._give_up(owned, release=True)
            return
        finally:
            with contextlib.suppress(ValueError, RuntimeError):
                self._tasks.remove(asyncio.current_task())  # type: ignore[arg-type]
        if self._owned.get(owned.partition) is not owned:
            return  # given up meanwhile
        owned.applied = owned.queued = max(owned.applied, position)
        owned.restoring = False
        if owned.ready:
            owned.ready_after = time.monotonic() - owned.taken_at
        await self._subscribe(owned, owned.applied + 1)

    def _flush_engines(self) -> None:
        """(Off the loop.) What the engines hold in memory goes to the store: before a
        restore (the import replaces the partition's rows after it) and before a
        snapshot's export (snapshots.py)."""
        if self._decisions is not None:
            self._decisions.flush()
        if self._risk is not None:
            self._risk.flush()

    def _forget_cached(self, users: Iterable[str]) -> None:
        if self._risk is not None:
            for user_id in users:
                self._risk.forget_user(user_id)

    async def _log_end(self, partition: int) -> int:
        """The stream sequence of the partition's last log record (0: none yet)."""
        try:
            found = await self._js.get_last_msg(STREAM, f"{EVENTS_SUBJECT}.{partition}")
        except nats.js.errors.NotFoundError:
            return 0
        return int(found.seq or 0)

    async def _subscribe(self, owned: _Owned, start: int) -> None:
        """An ordered push consumer of the partition's log (ephemeral, flow-controlled,
        recreated by the client on a gap or a lost NATS server) from ``start``."""
        async def deliver(msg: Any) -> None:
            await self._on_message(owned, msg)

        owned.last_delivery = time.monotonic()
        owned.subscription = await self._js.subscribe(
            f"{EVENTS_SUBJECT}.{owned.partition}", cb=deliver, ordered_consumer=True,
            idle_heartbeat=self.heartbeat_seconds,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=start),
        )

    async def _watch_round(self) -> None:
        """Subscribe again to a partition whose consumer delivered nothing for
        ``STALL_LEASES`` leases while its log went past what it delivered. The client
        recreates an ordered consumer after missed heartbeats, but only through a
        JetStream API call that a NATS server's death or a leader election can time out,
        and a partition left without a consumer applies nothing more — its owner keeps
        answering from a store that no longer follows the log. Quiet partitions cost one
        read of the log's end every ``STALL_LEASES`` leases."""
        now = time.monotonic()
        quiet = [o for o in list(self._owned.values()) if not o.restoring
                 and now - o.last_delivery > self.lease_seconds * STALL_LEASES]
        if not quiet:
            return
        ends = await asyncio.gather(*(self._log_end(o.partition) for o in quiet),
                                    return_exceptions=True)
        for owned, end in zip(quiet, ends, strict=True):
            if self._owned.get(owned.partition) is not owned or not isinstance(end, int):
                continue
            owned.last_delivery = now
            if end <= owned.queued:
                continue  # nothing to deliver: quiet, not stalled
            log.warning("cluster: partition %d's consumer delivered nothing for %.1fs with "
                        "the log at %d past %d; subscribing again", owned.partition,
                        self.lease_seconds * STALL_LEASES, end, owned.queued)
            old, owned.subscription = owned.subscription, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.unsubscribe()
            await self._subscribe(owned, owned.queued + 1)
            self.resubscribed += 1

    async def _give_up(self, owned: _Owned, release: bool) -> None:
        """Stop applying a partition; ``release`` deletes its lease so another node can
        take it at once (a clean stop or a hand-over), instead of after the TTL."""
        self._owned.pop(owned.partition, None)
        self.moves += 1
        if owned.subscription is not None:
            with contextlib.suppress(Exception):
                await owned.subscription.unsubscribe()
        if release:
            await owned.lease.release()

    # -- applying the log ------------------------------------------------------------------

    async def _on_message(self, owned: _Owned, msg: Any) -> None:
        owned.last_delivery = time.monotonic()
        seq = msg.metadata.sequence.stream
        owned.pending = msg.metadata.num_pending
        if seq <= owned.queued or self._owned.get(owned.partition) is not owned:
            return
        headers = msg.headers or {}
        kind = headers.get(KIND, "")
        if kind == DECISION:
            planned = [tuple(c) for c in json.loads(headers.get(CONTACTS, "[]"))]
            owned.buffer.append((seq, kind, (DecisionRecord.from_bytes(msg.data), planned)))
        elif kind in ANSWERED:
            owned.buffer.append((seq, kind, json.loads(msg.data)))
        elif kind == SCORED:
            owned.buffer.append((seq, kind, [
                ((u, t), TransactionRecord.from_bytes(r.encode()))
                for u, t, r in json.loads(msg.data)]))
        else:
            now = time.time()
            for index, proto in enumerate(pb.TrackRequest.FromString(msg.data).events):
                try:
                    owned.buffer.append((seq, "", validate_event(proto, index, now)))
                except InvalidArgument as exc:  # validated before it was logged: a bug
                    log.error("cluster: skipping an event of log entry %d (partition %d): "
                              "%s", seq, owned.partition, exc)
        owned.queued = seq
        assert self._wake is not None
        self._wake.set()

    async def _apply_loop(self) -> None:
        """Hand what the consumers delivered to the store's writer, one LoggedEvents per
        partition (they share one group commit), and advance each partition's position
        once its commit is durable."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches: list[tuple[_Owned, int, str, Future[Any]]] = []
            for owned in list(self._owned.values()):
                if owned.queued > owned.applied:
                    records, owned.buffer = owned.buffer, []
                    batches += self._submit(owned, records)
            for owned, seq, kind, future in batches:
                try:
                    try:
                        result = await asyncio.wrap_future(future)
                    except (NotFound, FailedPrecondition) as exc:
                        result = exc  # the record's answer (an unknown decision, ...)
                    if kind in ANSWERED:
                        self._applied(seq, result)
                    owned.applied = max(owned.applied, seq)
                    if owned.ready_after is None and owned.ready:
                        owned.ready_after = time.monotonic() - owned.taken_at
                        log.info("cluster: partition %d caught up %.2fs after it was taken "
                                 "(log at %d)", owned.partition, owned.ready_after, seq)
                except Exception as exc:
                    log.error("cluster: applying partition %d failed (%s); giving it up",
                              owned.partition, exc)
                    owned.failed = True  # released at the next lease round; taken again
                    # from the position stored with the state


    def _submit(
        self, owned: _Owned, records: list[tuple[int, str, Any]]
    ) -> list[tuple[_Owned, int, str, Future[Any]]]:
        """Hand one partition's delivered records to the writer in log order: runs of
        events as LoggedEvents, each decision and outcome as a job; each writes its
        sequence as the partition's position in its own transaction (positions only
        grow, so a commit holding several is at the last)."""
        partition = owned.partition
        out: list[tuple[_Owned, int, str, Future[Any]]] = []
        events: list[ValidEvent] = []
        last = 0
        for seq, kind, payload in records:
            if kind == "":
                events.append(payload)
                last = seq
                continue
            if events:
                out.append((owned, last, "", self.writer.submit_logged(
                    LoggedEvents(events, partition, last))))
                events = []
            # Records logged before this node took the partition were applied by a previous
            # owner: in the cluster's fraud population already (population_sync.py).
            out.append((owned, seq, kind, self._submit_record(
                partition, seq, kind, payload, contributes=seq > owned.target)))
        if events or not out:
            last = last if events else owned.queued
            out.append((owned, last, "", self.writer.submit_logged(
                LoggedEvents(events, partition, last))))
        return out

    def _submit_record(self, partition: int, seq: int, kind: str, payload: Any,
                       contributes: bool = True) -> Future[Any]:
        dbs = self.store.dbs

        def position(txn: Any) -> None:
            meta.put_applied_position(txn, dbs, partition, seq)

        decisions, outbox, risk = self._decisions, self._outbox, self._risk
        if kind in (*ANSWERED, SCORED) and (decisions is None or outbox is None
                                             or risk is None):
            return self.writer.submit_job(position)  # not attached: keep the position
        if kind == SCORED:
            assert risk is not None
            return risk.apply_logged_scores(payload, position, contributes)
        if kind == LABEL:
            assert risk is not None
            return risk.apply_logged_label(payload, position, contributes)
        if kind == OUTCOME:
            assert decisions is not None
            return decisions.outcomes.settle_logged(
                str(payload["decision_id"]), float(payload["reward"]), position)
        if kind == ACK:
            assert outbox is not None
            return outbox.ack_logged(payload, position)
        if kind == JOURNEY:
            assert outbox is not None
            journey = [Delivery.from_bytes(d.encode()) for d in payload["deliveries"]]
            return outbox.schedule_logged(
                journey, bytes.fromhex(payload["key"]), position,
                lambda txn, key: triggered.delete(txn, dbs, key))
        record: DecisionRecord
        planned: list[contact_table.Row]
        record, planned = payload

        def store_decision(txn: Any) -> None:
            position(txn)
            if decisions is not None and decisions.pending.knows(record.decision_id):
                return  # made here: the write-behind stores it (contacts included)
            if decision_table.exists(txn, dbs, record.decision_id):
                return  # stored already (here, or by an earlier apply)
            decision_table.put(txn, dbs, record)
            if planned:  # the caps count them here as on the node that decided
                contact_table.add(txn, dbs, record.user_id, planned, CONTACT_MEMORY)
            if record.status == "open":
                open_decisions.add(txn, dbs, record.user_id, record.decision_id)
                deadlines.add(txn, dbs, record.window_end, record.decision_id)

        return self.writer.submit_job(store_decision)


def nats_tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS to the NATS servers when ``cluster_nats_ca_file`` is set: their certificates
    verified against it (host names included), this node's ``tls_cert_file``/``tls_key_file``
    presented when NATS asks for a client certificate. ConfigError names a bad file."""
    if config.cluster_nats_ca_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.cluster_nats_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cluster_nats_ca_file: cannot read a CA certificate from "
                          f"{config.cluster_nats_ca_file}: {exc}") from None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        try:
            context.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls_cert_file, tls_key_file: not a certificate and its key "
                              f"({exc})") from None
    return context


def _log_record(events: list[ValidEvent]) -> tuple[bytes, str]:
    """One log record for some events of one partition (a TrackRequest: the events as
    Track received them, user ids as stored, times set), and its ``Nats-Msg-Id``: a hash
    of its (user, event id) pairs, so a retried call (the same events) is a duplicate."""
    request = pb.TrackRequest()
    digest = blake2b(digest_size=16)
    for ev in events:
        request.events.add().MergeFromString(log_record(ev))
        digest.update(f"{ev.user_id}\x00{ev.event_id}\x01".encode())
    return request.SerializeToString(), digest.hexdigest()
