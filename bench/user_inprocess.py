"""GetUser's handler in process: thread CPU and wall time per call, no network.

The same method as ``decide_inprocess`` and ``score_inprocess`` (bench/inprocess.py): a
real server (``create_server``) on a temporary store, ``nudge bench rpc``'s 1,000 users
given their 20-transaction history and consents (``mature_profiles``), then the
DecisionService servicer's GetUser called directly for those users in turn, ``--gap-ms``
between calls so the flusher runs and the caches cool as between RPCs. What grpc does
with the reply afterwards (serialising it) is outside the clock, as it is outside the
server's handler histogram. ``--profile`` adds a cProfile of the same calls.

    .venv/bin/python -m nudge.bench.user_inprocess --calls 3000 [--profile]
"""

from __future__ import annotations

from nudge.bench.inprocess import USERS, AfterReply, handler_parser, measure, warm_server
from nudge.server.clock import SystemClock
from nudge.server.rpc.decision_service import DecisionServicer
from nudge.v1 import decision_service_pb2 as pb

WARM_CALLS = 500


def run(calls: int, gap_ms: float, profile: bool) -> str:
    """The report: per-call CPU and wall statistics (µs), and the profile if asked."""
    with warm_server("nudge-user-") as server:
        servicer = DecisionServicer(server.store, server.writer, SystemClock(),
                                    server.readiness, server.config.half_life_seconds,
                                    server.decisions)
        requests = [pb.GetUserRequest(user_id=f"bench-{i}") for i in range(USERS)]
        get_user = servicer.GetUser
        warm = AfterReply()
        for i in range(WARM_CALLS):  # kernels, the type-name table
            get_user(requests[i % USERS], warm)
            warm.run()
        timed = [requests[i % USERS] for i in range(calls)]
        lines = measure("GetUser", get_user, timed, gap_ms, timed if profile else None)
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = handler_parser(__doc__, "the flusher runs, caches cool")
    args = parser.parse_args(argv)
    print(run(args.calls, args.gap_ms, args.profile))


if __name__ == "__main__":
    main()
