"""DeliveryService: the coordinated outbox. Not built yet; says so precisely."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from nudge.server.errors import Unimplemented
from nudge.v1 import delivery_service_pb2 as pb
from nudge.v1 import delivery_service_pb2_grpc as pb_grpc


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def StreamDeliveries(
        self, request: pb.StreamDeliveriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamDeliveriesResponse]:
        raise Unimplemented(
            "StreamDeliveries needs the outbox (triggers and scheduled deliveries), which is "
            "not built yet"
        )
        yield  # pragma: no cover - makes this a generator, as the stream handler expects

    def AckDelivery(
        self, request: pb.AckDeliveryRequest, context: grpc.ServicerContext
    ) -> pb.AckDeliveryResponse:
        raise Unimplemented(
            "AckDelivery needs the outbox (triggers and scheduled deliveries), which is not "
            "built yet"
        )
