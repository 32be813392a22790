"""Timing a gRPC handler in process (``decide_inprocess``, ``score_inprocess``): each call
timed by its own thread's CPU clock and by the wall clock, grpc's after-reply callbacks
run after the clock stops, a pause between calls so background work runs and the caches
cool as between RPCs, and an optional cProfile of the same calls as far apart (wall, with
the profiler's overhead: read the order, not the sizes)."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nudge.bench.rpc_floor import _campaigns, mature_profiles
from nudge.clients import Client
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.server.gc_tuning import tune_for_serving

# Customers given ``nudge bench rpc``'s mature profiles (history, consents, a device).
USERS = 1_000


@contextlib.contextmanager
def warm_server(prefix: str) -> Iterator[NudgeServer]:
    """A real server on a temporary store with ``nudge bench rpc``'s campaigns and its
    ``USERS`` customers' histories, the garbage collector tuned as ``nudge serve`` tunes
    it once warm (``gc_tuning.tune_for_serving``: without it, collection passes the
    serving process never pays were counted in every handler, as DecideBatch's in-process
    bench found: ~30 µs a user); stopped after."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = create_server(Config(port=0, data_dir=tmp / "data", grace_seconds=2.0,
                                  campaigns_dir=_campaigns(tmp / "campaigns")))
    server.start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
            mature_profiles(client, USERS)
        tune_for_serving()
        yield server
    finally:
        server.stop()


class AfterReply:
    """The part of grpc's ServicerContext the handlers use: ``add_callback`` functions
    run once the reply is out (here: after the timer stops)."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def add_callback(self, fn: Callable[[], None]) -> bool:
        self.calls.append(fn)
        return True

    def run(self) -> None:
        for fn in self.calls:
            fn()
        self.calls.clear()


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(title: str, call: Callable[[Any, AfterReply], Any], requests: Iterable[Any],
            gap_ms: float, profiled: Iterable[Any] | None = None) -> list[str]:
    """Report lines: thread CPU and wall per call (µs) of ``call`` over ``requests``, and
    the top of a profile over ``profiled`` when given."""
    context = AfterReply()
    cpu, wall = [], []
    for request in requests:
        w0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        call(request, context)
        c1 = time.thread_time_ns()
        wall.append((time.perf_counter_ns() - w0) / 1e3)
        cpu.append((c1 - c0) / 1e3)
        context.run()
        time.sleep(gap_ms / 1e3)
    lines = [f"{title}, {len(cpu)} calls, {gap_ms} ms apart (µs):"]
    for name, values in (("thread CPU", sorted(cpu)), ("wall", sorted(wall))):
        lines.append(
            f"  {name:10s} mean {statistics.mean(values):7.1f}  "
            f"p1 {percentile(values, 0.01):7.1f}  p50 {percentile(values, 0.5):7.1f}  "
            f"p99 {percentile(values, 0.99):7.1f}")
    if profiled is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        for request in profiled:
            call(request, context)
            context.run()
            time.sleep(gap_ms / 1e3)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        lines.append(out.getvalue())
    return lines


class StageTimer:
    """Thread CPU per stage of a handler: each wrapped function's own time (its time
    minus that of the wrapped functions it calls), summed over the calls. The wrappers
    cost ~1 µs a call each, so the stages add up to more than an unwrapped call: read the
    order and the shares, not the sum."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._inner: list[int] = []

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        """Replace ``owner.name`` (a module's function or an object's bound method) by a
        timed wrapper, reported as ``label`` (default ``name``)."""
        fn = getattr(owner, name)
        key = label or name
        totals, inner = self.totals, self._inner
        clock = time.thread_time_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            inner.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                nested = inner.pop()
                spent = clock() - start
                totals[key] = totals.get(key, 0) + spent - nested
                if inner:
                    inner[-1] += spent

        setattr(owner, name, timed)

    def lines(self, calls: int) -> list[str]:
        """Report lines: µs of thread CPU per call by stage, largest first."""
        out = [f"stages (thread CPU µs per call, own time, {calls} calls):"]
        for key, total in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            out.append(f"  {key:32s} {total / calls / 1e3:7.1f}")
        return out


def handler_parser(doc: str | None, gap_help: str) -> argparse.ArgumentParser:
    """The command line every handler bench shares: ``--calls``, ``--gap-ms`` (what the
    pause between calls lets happen, ``gap_help``) and ``--profile``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--gap-ms", type=float, default=0.5,
                        help=f"pause between calls ({gap_help})")
    parser.add_argument("--profile", action="store_true")
    return parser
