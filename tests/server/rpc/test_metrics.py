"""MetricsInterceptor and the /metrics endpoint, on a real gRPC server and HTTP port."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nudge.server.errors import InvalidArgument
from nudge.server.rpc.metrics import Metrics, start_metrics_server
from nudge.server.rpc.status import StatusInterceptor
from nudge.v1 import (
    decision_service_pb2,
    decision_service_pb2_grpc,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
)


class Diagnostics(diagnostics_service_pb2_grpc.DiagnosticsServiceServicer):
    def Echo(self, request, context):
        return diagnostics_service_pb2.EchoResponse(payload=request.payload)


class Decisions(decision_service_pb2_grpc.DecisionServiceServicer):
    def Decide(self, request, context):
        if not request.user_id:
            raise InvalidArgument("user_id", "must not be empty")
        return decision_service_pb2.DecideResponse(decision_id="d1")

    def TrackStream(self, request_iterator, context):
        return decision_service_pb2.TrackStreamResponse(accepted=len(list(request_iterator)))


class Deliveries(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def StreamDeliveries(self, request, context):
        yield delivery_service_pb2.StreamDeliveriesResponse()
        yield delivery_service_pb2.StreamDeliveriesResponse()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def channel(metrics: Metrics) -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[metrics.interceptor(), StatusInterceptor()],
    )
    diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(Diagnostics(), server)
    decision_service_pb2_grpc.add_DecisionServiceServicer_to_server(Decisions(), server)
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(Deliveries(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(None)


@pytest.fixture
def scrape(metrics: Metrics) -> Iterator[str]:
    http, port = start_metrics_server(metrics.registry, "127.0.0.1", 0)
    assert port > 0
    yield f"http://127.0.0.1:{port}/metrics"
    http.shutdown()
    http.server_close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode()


def _value(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r}, got {lines}"
    return float(lines[0].rsplit(" ", 1)[1])


def test_metrics_endpoint_shows_counts_codes_and_latency(
    channel: grpc.Channel, metrics: Metrics, scrape: str
) -> None:
    echo = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    for _ in range(5):
        echo.Echo(diagnostics_service_pb2.EchoRequest(payload=b"x"), timeout=5)
    decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
    decisions.Decide(decision_service_pb2.DecideRequest(user_id="u1"), timeout=5)
    with pytest.raises(grpc.RpcError):
        decisions.Decide(decision_service_pb2.DecideRequest(), timeout=5)
    decisions.TrackStream(iter([decision_service_pb2.TrackStreamRequest()] * 3), timeout=5)
    deliveries = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
    list(deliveries.StreamDeliveries(delivery_service_pb2.StreamDeliveriesRequest(), timeout=5))
    # Non-blocking health Watch is passed through, Check is counted like any unary call.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    metrics.outbox_depth.set(7)
    metrics.lmdb_map_used_ratio.set_function(lambda: 0.25)

    text = _get(scrape)

    echo_labels = 'grpc_method="Echo",grpc_service="nudge.v1.DiagnosticsService",grpc_type="unary"'
    assert _value(text, f"grpc_server_started_total{{{echo_labels}}}") == 5
    assert _value(text, f"grpc_server_handling_seconds_count{{{echo_labels}}}") == 5
    assert _value(text, f'grpc_server_handling_seconds_bucket{{{echo_labels},le="1.0"}}') == 5
    assert 0 < _value(text, f"grpc_server_handling_seconds_sum{{{echo_labels}}}") < 5.0
    assert 'le="0.0001"' in text  # the 100 µs bucket exists

    decide = (
        'grpc_code="{code}",grpc_method="Decide",'
        'grpc_service="nudge.v1.DecisionService",grpc_type="unary"'
    )
    assert _value(text, "grpc_server_handled_total{" + decide.format(code="OK") + "}") == 1
    invalid = decide.format(code="INVALID_ARGUMENT")
    assert _value(text, "grpc_server_handled_total{" + invalid + "}") == 1
    assert (
        'grpc_method="TrackStream",grpc_service="nudge.v1.DecisionService",grpc_type='
        '"client_stream"' in text
    )
    stream = (
        'grpc_code="OK",grpc_method="StreamDeliveries",'
        'grpc_service="nudge.v1.DeliveryService",grpc_type="server_stream"'
    )
    assert _value(text, "grpc_server_handled_total{" + stream + "}") == 1
    assert 'grpc_method="Check"' in text
    assert _value(text, "nudge_outbox_depth ") == 7
    assert _value(text, "nudge_lmdb_map_used_ratio ") == 0.25


def test_each_metrics_has_its_own_registry() -> None:
    # Two servers in one process (tests, benchmarks) must not clash on metric names.
    a, b = Metrics(), Metrics()
    a.queue_depth.set(3)
    assert b.registry.get_sample_value("nudge_ingest_queue_depth") == 0
    assert a.registry.get_sample_value("nudge_ingest_queue_depth") == 3


def test_cancelled_stream_is_counted_as_cancelled(channel: grpc.Channel, metrics: Metrics) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    labels = {
        "grpc_service": "grpc.health.v1.Health",
        "grpc_method": "Watch",
        "grpc_type": "server_stream",
        "grpc_code": "CANCELLED",
    }
    deadline = time.monotonic() + 5
    while metrics.registry.get_sample_value("grpc_server_handled_total", labels) != 1:
        assert time.monotonic() < deadline, "the cancelled Watch was not counted"
        time.sleep(0.01)


def test_handler_cpu_time_is_recorded(channel: grpc.Channel, metrics: Metrics) -> None:
    # A handler that burns CPU shows it in nudge_rpc_cpu_seconds; one that sleeps does not.
    echo = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    for _ in range(3):
        echo.Echo(diagnostics_service_pb2.EchoRequest(payload=b"x"), timeout=5)
    labels = {"grpc_service": "nudge.v1.DiagnosticsService", "grpc_method": "Echo",
              "grpc_type": "unary"}
    assert metrics.registry.get_sample_value("nudge_rpc_cpu_seconds_count", labels) == 3
    cpu = metrics.registry.get_sample_value("nudge_rpc_cpu_seconds_sum", labels)
    wall = metrics.registry.get_sample_value("grpc_server_handling_seconds_sum", labels)
    assert cpu is not None and wall is not None
    assert 0 < cpu <= wall * 1.05 + 1e-4  # a thread's CPU time cannot outrun its wall time


def test_cpu_time_counts_work_not_waiting(metrics: Metrics) -> None:
    class Work(diagnostics_service_pb2_grpc.DiagnosticsServiceServicer):
        def Echo(self, request, context):
            if request.payload == b"sleep":
                time.sleep(0.05)
            else:
                stop = time.thread_time() + 0.05
                while time.thread_time() < stop:
                    pass
            return diagnostics_service_pb2.EchoResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[metrics.interceptor()])
    diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(Work(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    labels = {"grpc_service": "nudge.v1.DiagnosticsService", "grpc_method": "Echo",
              "grpc_type": "unary"}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(ch)
            stub.Echo(diagnostics_service_pb2.EchoRequest(payload=b"sleep"), timeout=5)
            slept = metrics.registry.get_sample_value("nudge_rpc_cpu_seconds_sum", labels)
            stub.Echo(diagnostics_service_pb2.EchoRequest(payload=b"work"), timeout=5)
            total = metrics.registry.get_sample_value("nudge_rpc_cpu_seconds_sum", labels)
    finally:
        server.stop(None)
    assert slept is not None and total is not None
    assert slept < 0.02  # sleeping costs no CPU
    assert total - slept >= 0.05  # the busy loop's 50 ms of CPU are all there


def test_unscraped_samples_stay_bounded_and_all_count(
    channel: grpc.Channel, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Observations wait for a read of the registry; a server nobody scrapes folds them in
    # itself past MAX_UNFOLDED, a few per call, so the queue stops growing and none is lost.
    monkeypatch.setattr("nudge.server.rpc.metrics.MAX_UNFOLDED", 10)
    echo = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    for i in range(40):
        echo.Echo(diagnostics_service_pb2.EchoRequest(payload=b"x"), timeout=5)
        assert len(metrics.unfolded) <= 11, i
    labels = {"grpc_service": "nudge.v1.DiagnosticsService", "grpc_method": "Echo",
              "grpc_type": "unary"}
    assert metrics.registry.get_sample_value(
        "grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == 40
    assert metrics.registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 40
    assert not metrics.unfolded
