"""Background work against a request's latency: Decide, GetUser and Echo timed while the
server is quiet, while it ingests a steady stream, and while it learns from outcomes.

A nudge server shares one interpreter (one GIL) between the request handlers and its
background threads: the group-commit writer that applies Track's events (state kernels,
the risk engine's hook, the insights summary), the decision log's write-behind flusher,
the learner that settles outcomes and publishes models. A request waits whenever one of
them holds the GIL: each time its handler gives the GIL up (an LMDB read, a kernel that
releases it, grpc's own hand-offs) it must win it back, and a thread running Python keeps
it for up to the interpreter's switch interval (``sys.getswitchinterval()``, 5 ms by
default) after another asks. So a background thread can add milliseconds to a Decide
whose own work is a few hundred microseconds, and that shows in p99, not in p50.

``run`` starts ``nudge serve`` in a child process once per switch interval asked for
(``Config.gil_switch_interval_ms``; 0 = the interpreter's own 5 ms), gives the bench users
a history, and times the same interleaved calls (each RPC right after an Echo, as
``nudge bench rpc`` does) in three phases:

- ``quiet``: nothing else runs;
- ``ingest``: a second process streams card transactions for the bench users through one
  TrackStream at a fixed rate (``ingest_rate`` events/s: a bank's core streaming all day,
  not a bulk load): every event is validated, committed, scored by the risk engine and
  folded into the insights summary on the server's background threads;
- ``outcomes``: a second process makes decisions on the 3,600-combination campaign and
  reports an outcome for each at a fixed rate (``outcome_rate``/s): the decision log's
  flusher, the outcome path and the learner (updating that campaign's model) work in the
  background.

Rates are fixed, well below what the server can take, so the phases measure interference,
not overload (a saturated 2-core box delays everything by the scheduler's time slices,
which no server setting changes). Beside the client's percentiles, the server's own
handler time (its Prometheus histograms, scraped before and after each phase) says how
much of the delay was inside the handler. Reported per switch interval: p50, p99 and
p99.9 of each RPC per phase, and each busy phase's p99 over the quiet phase's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from nudge.bench.rpc_floor import (
    _campaigns,
    _decide_large,
    _get_user,
    interleaved,
    mature_profiles,
)
from nudge.bench.server_process import ServerProcess
from nudge.bench.server_side import handler_time, scrape
from nudge.bench.stats import Latency
from nudge.clients import Client, make_event
from nudge.v1.decision_service_pb2 import DecideResponse

PHASES = ("quiet", "ingest", "outcomes")
RPCS = ("Echo", "GetUser", "Decide3600")
# The gRPC method names the server's histograms use for each timed call.
METHODS = {"Echo": "Echo", "GetUser": "GetUser", "Decide3600": "Decide"}
FEED_BATCH = 100  # events per TrackStream message of the ingest feed


@dataclass(frozen=True)
class BackgroundConfig:
    calls: int = 1_000  # interleaved calls per RPC per phase
    users: int = 500  # bench users given a history (and fed transactions)
    ingest_rate: float = 5_000.0  # events/s of the ingest phase's stream
    outcome_rate: float = 200.0  # decisions + outcomes/s of the outcomes phase
    # One server each (``gil_switch_interval_ms``; 0 = Python's 5 ms); None: the server's
    # shipped setting.
    switch_intervals_ms: tuple[float | None, ...] = (None,)
    settle_seconds: float = 2.0  # feed running before the timed calls start
    serving_timeout: float = 180.0


# --------------------------------------------------------------------------- the feeds


class _Stop:
    """Set by SIGTERM: a feed ends its stream cleanly and prints what was acknowledged.
    Installed, it says ``ready`` on stdout (the bench waits for it before timing)."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGTERM, self._on_term)
        print("ready", flush=True)

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.set = True


def _paced(rate: float, per_tick: int, stop: _Stop) -> Iterator[int]:
    """Tick numbers at ``rate / per_tick`` ticks a second until stopped (sleeping, so the
    feed process itself stays off the CPU between ticks)."""
    started = time.perf_counter()
    for tick in itertools.count():
        if stop.set:
            return
        delay = started + tick * per_tick / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield tick


def feed_ingest(target: str, users: int, rate: float) -> dict[str, Any]:
    """Stream card transactions for the bench users at ``rate`` events/s until SIGTERM."""
    stop = _Stop()
    run = time.time_ns()
    started = time.perf_counter()

    def batches() -> Iterator[list]:
        for tick in _paced(rate, FEED_BATCH, stop):
            yield [make_event(f"bench-{(tick * FEED_BATCH + i) % users}", "transaction",
                              event_id=f"feed-{run}-{tick}-{i}",
                              numbers={"amount": 12.5 + i % 40},
                              strings={"country": "BR", "merchant_category": "5411",
                                       "device_id": "d1"})
                   for i in range(FEED_BATCH)]

    with Client(target, timeout=3_600) as client:
        reply = client.track_stream(batches(), timeout=3_600)
    return {"accepted": reply.accepted, "per_s": reply.accepted / (time.perf_counter() - started)}


def feed_outcomes(target: str, users: int, rate: float) -> dict[str, Any]:
    """Decide on the 3,600-combination campaign (no caps or consent) and report a reward
    for every decision, at ``rate`` a second, until SIGTERM; the learner updates that
    campaign's model from every one."""
    stop = _Stop()
    decided = 0
    started = time.perf_counter()
    with Client(target, timeout=60) as client:
        decide = _decide_large(client, users, "squarecb")
        for tick in _paced(rate, 1, stop):
            reply = cast(DecideResponse, decide(tick)())
            # Every decision's outcome, "send nothing" included (a bank reports or
            # attributes those too): the learner then hears of every arm.
            client.report_outcome(reply.decision_id, reward=float(tick % 3 == 0))
            decided += 1
    seconds = time.perf_counter() - started
    # Every decision is reported: the two counts are one.
    return {"decided": decided, "reported": decided, "per_s": decided / seconds}


FEEDS: dict[str, Callable[[str, int, float], dict[str, Any]]] = {
    "ingest": feed_ingest, "outcomes": feed_outcomes}


class _Feed:
    """A feed in a child process (its own interpreter: the client must not share a GIL
    with the timed calls)."""

    def __init__(self, kind: str, target: str, users: int, rate: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nudge.bench.background", "--feed", kind,
             "--target", target, "--users", str(users), "--rate", str(rate)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"background feed {kind} did not start")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"background feed failed (exit {self.proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the bench


def _phase(client: Client, metrics_url: str | None, calls: int,
           operations: dict[str, Callable[[int], Callable[[], object]]]) -> dict[str, Any]:
    before = scrape(metrics_url) if metrics_url else None
    latency = interleaved(client, calls, operations)
    out: dict[str, Any] = {"latency": {k: v.to_dict() for k, v in latency.items()}}
    if before is not None and metrics_url:
        after = scrape(metrics_url)
        out["handler"] = {name: t.to_dict() for name in RPCS
                          if (t := handler_time(before, after, METHODS[name])) is not None}
    return out


def _label(switch_ms: float | None) -> str:
    if switch_ms is None:
        return "shipped"
    return "Python's 5 ms" if switch_ms == 0 else f"{switch_ms:g} ms"


def _one_server(config: BackgroundConfig, switch_ms: float | None,
                progress: Callable[[str], None]) -> dict[str, Any]:
    env = {} if switch_ms is None else {"NUDGE_GIL_SWITCH_INTERVAL_MS": str(switch_ms)}
    with tempfile.TemporaryDirectory() as tmp:
        proc = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log",
                             "--campaigns", str(_campaigns(Path(tmp) / "campaigns")),
                             "--metrics-port", "0", env=env)
        try:
            with Client(proc.target, timeout=60) as client:
                client.wait_until_serving(config.serving_timeout)
                mature_profiles(client, config.users)
                users = config.users
                operations = {"GetUser": _get_user(client, users),
                              "Decide3600": _decide_large(client, users, "squarecb")}
                interleaved(client, min(config.calls, 300), operations)  # warm
                phases: dict[str, Any] = {}
                for phase in PHASES:
                    progress(f"background: switch interval {_label(switch_ms)}, {phase}")
                    feed = None
                    if phase != "quiet":
                        rate = config.ingest_rate if phase == "ingest" else config.outcome_rate
                        feed = _Feed(phase, proc.target, users, rate)
                        time.sleep(config.settle_seconds)
                    try:
                        result = _phase(client, proc.metrics_url, config.calls, operations)
                    finally:
                        fed = feed.stop() if feed is not None else None
                    if fed is not None:
                        result["feed"] = fed
                    result["load_average"] = os.getloadavg()[0]
                    phases[phase] = result
        finally:
            proc.terminate()
    return phases


def run(config: BackgroundConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every phase on one server per switch interval (see the module docstring)."""
    servers: dict[str, dict[str, Any]] = {}
    for switch_ms in config.switch_intervals_ms:
        label = _label(switch_ms)
        if label in servers:  # the same interval again: a repeat, kept beside the first
            label += f" (run {sum(k.startswith(label) for k in servers) + 1})"
        servers[label] = _one_server(config, switch_ms, progress)
    metrics: dict[str, float] = {}
    shipped = servers[_label(config.switch_intervals_ms[0])]
    quiet = Latency(**shipped["quiet"]["latency"]["Decide3600"])
    for phase in PHASES[1:]:
        busy = Latency(**shipped[phase]["latency"]["Decide3600"])
        metrics[f"background.{phase}.decide_p99_over_quiet"] = busy.p99 / quiet.p99
    return {"config": {"calls": config.calls, "users": config.users,
                       "ingest_rate": config.ingest_rate, "outcome_rate": config.outcome_rate,
                       "switch_intervals_ms": list(config.switch_intervals_ms)},
            "servers": servers, "metrics": metrics}


HEADERS = ("switch interval", "phase", "RPC", "p50 µs", "p99 µs", "p99.9 µs", "p99 / quiet",
           "handler mean µs", "feed", "load")


def rows(result: dict) -> list[tuple[str, ...]]:
    """Per switch interval and phase, each RPC's client percentiles, its p99 over the quiet
    phase's, the server's handler mean, the feed's achieved rate and the load average."""
    out: list[tuple[str, ...]] = []
    for label, phases in result["servers"].items():
        for phase, data in phases.items():
            feed = data.get("feed")
            for rpc in RPCS:
                lat = data["latency"][rpc]
                quiet = phases["quiet"]["latency"][rpc]["p99"]
                handler = data.get("handler", {}).get(rpc)
                out.append((label, phase, rpc, f"{lat['p50']:,.0f}", f"{lat['p99']:,.0f}",
                            f"{lat['p999']:,.0f}", f"{lat['p99'] / quiet:.2f}",
                            f"{handler['mean_us']:,.0f}" if handler else "-",
                            f"{feed['per_s']:,.0f}/s" if feed else "",
                            f"{data['load_average']:.1f}"))
    return out


def report(result: dict) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|---|---|---|" + "---:|" * 5 + "---|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feed", choices=sorted(FEEDS), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=BackgroundConfig.users)
    parser.add_argument("--calls", type=int, default=BackgroundConfig.calls)
    parser.add_argument("--ingest-rate", type=float, default=BackgroundConfig.ingest_rate)
    parser.add_argument("--outcome-rate", type=float, default=BackgroundConfig.outcome_rate)
    parser.add_argument("--switch-intervals-ms", type=float, nargs="+",
                        help="one server each (0: the interpreter's own 5 ms; default: the "
                             "server's shipped setting)")
    args = parser.parse_args(argv)
    if args.feed:  # a feed process of a running bench
        # The feed stands for a producer on another machine: at the lowest priority it takes
        # only CPU the server and the timed client leave idle (its achieved rate is reported).
        os.nice(19)
        print(json.dumps(FEEDS[args.feed](args.target, args.users, args.rate)), flush=True)
        return 0
    result = run(BackgroundConfig(calls=args.calls, users=args.users,
                                  ingest_rate=args.ingest_rate, outcome_rate=args.outcome_rate,
                                  switch_intervals_ms=tuple(args.switch_intervals_ms or
                                                            [None])),
                 lambda text: print(text, file=sys.stderr))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
