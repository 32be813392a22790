"""AdminService: EraseUser and the event type registry. Thin: validate, map the id as
stored, call the storage, reply."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from nudge.server.inputs.events import check_id
from nudge.server.rpc.deadlines import wait_within_deadline
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.rpc.readiness import Readiness
from nudge.server.storage.erasure import Erasure
from nudge.server.storage.ingest import EventWriter
from nudge.v1 import admin_service_pb2 as pb
from nudge.v1 import admin_service_pb2_grpc as pb_grpc


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(
        self, erase: Callable[[str], Erasure], readiness: Readiness, pseudonyms: Pseudonyms,
        writer: EventWriter,
    ) -> None:
        self.erase = erase
        self.readiness = readiness
        self.pseudonyms = pseudonyms
        self.writer = writer

    def EraseUser(
        self, request: pb.EraseUserRequest, context: grpc.ServicerContext
    ) -> pb.EraseUserResponse:
        self.readiness.check()
        check_id(request.user_id, "user_id")
        erased = self.erase(self.pseudonyms(request.user_id))
        return pb.EraseUserResponse(
            deleted=erased.deleted, decisions_pseudonymised=erased.pseudonymised
        )

    def ListEventTypes(
        self, request: pb.ListEventTypesRequest, context: grpc.ServicerContext
    ) -> pb.ListEventTypesResponse:
        writer = self.writer
        reply = pb.ListEventTypesResponse(other_events=writer.other_events)
        for name, slot, named in writer.type_registry():
            reply.event_types.add(name=name, slot=slot, named=named)
        return reply

    def ResetEventTypes(
        self, request: pb.ResetEventTypesRequest, context: grpc.ServicerContext
    ) -> pb.ResetEventTypesResponse:
        removed = wait_within_deadline(self.writer.reset_types(), context,
                                       "the registry may still be reset")
        return pb.ResetEventTypesResponse(removed=removed)
