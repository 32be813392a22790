import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetentionDriversRequest(_message.Message):
    __slots__ = ("cohort_start", "cohort_end", "early_days", "retained_from_day", "retained_to_day", "retained_event_types", "max_drivers", "max_threshold", "min_users")
    COHORT_START_FIELD_NUMBER: _ClassVar[int]
    COHORT_END_FIELD_NUMBER: _ClassVar[int]
    EARLY_DAYS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_FROM_DAY_FIELD_NUMBER: _ClassVar[int]
    RETAINED_TO_DAY_FIELD_NUMBER: _ClassVar[int]
    RETAINED_EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIVERS_FIELD_NUMBER: _ClassVar[int]
    MAX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_USERS_FIELD_NUMBER: _ClassVar[int]
    cohort_start: _timestamp_pb2.Timestamp
    cohort_end: _timestamp_pb2.Timestamp
    early_days: int
    retained_from_day: int
    retained_to_day: int
    retained_event_types: _containers.RepeatedScalarFieldContainer[str]
    max_drivers: int
    max_threshold: int
    min_users: int
    def __init__(self, cohort_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cohort_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., early_days: _Optional[int] = ..., retained_from_day: _Optional[int] = ..., retained_to_day: _Optional[int] = ..., retained_event_types: _Optional[_Iterable[str]] = ..., max_drivers: _Optional[int] = ..., max_threshold: _Optional[int] = ..., min_users: _Optional[int] = ...) -> None: ...

class Driver(_message.Message):
    __slots__ = ("event_type", "min_count", "users", "retained_if_reached", "retained_if_not", "lift", "adjusted_lift", "ci_low", "ci_high", "q_value", "p_value", "too_few_users", "text")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_IF_REACHED_FIELD_NUMBER: _ClassVar[int]
    RETAINED_IF_NOT_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_LIFT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    Q_VALUE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOO_FEW_USERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    min_count: int
    users: int
    retained_if_reached: float
    retained_if_not: float
    lift: float
    adjusted_lift: float
    ci_low: float
    ci_high: float
    q_value: float
    p_value: float
    too_few_users: bool
    text: str
    def __init__(self, event_type: _Optional[str] = ..., min_count: _Optional[int] = ..., users: _Optional[int] = ..., retained_if_reached: _Optional[float] = ..., retained_if_not: _Optional[float] = ..., lift: _Optional[float] = ..., adjusted_lift: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., q_value: _Optional[float] = ..., p_value: _Optional[float] = ..., too_few_users: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class RetentionDriversResponse(_message.Message):
    __slots__ = ("cohort_users", "judged_users", "too_young", "retention", "drivers", "underpowered", "tests")
    COHORT_USERS_FIELD_NUMBER: _ClassVar[int]
    JUDGED_USERS_FIELD_NUMBER: _ClassVar[int]
    TOO_YOUNG_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    UNDERPOWERED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    cohort_users: int
    judged_users: int
    too_young: int
    retention: float
    drivers: _containers.RepeatedCompositeFieldContainer[Driver]
    underpowered: _containers.RepeatedCompositeFieldContainer[Driver]
    tests: int
    def __init__(self, cohort_users: _Optional[int] = ..., judged_users: _Optional[int] = ..., too_young: _Optional[int] = ..., retention: _Optional[float] = ..., drivers: _Optional[_Iterable[_Union[Driver, _Mapping]]] = ..., underpowered: _Optional[_Iterable[_Union[Driver, _Mapping]]] = ..., tests: _Optional[int] = ...) -> None: ...

class ChurnFlowsRequest(_message.Message):
    __slots__ = ("cohort_start", "cohort_end", "early_days", "retained_from_day", "retained_to_day", "flow_event_type", "max_flows", "min_users")
    COHORT_START_FIELD_NUMBER: _ClassVar[int]
    COHORT_END_FIELD_NUMBER: _ClassVar[int]
    EARLY_DAYS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_FROM_DAY_FIELD_NUMBER: _ClassVar[int]
    RETAINED_TO_DAY_FIELD_NUMBER: _ClassVar[int]
    FLOW_EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MIN_USERS_FIELD_NUMBER: _ClassVar[int]
    cohort_start: _timestamp_pb2.Timestamp
    cohort_end: _timestamp_pb2.Timestamp
    early_days: int
    retained_from_day: int
    retained_to_day: int
    flow_event_type: str
    max_flows: int
    min_users: int
    def __init__(self, cohort_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cohort_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., early_days: _Optional[int] = ..., retained_from_day: _Optional[int] = ..., retained_to_day: _Optional[int] = ..., flow_event_type: _Optional[str] = ..., max_flows: _Optional[int] = ..., min_users: _Optional[int] = ...) -> None: ...

class ChurnFlow(_message.Message):
    __slots__ = ("flow", "step", "users", "churn_if_abandoned", "churn_if_not", "lift", "adjusted_lift", "ci_low", "ci_high", "q_value", "p_value", "too_few_users", "text")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    CHURN_IF_ABANDONED_FIELD_NUMBER: _ClassVar[int]
    CHURN_IF_NOT_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_LIFT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    Q_VALUE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOO_FEW_USERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    flow: str
    step: str
    users: int
    churn_if_abandoned: float
    churn_if_not: float
    lift: float
    adjusted_lift: float
    ci_low: float
    ci_high: float
    q_value: float
    p_value: float
    too_few_users: bool
    text: str
    def __init__(self, flow: _Optional[str] = ..., step: _Optional[str] = ..., users: _Optional[int] = ..., churn_if_abandoned: _Optional[float] = ..., churn_if_not: _Optional[float] = ..., lift: _Optional[float] = ..., adjusted_lift: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., q_value: _Optional[float] = ..., p_value: _Optional[float] = ..., too_few_users: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class ChurnFlowsResponse(_message.Message):
    __slots__ = ("cohort_users", "judged_users", "too_young", "churn_rate", "flows", "underpowered", "tests")
    COHORT_USERS_FIELD_NUMBER: _ClassVar[int]
    JUDGED_USERS_FIELD_NUMBER: _ClassVar[int]
    TOO_YOUNG_FIELD_NUMBER: _ClassVar[int]
    CHURN_RATE_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    UNDERPOWERED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    cohort_users: int
    judged_users: int
    too_young: int
    churn_rate: float
    flows: _containers.RepeatedCompositeFieldContainer[ChurnFlow]
    underpowered: _containers.RepeatedCompositeFieldContainer[ChurnFlow]
    tests: int
    def __init__(self, cohort_users: _Optional[int] = ..., judged_users: _Optional[int] = ..., too_young: _Optional[int] = ..., churn_rate: _Optional[float] = ..., flows: _Optional[_Iterable[_Union[ChurnFlow, _Mapping]]] = ..., underpowered: _Optional[_Iterable[_Union[ChurnFlow, _Mapping]]] = ..., tests: _Optional[int] = ...) -> None: ...

class ValueDriversRequest(_message.Message):
    __slots__ = ("cohort_start", "cohort_end", "goal_event_types", "value_days", "early_days", "top_fraction", "max_drivers", "max_threshold", "min_users", "value_property")
    COHORT_START_FIELD_NUMBER: _ClassVar[int]
    COHORT_END_FIELD_NUMBER: _ClassVar[int]
    GOAL_EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    VALUE_DAYS_FIELD_NUMBER: _ClassVar[int]
    EARLY_DAYS_FIELD_NUMBER: _ClassVar[int]
    TOP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIVERS_FIELD_NUMBER: _ClassVar[int]
    MAX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_USERS_FIELD_NUMBER: _ClassVar[int]
    VALUE_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    cohort_start: _timestamp_pb2.Timestamp
    cohort_end: _timestamp_pb2.Timestamp
    goal_event_types: _containers.RepeatedScalarFieldContainer[str]
    value_days: int
    early_days: int
    top_fraction: float
    max_drivers: int
    max_threshold: int
    min_users: int
    value_property: str
    def __init__(self, cohort_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cohort_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., goal_event_types: _Optional[_Iterable[str]] = ..., value_days: _Optional[int] = ..., early_days: _Optional[int] = ..., top_fraction: _Optional[float] = ..., max_drivers: _Optional[int] = ..., max_threshold: _Optional[int] = ..., min_users: _Optional[int] = ..., value_property: _Optional[str] = ...) -> None: ...

class ValueDriver(_message.Message):
    __slots__ = ("event_type", "min_count", "users", "top_if_reached", "top_if_not", "lift", "adjusted_lift", "ci_low", "ci_high", "q_value", "p_value", "too_few_users", "text")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    TOP_IF_REACHED_FIELD_NUMBER: _ClassVar[int]
    TOP_IF_NOT_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_LIFT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    Q_VALUE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOO_FEW_USERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    min_count: int
    users: int
    top_if_reached: float
    top_if_not: float
    lift: float
    adjusted_lift: float
    ci_low: float
    ci_high: float
    q_value: float
    p_value: float
    too_few_users: bool
    text: str
    def __init__(self, event_type: _Optional[str] = ..., min_count: _Optional[int] = ..., users: _Optional[int] = ..., top_if_reached: _Optional[float] = ..., top_if_not: _Optional[float] = ..., lift: _Optional[float] = ..., adjusted_lift: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., q_value: _Optional[float] = ..., p_value: _Optional[float] = ..., too_few_users: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class ValueDriversResponse(_message.Message):
    __slots__ = ("cohort_users", "judged_users", "too_young", "top_value_cut", "drivers", "underpowered", "tests", "value_property")
    COHORT_USERS_FIELD_NUMBER: _ClassVar[int]
    JUDGED_USERS_FIELD_NUMBER: _ClassVar[int]
    TOO_YOUNG_FIELD_NUMBER: _ClassVar[int]
    TOP_VALUE_CUT_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    UNDERPOWERED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    cohort_users: int
    judged_users: int
    too_young: int
    top_value_cut: float
    drivers: _containers.RepeatedCompositeFieldContainer[ValueDriver]
    underpowered: _containers.RepeatedCompositeFieldContainer[ValueDriver]
    tests: int
    value_property: str
    def __init__(self, cohort_users: _Optional[int] = ..., judged_users: _Optional[int] = ..., too_young: _Optional[int] = ..., top_value_cut: _Optional[float] = ..., drivers: _Optional[_Iterable[_Union[ValueDriver, _Mapping]]] = ..., underpowered: _Optional[_Iterable[_Union[ValueDriver, _Mapping]]] = ..., tests: _Optional[int] = ..., value_property: _Optional[str] = ...) -> None: ...
