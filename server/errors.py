"""Errors the service raises, each naming the gRPC status code it stands for.

Handlers and the objects behind them raise these; ``StatusInterceptor`` (server/rpc/status.py),
the one place that knows gRPC, turns them into a status code and message. The code is a
name of ``grpc.StatusCode`` rather than the enum, so the domains and storage that raise
these errors do not depend on gRPC. Anything else is a bug: it is logged with its
stack and the caller gets INTERNAL with a reference, never UNKNOWN or a stack trace.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import lmdb


class NudgeError(Exception):
    """Base class: an error with a gRPC status code and a message for the caller."""

    code: str = "INTERNAL"  # a grpc.StatusCode name

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(NudgeError):
    """Bad input: names the field and the rule. Nothing was changed."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Internal(NudgeError):
    """A fault of the server that retrying the same request will meet again (a bug, a
    value the store cannot hold): the message carries a reference to the logged stack."""


class NotFound(NudgeError):
    code = "NOT_FOUND"


class NotServedHere(NotFound):
    """(Cluster) This node knows the record but no longer serves its partition: the
    owner answers; when no node does (a failover in progress) the call is UNAVAILABLE."""


class Unavailable(NudgeError):
    """Transient: warming up, shutting down, or the store cannot write right now."""

    code = "UNAVAILABLE"


class Unimplemented(NudgeError):
    code = "UNIMPLEMENTED"


class PermissionDenied(NudgeError):
    """The caller may not make this call, whatever its token (e.g. node-to-node calls)."""

    code = "PERMISSION_DENIED"


class CampaignError(ValueError):
    """A campaign file breaks a rule; the message names the file, the key and the rule."""


class StoreError(Exception):
    """The store cannot be opened as asked (wrong schema, unreadable folder)."""


class SchemaMismatch(StoreError):
    pass


class DeadlineExceeded(NudgeError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(NudgeError):
    code = "FAILED_PRECONDITION"


class StoreFull(NudgeError):
    """The LMDB map cannot grow any more: writes are refused, reads go on."""

    code = "RESOURCE_EXHAUSTED"


class DiskFull(NudgeError):
    """The disk holding the store has no space left: writes are refused, reads go on."""

    code = "RESOURCE_EXHAUSTED"


# LMDB reports a write cut short by a full disk as EIO, not ENOSPC: an EIO counts as a full
# disk when the disk has less than this left (a real I/O error stays UNAVAILABLE).
NEARLY_FULL_BYTES = 8 << 20


def disk_full(exc: BaseException, path: Path) -> DiskFull | None:
    """The DiskFull a failed store write amounts to, or None when the disk is not the cause."""
    text = str(exc)
    try:
        free: int | None = shutil.disk_usage(path).free
    except OSError:
        free = None
    no_space = (
        isinstance(exc, lmdb.DiskError)
        or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        or "No space left on device" in text
        or "Disk quota exceeded" in text
    )
    short_write = (isinstance(exc, lmdb.Error) and "Input/output error" in text
                   and free is not None and free < NEARLY_FULL_BYTES)
    if not (no_space or short_write):
        return None
    left = "" if free is None else f" ({free:,} bytes free)"
    return DiskFull(
        f"the disk is full: no space left on the device holding the store at {path}{left}; "
        "writes are refused, reads still work — free disk space, then retry with the same "
        "event_ids"
    )
