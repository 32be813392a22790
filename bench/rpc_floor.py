"""RPC benchmark: the echo floor against GetUser and ScoreTransaction, and durable
TrackStream throughput.

With ``--durable-calls``, ``--throughput-seconds`` and ``--open-loop`` it also times Track
and TrackStream, concurrent throughput and open-loop load (``nudge bench rpc`` turns them
on; see ``nudge.bench.cli``). Budgets come from ``bench/budgets.toml``.

The server runs in its own process (the client must not share its GIL). Each measured
call is interleaved with an Echo call, so machine noise hits both alike, and each RPC is
reported as a ratio to the echo floor of the same run; absolute times drift on a shared
box.

    python -m nudge.bench.rpc_floor [--target HOST:PORT] [--calls 3000] [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from nudge.bench.budgets import Budgets, judge
from nudge.bench.budgets import load as load_budgets
from nudge.bench.load import Throughput, closed_loop, interleaved_throughput
from nudge.bench.open_loop import OpenLoopConfig, sweep
from nudge.bench.server_process import ServerProcess
from nudge.bench.server_side import HandlerTime, handler_time, read_profiles, scrape
from nudge.bench.stats import Latency
from nudge.clients import Client, make_event, make_transaction
from nudge.server.decisions.campaign import ALGORITHMS
from nudge.v1 import decision_service_pb2, diagnostics_service_pb2, risk_service_pb2

# Targets (ratios to the floor of the same run, TrackStream events/s) live in
# bench/budgets.toml with every other budget.
PERCENTILES = ("p50", "p90", "p99", "p999")


def interleaved(
    client: Client, calls: int, operations: Mapping[str, Callable[[int], Callable[[], object]]]
) -> dict[str, Latency]:
    """Time each operation right after an Echo, call by call; Echo is the floor.

    Each operation is ``prepare(i) -> call``: building the request stays outside the
    timed region, as it does for Echo.
    """
    samples: dict[str, list[float]] = {"Echo": [], **{name: [] for name in operations}}
    for i in range(calls):
        for name, prepare in operations.items():
            call = prepare(i)
            t0 = time.perf_counter()
            client.echo()
            t1 = time.perf_counter()
            call()
            t2 = time.perf_counter()
            samples["Echo"].append(t1 - t0)
            samples[name].append(t2 - t1)
    return {name: Latency.of(s) for name, s in samples.items()}


def mature_profiles(client: Client, users: int, per_user: int = 20) -> None:
    """Give every bench user a transaction history, as a bank's users have, and the
    loan-abandonment story of the shipped campaign (consents, a simulated loan)."""
    day = 86_400.0
    start = time.time() - per_user * day
    consents = {f"consent.{c}": "granted" for c in ("push", "whatsapp", "sms", "email")}
    story = [
        make_event(f"bench-{u}", "loan_simulated", event_id=f"story-{u}", time=start,
                   numbers={"amount": 5_000.0}, strings={"currency": "USD", **consents})
        for u in range(users)
    ]
    events = story + [
        make_event(f"bench-{u}", "transaction", event_id=f"history-{u}-{k}",
                   time=start + k * day + (u % 7) * 3_600,
                   numbers={"amount": 20.0 + (u + k) % 50},
                   strings={"country": "BR", "merchant_category": "5411", "device_id": "d1"})
        for u in range(users)
        for k in range(per_user)
    ]
    client.track_stream([events[i : i + 2_000] for i in range(0, len(events), 2_000)])


def measure_track_stream(client: Client, events: int, batch: int, users: int) -> float:
    """Durable events per second: the reply comes only after every event is committed."""
    run = time.time_ns()
    batches = [
        [
            make_event(f"bench-{(b * batch + i) % users}", "transaction",
                       event_id=f"{run}-{b}-{i}", numbers={"amount": 12.5 + i})
            for i in range(batch)
        ]
        for b in range(events // batch)
    ]
    t0 = time.perf_counter()
    reply = client.track_stream(batches, timeout=600)
    elapsed = time.perf_counter() - t0
    assert reply.accepted == events // batch * batch, reply
    return reply.accepted / elapsed


@dataclass(frozen=True)
class RpcConfig:
    """What ``run_config`` measures. The extras (durable sequential latency, concurrent
    throughput, open loop) are off by default so :func:`run` stays as quick as before."""

    target: str | None = None
    calls: int = 3_000
    events: int = 200_000
    batch: int = 1_000
    users: int = 1_000
    durable_calls: int = 0  # Track and TrackStream sequential calls (each waits an fsync)
    stream_events: int = 100  # events in the one message of a sequential TrackStream call
    concurrency: int = 8
    throughput_seconds: float = 0.0  # per RPC, split in alternating slices with the floor
    open_loop: OpenLoopConfig | None = None
    budgets: Budgets | None = None  # None: the shipped bench/budgets.toml
    serving_timeout: float = 60.0  # how long to wait for the target to say SERVING
    # Server-side handler time: calls per RPC in the pass that reads the server's histograms
    # (0 skips it). A server the bench starts serves /metrics; with --target, give its URL.
    handler_calls: int = 1_000
    metrics_url: str | None = None
    # cProfile the handlers of a second, profiled server under load (a server the bench
    # starts only): .prof files and the top entries go here.
    profile_dir: Path | None = None
    profile_seconds: float = 3.0  # of closed-loop load per profiled RPC

PROFILED = ("Decide", "ScoreTransaction", "GetUser", "TrackStream")


def _campaigns(folder: Path) -> Path:
    """The shipped campaign plus bench/worlds.py's 3,600-combination campaign once per
    exploration algorithm, with no [exploration] table beyond the algorithm (defaults)."""
    from nudge.bench.worlds import campaign_text
    from nudge.server.decisions.campaign import shipped_campaigns_dir

    folder.mkdir(parents=True, exist_ok=True)
    for path in shipped_campaigns_dir().glob("*.toml"):
        (folder / path.name).write_text(path.read_text())
    for algorithm in ALGORITHMS:
        name = f"worlds_{algorithm}"
        (folder / f"{name}.toml").write_text(
            campaign_text(f'algorithm = "{algorithm}"', name=name))
    return folder


def _get_user(client: Client, users: int) -> Callable[[int], Callable[[], object]]:
    """GetUser of the bench users in turn."""

    def get_user(i: int) -> Callable[[], object]:
        user = f"bench-{i % users}"
        return lambda: client.get_user(user)

    return get_user


def _decide_large(client: Client, users: int,
                  algorithm: str) -> Callable[[int], Callable[[], object]]:
    """Decide on 3,600 combinations with 31 request numbers (bench/worlds.py's campaign)."""
    from nudge.bench.worlds import NUMBER_NAMES

    rng = np.random.default_rng(5)
    numbers = [dict(zip(NUMBER_NAMES, row.tolist(), strict=True))
               for row in rng.normal(size=(256, len(NUMBER_NAMES)))]
    campaign = f"worlds_{algorithm}"

    def decide(i: int) -> Callable[[], object]:
        user, request_numbers = f"bench-{i % users}", numbers[i % len(numbers)]
        return lambda: client.decide(user, campaign=campaign, numbers=request_numbers)

    return decide


def run(target: str | None, calls: int, events: int, batch: int, users: int) -> dict:
    """Echo floor vs GetUser / ScoreTransaction / Decide, and TrackStream throughput."""
    return run_config(RpcConfig(target=target, calls=calls, events=events, batch=batch,
                                users=users))


class _Rpcs:
    """Requests for every measured RPC, as ``prepare(i) -> call`` (blocking) and
    ``issue(i) -> future`` (open loop). ``i`` picks the user and makes ids unique."""

    def __init__(self, client: Client, users: int, stream_events: int) -> None:
        self.client = client
        self.users = users
        self.stream_events = stream_events
        self.run_id = time.time_ns()

    def requests(self) -> dict[str, Callable[[int], tuple[Any, Any]]]:
        c, users, run_id = self.client, self.users, self.run_id

        def user(i: int) -> str:
            return f"bench-{i % users}"

        def tx(i: int) -> Any:
            return risk_service_pb2.ScoreTransactionRequest(transaction=make_transaction(
                user(i), 20.0 + i % 50, transaction_id=f"{run_id}-tx-{i}", country="BR",
                merchant_category="5411", device_id="d1"))

        def event(i: int, k: int = 0, kind: str = "track") -> Any:
            return make_event(user(i + k), "app_opened", event_id=f"{run_id}-{kind}-{i}-{k}")

        def stream(i: int) -> Any:
            return iter([decision_service_pb2.TrackStreamRequest(
                events=[event(i, k, "stream") for k in range(self.stream_events)])])

        return {
            "Echo": lambda i: (c.diagnostics.Echo, diagnostics_service_pb2.EchoRequest()),
            "GetUser": lambda i: (c.decisions.GetUser,
                                  decision_service_pb2.GetUserRequest(user_id=user(i))),
            "ScoreTransaction": lambda i: (c.risk.ScoreTransaction, tx(i)),
            "Decide": lambda i: (c.decisions.Decide,
                                 decision_service_pb2.DecideRequest(user_id=user(i), top_k=3)),
            "Track": lambda i: (c.decisions.Track,
                                decision_service_pb2.TrackRequest(events=[event(i)])),
            "TrackStream": lambda i: (c.decisions.TrackStream, stream(i)),
        }

    def prepare(self, name: str) -> Callable[[int], Callable[[], object]]:
        make = self.requests()[name]

        def prepare(i: int) -> Callable[[], object]:
            method, request = make(i)
            return lambda: method(request, timeout=60)

        return prepare

    def issue(self, name: str) -> Callable[[int], grpc.Future]:
        make = self.requests()[name]

        def issue(i: int) -> grpc.Future:
            method, request = make(i)
            return method.future(request, timeout=60)

        return issue


def run_config(config: RpcConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Everything ``nudge bench rpc`` measures, against ``config.target`` or a fresh server."""
    budgets = config.budgets or load_budgets()
    users = config.users
    extras: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        target = config.target
        if target is None:
            progress("rpc: starting a server")
            proc = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log",
                                 "--campaigns", str(_campaigns(Path(tmp) / "campaigns")),
                                 "--metrics-port", "0")
            target = proc.target
        metrics_url = config.metrics_url or (proc.metrics_url if proc is not None else None)
        try:
            with Client(target, timeout=60) as client:
                progress(f"rpc: waiting for {target} to be SERVING")
                client.wait_until_serving(config.serving_timeout)
                progress("rpc: giving users a history")
                mature_profiles(client, users)
                rpcs = _Rpcs(client, users, config.stream_events)
                run_id = rpcs.run_id

                def score(i: int) -> Callable[[], object]:
                    tx = make_transaction(f"bench-{i % users}", 20.0 + i % 50,
                                          transaction_id=f"{run_id}-{i}", country="BR",
                                          merchant_category="5411", device_id="d1")
                    return lambda: client.score_transaction(tx)

                def decide(i: int) -> Callable[[], object]:
                    user = f"bench-{i % users}"
                    return lambda: client.decide(user, top_k=3)

                operations: dict[str, Callable[[int], Callable[[], object]]] = {
                    "GetUser": _get_user(client, users), "ScoreTransaction": score,
                    "Decide": decide}
                if proc is not None:  # our own server: it has the 3,600-combination campaigns
                    for algorithm in ALGORITHMS:
                        operations[f"Decide3600.{algorithm}"] = _decide_large(
                            client, users, algorithm)
                progress("rpc: warming the connection")
                interleaved(client, min(config.calls, 300), operations)  # warm connection, state
                progress("rpc: TrackStream durable throughput")
                throughput = measure_track_stream(client, config.events, config.batch, users)
                progress(f"rpc: sequential latency, {config.calls:,} calls each")
                latency = interleaved(client, config.calls, operations)
                if metrics_url is not None and config.handler_calls > 0:
                    extras["handler"] = _handler_pass(client, metrics_url, config.handler_calls,
                                                      operations, progress)
                if config.durable_calls:
                    progress(f"rpc: Track and TrackStream latency, {config.durable_calls} calls")
                    durable = {n: rpcs.prepare(n) for n in ("Track", "TrackStream")}
                    before = scrape(metrics_url) if metrics_url is not None else None
                    extras["durable"] = interleaved(client, config.durable_calls, durable)
                    if before is not None and metrics_url is not None:
                        after = scrape(metrics_url)
                        extras["durable_handler"] = {
                            n: t for n in ("Echo", "Track", "TrackStream")
                            if (t := handler_time(before, after, n)) is not None}
                if config.throughput_seconds > 0:
                    names = ("GetUser", "ScoreTransaction", "Decide", "Track")
                    extras["throughput"] = interleaved_throughput(
                        rpcs.prepare("Echo"), {n: rpcs.prepare(n) for n in names},
                        config.concurrency, config.throughput_seconds, progress=progress)
                if config.open_loop is not None:
                    extras["open_loop"] = [
                        sweep(name, rpcs.issue(name), config.open_loop, progress)
                        for name in config.open_loop.rpcs
                    ]
        finally:
            if proc is not None:
                progress("rpc: stopping the server")
                proc.terminate()
        if proc is not None and config.profile_dir is not None:
            extras["profile"] = _profile(Path(tmp), config, progress)
    return _result(latency, throughput, extras, budgets, config)


def _handler_pass(client: Client, metrics_url: str, calls: int,
                  operations: Mapping[str, Callable[[int], Callable[[], object]]],
                  progress: Callable[[str], None]) -> dict[str, HandlerTime]:
    """Each operation's server-side handler time, read from the server's histograms.

    The histograms are per gRPC method, and the Decide variants share one: so each
    operation gets a pass of its own (interleaved with Echo, as in the sequential pass),
    between two scrapes. Echo's figure is over every pass: the floor of handler time.
    """
    out: dict[str, HandlerTime] = {}
    first = scrape(metrics_url)
    for name, prepare in operations.items():
        progress(f"rpc: handler time of {name}, {calls:,} calls")
        before = scrape(metrics_url)
        interleaved(client, calls, {name: prepare})
        method = "Decide" if name.startswith("Decide") else name  # Decide3600.* too
        t = handler_time(before, scrape(metrics_url), method)
        if t is not None:
            out[name] = t
    echo = handler_time(first, scrape(metrics_url), "Echo")
    return {"Echo": echo, **out} if echo is not None else out


def _profile(tmp: Path, config: RpcConfig, progress: Callable[[str], None]) -> dict:
    """Restart the server on the same store with every handler under cProfile, load each
    profiled RPC in turn (closed loop), stop it (it writes the .prof files) and read them.

    A second server, so the profiler's overhead never touches the timed figures."""
    assert config.profile_dir is not None
    progress("rpc: starting a profiled server")
    proc = ServerProcess(tmp / "data", tmp / "server.log", "--campaigns", str(tmp / "campaigns"),
                         "--profile-dir", str(config.profile_dir))
    try:
        with Client(proc.target, timeout=60) as client:
            client.wait_until_serving(config.serving_timeout)
            rpcs = _Rpcs(client, config.users, config.stream_events)
            for name in PROFILED:
                # TrackStream holds a stream slot per call (max_track_streams, 4 by default).
                threads = min(config.concurrency, 2) if name == "TrackStream" else \
                    config.concurrency
                progress(f"rpc: profiling {name} ×{threads} for {config.profile_seconds:g} s")
                closed_loop(rpcs.prepare(name), threads, config.profile_seconds)
    finally:
        progress("rpc: stopping the profiled server")
        proc.terminate()
    return read_profiles(config.profile_dir, PROFILED)


def _result(latency: dict[str, Latency], throughput: float, extras: dict[str, Any],
            budgets: Budgets, config: RpcConfig) -> dict:
    floor = latency["Echo"]
    ratios = {name: lat.ratio_to(floor) for name, lat in latency.items() if name != "Echo"}
    metrics: dict[str, float] = {"rpc.TrackStream.events_per_s": throughput}
    for name, lat in latency.items():
        for p in PERCENTILES:
            metrics[f"rpc.{name}.{p}_us"] = getattr(lat, p)
    for name, ratio in ratios.items():
        for p in PERCENTILES:
            metrics[f"rpc.{name}.{p}_ratio"] = ratio[p]
    result: dict[str, Any] = {
        "target": config.target or "a fresh server in a child process",
        "latency_us": {name: lat.to_dict() for name, lat in latency.items()},
        "ratio_to_echo": ratios,
        "track_stream_events_per_s": throughput,
    }
    if "durable" in extras:
        durable: dict[str, Latency] = extras["durable"]
        result["durable_latency_us"] = {n: lat.to_dict() for n, lat in durable.items()}
        result["durable_ratio_to_echo"] = {n: lat.ratio_to(durable["Echo"])
                                           for n, lat in durable.items() if n != "Echo"}
        result["stream_events"] = config.stream_events
        for name, lat in durable.items():
            if name != "Echo":
                for p in PERCENTILES:
                    metrics[f"rpc.{name}.{p}_us"] = getattr(lat, p)
                    metrics[f"rpc.{name}.{p}_ratio"] = getattr(lat, p) / getattr(
                        durable["Echo"], p)
    if "throughput" in extras:
        tp: dict[str, Throughput] = extras["throughput"]
        result["throughput"] = {
            "concurrency": config.concurrency,
            "per_s": {n: t.per_s for n, t in tp.items()},
            "ratio_to_echo": {n: t.per_s / max(tp["Echo"].per_s, 1e-9)
                              for n, t in tp.items() if n != "Echo"},
            "errors": {n: t.errors for n, t in tp.items()},
        }
        for n, t in tp.items():
            metrics[f"rpc.{n}.throughput_per_s"] = t.per_s
            if n != "Echo":
                metrics[f"rpc.{n}.throughput_ratio"] = result["throughput"]["ratio_to_echo"][n]
    handler: dict[str, HandlerTime] = {**extras.get("handler", {}),
                                       **{n: t for n, t in extras.get("durable_handler", {}).items()
                                          if n != "Echo"}}
    if handler:
        result["handler_us"] = {n: ht.to_dict() for n, ht in handler.items()}
        for n, ht in handler.items():
            metrics[f"rpc.{n}.handler_mean_us"] = ht.mean_us
            metrics[f"rpc.{n}.handler_cpu_mean_us"] = ht.cpu_mean_us
    if "durable_handler" in extras and "Echo" in extras["durable_handler"]:
        result["durable_handler_echo_us"] = extras["durable_handler"]["Echo"].to_dict()
    if "profile" in extras:
        result["profile"] = extras["profile"]
    if "open_loop" in extras:
        result["open_loop"] = [s.to_dict() for s in extras["open_loop"]]
        for s in extras["open_loop"]:
            metrics[f"rpc.open_loop.{s.rpc}.max_rate_per_s"] = s.max_rate_within_budget
    result["metrics"] = metrics
    # Budgets of the RPC section, keyed by name (what this module's report prints).
    result["budgets"] = {
        v.budget.name: {"target": v.budget.max if v.budget.max is not None else v.budget.min,
                        "value": v.value, "met": v.status == "met"}
        for v in judge(budgets, metrics) if v.budget.metric.startswith("rpc.")
        and v.value is not None
    }
    return result


def report(result: dict) -> str:
    lines = [f"{'':24}" + "".join(f"{p + ' µs':>11}" for p in PERCENTILES)]
    for name, lat in result["latency_us"].items():
        label = f"{name} (floor)" if name == "Echo" else name
        lines.append(f"{label:24}" + "".join(f"{lat[p]:11.0f}" for p in PERCENTILES))
    for name, ratio in result["ratio_to_echo"].items():
        lines.append(f"{name + ' / floor':24}" + "".join(f"{ratio[p]:11.2f}" for p in PERCENTILES))
    for name, lat in result.get("durable_latency_us", {}).items():
        label = "Echo (durable pass)" if name == "Echo" else name
        lines.append(f"{label:24}" + "".join(f"{lat[p]:11.0f}" for p in PERCENTILES))
    lines.append(f"TrackStream durable: {result['track_stream_events_per_s']:,.0f} events/s")
    for name, t in result.get("handler_us", {}).items():
        lines.append(f"handler {name:24} mean {t['mean_us']:8.1f} µs  "
                     f"p99 ≤ {t['p99_le_us']:,.0f} µs  CPU {t['cpu_mean_us']:8.1f} µs  "
                     f"({t['calls']:,} calls)")
    if "throughput" in result:
        tp = result["throughput"]
        lines.append(f"concurrent throughput (×{tp['concurrency']} threads), calls/s: " + ", ".join(
            f"{n} {v:,.0f}" for n, v in tp["per_s"].items()))
    for s in result.get("open_loop", []):
        lines.append(f"open loop {s['rpc']}: p99 ≤ {s['p99_budget_ms']} ms up to "
                     f"{s['max_rate_within_budget_per_s']:,.0f}/s")
    for name, b in result["budgets"].items():
        verdict = "met" if b["met"] else "MISSED"
        lines.append(f"budget {name}: {b['value']:,.2f} (target {b['target']:,}) {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="measure a running server instead of starting one")
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000, help="events per stream message")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--durable-calls", type=int, default=0,
                        help="also time Track and TrackStream (each call waits an fsync)")
    parser.add_argument("--throughput-seconds", type=float, default=0.0,
                        help="also measure concurrent throughput for this long per RPC")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--open-loop", action="store_true", help="also sweep open-loop rates")
    parser.add_argument("--handler-calls", type=int, default=1_000,
                        help="calls per RPC in the server-side handler-time pass (0 skips)")
    parser.add_argument("--metrics-url", help="the target's /metrics, for handler time")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also profile the handlers under load; .prof files go here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    budgets = load_budgets()
    result = run_config(RpcConfig(
        target=args.target, calls=args.calls, events=args.events, batch=args.batch,
        users=args.users, durable_calls=args.durable_calls, concurrency=args.concurrency,
        throughput_seconds=args.throughput_seconds, budgets=budgets,
        handler_calls=args.handler_calls, metrics_url=args.metrics_url, profile_dir=args.profile,
        open_loop=OpenLoopConfig(p99_ms=budgets.open_loop_p99_ms) if args.open_loop else None))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(b["met"] for b in result["budgets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
