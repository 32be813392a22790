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
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nudge.kernels.risk_model import ModelParams
from nudge.kernels.warmup import warm_up_all
from nudge.server.clock import Clock, SystemClock
from nudge.server.cluster import peer_auth
from nudge.server.cluster.leadership import Leadership
from nudge.server.cluster.node import ClusterNode
from nudge.server.cluster.worker_role import WorkerRole
from nudge.server.config import Config, ConfigError
from nudge.server.decisions.campaign import Campaign, CampaignError, load_campaigns
from nudge.server.decisions.engine import DecisionEngine
from nudge.server.decisions.erasure import erase
from nudge.server.decisions.journeys import Journeys, campaign_triggers
from nudge.server.decisions.learner import Learner
from nudge.server.decisions.outbox import Outbox
from nudge.server.errors import NudgeError
from nudge.server.gc_tuning import tune_for_serving
from nudge.server.gil_tuning import set_switch_interval
from nudge.server.hosts import is_loopback
from nudge.server.inputs.events import iana_zones
from nudge.server.risk.engine import RiskEngine
from nudge.server.rpc.admin_service import AdminServicer
from nudge.server.rpc.auth import AuthInterceptor, TokenStore
from nudge.server.rpc.batch_routing import BatchRouter
from nudge.server.rpc.cluster_service import ClusterServicer, SummaryGatherer
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.server.rpc.decision_service import add_to_server as add_decision_service
from nudge.server.rpc.delivery_service import DeliveryServicer
from nudge.server.rpc.diagnostics_service import DiagnosticsServicer, ServerInfo
from nudge.server.rpc.forwarding import FindByIdInterceptor, ForwardingInterceptor
from nudge.server.rpc.insights_service import InsightsServicer
from nudge.server.rpc.metrics import Metrics, add_cluster_gauges, start_metrics_server
from nudge.server.rpc.overload import (
    ConcurrencyLimiter,
    StreamLimiter,
    recommended_grpc_cap,
)
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.rpc.profiling import ProfileInterceptor
from nudge.server.rpc.readiness import Readiness
from nudge.server.rpc.risk_service import RiskServicer
from nudge.server.rpc.stalled_streams import StalledStreams
from nudge.server.rpc.status import StatusInterceptor
from nudge.server.rpc.tls import (
    TlsSettings,
    check_plaintext_allowed,
    peer_credentials,
    server_credentials,
)
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.insights_summary import InsightsSummary
from nudge.server.storage.retention import Retention, RetentionPolicy
from nudge.server.storage.store import Store
from nudge.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    cluster_service_pb2_grpc,
    decision_service_pb2,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
    insights_service_pb2,
    insights_service_pb2_grpc,
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
        (admin_service_pb2, "AdminService"),
        (insights_service_pb2, "InsightsService"),
    )
)
# Largest request (and reply) message: 10,000 events of ordinary size fit many times over.
MAX_MESSAGE_BYTES = 16 << 20
SHARED_PERSIST_SECONDS = 1.0
# Neither counted nor refused by the overload limiter: health checks must answer under
# load, and delivery adapters hold their stream open for hours. Echo is counted, so the
# floor pays what every RPC pays.
STREAM_DELIVERIES = "/nudge.v1.DeliveryService/StreamDeliveries"
TRACK_STREAM = "/nudge.v1.DecisionService/TrackStream"
DECIDE_BATCH = "/nudge.v1.DecisionService/DecideBatch"
# DecideBatch streams open at once: each keeps a core busy for as long as its audience.
MAX_DECIDE_BATCH_STREAMS = 2
LIMITER_EXEMPT = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    # Long-lived streams: counted per kind by the StreamLimiter instead, on threads of
    # their own.
    STREAM_DELIVERIES,
    TRACK_STREAM,
    DECIDE_BATCH,
)


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
    outbox: Outbox
    journeys: Journeys
    retention: Retention
    metrics: Metrics | None = None
    limiter: ConcurrencyLimiter | None = None
    role: WorkerRole | None = None
    metrics_port: int | None = None
    profiler: ProfileInterceptor | None = None
    cluster: ClusterNode | None = None
    forwarding: ForwardingInterceptor | None = None
    insights_summary: InsightsSummary | None = None
    stalled: StalledStreams | None = None
    _metrics_http: Any = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _closed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Accept connections (health says NOT_SERVING), warm kernels, then SERVING."""
        self.grpc_server.start()
        self.warm_up_and_serve()

    def _start_metrics(self, metrics: Metrics) -> None:
        store, limiter = self.store, self.limiter
        metrics.lmdb_map_size_bytes.set_function(store.map_size)
        metrics.lmdb_size_bytes.set_function(store.used_bytes)
        metrics.lmdb_map_used_ratio.set_function(lambda: store.used_bytes() / store.map_size())
        metrics.queue_depth.set_function(lambda: self.writer.queue_depth)
        metrics.group_commits.set_function(lambda: self.writer.commits)
        metrics.learner_lag_seconds.set_function(self.learner.lag_seconds)
        metrics.outbox_depth.set_function(self.outbox.depth)
        metrics.learner_quarantined.set_function(lambda: self.learner.quarantined)
        metrics.journeys_failed.set_function(lambda: self.journeys.failed)
        metrics.other_type_events.set_function(lambda: self.writer.other_events)
        metrics.consent_channels_ignored.set_function(lambda: self.writer.consents_ignored)
        if self.cluster is not None:
            add_cluster_gauges(metrics, self.cluster)
        if limiter is not None:
            metrics.rpcs_in_flight.set_function(lambda: limiter.in_flight)
            metrics.rpcs_waiting.set_function(lambda: limiter.waiting)
        self._metrics_http, self.metrics_port = start_metrics_server(
            metrics.registry, self.config.metrics_host,
            # Workers each serve their own metrics: metrics_port + worker index.
            self.config.metrics_port + self.config.worker_index if self.config.metrics_port
            else 0,
        )
        log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)

    def warm_up_and_serve(self) -> None:
        """Compile and call every kernel once, then report SERVING and take work."""
        spent = warm_up_all()
        log.info("kernels warm in %.2fs", sum(spent.values()))
        iana_zones()  # the first "tz" would otherwise pay the zone folder's scan
        if self.cluster is not None:
            self.cluster.connect()  # the log and the leases, before anything is served
        if self.role is not None:
            self.role.start()  # leads (and starts what the leader runs) when the lead is free
        else:
            self.start_leading()
        if self.metrics is not None:
            self._start_metrics(self.metrics)
        self.readiness.set_ready()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.cluster is not None:
            self.cluster.start()  # join: take partitions, apply them from the log
        log.info("serving on %s:%d, data in %s", self.config.host, self.port, self.store.path)

    def reload_campaigns(self) -> bool:
        """Re-read the campaigns folder and decide with it from now on, without a restart
        (SIGHUP). All or nothing: a bad file is logged and the running campaigns stay."""
        try:
            campaigns = load_campaigns(self.config.campaigns_dir)
            with self.learner.paused():
                self.decisions.replace_campaigns(campaigns)
        except (CampaignError, NudgeError) as exc:
            log.error("campaigns not reloaded, the running ones stay: %s", exc)
            return False
        self.journeys.replace_triggers(campaign_triggers(campaigns))
        _name_event_types(self.writer, campaigns)
        log.info("campaigns reloaded: %s", ", ".join(sorted(campaigns)))
        return True

    def start_leading(self) -> None:
        """What runs once per store: the learner (with expiry), the journey worker and the
        risk hold expiry pass."""
        if self.config.learner_thread:
            self.learner.start()
        self.journeys.start()
        if self.config.retention_interval_seconds:
            self.retention.start()
        self.risk.start_hold_expiry()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish, commit what is queued, close LMDB."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.readiness.set_stopping()
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_seconds if grace is None else grace
        self.grpc_server.stop(grace).wait()
        if self.stalled is not None:
            self.stalled.close()
        if self.forwarding is not None:
            self.forwarding.close()
        if self.cluster is not None:
            self.cluster.close()  # releases its partitions: survivors take them at once
        if self.role is not None:
            self.role.close()
        self.journeys.close()
        self.retention.close()
        self.learner.close()
        self.decisions.close()
        self.risk.close()
        if self.insights_summary is not None:
            self.insights_summary.close()  # what is pending, before the writer stops
        self.writer.close()
        self.store.close()
        if self.role is not None:
            self.role.leadership.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self.profiler is not None:
            for path in self.profiler.dump():
                log.info("profile written: %s", path)
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
    credentials = _transport(config)  # and on an unsafe transport or missing auth
    peers = _peer_transport(config)  # cluster mode over TLS: how this node calls the others
    tokens = None
    if config.auth_tokens_file is not None:
        try:
            tokens = TokenStore(config.auth_tokens_file, private=True)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    store = Store(config.data_dir, map_size=config.map_size, max_map_size=config.max_map_size,
                  shared=config.shared_store)
    writer = EventWriter(store, config.half_life_seconds, config.max_batch_events)
    insights_summary = InsightsSummary(store, writer, config.insights_flush_seconds,
                                       config.insights_value_property)
    writer.add_event_hook(insights_summary)
    writer.add_forget_hook("insights", insights_summary.forget)
    writer.add_import_hook(insights_summary.fold_imported)
    insights_summary.catch_up(writer)  # what a crash left unfolded, before Track is served
    _name_event_types(writer, campaigns)
    readiness = Readiness()
    metrics = Metrics() if config.metrics_port is not None else None
    limiter = ConcurrencyLimiter(
        config.max_concurrent, config.max_queue, config.queue_timeout_seconds,
        exempt=LIMITER_EXEMPT,
    )
    stalled = StalledStreams(config.stream_idle_seconds)
    streams = StreamLimiter({STREAM_DELIVERIES: config.max_delivery_streams,
                             TRACK_STREAM: config.max_track_streams,
                             DECIDE_BATCH: MAX_DECIDE_BATCH_STREAMS}, stalled)
    # Order: metrics sees every outcome (refusals included), auth refuses before a slot is
    # taken, the limiters hold a slot for the handler, status maps the handler's errors.
    interceptors: list[grpc.ServerInterceptor] = []
    profiler = ProfileInterceptor(config.profile_dir) if config.profile_dir else None
    if profiler is not None:  # outermost: the interceptors inside are profiled too
        interceptors.append(profiler)
    if metrics is not None:
        interceptors.append(metrics.interceptor())
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens))
    interceptors += [streams, limiter]
    cluster: ClusterNode | None = None
    forwarding: ForwardingInterceptor | None = None
    if config.cluster is not None:
        cluster = ClusterNode(config, store, writer)
        forwarding = ForwardingInterceptor(
            cluster, Pseudonyms(config.pseudonymize_key), peers,
            sign=lambda method: peer_auth.sign(cluster.peer_key, method))
        interceptors.append(forwarding)
    interceptors.append(StatusInterceptor())
    if cluster is not None and forwarding is not None:
        interceptors.append(FindByIdInterceptor(cluster, forwarding))  # inside the status
    server = grpc.server(
        # A thread for every stream slot on top of max_workers: streams in every slot
        # leave the unary RPCs all of their threads.
        futures.ThreadPoolExecutor(max_workers=config.max_workers + streams.total,
                                   thread_name_prefix="nudge-rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=recommended_grpc_cap(
            config.max_concurrent, config.max_queue, config.max_workers, streams.total
        ),
        options=[
            # Workers share the port; a lone server must fail on a port already taken.
            ("grpc.so_reuseport", 1 if config.shared_store else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *keepalive_options(config),
        ],
    )
    batches = (BatchRouter(cluster, forwarding)
               if cluster is not None and forwarding is not None else None)
    risk_engine = RiskEngine(store, writer, ModelParams(prior=config.risk_prior),
                             config.risk_hold_seconds)
    pseudonyms = Pseudonyms(config.pseudonymize_key)
    decisions = DecisionEngine(
        store, writer, risk_engine, campaigns, config.half_life_seconds, config.default_campaign,
        config.random_seed,
    )
    # Followers adopt the models the leader stores, so a shared store's leader stores often.
    learner = Learner(store, writer, decisions, clock,
                      persist_every=SHARED_PERSIST_SECONDS if config.shared_store else 5.0)
    add_decision_service(
        DecisionServicer(
            store, writer, clock, readiness, config.half_life_seconds, decisions, pseudonyms,
            submit_events=cluster.publish_events if cluster is not None else None,
            batches=batches,
        ),
        server,
    )
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(
        RiskServicer(risk_engine, clock, readiness, pseudonyms), server
    )
    outbox = Outbox(store, writer, config.lease_seconds, config.cross_channel_gap_seconds)
    journeys = Journeys(store, writer, decisions, outbox, campaign_triggers(campaigns), clock)
    if cluster is not None:  # decisions, outcomes, journeys and acks through the log
        cluster.attach(decisions, outbox, journeys, learner, risk_engine)
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(
        DeliveryServicer(outbox, clock, readiness), server
    )
    retention = Retention(writer, retention_policy(config), clock)
    leadership = Leadership(config.data_dir) if config.shared_store else None
    info = ServerInfo(
        worker=config.worker_index,
        workers=config.workers,
        # Cluster mode: whether this node runs the cluster's learner.
        leader=(lambda: cluster.model_state()[2]) if cluster is not None else (
            lambda: leadership is None or leadership.leading),
        models=lambda: {n: (m.version, m.learned_seq) for n, m in decisions.models.items()},
        node_id=cluster.node_id if cluster is not None else "",
        partition_owners=cluster.partition_map if cluster is not None else None,
        ready_partitions=cluster.ready_partitions if cluster is not None else None,
    )
    diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(
        DiagnosticsServicer(info), server
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(lambda user_id: erase(decisions, risk_engine, user_id), readiness,
                      pseudonyms, writer),
        server,
    )
    gatherer = (SummaryGatherer(store, cluster, forwarding, insights_summary.flush)
                if cluster is not None and forwarding is not None else None)
    insights_service_pb2_grpc.add_InsightsServiceServicer_to_server(
        InsightsServicer(store, clock, readiness, insights_summary.flush,
                         config.insights_value_property,
                         gather=gatherer.population if gatherer is not None else None), server
    )
    if cluster is not None:  # node to node: the summaries of this node's partitions
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(
            ClusterServicer(store, cluster, insights_summary.flush,
                            from_peer=lambda method, value: peer_auth.verify(
                                cluster.peer_key, method, value)), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        decisions.close()
        risk_engine.close()
        insights_summary.close()
        writer.close()
        store.close()
        if leadership is not None:
            leadership.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
    nudge_server = NudgeServer(
        config, server, port, store, writer, risk_engine, decisions, learner, health_servicer,
        readiness, outbox, journeys, retention, metrics, limiter, profiler=profiler,
        cluster=cluster, forwarding=forwarding, insights_summary=insights_summary,
        stalled=stalled,
    )
    if cluster is not None:
        cluster.bind(f"{config.host}:{port}")
    if leadership is not None:
        nudge_server.role = WorkerRole(store, learner, leadership, nudge_server.start_leading)
    return nudge_server


def keepalive_options(config: Config) -> list[tuple[str, int]]:
    """HTTP/2 keepalive of the server's connections (``Config.keepalive_seconds``): pings
    with or without calls in flight and without limit (a stream waiting on its client
    sends no data); a connection whose ping goes unanswered for
    ``keepalive_timeout_seconds`` is closed, cancelling its calls. The ping timeout is
    ``grpc.http2.ping_timeout_ms``: with grpc 1.85, ``grpc.keepalive_timeout_ms`` alone
    left a connection whose peer stopped answering open (tested in
    tests/server/rpc/test_stalled_streams.py with a proxy that stops relaying). Clients
    may ping every 10 s."""
    return [
        ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
    ]


def retention_policy(config: Config) -> RetentionPolicy:
    return RetentionPolicy(
        seen_seconds=config.retain_seen_seconds,
        events_seconds=config.retain_events_seconds,
        decisions_seconds=config.retain_decisions_seconds,
        deliveries_seconds=config.retain_deliveries_seconds,
        transactions_seconds=config.retain_transactions_seconds,
        interval_seconds=config.retention_interval_seconds,
    )


def _name_event_types(writer: EventWriter, campaigns: dict[str, Campaign]) -> None:
    """Give every event type the campaigns name a slot of its own, before any unknown type
    can take the last ones."""
    names = {t for c in campaigns.values() for t in c.event_types}
    missing = writer.name_types(names).result()
    if missing:
        log.warning("no slot left in the event type registry for %s (counted as (other): "
                    "goals, triggers and features on them do not work); reset the registry "
                    "(AdminService.ResetEventTypes)", ", ".join(missing))


def _check_authentication(config: Config) -> None:
    """Off loopback, no tokens file is refused unless explicitly allowed (then a warning)."""
    if config.auth_tokens_file is not None or is_loopback(config.host):
        return
    if not config.allow_unauthenticated:
        raise ConfigError(
            f"auth_tokens_file: refusing to serve on {config.host!r} without authentication "
            "(anyone reaching the port could read user profiles); create tokens with "
            "`nudge token create` and set auth_tokens_file, or set allow_unauthenticated = "
            "true if something in front of nudge authenticates callers"
        )
    log.warning("serving on %s without authentication (allow_unauthenticated = true): "
                "every caller may use every RPC", config.host)


def _transport(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials when configured; otherwise check plain text is allowed here."""
    _check_authentication(config)
    try:
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            return server_credentials(
                TlsSettings(
                    config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file,
                    config.tls_require_client_cert,
                )
            )
        check_plaintext_allowed(config.host, config.allow_insecure)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return None


def _peer_transport(config: Config) -> grpc.ChannelCredentials | None:
    """Cluster mode: TLS credentials for calls to the other nodes when this node serves
    TLS (the config requires ``cluster_ca_file`` then); None for plain text."""
    if (config.cluster is None or config.cluster_ca_file is None
            or config.tls_cert_file is None or config.tls_key_file is None):
        return None
    try:
        return peer_credentials(config.cluster_ca_file, config.tls_cert_file,
                                config.tls_key_file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def serve(server: NudgeServer, on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads the
    campaigns. ``on_ready`` runs once the server is SERVING."""

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():  # Ctrl-C reaches a worker twice: from the terminal and the
            return             # supervisor
        stopping.set()
        log.info("received %s; draining", signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="nudge-shutdown").start()

    def on_hangup(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.reload_campaigns, name="nudge-reload").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    set_switch_interval(server.config.gil_switch_interval_ms)
    server.start()
    tune_for_serving()
    if on_ready is not None:
        on_ready()
    server.wait()
