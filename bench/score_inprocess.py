"""ScoreTransaction's handler in process: thread CPU and wall time per call, no network.

The same method as ``decide_inprocess`` (a server's own client ratios move more on a
shared box than a handler change does): a real server (``create_server``) on a temporary
store, ``nudge bench rpc``'s users given their 20-transaction history (``mature_profiles``),
then the RiskService servicer's ScoreTransaction called directly with ``nudge bench
rpc``'s transactions (a fresh id each, so every call scores and learns; the customer's
usual country, merchant category and device), grpc's ``add_callback`` functions run after
the clock stops (they wake the flusher, as after a real reply), ``--gap-ms`` between calls
so the flusher commits and the overlay empties as between RPCs. ``--profile`` adds a
cProfile of the same calls, as far apart (wall, with the profiler's overhead: read the order).

    .venv/bin/python -m nudge.bench.score_inprocess --calls 3000 [--profile]
"""

from __future__ import annotations

from nudge.bench.inprocess import USERS, AfterReply, handler_parser, measure, warm_server
from nudge.clients.client import make_transaction
from nudge.server.clock import SystemClock
from nudge.server.rpc.risk_service import RiskServicer
from nudge.v1 import risk_service_pb2 as pb

WARM_CALLS = 500


def _requests(calls: int, tag: str) -> list[pb.ScoreTransactionRequest]:
    return [pb.ScoreTransactionRequest(transaction=make_transaction(
        f"bench-{i % USERS}", 20.0 + i % 50, transaction_id=f"{tag}-{i}", country="BR",
        merchant_category="5411", device_id="d1")) for i in range(calls)]


def run(calls: int, gap_ms: float, profile: bool) -> str:
    """The report: per-call CPU and wall statistics (µs), and the profile if asked."""
    with warm_server("nudge-score-") as server:
        servicer = RiskServicer(server.risk, SystemClock(), server.readiness)
        score = servicer.ScoreTransaction
        warm = AfterReply()
        for request in _requests(WARM_CALLS, "warm"):  # kernels, caches, time zones
            score(request, warm)
            warm.run()
        lines = measure("ScoreTransaction", score, _requests(calls, "timed"), gap_ms,
                        _requests(calls, "profiled") if profile else None)
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = handler_parser(__doc__, "the flusher runs, the overlay empties")
    args = parser.parse_args(argv)
    print(run(args.calls, args.gap_ms, args.profile))


if __name__ == "__main__":
    main()
