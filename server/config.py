"""Server configuration: defaults < TOML file < NUDGE_* environment < command-line flags.

The CLI only parses options into a ``Config``; ``nudge.server.app`` does the work.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "NUDGE_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type (names the key)."""


@dataclass(frozen=True)
class Config:
    """Server settings; ``repr`` hides the pseudonymisation key."""

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("nudge-data")
    campaigns_dir: Path | None = None
    # Campaign a Decide without one uses (default: the first campaign by name).
    default_campaign: str | None = None
    # Reproducible decision ids and policy seeds (simulations, demos); None: random.
    random_seed: int | None = None
    # False: the learner runs only when stepped (simulations drive it with their clock).
    learner_thread: bool = True
    # Initial LMDB map size; the map doubles by itself when full, up to max_map_size.
    map_size: int = 64 << 20
    max_map_size: int = 1 << 40
    # Worker threads of the sync gRPC server (see README "Server stack" for why sync).
    max_workers: int = 16
    # Server processes sharing the port (SO_REUSEPORT) and the LMDB store; one leads.
    workers: int = 1
    # This process's index among them (set by the supervisor, not by hand).
    worker_index: int = 0
    # Half-life of decayed per-user counts, in seconds (event time).
    half_life_seconds: float = 7 * 86_400.0
    # Fraud scoring: the prior rate P(fraud) the score is a posterior under, and how long
    # (event time) a held transaction waits for a FRAUD label before it is learned as genuine.
    risk_prior: float = 0.003
    risk_hold_seconds: float = 7 * 86_400.0
    # Largest number of events one group commit takes from the queue.
    max_batch_events: int = 50_000
    # Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    # Transport security: TLS when a certificate and key are given; mutual TLS when client
    # certificates are required. Plain text is refused off loopback unless allowed.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_require_client_cert: bool = False
    allow_insecure: bool = False
    # Off loopback, serving without auth_tokens_file is refused at start unless this is
    # true (then logged as a warning): TLS protects the wire, tokens say who may call.
    allow_unauthenticated: bool = False
    # Keyed hash for user ids (a secret; NUDGE_PSEUDONYMIZE_KEY): raw ids are never stored.
    pseudonymize_key: str | None = field(default=None, repr=False)
    # Per-client scoped tokens (``nudge token create``); None turns authentication off.
    auth_tokens_file: Path | None = None
    # Overload: RPCs at work at once, and waiting for a slot; the excess is answered
    # RESOURCE_EXHAUSTED at once. Keep max_concurrent + max_queue < max_workers.
    max_concurrent: int = 10
    max_queue: int = 4
    queue_timeout_seconds: float = 0.05
    # Long-lived streams open at once (each holds a thread of its own, added to the pool
    # on top of max_workers, so they never take the unary RPCs' threads or slots).
    max_delivery_streams: int = 8
    max_track_streams: int = 4
    # A long-lived stream (TrackStream, DecideBatch, StreamDeliveries) that waits this long
    # for its client (the next message, or the client to take a reply) is cancelled,
    # freeing its slot (server/rpc/stalled_streams.py). 0: never.
    stream_idle_seconds: float = 300.0
    # HTTP/2 keepalive: the server pings a connection this often and closes it when a ping
    # is not answered within keepalive_timeout_seconds, so a client machine that vanished
    # without closing its connection releases its streams in about a minute (gRPC's own
    # default waits two hours). Clients may ping as often as every 10 seconds.
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Outbox: how long an adapter holds a delivery before it is streamed again, and the
    # least time between two messages to one user across every channel and campaign.
    lease_seconds: float = 30.0
    cross_channel_gap_seconds: float = 3_600.0
    # Prometheus metrics on a separate port (None: off; 0: any free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # cProfile every unary and client-streaming handler, writing <profile_dir>/<Method>.prof
    # at shutdown (None: off). For `nudge bench rpc --profile`: it slows every call.
    profile_dir: Path | None = None
    # Retention in seconds, 0 = forever (README "Retention"). Seen event ids: the longest a
    # producer may replay (14 days: twice Kafka's default 7-day topic retention). Events:
    # replay and insights (90 days; the per-user state keeps what the decisions need).
    # Decision records: the audit trail (730 days). Final deliveries: support's "why did I
    # get this message" (90 days). Scored transactions: idempotency and late fraud labels
    # (180 days: card chargebacks come up to 120 days after the transaction). A pass every
    # retention_interval_seconds (0: none).
    retain_seen_seconds: float = 14 * 86_400.0
    retain_events_seconds: float = 90 * 86_400.0
    retain_decisions_seconds: float = 730 * 86_400.0
    retain_deliveries_seconds: float = 90 * 86_400.0
    retain_transactions_seconds: float = 180 * 86_400.0
    retention_interval_seconds: float = 300.0
    # Insights (README "Insights"): the per-user summaries are written behind Track's
    # commits, this many seconds after the first pending one (0: inside them; a restart
    # folds what a crash left unwritten from the event log). The number property summed as
    # the value of goal events (ValueDrivers).
    insights_flush_seconds: float = 5.0
    insights_value_property: str = "amount"
    # Cluster mode (README "Several machines"): NATS JetStream servers (comma-separated
    # nats:// URLs) holding the replicated log; None keeps the embedded single machine.
    # Also the ``[cluster]`` table of the config file (urls, node_id, partitions, ...).
    cluster: str | None = None
    # This node's name among the cluster's nodes (stable across restarts: it keeps its
    # data folder and owns partitions by this name). Default: host:port.
    node_id: str | None = None
    # The address other nodes forward RPCs to (default host:port).
    advertise: str | None = None
    # Partitions of the user space (a stable hash of the user id); fixed for a cluster's life.
    partitions: int = 64
    # How long a partition's lease outlives a node that stopped renewing it: the failover
    # time is about this plus the new owner's catch-up.
    cluster_lease_seconds: float = 5.0
    # Copies JetStream keeps of the log and the leases (3 survives the loss of any one).
    cluster_replicas: int = 3
    # TLS between nodes (forwarded calls): the CA that signed the other nodes' gRPC
    # certificates. Required in cluster mode when tls_cert_file is set; a node presents
    # its own certificate when its peers require client certificates.
    cluster_ca_file: Path | None = None
    # TLS to NATS: the CA that signed the NATS servers' certificates (their URLs then
    # connect over TLS; a node presents tls_cert_file/tls_key_file when NATS asks).
    cluster_nats_ca_file: Path | None = None
    # Partition snapshots (cluster/snapshots.py): every this many seconds a node stores a
    # snapshot of each partition it serves whose store applied at least
    # cluster_snapshot_records log sequences past its newest one, and purges the
    # partition's log behind it. 0: never (the log then grows forever, and a node taking a
    # partition it never held applies it from the first record).
    cluster_snapshot_seconds: float = 3600.0
    cluster_snapshot_records: int = 10_000
    # How long (milliseconds) a thread running Python keeps the GIL while another waits
    # for it (``sys.setswitchinterval``; Python's default is 5). Background work (the
    # event writer, the learner, flushes) then delays a request's handler by at most about
    # this much each time it needs the GIL back (server/gil_tuning.py says why and what
    # it costs). 0 leaves the interpreter's own setting.
    gil_switch_interval_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"port: must be in [0, 65535], got {self.port}")
        if self.map_size < 1 << 16:
            raise ConfigError("map_size: must be at least 65536 bytes")
        if self.max_workers < 1:
            raise ConfigError("max_workers: must be at least 1")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers: must be in [1, 64], got {self.workers}")
        if not 0 <= self.worker_index < self.workers:
            raise ConfigError(f"worker_index: must be in [0, workers), got {self.worker_index}")
        if not self.half_life_seconds > 0:
            raise ConfigError("half_life_seconds: must be positive")
        if not 0.0 < self.risk_prior < 1.0:
            raise ConfigError(f"risk_prior: must be in (0, 1), got {self.risk_prior}")
        if not self.risk_hold_seconds > 0:
            raise ConfigError("risk_hold_seconds: must be positive")
        if self.max_batch_events < 1:
            raise ConfigError("max_batch_events: must be at least 1")
        if self.grace_seconds < 0:
            raise ConfigError("grace_seconds: must not be negative")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file, tls_key_file: give both for TLS")
        if self.tls_require_client_cert and self.tls_client_ca_file is None:
            raise ConfigError("tls_client_ca_file: required when tls_require_client_cert")
        if self.max_concurrent < 1 or self.max_queue < 0:
            raise ConfigError("max_concurrent: must be >= 1; max_queue: must be >= 0")
        if self.max_concurrent + self.max_queue >= self.max_workers:
            raise ConfigError(
                "max_concurrent + max_queue: must stay below max_workers, so spare threads "
                "can turn a burst away"
            )
        if self.max_delivery_streams < 1 or self.max_track_streams < 1:
            raise ConfigError("max_delivery_streams, max_track_streams: must be at least 1")
        if self.stream_idle_seconds < 0:
            raise ConfigError("stream_idle_seconds: must be >= 0 (0: never)")
        if not (1 <= self.keepalive_seconds <= 86_400
                and 1 <= self.keepalive_timeout_seconds <= 3_600):
            raise ConfigError("keepalive_seconds, keepalive_timeout_seconds: must be in "
                              "[1, 86400] and [1, 3600]")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65_535:
            raise ConfigError(f"metrics_port: must be in [0, 65535], got {self.metrics_port}")
        retain = ("retain_seen_seconds", "retain_events_seconds", "retain_decisions_seconds",
                  "retain_deliveries_seconds", "retain_transactions_seconds",
                  "retention_interval_seconds")
        for name in retain:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}: must be >= 0 (0: forever, or no pass)")
        if not 0 <= self.insights_flush_seconds <= 60:
            raise ConfigError("insights_flush_seconds: must be in [0, 60]")
        if not self.insights_value_property or len(self.insights_value_property) > 128:
            raise ConfigError("insights_value_property: must be a number property's name "
                              "(1 to 128 characters)")
        if self.retain_events_seconds and self.retain_seen_seconds > self.retain_events_seconds:
            raise ConfigError(
                "retain_seen_seconds: must not exceed retain_events_seconds (seen ids are "
                "forgotten through the event log)"
            )
        if self.cluster is not None:
            if self.workers > 1:
                raise ConfigError("cluster: one process per node (use more nodes, not workers)")
            if not 1 <= self.partitions <= 4096:
                raise ConfigError(f"partitions: must be in [1, 4096], got {self.partitions}")
            if not self.cluster_lease_seconds >= 0.5:
                raise ConfigError("cluster_lease_seconds: must be at least 0.5")
            if self.cluster_replicas not in (1, 3, 5):
                raise ConfigError("cluster_replicas: must be 1, 3 or 5")
            if self.cluster_snapshot_seconds < 0:
                raise ConfigError("cluster_snapshot_seconds: must be >= 0 (0: never)")
            if self.cluster_snapshot_records < 1:
                raise ConfigError("cluster_snapshot_records: must be at least 1")
            if self.tls_cert_file is not None and self.cluster_ca_file is None:
                raise ConfigError(
                    "cluster_ca_file: required with tls_cert_file in cluster mode (the CA "
                    "that signed the other nodes' certificates: forwarded calls use TLS)")
        if self.metrics_port and self.metrics_port + self.workers - 1 > 65_535:
            raise ConfigError("metrics_port: each worker takes metrics_port + its index")
        if not 0 <= self.gil_switch_interval_ms <= 100:
            raise ConfigError("gil_switch_interval_ms: must be in [0, 100] (0: Python's own)")

    @property
    def shared_store(self) -> bool:
        """Several processes open the store (``--workers`` > 1)."""
        return self.workers > 1


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# The ``[cluster]`` table of a config file: its keys -> Config fields.
CLUSTER_TABLE = {
    "urls": "cluster", "node_id": "node_id", "advertise": "advertise",
    "partitions": "partitions", "lease_seconds": "cluster_lease_seconds",
    "replicas": "cluster_replicas", "ca_file": "cluster_ca_file",
    "nats_ca_file": "cluster_nats_ca_file", "snapshot_seconds": "cluster_snapshot_seconds",
    "snapshot_records": "cluster_snapshot_records",
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = str(_FIELDS[name].type)
    optional = "None" in kind
    base = kind.split("|")[0].strip()
    try:
        if optional and value in (None, ""):
            return None
        if base == "Path":
            return Path(value)
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} (from {source}): expected {kind}, got {value!r}") from None


def load_config(
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from a TOML file (its ``[server]`` table), NUDGE_* variables, flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        table = data.get("server", {})
        for key, value in table.items():
            if key not in _FIELDS:
                raise ConfigError(f"{path}: [server].{key} is not a setting")
            values[key] = _coerce(key, value, str(path))
        for key, value in data.get("cluster", {}).items():
            name = CLUSTER_TABLE.get(key)
            if name is None:
                raise ConfigError(f"{path}: [cluster].{key} is not a setting "
                                  f"(one of {', '.join(sorted(CLUSTER_TABLE))})")
            if name == "cluster" and isinstance(value, list):
                value = ",".join(str(url) for url in value)
            values[name] = _coerce(name, value, str(path))
    for name in _FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, ENV_PREFIX + name.upper())
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Config(**values)
