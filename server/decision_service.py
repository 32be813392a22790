"""DecisionService: Track, TrackStream and GetUser; Decide and ReportOutcome await the
decision engine. Thin: validate, hand to the writer or the store, reply."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

import grpc

from nudge.server.clock import Clock
from nudge.server.deadlines import wait_within_deadline
from nudge.server.errors import InvalidArgument, NotFound, Unimplemented
from nudge.server.events import check_id, validate_events
from nudge.server.ingest import EventWriter, TrackResult
from nudge.server.readiness import Readiness
from nudge.server.store import Store
from nudge.server.user_report import user_state_message
from nudge.v1 import decision_service_pb2 as pb
from nudge.v1 import decision_service_pb2_grpc as pb_grpc

# Stream messages a TrackStream may have queued for commit at once (back-pressure).
STREAM_IN_FLIGHT = 8


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
    ) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self.readiness = readiness
        self.half_life_seconds = half_life_seconds

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        self.readiness.check()
        events = validate_events(request.events, self.clock.now())
        result = _wait(self.writer.submit(events), context)
        return pb.TrackResponse(accepted=result.accepted, duplicates=result.duplicates)

    def TrackStream(
        self, request_iterator: Iterator[pb.TrackStreamRequest], context: grpc.ServicerContext
    ) -> pb.TrackStreamResponse:
        self.readiness.check()
        pending: deque[Future[TrackResult]] = deque()
        accepted = duplicates = 0

        def settle(future: Future[TrackResult]) -> None:
            nonlocal accepted, duplicates
            result = _wait(future, context)
            accepted += result.accepted
            duplicates += result.duplicates

        try:
            for index, message in enumerate(request_iterator):
                try:
                    events = validate_events(message.events, self.clock.now())
                except InvalidArgument as exc:
                    raise InvalidArgument(f"messages[{index}].{exc.field}", exc.rule) from None
                pending.append(self.writer.submit(events))
                while len(pending) > STREAM_IN_FLIGHT or (pending and pending[0].done()):
                    settle(pending.popleft())
        finally:
            # Whatever was queued commits anyway; wait so the reply (or error) follows it.
            while pending:
                future = pending.popleft()
                if context.is_active():
                    settle(future)
        return pb.TrackStreamResponse(accepted=accepted, duplicates=duplicates)

    def GetUser(
        self, request: pb.GetUserRequest, context: grpc.ServicerContext
    ) -> pb.GetUserResponse:
        self.readiness.check()
        check_id(request.user_id, "user_id")
        view = self.store.get_user(request.user_id)
        if view is None:
            raise NotFound(f"user_id: no events stored for user {request.user_id!r}")
        user = user_state_message(view, self.store.type_names(), self.half_life_seconds)
        return pb.GetUserResponse(user=user)

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> None:
        raise Unimplemented(
            "Decide needs the decision engine (campaigns, policy kernel, learner), which is "
            "not built yet"
        )

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> None:
        raise Unimplemented(
            "ReportOutcome needs the decision learner (reward attribution), which is not "
            "built yet"
        )
