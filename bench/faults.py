"""kill -9 in a loop: after every crash, no acknowledged event is lost or counted twice,
settled outcomes stay settled, and the store opens cleanly.

Each round starts ``nudge serve`` on the same data folder, streams events, makes
decisions and reports outcomes (so the learner is busy), and SIGKILLs the server at a
random moment. The producer keeps every event it sent; at the end it replays all of them
(as a producer does after a crash) and every user's count must equal what was sent once.

    python -m nudge.bench.faults [--rounds 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from nudge.bench.server_process import ServerProcess
from nudge.clients import Client, make_event
from nudge.v1 import event_pb2

USERS = 20


@dataclass
class FaultReport:
    rounds: int = 0
    events_sent: int = 0
    events_acknowledged: int = 0
    decisions: int = 0
    outcomes_acknowledged: int = 0
    problems: list[str] = field(default_factory=list)


def _batch(rng: random.Random, round_: int, k: int, size: int) -> list[event_pb2.Event]:
    consents = {"consent.push": "granted", "consent.email": "granted"}
    return [
        make_event(f"f{rng.randrange(USERS)}", "loan_simulated",
                   event_id=f"r{round_}-b{k}-{i}", numbers={"amount": 1000.0 + i},
                   strings={"currency": "USD", **consents})
        for i in range(size)
    ]


def stored_counts(client: Client, user_ids: list[str]) -> Counter[str]:
    """Events the server holds per user (users it never saw are absent)."""
    out: Counter[str] = Counter()
    for user_id in user_ids:
        try:
            out[user_id] = client.get_user(user_id).event_count
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return out


def _counts(client: Client) -> Counter[str]:
    return stored_counts(client, [f"f{u}" for u in range(USERS)])


def run(rounds: int, data_dir: Path, log_path: Path, seed: int = 1) -> FaultReport:
    rng = random.Random(seed)
    report = FaultReport()
    sent: list[list[event_pb2.Event]] = []
    acked: Counter[str] = Counter()
    settled: list[str] = []
    for round_ in range(rounds):
        proc = ServerProcess(data_dir, log_path)
        with Client(proc.target, timeout=30, retries=0) as client:
            client.wait_until_serving()
            current = _counts(client)
            if current - _expected(sent):
                report.problems.append(f"round {round_}: an event counted twice: "
                                       f"{dict(current - _expected(sent))}")
            if acked - current:
                report.problems.append(f"round {round_}: acknowledged events lost: "
                                       f"{dict(acked - current)}")
            for decision_id in settled[-5:]:
                if client.report_outcome(decision_id, 1.0):
                    report.problems.append(f"round {round_}: settled decision reopened")
            killer = threading.Timer(rng.uniform(0.05, 0.4), proc.kill)
            killer.start()
            try:
                for k in range(40):
                    batch = _batch(rng, round_, k, rng.choice((1, 50, 200)))
                    sent.append(batch)
                    report.events_sent += len(batch)
                    client.track(batch)
                    acked.update(e.user_id for e in batch)
                    report.events_acknowledged += len(batch)
                    reply = client.decide(batch[0].user_id)
                    report.decisions += 1
                    if client.report_outcome(reply.decision_id, float(k % 2)):
                        settled.append(reply.decision_id)
                        report.outcomes_acknowledged += 1
            except grpc.RpcError:
                pass  # the kill landed: what was acknowledged must survive
            killer.join()
            if proc.running:
                proc.kill()
        report.rounds += 1
    proc = ServerProcess(data_dir, log_path)
    try:
        with Client(proc.target, timeout=60) as client:
            client.wait_until_serving()
            for batch in sent:  # the producer replays everything it sent
                client.track(batch)
            if _counts(client) != _expected(sent):
                report.problems.append("after replaying every batch, counts differ from "
                                       "what was sent once")
    finally:
        proc.terminate()
    return report


def _expected(sent: list[list[event_pb2.Event]]) -> Counter[str]:
    unique = {e.event_id: e.user_id for batch in sent for e in batch}
    return Counter(unique.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nudge-faults-") as tmp:
        report = run(args.rounds, Path(tmp) / "data", Path(tmp) / "server.log", args.seed)
    print(f"{report.rounds} kill -9 rounds in {time.perf_counter() - start:.0f} s: "
          f"{report.events_acknowledged:,} events acknowledged, {report.decisions:,} "
          f"decisions, {report.outcomes_acknowledged:,} outcomes; "
          f"{len(report.problems)} problems")
    for problem in report.problems:
        print(f"  {problem}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
