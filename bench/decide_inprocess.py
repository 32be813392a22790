"""Decide's handler in process: thread CPU and wall time per call, no network, no client.

On a shared 2-core box the client ratios of ``nudge bench rpc`` move more from run to run
than a change to the handler does; a handler called directly in one process, timed by its
own thread's CPU clock, is far steadier. This builds a real server (``create_server``) on a
temporary store with ``nudge bench rpc``'s campaigns and users, calls the Decide servicer
with bench/worlds.py's 31 request numbers on the 3,600-combination campaign, runs the
functions grpc would run after each reply (``add_callback``) after the clock stops, and
waits ``--gap-ms`` between calls so the flusher runs and the caches are as cold as between
RPCs (``bench/inprocess.py`` times them). ``--profile`` adds a cProfile of the same calls,
``--stages`` a second pass with each stage's own thread CPU (wrappers around the engine's
and servicer's steps: they cost ~1 µs each, so read the shares).

    .venv/bin/python -m nudge.bench.decide_inprocess --calls 3000 [--profile] [--stages]
"""

from __future__ import annotations

import numpy as np

from nudge.bench.inprocess import (
    USERS,
    AfterReply,
    StageTimer,
    handler_parser,
    measure,
    warm_server,
)
from nudge.bench.worlds import NUMBER_NAMES
from nudge.server.clock import SystemClock
from nudge.server.decisions.campaign import ALGORITHMS
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.v1 import decision_service_pb2 as pb


def run(calls: int, algorithm: str, gap_ms: float, profile: bool, stages: bool = False
        ) -> str:
    """The report: per-call CPU and wall statistics (µs), the profile if asked, and with
    ``stages`` a second pass with every stage timed (:class:`StageTimer`)."""
    with warm_server("nudge-decide-") as server:
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
        decide = servicer.Decide
        warm = AfterReply()
        for i in range(500):  # warm: kernels, caches, every user's first decision
            decide(requests[i % USERS], warm)
            warm.run()
        timed = [requests[i % USERS] for i in range(calls)]
        lines = measure(f"Decide3600.{algorithm}", decide, timed, gap_ms,
                        timed if profile else None)
        if stages:
            timer = _stage_timer(servicer)
            measure("with stage timers", servicer.Decide, timed, gap_ms)
            lines += timer.lines(len(timed))
        return "\n".join(lines)


def _stage_timer(servicer: DecisionServicer) -> StageTimer:
    """Decide's stages wrapped: the servicer's checks and reply, the engine's steps, the
    kernels' wrappers; the servicer's and engine's own lines are "Decide (own)" and
    "engine.decide (own)"."""
    from nudge.server.decisions import engine
    from nudge.server.rpc import decision_service

    timer = StageTimer()
    e = servicer.decisions
    for name in ("check_properties", "_plain", "_fill_decision", "DecideInput"):
        timer.wrap(decision_service, name)
    timer.wrap(decision_service, "request_numbers", "request_numbers (kernel)")
    for name in ("local_now", "_guardrails", "user_context", "DecisionRecord",
                 "DecisionOutcome"):
        timer.wrap(engine, name)
    timer.wrap(engine.policy, "decide_trusted", "policy.decide_trusted")
    for name in ("_read_user", "_texts", "_new_ids", "_record", "_planned",
                 "_feature_reasons", "_action", "_model_plan", "decide"):
        timer.wrap(e, name, "engine.decide (own)" if name == "decide" else name)
    timer.wrap(e.risk, "recently_anomalous")
    timer.wrap(e.pending, "add", "pending.add")
    timer.wrap(servicer, "_number_values")
    timer.wrap(servicer, "Decide", "Decide (own)")
    return timer


def main(argv: list[str] | None = None) -> None:
    parser = handler_parser(__doc__, "the flusher runs, caches cool")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="squarecb")
    parser.add_argument("--stages", action="store_true",
                        help="then a second pass with each stage's own thread CPU")
    args = parser.parse_args(argv)
    print(run(args.calls, args.algorithm, args.gap_ms, args.profile, args.stages))


if __name__ == "__main__":
    main()
