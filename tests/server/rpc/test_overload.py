"""ConcurrencyLimiter on a real gRPC server: excess refused fast, expired work never run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nudge.server.rpc.overload import ConcurrencyLimiter, recommended_grpc_cap
from nudge.server.rpc.status import StatusInterceptor
from nudge.v1 import (
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
)

MAX_WORKERS = 8


class BlockingEcho(diagnostics_service_pb2_grpc.DiagnosticsServiceServicer):
    """Echo that blocks until released when the payload is b"block"; records what ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: list[bytes] = []
        self.entered = threading.Semaphore(0)

    def Echo(self, request, context):
        self.ran.append(request.payload)
        self.entered.release()
        if request.payload == b"block":
            self.release.wait(10)
        return diagnostics_service_pb2.EchoResponse(payload=request.payload)


class Deliveries(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def __init__(self, echo: BlockingEcho) -> None:
        self.echo = echo

    def StreamDeliveries(self, request, context):
        self.echo.ran.append(b"stream")
        self.echo.entered.release()
        self.echo.release.wait(10)
        yield delivery_service_pb2.StreamDeliveriesResponse()


Start = Callable[..., tuple[str, BlockingEcho, ConcurrencyLimiter]]


@pytest.fixture
def start() -> Iterator[Start]:
    servers: list[tuple[grpc.Server, BlockingEcho]] = []

    def _start(**limits) -> tuple[str, BlockingEcho, ConcurrencyLimiter]:
        # Echo is exempt by default; the test limits it so a blocking Echo fills the slots.
        limiter = ConcurrencyLimiter(exempt=("/grpc.health.v1.Health/",), **limits)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS),
            interceptors=[limiter, StatusInterceptor()],
            maximum_concurrent_rpcs=recommended_grpc_cap(
                limiter.max_concurrent, limiter.max_queue, MAX_WORKERS
            ),
        )
        echo = BlockingEcho()
        diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(echo, server)
        delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(Deliveries(echo), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, echo))
        return f"127.0.0.1:{port}", echo, limiter

    yield _start
    for server, echo in servers:
        echo.release.set()
        server.stop(None)


def _echo(channel: grpc.Channel, payload: bytes, timeout: float = 10) -> grpc.Future:
    stub = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    return stub.Echo.future(diagnostics_service_pb2.EchoRequest(payload=payload), timeout=timeout)


def _wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _fill(channel: grpc.Channel, echo: BlockingEcho, n: int) -> list[grpc.Future]:
    """Start ``n`` blocking calls and wait until all are inside the servicer."""
    calls = [_echo(channel, b"block") for _ in range(n)]
    for _ in range(n):
        assert echo.entered.acquire(timeout=10)
    return calls


def test_beyond_slots_and_queue_is_refused_fast(start: Start) -> None:
    target, echo, limiter = start(max_concurrent=2, max_queue=1, queue_timeout=5.0)
    with grpc.insecure_channel(target) as channel:
        running = _fill(channel, echo, 2)
        queued = _echo(channel, b"queued")
        _wait_for(lambda: limiter.waiting == 1)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            _echo(channel, b"refused").result()
        assert time.monotonic() - t0 < 2.0  # answered at once, not after queue_timeout
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "server overloaded: 3 in flight; retry with backoff"
        # Health is exempt: a busy server is not a dead one.
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        echo.release.set()
        assert [c.result().payload for c in running] == [b"block", b"block"]
        assert queued.result().payload == b"queued"  # the waiter got a slot
    assert b"refused" not in echo.ran
    assert limiter.in_flight == 0 and limiter.waiting == 0


def test_queue_wait_is_bounded(start: Start) -> None:
    target, echo, _ = start(max_concurrent=1, max_queue=1, queue_timeout=0.1)
    with grpc.insecure_channel(target) as channel:
        _fill(channel, echo, 1)
        with pytest.raises(grpc.RpcError) as info:
            _echo(channel, b"waited").result()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        echo.release.set()
    assert b"waited" not in echo.ran


def test_deadline_passed_while_queued_is_dropped_before_work(start: Start) -> None:
    target, echo, limiter = start(max_concurrent=1, max_queue=1, queue_timeout=10.0)
    with grpc.insecure_channel(target) as channel:
        running = _fill(channel, echo, 1)
        late = _echo(channel, b"late", timeout=0.3)
        with pytest.raises(grpc.RpcError) as info:
            late.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: limiter.expired == 1)  # the server side ends at the same deadline
        echo.release.set()
        running[0].result()
        assert _echo(channel, b"after").result().payload == b"after"
    assert b"late" not in echo.ran


class _Context:
    """Just enough of a ServicerContext to hand the limiter an already expired deadline."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float:
        return self.remaining

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_expired_deadline_is_dropped_on_arrival() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=4)
    ran: list[object] = []
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: ran.append(request))
    details = SimpleNamespace(method="/nudge.v1.DecisionService/Decide", invocation_metadata=())
    wrapped = limiter.intercept_service(lambda _d: handler, details)
    context = _Context(remaining=0.0)
    with pytest.raises(RuntimeError):
        wrapped.unary_unary("request", context)
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ran == [] and limiter.in_flight == 0


def test_streams_hold_a_slot_until_they_end(start: Start) -> None:
    target, echo, limiter = start(max_concurrent=1, max_queue=0)
    with grpc.insecure_channel(target) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        stream = stub.StreamDeliveries(delivery_service_pb2.StreamDeliveriesRequest(), timeout=10)
        with futures.ThreadPoolExecutor(1) as pool:
            consumer = pool.submit(list, stream)
            assert echo.entered.acquire(timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                _echo(channel, b"refused").result()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            echo.release.set()
            assert len(consumer.result(timeout=10)) == 1
        assert _echo(channel, b"after").result().payload == b"after"
    assert limiter.in_flight == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        ConcurrencyLimiter(max_concurrent=0)
    with pytest.raises(ValueError, match="max_queue"):
        ConcurrencyLimiter(max_concurrent=1, max_queue=-1)


def test_idle_streams_never_take_the_unary_rpcs_capacity(tmp_path) -> None:
    """Every stream slot in use (and more streams asking): a card authorisation and a
    health check are still answered at once."""
    import queue as queue_module

    from nudge.clients import Client, make_transaction
    from nudge.server.app import create_server
    from nudge.server.config import Config
    from nudge.v1 import delivery_service_pb2 as delpb
    from nudge.v1 import delivery_service_pb2_grpc as delgrpc

    srv = create_server(Config(port=0, data_dir=tmp_path / "data", grace_seconds=0.5))
    srv.start()
    target = f"127.0.0.1:{srv.port}"
    calls: list = []
    idle = queue_module.Queue()  # never fed: the track streams stay open and idle
    try:
        with Client(target, retries=0, timeout=3) as c:
            stub = delgrpc.DeliveryServiceStub(c.channel)
            for _ in range(20):
                calls.append(stub.StreamDeliveries(delpb.StreamDeliveriesRequest(), timeout=30))
            for _ in range(12):
                calls.append(c.decisions.TrackStream.future(
                    iter(idle.get, None), timeout=30))
            time.sleep(1.0)
            start = time.monotonic()
            reply = c.score_transaction(make_transaction("card-user", 12.0), timeout=2)
            assert reply.baseline_count == 0
            assert c.health(timeout=2) == "SERVING"
            assert time.monotonic() - start < 2.0
    finally:
        for call in calls:
            call.cancel()
        idle.put(None)
        srv.stop(0.5)
