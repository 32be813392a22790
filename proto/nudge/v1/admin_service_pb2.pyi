from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

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
