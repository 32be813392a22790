"""Why nudge serves with grpcio's sync thread-pool server: measure it against grpc.aio.

Starts two bare Echo servers (same DiagnosticsService, same process model), one sync with
a thread pool and one grpc.aio, each in its own process, and calls them alternately so
noise on this shared box hits both alike.

    python -m nudge.bench.server_stack [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent import futures

import grpc

from nudge.bench.stats import Latency
from nudge.server.rpc.diagnostics_service import DiagnosticsServicer
from nudge.v1 import diagnostics_service_pb2 as pb
from nudge.v1 import diagnostics_service_pb2_grpc as pb_grpc


class _AioEcho(pb_grpc.DiagnosticsServiceServicer):
    async def Echo(self, request: pb.EchoRequest, context: grpc.aio.ServicerContext):
        return pb.EchoResponse(payload=request.payload)


def _serve_sync() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_DiagnosticsServiceServicer_to_server(DiagnosticsServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


async def _serve_aio() -> None:
    server = grpc.aio.server()
    pb_grpc.add_DiagnosticsServiceServicer_to_server(_AioEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _start(kind: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge.bench.server_stack", "--serve", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, f"127.0.0.1:{proc.stdout.readline().strip()}"


def compare(calls: int) -> dict[str, Latency]:
    procs = {kind: _start(kind) for kind in ("sync", "aio")}
    try:
        stubs = {
            kind: pb_grpc.DiagnosticsServiceStub(grpc.insecure_channel(target))
            for kind, (_, target) in procs.items()
        }
        samples: dict[str, list[float]] = {kind: [] for kind in stubs}
        request = pb.EchoRequest()
        for i in range(calls + 200):
            for kind, stub in stubs.items():
                t0 = time.perf_counter()
                stub.Echo(request, timeout=10)
                if i >= 200:  # the first calls warm the connections
                    samples[kind].append(time.perf_counter() - t0)
        return {kind: Latency.of(s) for kind, s in samples.items()}
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "sync":
        _serve_sync()
        return 0
    if args.serve == "aio":
        asyncio.run(_serve_aio())
        return 0
    result = compare(args.calls)
    print(f"{'empty Echo':12}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}")
    for kind, lat in result.items():
        print(f"{kind:12}{lat.p50:10.0f}{lat.p90:10.0f}{lat.p99:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
