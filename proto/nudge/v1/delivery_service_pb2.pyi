import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATUS_UNSPECIFIED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SENT: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_FAILED: _ClassVar[DeliveryStatus]
DELIVERY_STATUS_UNSPECIFIED: DeliveryStatus
DELIVERY_STATUS_SENT: DeliveryStatus
DELIVERY_STATUS_FAILED: DeliveryStatus

class StreamDeliveriesRequest(_message.Message):
    __slots__ = ("channels", "adapter_id", "lease_seconds")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[str]
    adapter_id: str
    lease_seconds: int
    def __init__(self, channels: _Optional[_Iterable[str]] = ..., adapter_id: _Optional[str] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("delivery_id", "decision_id", "user_id", "campaign", "channel", "message", "text", "offer", "due_at", "lease_expires_at", "attempt")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    decision_id: str
    user_id: str
    campaign: str
    channel: str
    message: str
    text: str
    offer: str
    due_at: _timestamp_pb2.Timestamp
    lease_expires_at: _timestamp_pb2.Timestamp
    attempt: int
    def __init__(self, delivery_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., user_id: _Optional[str] = ..., campaign: _Optional[str] = ..., channel: _Optional[str] = ..., message: _Optional[str] = ..., text: _Optional[str] = ..., offer: _Optional[str] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class StreamDeliveriesResponse(_message.Message):
    __slots__ = ("delivery",)
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    delivery: Delivery
    def __init__(self, delivery: _Optional[_Union[Delivery, _Mapping]] = ...) -> None: ...

class AckDeliveryRequest(_message.Message):
    __slots__ = ("delivery_id", "status", "detail", "time")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    status: DeliveryStatus
    detail: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, delivery_id: _Optional[str] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., detail: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AckDeliveryResponse(_message.Message):
    __slots__ = ("fallback_delivery_id",)
    FALLBACK_DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    fallback_delivery_id: str
    def __init__(self, fallback_delivery_id: _Optional[str] = ...) -> None: ...
