"""Validation of transactions for RiskService, and their extraction from Track events."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nudge.server.errors import InvalidArgument
from nudge.server.inputs.events import (
    AMOUNT_KEY,
    MAX_AMOUNT,
    MAX_ID_BYTES,
    ValidEvent,
    check_id,
    timestamp_seconds,
)
from nudge.v1 import risk_service_pb2 as pb

CURRENCY = re.compile(r"[A-Z]{3}")
COUNTRY = re.compile(r"[A-Z]{2}")
MAX_ATTRIBUTE_BYTES = 128
TRANSACTION_EVENT = "transaction"
# Transactions in one ScoreTransactions call: a batch is scored under one lock, so a huge
# one would hold single authorisations back.
MAX_TRANSACTIONS_PER_BATCH = 1_000


@dataclass(slots=True)  # not frozen: frozen construction is slow, and this is per call
class ValidTransaction:
    transaction_id: str
    user_id: str
    amount: float
    currency: str
    merchant_category: str
    country: str
    channel: str
    device_id: str
    time: float
    # Local hour known from Track (the writer resolved the time zone); None: look it up.
    local_hour: float | None = None


def _id_ok(value: str) -> bool:
    """What ``check_id`` accepts (1–MAX_ID_BYTES bytes of UTF-8, no NUL), without
    building its field name: a character is at most 4 bytes, so a short id is short."""
    return bool(value) and (len(value) <= MAX_ID_BYTES // 4
                            or len(value.encode()) <= MAX_ID_BYTES) and "\x00" not in value


def _upper_code(value: str, length: int) -> bool:
    """``[A-Z]{length}`` (CURRENCY, COUNTRY) without the regex engine, on every
    ScoreTransaction: ASCII letters that are all upper case are exactly A-Z."""
    return (len(value) == length and value.isascii() and value.isalpha()
            and value.isupper())


def validate_transaction(tx: pb.Transaction, where: str, now: float) -> ValidTransaction:
    transaction_id, user_id, amount = tx.transaction_id, tx.user_id, tx.amount
    currency, country = tx.currency, tx.country
    merchant_category, channel, device_id = tx.merchant_category, tx.channel, tx.device_id
    # _id_ok on both, inline (two calls per transaction); field names only on a failure.
    short = MAX_ID_BYTES // 4
    if (not transaction_id or not user_id or "\x00" in transaction_id or "\x00" in user_id
            or (len(transaction_id) > short and len(transaction_id.encode()) > MAX_ID_BYTES)
            or (len(user_id) > short and len(user_id.encode()) > MAX_ID_BYTES)):
        check_id(transaction_id, f"{where}.transaction_id")
        check_id(user_id, f"{where}.user_id")
    if not math.isfinite(amount):
        raise InvalidArgument(f"{where}.amount", "must be finite")
    if amount < 0:
        raise InvalidArgument(f"{where}.amount", "must not be negative")
    if amount > MAX_AMOUNT:
        raise InvalidArgument(f"{where}.amount", f"must be at most {MAX_AMOUNT:.0e}")
    # _upper_code inline for the usual code; the call only decides an unusual one.
    if currency and not (len(currency) == 3 and currency.isascii() and currency.isalpha()
                         and currency.isupper()) and not _upper_code(currency, 3):
        raise InvalidArgument(f"{where}.currency", "must be an ISO 4217 code such as USD")
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()
                        and country.isupper()) and not _upper_code(country, 2):
        raise InvalidArgument(f"{where}.country", "must be an ISO 3166-1 alpha-2 code such as BR")
    if max(len(merchant_category), len(channel), len(device_id)) > MAX_ATTRIBUTE_BYTES // 4:
        for name, value in (
            ("merchant_category", merchant_category), ("channel", channel),
            ("device_id", device_id)
        ):
            if len(value) > MAX_ATTRIBUTE_BYTES // 4 and (
                    len(value.encode()) > MAX_ATTRIBUTE_BYTES):
                raise InvalidArgument(f"{where}.{name}",
                                      f"must be at most {MAX_ATTRIBUTE_BYTES} bytes")
    has_time = tx.HasField("time")
    t = timestamp_seconds(tx.time, f"{where}.time", now, True) if has_time else now
    return ValidTransaction(
        transaction_id, user_id, amount, currency, merchant_category, country, channel,
        device_id, t,
    )


def validate_transactions(txs: list[pb.Transaction], now: float) -> list[ValidTransaction]:
    """Validate a batch; the first invalid transaction rejects the whole batch."""
    if not txs:
        raise InvalidArgument("transactions", "must not be empty")
    if len(txs) > MAX_TRANSACTIONS_PER_BATCH:
        raise InvalidArgument(
            "transactions", f"at most {MAX_TRANSACTIONS_PER_BATCH} per call (split the batch)")
    return [validate_transaction(tx, f"transactions[{i}]", now) for i, tx in enumerate(txs)]


def transaction_from_event(ev: ValidEvent) -> ValidTransaction | None:
    """A ``transaction`` event seen through Track, as a transaction for the risk baseline.

    The transaction id is the event's ``transaction_id`` string, else its event_id; events
    without a non-negative amount do not describe a scoreable transaction.
    """
    if ev.type != TRANSACTION_EVENT or math.isnan(ev.amount) or ev.amount < 0:
        return None
    s = ev.strings
    return ValidTransaction(
        transaction_id=s.get("transaction_id") or ev.event_id,
        user_id=ev.user_id,
        amount=ev.numbers.get(AMOUNT_KEY, ev.amount),
        currency=s.get("currency", ""),
        merchant_category=s.get("merchant_category", ""),
        country=s.get("country", ""),
        channel=s.get("channel", ""),
        device_id=s.get("device_id", ""),
        time=ev.time,
        local_hour=ev.local_hour,
    )
