"""First RPC benchmark: the echo floor, GetUser and durable TrackStream throughput.

The server runs in its own process (the client must not share its GIL). Echo and
GetUser calls are interleaved so machine noise hits both alike, and GetUser is reported
as a ratio to the echo floor of the same run; absolute times drift on a shared box.

    python -m nudge.bench.rpc_floor [--target HOST:PORT] [--calls 3000] [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from nudge.bench.server_process import ServerProcess
from nudge.bench.stats import Latency
from nudge.clients import Client, make_event

# Targets from the issue "Service foundation".
GET_USER_P50_RATIO = 1.2
TRACK_STREAM_EVENTS_PER_S = 30_000


def measure_latency(client: Client, calls: int, users: int) -> tuple[Latency, Latency]:
    echo, get_user = [], []
    for i in range(calls):
        t0 = time.perf_counter()
        client.echo()
        t1 = time.perf_counter()
        client.get_user(f"bench-{i % users}")
        t2 = time.perf_counter()
        echo.append(t1 - t0)
        get_user.append(t2 - t1)
    return Latency.of(echo), Latency.of(get_user)


def measure_track_stream(client: Client, events: int, batch: int, users: int) -> float:
    """Durable events per second: the reply comes only after every event is committed."""
    run = time.time_ns()
    batches = [
        [
            make_event(
                f"bench-{(b * batch + i) % users}",
                "transaction",
                event_id=f"{run}-{b}-{i}",
                numbers={"amount": 12.5 + i},
            )
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
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        if target is None:
            proc = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log")
            target = proc.target
        try:
            with Client(target, timeout=60) as client:
                client.wait_until_serving()
                client.track([make_event(f"bench-{u}", "app_opened") for u in range(users)])
                measure_latency(client, min(calls, 300), users)  # warm the connection
                throughput = measure_track_stream(client, events, batch, users)
                echo, get_user = measure_latency(client, calls, users)
        finally:
            if proc is not None:
                proc.terminate()
    ratio = get_user.ratio_to(echo)
    return {
        "echo_us": echo.to_dict(),
        "get_user_us": get_user.to_dict(),
        "get_user_ratio_to_echo": ratio,
        "track_stream_events_per_s": throughput,
        "budgets": {
            "get_user_p50_ratio": {
                "target": GET_USER_P50_RATIO,
                "met": ratio["p50"] <= GET_USER_P50_RATIO,
            },
            "track_stream_events_per_s": {
                "target": TRACK_STREAM_EVENTS_PER_S,
                "met": throughput >= TRACK_STREAM_EVENTS_PER_S,
            },
        },
    }


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
    echo, get_user, ratio = (
        result["echo_us"],
        result["get_user_us"],
        result["get_user_ratio_to_echo"],
    )
    print(f"{'':24}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}{'p99.9 µs':>10}")
    for name, lat in (("Echo (floor)", echo), ("GetUser", get_user)):
        print(f"{name:24}" + "".join(f"{lat[k]:10.0f}" for k in ("p50", "p90", "p99", "p999")))
    print(
        f"{'GetUser / floor':24}"
        + "".join(f"{ratio[k]:10.2f}" for k in ("p50", "p90", "p99", "p999"))
    )
    print(f"TrackStream durable throughput: {result['track_stream_events_per_s']:,.0f} events/s")
    missed = [name for name, b in result["budgets"].items() if not b["met"]]
    for name, b in result["budgets"].items():
        print(f"budget {name}: target {b['target']} -> {'met' if b['met'] else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
