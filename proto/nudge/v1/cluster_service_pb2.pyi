from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReadSummariesRequest(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class ReadSummariesResponse(_message.Message):
    __slots__ = ("key_names", "entry_counts", "entries")
    KEY_NAMES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    key_names: _containers.RepeatedScalarFieldContainer[str]
    entry_counts: bytes
    entries: bytes
    def __init__(self, key_names: _Optional[_Iterable[str]] = ..., entry_counts: _Optional[bytes] = ..., entries: _Optional[bytes] = ...) -> None: ...
