"""DiagnosticsService.Echo: the latency floor every benchmark compares against."""

from __future__ import annotations

import grpc

from nudge.v1 import diagnostics_service_pb2 as pb
from nudge.v1 import diagnostics_service_pb2_grpc as pb_grpc


class DiagnosticsServicer(pb_grpc.DiagnosticsServiceServicer):
    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        return pb.EchoResponse(payload=request.payload)
