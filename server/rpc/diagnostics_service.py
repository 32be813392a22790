"""DiagnosticsService: the latency floor (Echo) and which process answered (GetServerInfo)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import grpc

from nudge.server.errors import InvalidArgument
from nudge.v1 import diagnostics_service_pb2 as pb
from nudge.v1 import diagnostics_service_pb2_grpc as pb_grpc

# Echo is public (no token): its payload is bounded like everything else.
MAX_ECHO_BYTES = 64 << 10


def package_version() -> str:
    try:
        return version("nudge")
    except PackageNotFoundError:  # running from a source tree without an install
        return "unknown"


@dataclass(frozen=True)
class ServerInfo:
    """What GetServerInfo reports; ``leader`` and ``models`` are read per call."""

    worker: int
    workers: int
    leader: Callable[[], bool]
    # Campaign -> (model version, rewards log position learned up to).
    models: Callable[[], dict[str, tuple[str, int]]]
    # Cluster mode: this node's id, partition -> owner, and the partitions served here.
    node_id: str = ""
    partition_owners: Callable[[], dict[int, str]] | None = None
    ready_partitions: Callable[[], list[int]] | None = None


class DiagnosticsServicer(pb_grpc.DiagnosticsServiceServicer):
    def __init__(self, info: ServerInfo | None = None) -> None:
        self.info = info
        self._version = package_version()

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        if len(request.payload) > MAX_ECHO_BYTES:
            raise InvalidArgument("payload", f"must be at most {MAX_ECHO_BYTES} bytes")
        return pb.EchoResponse(payload=request.payload)

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        reply = pb.GetServerInfoResponse(pid=os.getpid(), version=self._version)
        if self.info is not None:
            reply.worker = self.info.worker
            reply.workers = self.info.workers
            reply.leader = self.info.leader()
            for name, (version, position) in self.info.models().items():
                reply.model_versions[name] = version
                reply.learned_positions[name] = position
            reply.node_id = self.info.node_id
            if self.info.partition_owners is not None:
                for partition, owner in self.info.partition_owners().items():
                    reply.partition_owners[partition] = owner
            if self.info.ready_partitions is not None:
                reply.ready_partitions.extend(self.info.ready_partitions())
        return reply
