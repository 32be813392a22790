import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nudge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_LABEL_UNSPECIFIED: _ClassVar[TransactionLabel]
    TRANSACTION_LABEL_FRAUD: _ClassVar[TransactionLabel]
    TRANSACTION_LABEL_GENUINE: _ClassVar[TransactionLabel]
TRANSACTION_LABEL_UNSPECIFIED: TransactionLabel
TRANSACTION_LABEL_FRAUD: TransactionLabel
TRANSACTION_LABEL_GENUINE: TransactionLabel

class Transaction(_message.Message):
    __slots__ = ("transaction_id", "user_id", "amount", "currency", "merchant_category", "country", "channel", "device_id", "time")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    user_id: str
    amount: float
    currency: str
    merchant_category: str
    country: str
    channel: str
    device_id: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, transaction_id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., merchant_category: _Optional[str] = ..., country: _Optional[str] = ..., channel: _Optional[str] = ..., device_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScoreTransactionRequest(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class ScoreTransactionResponse(_message.Message):
    __slots__ = ("score", "reasons", "baseline_count", "held")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    score: float
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.Reason]
    baseline_count: int
    held: bool
    def __init__(self, score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.Reason, _Mapping]]] = ..., baseline_count: _Optional[int] = ..., held: _Optional[bool] = ...) -> None: ...

class ScoreTransactionsRequest(_message.Message):
    __slots__ = ("transactions", "learn_only")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    LEARN_ONLY_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    learn_only: bool
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., learn_only: _Optional[bool] = ...) -> None: ...

class TransactionScore(_message.Message):
    __slots__ = ("transaction_id", "score", "reasons", "baseline_count", "held")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    score: float
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.Reason]
    baseline_count: int
    held: bool
    def __init__(self, transaction_id: _Optional[str] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.Reason, _Mapping]]] = ..., baseline_count: _Optional[int] = ..., held: _Optional[bool] = ...) -> None: ...

class ScoreTransactionsResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[TransactionScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[TransactionScore, _Mapping]]] = ...) -> None: ...

class LabelTransactionRequest(_message.Message):
    __slots__ = ("transaction_id", "label", "user_id")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    label: TransactionLabel
    user_id: str
    def __init__(self, transaction_id: _Optional[str] = ..., label: _Optional[_Union[TransactionLabel, str]] = ..., user_id: _Optional[str] = ...) -> None: ...

class LabelTransactionResponse(_message.Message):
    __slots__ = ("in_baseline",)
    IN_BASELINE_FIELD_NUMBER: _ClassVar[int]
    in_baseline: bool
    def __init__(self, in_baseline: _Optional[bool] = ...) -> None: ...
