"""DeliveryService: channel adapters stream due deliveries and acknowledge them. Thin:
validate, hand to the outbox, reply."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from nudge.server.clock import Clock
from nudge.server.decisions.campaign import CHANNELS
from nudge.server.decisions.outbox import Delivery, Outbox
from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import MAX_ID_BYTES, check_id, timestamp_seconds
from nudge.server.rpc.readiness import Readiness
from nudge.v1 import delivery_service_pb2 as pb
from nudge.v1 import delivery_service_pb2_grpc as pb_grpc

# How long an idle stream waits before looking again (anything scheduled wakes it sooner).
POLL_SECONDS = 0.1
MAX_LEASE_SECONDS = 3_600


def delivery_message(d: Delivery) -> pb.Delivery:
    msg = pb.Delivery(
        delivery_id=d.delivery_id, decision_id=d.decision_id, user_id=d.user_id,
        campaign=d.campaign, channel=d.channel, message=d.message, text=d.text, offer=d.offer,
        attempt=d.attempt,
    )
    msg.due_at.FromNanoseconds(round(d.due_at * 1e9))
    msg.lease_expires_at.FromNanoseconds(round(d.lease_expires * 1e9))
    return msg


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def __init__(self, outbox: Outbox, clock: Clock, readiness: Readiness) -> None:
        self.outbox = outbox
        self.clock = clock
        self.readiness = readiness

    def StreamDeliveries(
        self, request: pb.StreamDeliveriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamDeliveriesResponse]:
        self.readiness.check()
        if len(request.channels) > len(CHANNELS):
            raise InvalidArgument("channels", f"at most {len(CHANNELS)} (each channel once)")
        if len(request.adapter_id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument("adapter_id", f"must be at most {MAX_ID_BYTES} bytes")
        for i, channel in enumerate(request.channels):
            if channel not in CHANNELS:
                raise InvalidArgument(f"channels[{i}]", f"must be one of {list(CHANNELS)}")
        if not 0 <= request.lease_seconds <= MAX_LEASE_SECONDS:
            raise InvalidArgument("lease_seconds", f"must be in [0, {MAX_LEASE_SECONDS}]")
        channels = set(request.channels)
        adapter = request.adapter_id or context.peer()
        lease = float(request.lease_seconds or self.outbox.default_lease_seconds)
        # Ends when the server begins shutting down: the adapter reconnects elsewhere
        # instead of holding the drain for the whole grace period.
        while context.is_active() and self.readiness.ready:
            leased = self.outbox.lease(self.clock.now(), channels, adapter, lease)
            for d in leased:
                yield pb.StreamDeliveriesResponse(delivery=delivery_message(d))
            if not leased:
                with self.outbox.changed:
                    self.outbox.changed.wait(POLL_SECONDS)

    def AckDelivery(
        self, request: pb.AckDeliveryRequest, context: grpc.ServicerContext
    ) -> pb.AckDeliveryResponse:
        self.readiness.check()
        check_id(request.delivery_id, "delivery_id")
        if request.status not in (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_FAILED):
            raise InvalidArgument("status", "must be DELIVERY_STATUS_SENT or _FAILED")
        if len(request.detail.encode()) > 1024:
            raise InvalidArgument("detail", "must be at most 1024 bytes")
        now = self.clock.now()
        has_time = request.HasField("time")
        when = timestamp_seconds(request.time, "time", now, True) if has_time else now
        fallback = self.outbox.ack(
            request.delivery_id, request.status == pb.DELIVERY_STATUS_SENT, request.detail, when
        )
        return pb.AckDeliveryResponse(
            fallback_delivery_id=fallback.delivery_id if fallback is not None else ""
        )
