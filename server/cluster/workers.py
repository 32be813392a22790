"""``nudge serve --workers N``: N server processes on one port and one LMDB store.

Why processes: the GIL lets one Python process use about one core for request handling;
N processes use N. Each worker is a complete server (``create_server``) that binds the
same port with SO_REUSEPORT, so the kernel spreads new connections across them, and
opens the same LMDB environment as a *shared* store: readers run in parallel in every
process, writers take LMDB's one write lock in turn, and whatever a process caches from
the store is re-read inside its write transactions (see ``Store``). One worker leads and
runs the learner, expiry and journeys (``WorkerRole``).

The supervisor (this module) starts the workers with the ``spawn`` method (gRPC does not
survive ``fork``), reserves the port when it is 0, forwards SIGTERM/SIGINT for a graceful
drain, and restarts a worker that dies — a worker killed with ``kill -9`` loses nothing
it acknowledged, and the lead passes to another worker at once.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent

from nudge.server.config import Config

log = logging.getLogger("nudge.server")

# A worker that dies before it ever served this many times in a row cannot start: give up.
MAX_START_FAILURES = 3
RESTART_DELAY_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 300.0  # a cold Numba cache compiles every kernel first


def _worker_main(config: Config, ready: ProcessEvent) -> None:
    """One worker process: a whole server on the shared port and store."""
    from nudge.server.app import create_server, serve

    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[w{config.worker_index}] %(message)s",
    )
    serve(create_server(config), on_ready=ready.set)


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, config: Config) -> None:
        if config.workers < 2:
            raise ValueError("workers: the supervisor runs two or more workers")
        self._reserved: socket.socket | None = None
        if config.port == 0:
            self._reserved, port = _reserve_port(config.host)
            config = dataclasses.replace(config, port=port)
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[SpawnProcess | None] = [None] * config.workers
        self._ready: list[ProcessEvent | None] = [None] * config.workers
        self._start_failures = [0] * config.workers
        self._stopping = threading.Event()
        self.restarts = 0

    @property
    def port(self) -> int:
        return self.config.port

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.pid is not None]

    def _spawn(self, index: int) -> ProcessEvent:
        ready = self._context.Event()
        config = dataclasses.replace(self.config, worker_index=index)
        process = self._context.Process(
            target=_worker_main, args=(config, ready), name=f"nudge-worker-{index}"
        )
        process.start()
        self._processes[index] = process
        self._ready[index] = ready
        return ready

    def start(self) -> None:
        """Start every worker and wait until each is SERVING (or one fails)."""
        events = [self._spawn(i) for i in range(self.config.workers)]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for index, ready in enumerate(events):
            while not ready.wait(0.1):
                process = self._processes[index]
                if process is not None and not process.is_alive():
                    self.stop()
                    raise RuntimeError(
                        f"worker {index} exited with code {process.exitcode} while starting"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"worker {index} did not become ready in time")
        log.info("%d workers serving on %s:%d", self.config.workers, self.config.host,
                 self.config.port)

    def watch(self) -> int:
        """Restart workers that die until stopped; returns the exit status."""
        while not self._stopping.wait(0.2):
            for index, process in enumerate(self._processes):
                if process is None or process.is_alive() or self._stopping.is_set():
                    continue
                ready = self._ready[index]
                served = ready is not None and ready.is_set()
                log.error("worker %d (pid %s) exited with code %s%s", index, process.pid,
                          process.exitcode, "" if served else " before serving")
                self._start_failures[index] = 0 if served else self._start_failures[index] + 1
                if self._start_failures[index] >= MAX_START_FAILURES:
                    log.error("worker %d keeps failing at start; stopping", index)
                    self.stop()
                    return 1
                time.sleep(RESTART_DELAY_SECONDS)
                self._spawn(index)
                self.restarts += 1
        return 0

    def signal_all(self, signum: int) -> None:
        """Send a signal to every running worker (SIGHUP: reload the campaigns)."""
        for process in self._processes:
            if process is not None and process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker (each drains and commits), then wait for them."""
        self._stopping.set()
        for process in self._processes:
            if process is not None and process.is_alive():
                process.terminate()
        limit = self.config.grace_seconds + 30.0 if timeout is None else timeout
        deadline = time.monotonic() + limit
        for process in self._processes:
            if process is not None:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    log.error("worker pid %s did not stop in time; killing it", process.pid)
                    process.kill()
                    process.join()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """Pick a free port and hold it (bound, not listening, SO_REUSEPORT) so the workers
    can share it and nobody else takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock, sock.getsockname()[1]


def serve_workers(config: Config) -> int:
    """Run the workers until SIGTERM or SIGINT; then drain them all."""
    supervisor = Supervisor(config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping %d workers", signal.Signals(signum).name,
                 config.workers)
        threading.Thread(target=supervisor.stop, name="nudge-supervisor-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: supervisor.signal_all(signal.SIGHUP))
    try:
        supervisor.start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    status = supervisor.watch()
    supervisor.stop()
    return status
