"""Typed Python client for nudge.

Retries on UNAVAILABLE (and RESOURCE_EXHAUSTED) resend the *same* request, so a retried
Track carries the same event_ids and the server counts each event once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nudge.clients.credentials import BearerTokenInterceptor, client_channel_credentials
from nudge.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    decision_service_pb2,
    decision_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
    event_pb2,
    risk_service_pb2,
    risk_service_pb2_grpc,
)

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def make_transaction(
    user_id: str,
    amount: float,
    *,
    transaction_id: str | None = None,
    currency: str = "",
    merchant_category: str = "",
    country: str = "",
    channel: str = "",
    device_id: str = "",
    time: datetime | float | None = None,
) -> risk_service_pb2.Transaction:
    """Build a Transaction; a fresh transaction_id is assigned once, so retries reuse it."""
    tx = risk_service_pb2.Transaction(
        transaction_id=transaction_id or uuid.uuid4().hex,
        user_id=user_id,
        amount=amount,
        currency=currency,
        merchant_category=merchant_category,
        country=country,
        channel=channel,
        device_id=device_id,
    )
    if time is not None:
        _set_time(tx.time, time)
    return tx


def _set_time(ts, time: datetime | float) -> None:
    if isinstance(time, datetime):
        ts.FromDatetime(time)
    else:
        ts.FromNanoseconds(round(time * 1e9))


def make_event(
    user_id: str,
    type: str,
    *,
    numbers: Mapping[str, float] | None = None,
    strings: Mapping[str, str] | None = None,
    time: datetime | float | None = None,
    event_id: str | None = None,
) -> event_pb2.Event:
    """Build an Event; a fresh event_id is assigned here, once, so retries reuse it."""
    event = event_pb2.Event(
        event_id=event_id or uuid.uuid4().hex,
        user_id=user_id,
        type=type,
        numbers=dict(numbers or {}),
        strings=dict(strings or {}),
    )
    if time is not None:
        _set_time(event.time, time)
    return event


class Client:
    """A connection to one nudge server, or to any node of a cluster.

    ``timeout`` is the per-call deadline in seconds; ``retries`` how many times a call
    that failed with UNAVAILABLE or RESOURCE_EXHAUSTED is resent (with backoff).
    ``target`` may list a cluster's nodes (``ipv4:10.0.0.1:50051,10.0.0.2:50051``, gRPC's
    own syntax): calls go round robin over the nodes that are up, so a call a dead node
    failed is retried (same request, same ids) on another, and any node forwards a call
    to the node that owns the user.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        """``token``: a scoped token from ``nudge token create``; ``ca_file`` (TLS: the CA
        to trust), ``cert_file``/``key_file`` (mutual TLS: this client's certificate)."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        if "," in target:  # several nodes: round robin over those that are up
            options.append(("grpc.lb_policy_name", "round_robin"))
        if channel is None:
            if ca_file or cert_file or key_file:
                credentials = client_channel_credentials(ca_file, cert_file, key_file)
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self._raw_channel = channel
        if token:
            channel = grpc.intercept_channel(channel, BearerTokenInterceptor(token))
        self.channel = channel
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.decisions = decision_service_pb2_grpc.DecisionServiceStub(self.channel)
        self.risk = risk_service_pb2_grpc.RiskServiceStub(self.channel)
        self.diagnostics = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        attempt = 0
        while True:
            try:
                return fn(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt >= self.retries:
                    raise
                time.sleep(self.backoff * 2**attempt)
                attempt += 1

    # -- DecisionService -----------------------------------------------------------------

    def track(
        self, events: Iterable[event_pb2.Event], timeout: float | None = None
    ) -> decision_service_pb2.TrackResponse:
        request = decision_service_pb2.TrackRequest(events=list(events))
        return self._call(self.decisions.Track, request, timeout)

    def track_stream(
        self,
        batches: Iterable[Iterable[event_pb2.Event]],
        timeout: float | None = None,
    ) -> decision_service_pb2.TrackStreamResponse:
        """Stream many batches (ideally hundreds of events each) over one call.

        Not retried automatically (the batches may be a one-shot iterator); on failure
        resend the same events — replays are counted as duplicates, never twice.
        """

        def messages() -> Iterator[decision_service_pb2.TrackStreamRequest]:
            for batch in batches:
                yield decision_service_pb2.TrackStreamRequest(events=list(batch))

        return self.decisions.TrackStream(messages(), timeout=timeout or self.timeout)

    def get_user(
        self, user_id: str, timeout: float | None = None
    ) -> decision_service_pb2.UserState:
        request = decision_service_pb2.GetUserRequest(user_id=user_id)
        return self._call(self.decisions.GetUser, request, timeout).user

    def decide(
        self,
        user_id: str,
        *,
        campaign: str = "",
        top_k: int = 1,
        numbers: Mapping[str, float] | None = None,
        strings: Mapping[str, str] | None = None,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> decision_service_pb2.DecideResponse:
        request = decision_service_pb2.DecideRequest(
            user_id=user_id,
            campaign=campaign,
            top_k=top_k,
            numbers=dict(numbers or {}),
            strings=dict(strings or {}),
            dry_run=dry_run,
        )
        return self._call(self.decisions.Decide, request, timeout)

    def decide_batch(
        self,
        user_ids: Iterable[str] | None = None,
        *,
        segment: decision_service_pb2.Segment | None = None,
        campaign: str = "",
        top_k: int = 1,
        numbers: Mapping[str, float] | None = None,
        strings: Mapping[str, str] | None = None,
        dry_run: bool = False,
        include_reasons: bool = False,
        per_message: int = 1_000,
        timeout: float | None = None,
    ) -> Iterator[decision_service_pb2.BatchDecision]:
        """One decision per user of an audience (``user_ids``, streamed ``per_message`` at
        a time, or a ``segment`` of the stored users), as they arrive, in order. Not
        retried (each decision is logged once it is made); ``timeout`` bounds the whole
        stream (default: none, an audience may take minutes)."""
        settings = decision_service_pb2.DecideBatchRequest(
            campaign=campaign, top_k=top_k, numbers=dict(numbers or {}),
            strings=dict(strings or {}), dry_run=dry_run, include_reasons=include_reasons,
        )

        def messages() -> Iterator[decision_service_pb2.DecideBatchRequest]:
            first = settings
            if segment is not None:
                first.segment.CopyFrom(segment)
                yield first
                return
            chunk: list[str] = []
            for user_id in user_ids or ():
                chunk.append(user_id)
                if len(chunk) == per_message:
                    first.user_ids.extend(chunk)
                    yield first
                    first, chunk = decision_service_pb2.DecideBatchRequest(), []
            if chunk or first is settings:
                first.user_ids.extend(chunk)
                yield first

        for reply in self.decisions.DecideBatch(messages(), timeout=timeout):
            yield from reply.decisions

    def report_outcome(
        self, decision_id: str, reward: float, timeout: float | None = None
    ) -> bool:
        """Explicit feedback for a decision; False when it was already settled."""
        request = decision_service_pb2.ReportOutcomeRequest(decision_id=decision_id, reward=reward)
        return self._call(self.decisions.ReportOutcome, request, timeout).attributed

    # -- RiskService ---------------------------------------------------------------------

    def score_transaction(
        self, transaction: risk_service_pb2.Transaction, timeout: float | None = None
    ) -> risk_service_pb2.ScoreTransactionResponse:
        request = risk_service_pb2.ScoreTransactionRequest(transaction=transaction)
        return self._call(self.risk.ScoreTransaction, request, timeout)

    def score_transactions(
        self, transactions: Iterable[risk_service_pb2.Transaction], timeout: float | None = None,
        learn_only: bool = False,
    ) -> list[risk_service_pb2.TransactionScore]:
        """Score a batch in order; ``learn_only`` loads history (backfill): every
        transaction is learned, none held."""
        request = risk_service_pb2.ScoreTransactionsRequest(
            transactions=list(transactions), learn_only=learn_only
        )
        return list(self._call(self.risk.ScoreTransactions, request, timeout).scores)

    def label_transaction(
        self, transaction_id: str, label: str, *, user_id: str, timeout: float | None = None
    ) -> bool:
        """Label a transaction scored for ``user_id`` "fraud" or "genuine" (transaction ids
        are per user); returns whether it is now part of the user's baseline."""
        value = risk_service_pb2.TransactionLabel.Value(f"TRANSACTION_LABEL_{label.upper()}")
        request = risk_service_pb2.LabelTransactionRequest(
            transaction_id=transaction_id, label=value, user_id=user_id
        )
        return self._call(self.risk.LabelTransaction, request, timeout).in_baseline

    # -- operations ----------------------------------------------------------------------

    def echo(self, payload: bytes = b"", timeout: float | None = None) -> bytes:
        request = diagnostics_service_pb2.EchoRequest(payload=payload)
        return self._call(self.diagnostics.Echo, request, timeout).payload

    def server_info(
        self, timeout: float | None = None
    ) -> diagnostics_service_pb2.GetServerInfoResponse:
        """Which server process answered (pid, worker index, whether it leads)."""
        request = diagnostics_service_pb2.GetServerInfoRequest()
        return self._call(self.diagnostics.GetServerInfo, request, timeout)

    def erase_user(
        self, user_id: str, timeout: float | None = None
    ) -> admin_service_pb2.EraseUserResponse:
        """Erase everything stored about ``user_id`` (admin scope); decision records are
        kept under an unlinkable pseudonym. Safe to retry: a second erasure finds nothing."""
        request = admin_service_pb2.EraseUserRequest(user_id=user_id)
        return self._call(self.admin.EraseUser, request, timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._health.Check(request, timeout=timeout or self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Poll health until SERVING (the server warms its kernels first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=1.0) == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout:.0f}s")
            time.sleep(0.05)
