"""Decide's handler in process: thread CPU and wall time per call, no network, no client.

On a shared 2-core box the client ratios of ``nudge bench rpc`` move more from run to run
than a change to the handler does; a handler called directly in one process, timed by its
own thread's CPU clock, is far steadier. This builds a real server (``create_server``) on a
temporary store with ``nudge bench rpc``'s campaigns and users, calls the Decide servicer
with bench/worlds.py's 31 request numbers on the 3,600-combination campaign, runs the
functions grpc would run after each reply (``add_callback``) after the clock stops, and
waits ``--gap-ms`` between calls so the flusher runs and the caches are as cold as between
RPCs. ``--profile`` adds a cProfile of the same calls back to back (wall, with the
profiler's overhead: read the order, not the sizes).

    .venv/bin/python -m nudge.bench.decide_inprocess --calls 3000 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nudge.bench.rpc_floor import _campaigns, mature_profiles
from nudge.bench.worlds import NUMBER_NAMES
from nudge.clients import Client
from nudge.server.app import create_server
from nudge.server.clock import SystemClock
from nudge.server.config import Config
from nudge.server.decisions.campaign import ALGORITHMS
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.v1 import decision_service_pb2 as pb

USERS = 1_000


class _AfterReply:
    """The part of grpc's ServicerContext Decide uses: ``add_callback`` functions run once
    the reply is out (here: after the timer stops)."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def add_callback(self, fn: Callable[[], None]) -> bool:
        self.calls.append(fn)
        return True

    def run(self) -> None:
        for fn in self.calls:
            fn()
        self.calls.clear()


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(calls: int, algorithm: str, gap_ms: float, profile: bool) -> str:
    """The report: per-call CPU and wall statistics (µs), and the profile if asked."""
    tmp = Path(tempfile.mkdtemp(prefix="nudge-decide-"))
    server = create_server(Config(port=0, data_dir=tmp / "data", grace_seconds=2.0,
                                  campaigns_dir=_campaigns(tmp / "campaigns")))
    server.start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
            mature_profiles(client, USERS)
        servicer = DecisionServicer(server.store, server.writer, SystemClock(),
                                    server.readiness, server.config.half_life_seconds,
                                    server.decisions)
        rows = np.random.default_rng(5).normal(size=(256, len(NUMBER_NAMES)))
        requests = []
        for i in range(USERS):
            request = pb.DecideRequest(user_id=f"bench-{i}", campaign=f"worlds_{algorithm}")
            for name, value in zip(NUMBER_NAMES, rows[i % len(rows)].tolist(), strict=True):
                request.numbers[name] = value
            requests.append(request)
        context = _AfterReply()
        decide = servicer.Decide
        for i in range(500):  # warm: kernels, caches, every user's first decision
            decide(requests[i % USERS], context)
            context.run()
        cpu, wall = [], []
        for i in range(calls):
            request = requests[i % USERS]
            w0 = time.perf_counter_ns()
            c0 = time.thread_time_ns()
            decide(request, context)
            c1 = time.thread_time_ns()
            wall.append((time.perf_counter_ns() - w0) / 1e3)
            cpu.append((c1 - c0) / 1e3)
            context.run()
            time.sleep(gap_ms / 1e3)
        lines = [f"Decide3600.{algorithm}, {calls} calls, {gap_ms} ms apart (µs):"]
        for name, values in (("thread CPU", sorted(cpu)), ("wall", sorted(wall))):
            lines.append(
                f"  {name:10s} mean {statistics.mean(values):7.1f}  "
                f"p1 {_percentile(values, 0.01):7.1f}  p50 {_percentile(values, 0.5):7.1f}  "
                f"p99 {_percentile(values, 0.99):7.1f}")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(calls):
                decide(requests[i % USERS], context)
                context.run()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
            lines.append(out.getvalue())
        return "\n".join(lines)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="squarecb")
    parser.add_argument("--gap-ms", type=float, default=0.5,
                        help="pause between calls (the flusher runs, caches cool)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(run(args.calls, args.algorithm, args.gap_ms, args.profile))


if __name__ == "__main__":
    main()
