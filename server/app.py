"""Building the server (``create_server``) is separate from running it (``serve``).

Why the sync thread-pool server and not grpc.aio: measured on the 2-core reference box
(see README "Server stack"), the sync server answered an empty unary call faster than
grpc.aio, and the hot paths (LMDB reads, Numba kernels with nogil) are synchronous code
that would block an event loop anyway.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nudge.kernels.warmup import warm_up_all
from nudge.server.campaign import load_campaigns
from nudge.server.clock import Clock, SystemClock
from nudge.server.config import Config
from nudge.server.decision_engine import DecisionEngine
from nudge.server.decision_service import DecisionServicer
from nudge.server.delivery_service import DeliveryServicer
from nudge.server.diagnostics_service import DiagnosticsServicer
from nudge.server.ingest import EventWriter
from nudge.server.learner import Learner
from nudge.server.readiness import Readiness
from nudge.server.risk_engine import RiskEngine
from nudge.server.risk_service import RiskServicer
from nudge.server.status import StatusInterceptor
from nudge.server.store import Store
from nudge.v1 import (
    decision_service_pb2,
    decision_service_pb2_grpc,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
    risk_service_pb2,
    risk_service_pb2_grpc,
)

log = logging.getLogger("nudge.server")

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (decision_service_pb2, "DecisionService"),
        (risk_service_pb2, "RiskService"),
        (delivery_service_pb2, "DeliveryService"),
        (diagnostics_service_pb2, "DiagnosticsService"),
    )
)
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class NudgeServer:
    """A built server: started by ``start()``, stopped (drained, committed) by ``stop()``."""

    config: Config
    grpc_server: grpc.Server
    port: int
    store: Store
    writer: EventWriter
    risk: RiskEngine
    decisions: DecisionEngine
    learner: Learner
    health: health.HealthServicer
    readiness: Readiness
    _stopped: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Accept connections (health says NOT_SERVING), warm kernels, then SERVING."""
        self.grpc_server.start()
        self.warm_up_and_serve()

    def warm_up_and_serve(self) -> None:
        """Compile and call every kernel once, then report SERVING and take work."""
        spent = warm_up_all()
        log.info("kernels warm in %.2fs", sum(spent.values()))
        self.learner.start()
        self.readiness.set_ready()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on %s:%d, data in %s", self.config.host, self.port, self.store.path)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish, commit what is queued, close LMDB."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.readiness.set_stopping()
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_seconds if grace is None else grace
        self.grpc_server.stop(grace).wait()
        self.learner.close()
        self.decisions.close()
        self.risk.close()
        self.writer.close()
        self.store.close()
        self._closed.set()
        log.info("stopped; store closed")

    def wait(self) -> None:
        """Block until the server has stopped and the store is closed."""
        self.grpc_server.wait_for_termination()
        self._closed.wait()


def create_server(config: Config, clock: Clock | None = None) -> NudgeServer:
    """Open the store and wire the services; binds the port (0 picks a free one)."""
    clock = clock or SystemClock()
    campaigns = load_campaigns(config.campaigns_dir)  # fail on a bad file before opening
    store = Store(config.data_dir, map_size=config.map_size)
    writer = EventWriter(store, config.half_life_seconds, config.max_batch_events)
    readiness = Readiness()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="nudge-rpc"),
        interceptors=[StatusInterceptor()],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    risk_engine = RiskEngine(store, writer)
    decisions = DecisionEngine(
        store, writer, risk_engine, campaigns, config.half_life_seconds, config.default_campaign
    )
    learner = Learner(store, writer, decisions, clock)
    decision_service_pb2_grpc.add_DecisionServiceServicer_to_server(
        DecisionServicer(
            store, writer, clock, readiness, config.half_life_seconds, decisions
        ),
        server,
    )
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(
        RiskServicer(risk_engine, clock, readiness), server
    )
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(DeliveryServicer(), server)
    diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(
        DiagnosticsServicer(), server
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError as exc:
        decisions.close()
        risk_engine.close()
        writer.close()
        store.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
    return NudgeServer(
        config, server, port, store, writer, risk_engine, decisions, learner, health_servicer,
        readiness,
    )


def serve(server: NudgeServer) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; draining", signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="nudge-shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    server.wait()
