from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EraseUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class EraseUserResponse(_message.Message):
    __slots__ = ("deleted", "decisions_pseudonymised")
    class DeletedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_PSEUDONYMISED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.ScalarMap[str, int]
    decisions_pseudonymised: int
    def __init__(self, deleted: _Optional[_Mapping[str, int]] = ..., decisions_pseudonymised: _Optional[int] = ...) -> None: ...

class ListEventTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventType(_message.Message):
    __slots__ = ("name", "slot", "named")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    name: str
    slot: int
    named: bool
    def __init__(self, name: _Optional[str] = ..., slot: _Optional[int] = ..., named: _Optional[bool] = ...) -> None: ...

class ListEventTypesResponse(_message.Message):
    __slots__ = ("event_types", "other_events")
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    OTHER_EVENTS_FIELD_NUMBER: _ClassVar[int]
    event_types: _containers.RepeatedCompositeFieldContainer[EventType]
    other_events: int
    def __init__(self, event_types: _Optional[_Iterable[_Union[EventType, _Mapping]]] = ..., other_events: _Optional[int] = ...) -> None: ...

class ResetEventTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetEventTypesResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...
