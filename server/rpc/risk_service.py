"""RiskService: thin — validate, hand to the risk engine, reply."""

from __future__ import annotations

import grpc

from nudge.server.clock import Clock
from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import check_id
from nudge.server.inputs.transactions import validate_transaction, validate_transactions
from nudge.server.risk.engine import RiskEngine
from nudge.server.rpc.deadlines import wait_within_deadline
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.rpc.readiness import Readiness
from nudge.server.storage.tables.transactions import TransactionRecord
from nudge.v1 import common_pb2
from nudge.v1 import risk_service_pb2 as pb
from nudge.v1 import risk_service_pb2_grpc as pb_grpc

_LABELS = {
    pb.TRANSACTION_LABEL_FRAUD: "FRAUD",
    pb.TRANSACTION_LABEL_GENUINE: "GENUINE",
}


def _reasons(record: TransactionRecord) -> list[common_pb2.Reason]:
    return [common_pb2.Reason(code=c, detail=d, weight=w) for c, d, w in record.reasons]


class RiskServicer(pb_grpc.RiskServiceServicer):
    def __init__(
        self,
        engine: RiskEngine,
        clock: Clock,
        readiness: Readiness,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        self.pseudonyms = pseudonyms or Pseudonyms(None)
        self.engine = engine
        self.clock = clock
        self.readiness = readiness

    def ScoreTransaction(
        self, request: pb.ScoreTransactionRequest, context: grpc.ServicerContext
    ) -> pb.ScoreTransactionResponse:
        if not self.readiness.serving:
            self.readiness.check()
        if not request.HasField("transaction"):
            raise InvalidArgument("transaction", "is required")
        tx = validate_transaction(request.transaction, "transaction", self.clock.now())
        tx.user_id = self.pseudonyms(tx.user_id)
        (record,) = self.engine.score([tx], after_reply=context.add_callback)
        # Filled in place: Reason messages built apart would be copied into the reply.
        reply = pb.ScoreTransactionResponse(score=record.score,
                                            baseline_count=record.baseline_count,
                                            held=record.held)
        if record.reasons:  # most scores have none
            reasons = reply.reasons
            for c, d, w in record.reasons:
                reasons.add(code=c, detail=d, weight=w)
        return reply

    def ScoreTransactions(
        self, request: pb.ScoreTransactionsRequest, context: grpc.ServicerContext
    ) -> pb.ScoreTransactionsResponse:
        self.readiness.check()
        txs = validate_transactions(list(request.transactions), self.clock.now())
        for tx in txs:
            tx.user_id = self.pseudonyms(tx.user_id)
        records = self.engine.score(txs, learn_only=request.learn_only)
        return pb.ScoreTransactionsResponse(
            scores=[
                pb.TransactionScore(
                    transaction_id=tx.transaction_id,
                    score=r.score,
                    reasons=_reasons(r),
                    baseline_count=r.baseline_count,
                    held=r.held,
                )
                for tx, r in zip(txs, records, strict=True)
            ]
        )

    def LabelTransaction(
        self, request: pb.LabelTransactionRequest, context: grpc.ServicerContext
    ) -> pb.LabelTransactionResponse:
        self.readiness.check()
        check_id(request.transaction_id, "transaction_id")
        check_id(request.user_id, "user_id")
        label = _LABELS.get(request.label)
        if label is None:
            raise InvalidArgument(
                "label", "must be TRANSACTION_LABEL_FRAUD or TRANSACTION_LABEL_GENUINE"
            )
        future = self.engine.label(self.pseudonyms(request.user_id), request.transaction_id,
                                   label)
        in_baseline = wait_within_deadline(future, context, "the label may still be stored")
        return pb.LabelTransactionResponse(in_baseline=in_baseline)
