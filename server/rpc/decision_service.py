"""DecisionService: Track, TrackStream, GetUser, Decide, DecideBatch, ReportOutcome. Thin:
validate, hand to the writer, the store or the decision engine, reply."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np

from nudge.kernels.policy import MAX_TOP_K
from nudge.kernels.request_numbers import request_numbers
from nudge.server.clock import Clock
from nudge.server.cluster.partitions import partition_of
from nudge.server.decisions.audience import Segment, segment_users
from nudge.server.decisions.engine import DecideInput, DecisionEngine, DecisionOutcome
from nudge.server.decisions.features import FeaturePlan
from nudge.server.errors import InvalidArgument, NotFound, Unavailable
from nudge.server.inputs.events import (
    _SHORT_KEY,
    MAX_ID_BYTES,
    MAX_PROPERTIES,
    ValidEvent,
    check_id,
    check_properties,
    timestamp_seconds,
    validate_events,
)
from nudge.server.rpc import batch_routing
from nudge.server.rpc.batch_routing import BatchRouter
from nudge.server.rpc.deadlines import wait_within_deadline
from nudge.server.rpc.forwarding import is_forwarded
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.rpc.readiness import Readiness
from nudge.server.rpc.user_report import TypeNames, reply_bytes, user_reply
from nudge.server.storage.ingest import EventWriter, TrackResult
from nudge.server.storage.store import Store
from nudge.server.storage.tables import users
from nudge.v1 import decision_service_pb2 as pb
from nudge.v1 import decision_service_pb2_grpc as pb_grpc

# Back-pressure: a TrackStream reads no further message while it has this many messages,
# or more events than one group commit takes (the writer's max_batch_events), queued for
# commit. Commits are the disk's unit of work: a bulk stream that keeps a whole commit's
# worth queued lets the writer make each commit as large as it allows, and with one event
# per new user every event dirties its own B-tree pages, so 50,000 events per commit
# ingest about three times as fast as 4,500 (bench/ingest.py).
STREAM_IN_FLIGHT = 64
# Campaign names are [a-z][a-z0-9_]{0,63}.
MAX_CAMPAIGN_NAME = 64
# DecideBatch: user ids per request message; users per reply message (and per read
# transaction); decisions a batch lets wait for the decision log's flush before it waits.
MAX_BATCH_USERS = 10_000
BATCH_CHUNK = 1_000
MAX_PENDING_BATCH_DECISIONS = 20_000

V = TypeVar("V")
# DecideRequest.numbers' field number (map<string, double>), for kernels/request_numbers.py.
_NUMBERS_FIELD = pb.DecideRequest.DESCRIPTOR.fields_by_name["numbers"].number


def _plain(values: Mapping[str, V]) -> dict[str, V]:
    """A request's map as a dict, copied by iterating it: ``dict()`` of a protobuf map goes
    through the Mapping ABC (8.1 -> 6.9 us for Decide3600's 31 numbers, 0.8 -> 0.06 us for
    an empty map; events.py copies event properties the same way)."""
    return {k: values[k] for k in values} if values else {}


@dataclass(frozen=True)
class _BatchSettings:
    """A DecideBatch's settings, from its first message, validated."""

    campaign: str
    time: float
    top_k: int
    numbers: dict[str, float]
    strings: dict[str, str]
    dry_run: bool
    include_reasons: bool

    def segment(self, message: pb.Segment) -> Segment:
        since = (timestamp_seconds(message.seen_since, "segment.seen_since", self.time, True)
                 if message.HasField("seen_since") else None)
        return Segment(tuple(message.event_types), since)


def _fill_decision(reply: pb.DecideResponse | pb.BatchDecision,
                   outcome: DecisionOutcome) -> None:
    """A decision into a reply message (DecideResponse, or a BatchDecision: the same
    fields), in place: no intermediate Reason or Action messages to copy, no Python-level
    Timestamp helpers (send times derive from a validated request time, so in range)."""
    reply.decision_id = outcome.decision_id
    reply.propensity = outcome.propensity
    reply.propensity_samples = outcome.propensity_samples
    reply.holdout = outcome.holdout
    reply.suppressed_reason = outcome.suppressed_reason
    reply.model_version = outcome.model_version
    reasons = reply.reasons
    for c, d, w in outcome.reasons:
        reasons.add(code=c, detail=d, weight=w)
    actions = reply.actions
    for a in outcome.actions:
        action = actions.add(
            message=a.message, channel=a.channel, frequency=a.frequency, offer=a.offer,
            text=a.text, score=a.score,
        )
        send_at = action.send_at
        send_at.seconds, send_at.nanos = divmod(round(a.send_at * 1e9), 1_000_000_000)


def _clearly_valid_ids(ids: list[str]) -> bool:
    """Whether every id surely passes ``check_id`` (non-empty, at most MAX_ID_BYTES as
    UTF-8, no NUL), checked for a whole DecideBatch message at once with C-level calls
    instead of a call and a field name per id. False means "check one by one" (which names
    the first bad id), not that one is bad: a long id of few-byte characters may pass."""
    return (all(ids) and (not ids or max(map(len, ids)) <= MAX_ID_BYTES // 4)
            and "\x00" not in "".join(ids))


def _settings_request(settings: _BatchSettings) -> pb.DecideBatchRequest:
    """A batch's settings as its owners are asked them (cluster mode): the time resolved
    here, so every decision of the batch is taken at the same time."""
    s = settings
    request = pb.DecideBatchRequest(campaign=s.campaign, top_k=s.top_k, dry_run=s.dry_run,
                                    include_reasons=s.include_reasons)
    request.numbers.update(s.numbers)
    request.strings.update(s.strings)
    request.time.seconds, request.time.nanos = divmod(round(s.time * 1e9), 1_000_000_000)
    return request


def _wait(future: Future[TrackResult], context: grpc.ServicerContext) -> TrackResult:
    return wait_within_deadline(
        future,
        context,
        "the events may still be stored — retry with the same event_ids (replays count once)",
    )


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        clock: Clock,
        readiness: Readiness,
        half_life_seconds: float,
        decisions: DecisionEngine,
        pseudonyms: Pseudonyms | None = None,
        submit_events: Callable[[list[ValidEvent]], Future[TrackResult]] | None = None,
        batches: BatchRouter | None = None,
    ) -> None:
        self.pseudonyms = pseudonyms or Pseudonyms(None)
        self.store = store
        self.writer = writer
        # Where Track's events go: the group commit here, or the replicated log (cluster).
        self.submit_events = submit_events or writer.submit
        self.clock = clock
        self.readiness = readiness
        self.half_life_seconds = half_life_seconds
        self.decisions = decisions
        self._type_names = TypeNames()
        # Cluster mode: DecideBatch's users are decided by their partitions' owners.
        self.batches = batches

    def _pseudonymous(self, events: list[ValidEvent]) -> list[ValidEvent]:
        """Replace user ids by their pseudonyms, in the stored event too (if configured)."""
        if self.pseudonyms.enabled:
            for ev in events:
                ev.user_id = self.pseudonyms(ev.user_id)
                if ev.proto is not None:
                    ev.proto.user_id = ev.user_id
        return events

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        self.readiness.check()
        with self.writer.turn:  # not beside the writer's LMDB calls (GroupCommitWriter.turn)
            events = self._pseudonymous(validate_events(request.events, self.clock.now()))
        result = _wait(self.submit_events(events), context)
        return pb.TrackResponse(accepted=result.accepted, duplicates=result.duplicates)

    def TrackStream(
        self, request_iterator: Iterator[pb.TrackStreamRequest], context: grpc.ServicerContext
    ) -> pb.TrackStreamResponse:
        self.readiness.check()
        pending: deque[tuple[Future[TrackResult], int]] = deque()
        accepted = duplicates = queued = 0
        max_queued = self.writer.max_batch_events
        turn = self.writer.turn

        def settle(submitted: tuple[Future[TrackResult], int]) -> None:
            nonlocal accepted, duplicates, queued
            future, size = submitted
            queued -= size
            result = _wait(future, context)
            accepted += result.accepted
            duplicates += result.duplicates

        try:
            for index, message in enumerate(request_iterator):
                try:
                    with turn:  # not beside the writer's LMDB calls (GroupCommitWriter.turn)
                        events = validate_events(message.events, self.clock.now())
                        events = self._pseudonymous(events)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"messages[{index}].{exc.field}", exc.rule) from None
                pending.append((self.submit_events(events), len(events)))
                queued += len(events)
                while (len(pending) > STREAM_IN_FLIGHT or queued > max_queued
                       or (pending and pending[0][0].done())):
                    settle(pending.popleft())
        finally:
            # Whatever was queued commits anyway; wait so the reply (or error) follows it.
            while pending:
                submitted = pending.popleft()
                if context.is_active():
                    settle(submitted)
        return pb.TrackStreamResponse(accepted=accepted, duplicates=duplicates)

    def GetUser(self, request: pb.GetUserRequest, context: grpc.ServicerContext) -> bytes:
        """The serialised GetUserResponse (registered by :func:`add_to_server` with a
        response serializer that passes bytes through). Inline, as few Python calls as
        the work allows: an empty Echo's handler is ~9 µs, GetUser's budget 25."""
        if not self.readiness.serving:
            self.readiness.check()
        raw_id = request.user_id
        if (not raw_id or (len(raw_id) > MAX_ID_BYTES // 4
                           and len(raw_id.encode()) > MAX_ID_BYTES) or "\x00" in raw_id):
            check_id(raw_id, "user_id")
        user_id = self.pseudonyms(raw_id)
        names = self._type_names.arrays(self.store.type_names())
        store = self.store
        with store.read() as txn:
            found = users.stored_bytes(txn, store.dbs, user_id)
            if found is not None:
                return user_reply(found[0], found[1], user_id, names, self.half_life_seconds)
        raise NotFound(f"user_id: no events stored for user {raw_id!r}")

    def Decide(
        self, request: pb.DecideRequest, context: grpc.ServicerContext
    ) -> pb.DecideResponse:
        if not self.readiness.serving:
            self.readiness.check()
        raw_id = request.user_id
        if (not raw_id or (len(raw_id) > MAX_ID_BYTES // 4
                           and len(raw_id.encode()) > MAX_ID_BYTES) or "\x00" in raw_id):
            check_id(raw_id, "user_id")  # raises, naming the rule
        top_k = request.top_k
        if top_k < 0:
            raise InvalidArgument("top_k", "must not be negative")
        campaign = request.campaign
        numbers: Mapping[str, float] = request.numbers
        strings = _plain(request.strings)
        values, plan = self._number_values(request, campaign, numbers, strings)
        if values is None:
            numbers = _plain(numbers)
            check_properties(numbers, strings)
        if len(campaign) > MAX_CAMPAIGN_NAME:
            raise InvalidArgument("campaign", f"must be at most {MAX_CAMPAIGN_NAME} characters")
        now = self.clock.now()
        when = (timestamp_seconds(request.time, "time", now, True)
                if request.HasField("time") else now)
        outcome = self.decisions.decide(
            DecideInput(self.pseudonyms(raw_id), campaign, when, top_k or 1, numbers,
                        strings, request.dry_run, number_values=values, number_plan=plan),
            after_reply=context.add_callback,
        )
        reply = pb.DecideResponse()
        _fill_decision(reply, outcome)
        return reply

    def _number_values(
        self, request: pb.DecideRequest, campaign: str, numbers: Mapping[str, float],
        strings: dict[str, str],
    ) -> tuple[np.ndarray | None, FeaturePlan | None]:
        """The request's numbers in the campaign's feature order, read from the request's
        bytes by one kernel call (kernels/request_numbers.py), and the plan whose order
        that is; ``(None, None)`` when the dict path must answer: the request has strings,
        the campaign's texts read properties (or it is unknown), or a number breaks, or
        may break, a property rule (the dict path then names the field). Taken, every rule
        of ``check_properties`` holds: at most ``MAX_PROPERTIES`` entries, each key 1 to
        ``_SHORT_KEY`` bytes, each value finite."""
        if strings or not numbers:
            return None, None
        plan = self.decisions.number_plan(campaign)
        if plan is None:
            return None, None
        names, name_at, slots = plan.number_table
        values = np.empty(len(plan.number_names))
        count = request_numbers(np.frombuffer(request.SerializeToString(), np.uint8),
                                _NUMBERS_FIELD, names, name_at, slots, _SHORT_KEY, values)
        if not 0 <= count <= MAX_PROPERTIES:
            return None, None
        return values, plan

    def DecideBatch(
        self, request_iterator: Iterator[pb.DecideBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.DecideBatchResponse]:
        self.readiness.check()
        settings: _BatchSettings | None = None
        decided = [0]  # users decided so far (a forwarded batch refuses only before any)
        for index, message in enumerate(request_iterator):
            try:
                if settings is None:
                    settings = self._batch_settings(message)
                elif message.HasField("segment"):
                    raise InvalidArgument("segment", "only in the first message")
                if len(message.user_ids) > MAX_BATCH_USERS:
                    raise InvalidArgument("user_ids", f"at most {MAX_BATCH_USERS:,} per message")
                if message.HasField("segment") and message.user_ids:
                    raise InvalidArgument("segment", "give user_ids or a segment, not both")
                ids = list(message.user_ids)
                if not _clearly_valid_ids(ids):  # one by one, naming the first bad one
                    for j, user_id in enumerate(ids):
                        check_id(user_id, f"user_ids[{j}]")
            except InvalidArgument as exc:
                raise InvalidArgument(f"messages[{index}].{exc.field}", exc.rule) from None
            if self.batches is not None and not is_forwarded(context.invocation_metadata()):
                yield from self._coordinated(settings, message, context)  # by each owner
                continue
            # One machine, or a cluster node asked by a coordinator for its own users.
            partitions = (None if self.batches is None
                          else self._served_here(message, context, decided[0]))
            if message.HasField("segment"):
                for chunk in self._stored_segment(settings, message, partitions):
                    yield self._decide_chunk(settings, chunk, chunk)
            else:
                for start in range(0, len(ids), BATCH_CHUNK):
                    asked = ids[start : start + BATCH_CHUNK]
                    reply = self._decide_chunk(settings, asked,
                                               [self.pseudonyms(i) for i in asked])
                    decided[0] += len(reply.decisions)
                    yield reply

    def _served_here(self, message: pb.DecideBatchRequest, context: grpc.ServicerContext,
                     decided: int) -> frozenset[int] | None:
        """(Cluster, a forwarded batch) The partitions a segment covers here, or None for
        user ids; refuses (before anyone is decided: the coordinator re-routes) what this
        node does not serve."""
        assert self.batches is not None
        serves = self.batches.router
        if message.HasField("segment"):
            mine = batch_routing.forwarded_partitions(context) or frozenset()
            lost = sorted(p for p in mine if not serves.route_partition(p).local)
            if lost:
                batch_routing.refuse(context, f"partitions {lost} are not served here")
            return mine
        lost_users = [u for u in map(self.pseudonyms, message.user_ids)
                      if not serves.route(u).local]
        if lost_users:
            what = f"user_ids: {lost_users[0]!r}'s partition is not served here"
            if decided:  # not the coordinator's one message: nothing to re-route
                raise Unavailable(what)
            batch_routing.refuse(context, what)
        return None

    def _coordinated(self, settings: _BatchSettings, message: pb.DecideBatchRequest,
                     context: grpc.ServicerContext) -> Iterator[pb.DecideBatchResponse]:
        """One message of a DecideBatch in cluster mode, coordinated here
        (batch_routing.py): each user decided by the owner of its partition."""
        batches = self.batches
        assert batches is not None
        request = _settings_request(settings)
        if message.HasField("segment"):
            request.segment.CopyFrom(message.segment)
            yield from batches.decide_segment(
                request, context,
                lambda mine: (list(self._decide_chunk(settings, chunk, chunk).decisions)
                              for chunk in self._stored_segment(settings, message, mine)),
                BATCH_CHUNK)
            return
        ids = list(message.user_ids)
        for start in range(0, len(ids), BATCH_CHUNK):
            asked = ids[start:start + BATCH_CHUNK]
            reply = pb.DecideBatchResponse()
            reply.decisions.extend(batches.decide_ids(
                request, asked, [self.pseudonyms(i) for i in asked], context,
                lambda a, s: list(self._decide_chunk(settings, a, s).decisions)))
            yield reply

    def _stored_segment(self, settings: _BatchSettings, message: pb.DecideBatchRequest,
                        partitions: frozenset[int] | None) -> Iterator[list[str]]:
        """The ids of the segment's users stored here, a chunk at a time; in cluster mode
        only those of ``partitions`` (rows of partitions this node held before a move are
        not its to decide)."""
        chunks = segment_users(self.store, settings.segment(message.segment))
        if partitions is None:
            yield from chunks
            return
        assert self.batches is not None
        n = self.batches.router.partitions
        for chunk in chunks:
            mine = [u for u in chunk if partition_of(u, n) in partitions]
            if mine:
                yield mine

    def _batch_settings(self, message: pb.DecideBatchRequest) -> _BatchSettings:
        """The first message's settings, validated as Decide validates its request."""
        if message.top_k < 0:
            raise InvalidArgument("top_k", "must not be negative")
        if message.top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be at most {MAX_TOP_K}")
        numbers = _plain(message.numbers)
        strings = _plain(message.strings)
        check_properties(numbers, strings)
        if len(message.campaign) > MAX_CAMPAIGN_NAME:
            raise InvalidArgument("campaign", f"must be at most {MAX_CAMPAIGN_NAME} characters")
        self.decisions.campaign_model(message.campaign)  # an unknown campaign fails here
        now = self.clock.now()
        when = (timestamp_seconds(message.time, "time", now, True)
                if message.HasField("time") else now)
        return _BatchSettings(message.campaign, when, message.top_k or 1, numbers, strings,
                              message.dry_run, message.include_reasons)

    def _decide_chunk(self, settings: _BatchSettings, asked: list[str],
                      user_ids: list[str]) -> pb.DecideBatchResponse:
        """Decide for one chunk of users and wait, if the decision log is far behind,
        until its flush catches up (a batch must not hold a whole base in memory)."""
        s = settings
        outcomes = self.decisions.decide_users(
            DecideInput("", s.campaign, s.time, s.top_k, s.numbers, s.strings, s.dry_run,
                        explain=s.include_reasons), user_ids)
        if not s.dry_run:
            self.decisions.pending.wait_below(MAX_PENDING_BATCH_DECISIONS)
        reply = pb.DecideBatchResponse()
        decisions = reply.decisions
        for user_id, outcome in zip(asked, outcomes, strict=True):
            decision = decisions.add(user_id=user_id)
            _fill_decision(decision, outcome)
        return reply

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        self.readiness.check()
        check_id(request.decision_id, "decision_id")
        now = self.clock.now()
        has_time = request.HasField("time")
        when = timestamp_seconds(request.time, "time", now, True) if has_time else now
        future = self.decisions.report_outcome(request.decision_id, request.reward, when)
        attributed = wait_within_deadline(future, context, "the outcome may still be stored")
        return pb.ReportOutcomeResponse(attributed=attributed)


class _Registrar:
    """What a generated ``add_*Servicer_to_server`` calls on a server, passing its method
    handlers on with some replaced (``replace[name](handler)``): the generated function
    builds the handlers itself, for both of grpc's lookups (generic and registered)."""

    def __init__(self, server: grpc.Server,
                 replace: dict[str, Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler]]
                 ) -> None:
        self._server = server
        self._replace = replace

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: rebuilt from the same handlers in ``add_registered_method_handlers``,
        which the generated function calls next."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        handlers = {name: self._replace.get(name, lambda h: h)(handler)
                    for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),))
        self._server.add_registered_method_handlers(service, handlers)


def add_to_server(servicer: DecisionServicer, server: grpc.Server) -> None:
    """``add_DecisionServiceServicer_to_server`` with GetUser's reply serialised by
    :func:`reply_bytes`: the handler writes the GetUserResponse's bytes itself, and a
    client's generated stub parses them as it would the message's own serialisation."""
    pb_grpc.add_DecisionServiceServicer_to_server(
        servicer,
        _Registrar(server, {"GetUser": lambda h: h._replace(response_serializer=reply_bytes)}),
    )
