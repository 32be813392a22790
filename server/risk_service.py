"""RiskService: per-user anomaly scoring. Not built yet; says so precisely."""

from __future__ import annotations

import grpc

from nudge.server.errors import Unimplemented
from nudge.v1 import risk_service_pb2 as pb
from nudge.v1 import risk_service_pb2_grpc as pb_grpc

_MISSING = "needs per-user risk baselines and the scoring kernels, which are not built yet"


class RiskServicer(pb_grpc.RiskServiceServicer):
    def ScoreTransaction(
        self, request: pb.ScoreTransactionRequest, context: grpc.ServicerContext
    ) -> pb.ScoreTransactionResponse:
        raise Unimplemented(f"ScoreTransaction {_MISSING}")

    def ScoreTransactions(
        self, request: pb.ScoreTransactionsRequest, context: grpc.ServicerContext
    ) -> pb.ScoreTransactionsResponse:
        raise Unimplemented(f"ScoreTransactions {_MISSING}")

    def LabelTransaction(
        self, request: pb.LabelTransactionRequest, context: grpc.ServicerContext
    ) -> pb.LabelTransactionResponse:
        raise Unimplemented(f"LabelTransaction {_MISSING}")
