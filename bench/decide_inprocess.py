"""Decide's handler in process: thread CPU and wall time per call, no network, no client.

On a shared 2-core box the client ratios of ``nudge bench rpc`` move more from run to run
than a change to the handler does; a handler called directly in one process, timed by its
own thread's CPU clock, is far steadier. This builds a real server (``create_server``) on a
temporary store with ``nudge bench rpc``'s campaigns and users, calls the Decide servicer
with bench/worlds.py's 31 request numbers on the 3,600-combination campaign, runs the
functions grpc would run after each reply (``add_callback``) after the clock stops, and
waits ``--gap-ms`` between calls so the flusher runs and the caches are as cold as between
RPCs (``bench/inprocess.py`` times them). ``--profile`` adds a cProfile of the same calls.

    .venv/bin/python -m nudge.bench.decide_inprocess --calls 3000 [--profile]
"""

from __future__ import annotations

import numpy as np

from nudge.bench.inprocess import USERS, AfterReply, handler_parser, measure, warm_server
from nudge.bench.worlds import NUMBER_NAMES
from nudge.server.clock import SystemClock
from nudge.server.decisions.campaign import ALGORITHMS
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.v1 import decision_service_pb2 as pb


def run(calls: int, algorithm: str, gap_ms: float, profile: bool) -> str:
    """The report: per-call CPU and wall statistics (µs), and the profile if asked."""
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
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = handler_parser(__doc__, "the flusher runs, caches cool")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="squarecb")
    args = parser.parse_args(argv)
    print(run(args.calls, args.algorithm, args.gap_ms, args.profile))


if __name__ == "__main__":
    main()
