"""RPC benchmark: the echo floor against GetUser and ScoreTransaction, and durable
TrackStream throughput.

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
from collections.abc import Callable
from pathlib import Path

from nudge.bench.server_process import ServerProcess
from nudge.bench.stats import Latency
from nudge.clients import Client, make_event, make_transaction

# Targets from the issues "Service foundation", "RiskService" and "Decide" (ratios to the
# floor of the same run).
P50_RATIO_BUDGETS = {"GetUser": 1.2, "ScoreTransaction": 1.2, "Decide": 1.3}
P99_RATIO_BUDGETS = {"Decide": 1.5}
TRACK_STREAM_EVENTS_PER_S = 30_000
PERCENTILES = ("p50", "p90", "p99", "p999")


def interleaved(
    client: Client, calls: int, operations: dict[str, Callable[[int], Callable[[], object]]]
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


def run(target: str | None, calls: int, events: int, batch: int, users: int) -> dict:
    run_id = time.time_ns()
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        if target is None:
            proc = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log")
            target = proc.target
        try:
            with Client(target, timeout=60) as client:
                client.wait_until_serving()
                mature_profiles(client, users)

                def get_user(i: int) -> Callable[[], object]:
                    user = f"bench-{i % users}"
                    return lambda: client.get_user(user)

                def score(i: int) -> Callable[[], object]:
                    tx = make_transaction(f"bench-{i % users}", 20.0 + i % 50,
                                          transaction_id=f"{run_id}-{i}", country="BR",
                                          merchant_category="5411", device_id="d1")
                    return lambda: client.score_transaction(tx)

                def decide(i: int) -> Callable[[], object]:
                    user = f"bench-{i % users}"
                    return lambda: client.decide(user, top_k=3)

                operations = {"GetUser": get_user, "ScoreTransaction": score, "Decide": decide}
                interleaved(client, min(calls, 300), operations)  # warm connection, state
                throughput = measure_track_stream(client, events, batch, users)
                latency = interleaved(client, calls, operations)
        finally:
            if proc is not None:
                proc.terminate()
    floor = latency["Echo"]
    ratios = {name: lat.ratio_to(floor) for name, lat in latency.items() if name != "Echo"}
    budgets = {
        f"{name} p50 / floor": {"target": target_ratio, "value": ratios[name]["p50"],
                                "met": ratios[name]["p50"] <= target_ratio}
        for name, target_ratio in P50_RATIO_BUDGETS.items()
    }
    budgets.update({
        f"{name} p99 / floor": {"target": target_ratio, "value": ratios[name]["p99"],
                                "met": ratios[name]["p99"] <= target_ratio}
        for name, target_ratio in P99_RATIO_BUDGETS.items()
    })
    budgets["TrackStream events/s"] = {
        "target": TRACK_STREAM_EVENTS_PER_S, "value": throughput,
        "met": throughput >= TRACK_STREAM_EVENTS_PER_S,
    }
    return {
        "latency_us": {name: lat.to_dict() for name, lat in latency.items()},
        "ratio_to_echo": ratios,
        "track_stream_events_per_s": throughput,
        "budgets": budgets,
    }


def report(result: dict) -> str:
    lines = [f"{'':24}" + "".join(f"{p + ' µs':>11}" for p in PERCENTILES)]
    for name, lat in result["latency_us"].items():
        label = f"{name} (floor)" if name == "Echo" else name
        lines.append(f"{label:24}" + "".join(f"{lat[p]:11.0f}" for p in PERCENTILES))
    for name, ratio in result["ratio_to_echo"].items():
        lines.append(f"{name + ' / floor':24}" + "".join(f"{ratio[p]:11.2f}" for p in PERCENTILES))
    lines.append(f"TrackStream durable: {result['track_stream_events_per_s']:,.0f} events/s")
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
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args.target, args.calls, args.events, args.batch, args.users)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(b["met"] for b in result["budgets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
