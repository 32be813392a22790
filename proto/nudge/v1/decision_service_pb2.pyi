import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nudge.v1 import common_pb2 as _common_pb2
from nudge.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.Event, _Mapping]]] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class TrackStreamRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_event_pb2.Event, _Mapping]]] = ...) -> None: ...

class TrackStreamResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("user_id", "campaign", "time", "top_k", "numbers", "strings", "dry_run")
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class StringsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    campaign: str
    time: _timestamp_pb2.Timestamp
    top_k: int
    numbers: _containers.ScalarMap[str, float]
    strings: _containers.ScalarMap[str, str]
    dry_run: bool
    def __init__(self, user_id: _Optional[str] = ..., campaign: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., top_k: _Optional[int] = ..., numbers: _Optional[_Mapping[str, float]] = ..., strings: _Optional[_Mapping[str, str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("message", "channel", "send_at", "frequency", "offer", "text", "score")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEND_AT_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    message: str
    channel: str
    send_at: _timestamp_pb2.Timestamp
    frequency: str
    offer: str
    text: str
    score: float
    def __init__(self, message: _Optional[str] = ..., channel: _Optional[str] = ..., send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., frequency: _Optional[str] = ..., offer: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "actions", "propensity", "holdout", "suppressed_reason", "reasons", "propensity_samples", "model_version")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_REASON_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    propensity: float
    holdout: bool
    suppressed_reason: str
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.Reason]
    propensity_samples: int
    model_version: str
    def __init__(self, decision_id: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., propensity: _Optional[float] = ..., holdout: _Optional[bool] = ..., suppressed_reason: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.Reason, _Mapping]]] = ..., propensity_samples: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("campaign", "time", "top_k", "numbers", "strings", "dry_run", "user_ids", "segment", "include_reasons")
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class StringsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REASONS_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    time: _timestamp_pb2.Timestamp
    top_k: int
    numbers: _containers.ScalarMap[str, float]
    strings: _containers.ScalarMap[str, str]
    dry_run: bool
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    segment: Segment
    include_reasons: bool
    def __init__(self, campaign: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., top_k: _Optional[int] = ..., numbers: _Optional[_Mapping[str, float]] = ..., strings: _Optional[_Mapping[str, str]] = ..., dry_run: _Optional[bool] = ..., user_ids: _Optional[_Iterable[str]] = ..., segment: _Optional[_Union[Segment, _Mapping]] = ..., include_reasons: _Optional[bool] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("event_types", "seen_since")
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    SEEN_SINCE_FIELD_NUMBER: _ClassVar[int]
    event_types: _containers.RepeatedScalarFieldContainer[str]
    seen_since: _timestamp_pb2.Timestamp
    def __init__(self, event_types: _Optional[_Iterable[str]] = ..., seen_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[BatchDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[BatchDecision, _Mapping]]] = ...) -> None: ...

class BatchDecision(_message.Message):
    __slots__ = ("user_id", "decision_id", "actions", "propensity", "holdout", "suppressed_reason", "reasons", "propensity_samples", "model_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_REASON_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    decision_id: str
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    propensity: float
    holdout: bool
    suppressed_reason: str
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.Reason]
    propensity_samples: int
    model_version: str
    def __init__(self, user_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., propensity: _Optional[float] = ..., holdout: _Optional[bool] = ..., suppressed_reason: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.Reason, _Mapping]]] = ..., propensity_samples: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "reward", "time")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reward: float
    time: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., reward: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("attributed",)
    ATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    attributed: bool
    def __init__(self, attributed: _Optional[bool] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: UserState
    def __init__(self, user: _Optional[_Union[UserState, _Mapping]] = ...) -> None: ...

class UserState(_message.Message):
    __slots__ = ("user_id", "first_seen", "last_seen", "event_count", "event_types", "amounts", "local_hour_profile", "time_zone", "consents", "half_life_seconds")
    class ConsentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HOUR_PROFILE_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    event_count: int
    event_types: _containers.RepeatedCompositeFieldContainer[EventTypeStats]
    amounts: AmountStats
    local_hour_profile: _containers.RepeatedScalarFieldContainer[float]
    time_zone: str
    consents: _containers.ScalarMap[str, bool]
    half_life_seconds: float
    def __init__(self, user_id: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_count: _Optional[int] = ..., event_types: _Optional[_Iterable[_Union[EventTypeStats, _Mapping]]] = ..., amounts: _Optional[_Union[AmountStats, _Mapping]] = ..., local_hour_profile: _Optional[_Iterable[float]] = ..., time_zone: _Optional[str] = ..., consents: _Optional[_Mapping[str, bool]] = ..., half_life_seconds: _Optional[float] = ...) -> None: ...

class EventTypeStats(_message.Message):
    __slots__ = ("type", "count", "decayed_count", "last_seen")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DECAYED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    type: str
    count: int
    decayed_count: float
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[str] = ..., count: _Optional[int] = ..., decayed_count: _Optional[float] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AmountStats(_message.Message):
    __slots__ = ("count", "mean", "stddev", "min", "max", "last")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    count: int
    mean: float
    stddev: float
    min: float
    max: float
    last: float
    def __init__(self, count: _Optional[int] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., last: _Optional[float] = ...) -> None: ...
