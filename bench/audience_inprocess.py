"""DecideBatch's work in process: CPU per user of the handler thread and of the whole
process, no network and no client.

``nudge bench audience`` times the whole stream on a box shared with other jobs, where the
wall clock moves with everyone's load; here a real server (``create_server``) on a
temporary store decides for ``--users`` users (``--history`` of them given a stored event
first) against bench/worlds.py's 3,600-combination campaign through the servicer's
DecideBatch in 1,000-id messages, every reply serialised as grpc would, then flushes the
decision log. Reported: wall, the handler thread's CPU and the process's CPU (the flusher,
the group commit and the policy threads included), each per user. ``--profile`` adds a
cProfile of the handler thread (tottime and cumulative top entries).

The garbage collector is tuned once the server is warm, as ``nudge serve`` tunes it
(``gc_tuning.tune_for_serving``): with the interpreter's default thresholds its full passes
cost ~20 µs of CPU a user here (2026-12-03), which the serving process never pays, and
they land on whichever line allocates, so a profile then blames innocent code.
``--default-gc`` keeps the interpreter's collector.

    .venv/bin/python -m nudge.bench.audience_inprocess --users 20000 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from nudge.bench.audience import _user
from nudge.bench.rpc_floor import _campaigns
from nudge.bench.worlds import NUMBER_NAMES
from nudge.clients import Client, make_event
from nudge.server.app import create_server
from nudge.server.clock import SystemClock
from nudge.server.config import Config
from nudge.server.gc_tuning import tune_for_serving
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.v1 import decision_service_pb2 as pb

PER_MESSAGE = 1_000


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each of this process's threads so far, by Python thread name (Linux;
    threads Python did not start, grpc's own, by their kernel name)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = names.get(int(task.name)) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class _Context:
    """The part of grpc's ServicerContext DecideBatch reads in single-machine mode."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return True


def _messages(users: int, numbers: dict[str, float]) -> Iterator[pb.DecideBatchRequest]:
    for start in range(0, users, PER_MESSAGE):
        message = pb.DecideBatchRequest(
            user_ids=[_user(i) for i in range(start, min(users, start + PER_MESSAGE))])
        if start == 0:
            message.campaign = "worlds_squarecb"
            message.numbers.update(numbers)
        yield message


def run(users: int, history: int, profile: bool, default_gc: bool = False) -> str:
    numbers = {name: 0.1 * (j % 7) - 0.3 for j, name in enumerate(NUMBER_NAMES)}
    tmp = Path(tempfile.mkdtemp(prefix="nudge-audience-inprocess-"))
    server = create_server(Config(port=0, data_dir=tmp / "data", grace_seconds=2.0,
                                  campaigns_dir=_campaigns(tmp / "campaigns")))
    server.start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as client:
            events = [make_event(_user(i), "app_opened", numbers={"amount": 10.0 + i % 90})
                      for i in range(history)]
            client.track_stream([events[i : i + 5_000] for i in range(0, history, 5_000)])
        servicer = DecisionServicer(server.store, server.writer, SystemClock(),
                                    server.readiness, server.config.half_life_seconds,
                                    server.decisions)
        # Warm: kernels and caches, on users not measured.
        for reply in servicer.DecideBatch(_messages(2_000, numbers), _Context()):
            reply.SerializeToString()
        server.decisions.flush()
        if not default_gc:
            tune_for_serving()
        profiler = cProfile.Profile() if profile else None
        threads0 = _thread_cpu()
        w0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        if profiler is not None:
            profiler.enable()
        n = 0
        for reply in servicer.DecideBatch(_messages(users, numbers), _Context()):
            reply.SerializeToString()
            n += len(reply.decisions)
        if profiler is not None:
            profiler.disable()
        thread_s = time.thread_time() - c0
        streamed_s = time.perf_counter() - w0
        server.decisions.flush()
        wall_s, process_s = time.perf_counter() - w0, time.process_time() - p0
        threads = {name: s - threads0.get(name, 0.0) for name, s in _thread_cpu().items()}
    finally:
        server.stop()
    lines = [f"DecideBatch in process, {n:,} users ({history:,} with a stored event), "
             "3,600 combinations (µs per user):",
             f"  wall {wall_s / n * 1e6:7.1f}   handler thread CPU {thread_s / n * 1e6:7.1f}   "
             f"process CPU {process_s / n * 1e6:7.1f}   "
             f"(= {wall_s / n * 1e6:.0f} s per million users; the stream alone "
             f"{streamed_s / n * 1e6:.1f}, then the last flush)"]
    busy = sorted(((s, name) for name, s in threads.items() if s > 0), reverse=True)
    lines.append("  CPU by thread: " + ", ".join(
        f"{name} {s / n * 1e6:.1f}" for s, name in busy[:6]))
    if profiler is not None:
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(18)
            lines.append(out.getvalue())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=2_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep the interpreter's garbage collector (not the server's)")
    args = parser.parse_args(argv)
    print(run(args.users, args.history, args.profile, args.default_gc))


if __name__ == "__main__":
    main()
