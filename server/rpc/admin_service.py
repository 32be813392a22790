"""AdminService: EraseUser. Thin: validate, map the id as stored, erase, reply."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from nudge.server.inputs.events import check_id
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.rpc.readiness import Readiness
from nudge.server.storage.erasure import Erasure
from nudge.v1 import admin_service_pb2 as pb
from nudge.v1 import admin_service_pb2_grpc as pb_grpc


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(
        self, erase: Callable[[str], Erasure], readiness: Readiness, pseudonyms: Pseudonyms
    ) -> None:
        self.erase = erase
        self.readiness = readiness
        self.pseudonyms = pseudonyms

    def EraseUser(
        self, request: pb.EraseUserRequest, context: grpc.ServicerContext
    ) -> pb.EraseUserResponse:
        self.readiness.check()
        check_id(request.user_id, "user_id")
        erased = self.erase(self.pseudonyms(request.user_id))
        return pb.EraseUserResponse(
            deleted=erased.deleted, decisions_pseudonymised=erased.pseudonymised
        )
