"""A user's stored state, rendered as the GetUser reply.

GetUser is measured against an empty Echo. Its reply is written as bytes by one kernel
call from the stored record and profile (``kernels/user_state_wire.py``) and handed to
grpc as bytes: setting the fields one by one from Python cost ~50 µs a call, and parsing
the kernel's bytes into a message that grpc then serialised again, with the profile's
JSON read in Python for the prefix, ~15 µs more. :func:`fill_user_state` is that
field-by-field rendering, kept as the reference the kernel is tested against (filled in
place: every nested message built apart and then copied into its parent costs more than
the fields it carries).
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from nudge.kernels import user_state as u
from nudge.kernels.user_state_wire import (
    get_user_reply,
    get_user_reply_from_profile,
    get_user_reply_trusted,
)
from nudge.server.storage.tables.users import UserProfile, tz_and_consents
from nudge.v1 import decision_service_pb2 as pb

# UserState string fields (tag bytes: field number << 3 | 2, length-delimited).
_USER_ID = b"\x0a"
_TIME_ZONE = b"\x42"
_CONSENT = b"\x4a"  # a map entry: key = 1 (string), value = 2 (bool)
_GRANTED = (b"\x10\x00", b"\x10\x01")


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class TypeNames:
    """The event type names of every slot as one byte buffer and offsets (what the reply
    kernel takes), rebuilt only when the store's registry (``Store.type_names``, a new dict
    on every change) is a different dict."""

    def __init__(self) -> None:
        self._source: dict[int, str] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.uint8),
                                                       np.zeros(0, np.int64))

    def arrays(self, type_names: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
        if type_names is not self._source:
            encoded = [type_names.get(slot, f"(slot {slot})").encode()
                       for slot in range(u.N_TYPES)]
            offsets = np.zeros(u.N_TYPES + 1, np.int64)
            offsets[1:] = np.cumsum([len(name) for name in encoded])
            names = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)[:offsets[-1]]
            names.flags.writeable = False
            offsets.flags.writeable = False
            get_user_reply(np.zeros(8 * u.RECORD_LEN, np.uint8), np.zeros(0, np.uint8),
                           names, offsets, 0.0)  # checks the table once
            self._arrays, self._source = (names, offsets), type_names
        return self._arrays


def user_prefix(profile: bytes | memoryview | None, user_id: str) -> bytes:
    """The UserState's user id, time zone and consents as encoded fields, the profile's
    JSON parsed in Python: the slow path, taken when the reply kernel's own reading of the
    profile gives up (an escaped string), and the reference it is tested against."""
    tz, consents = tz_and_consents(profile)
    uid, zone = user_id.encode(), tz.encode()
    parts = [_USER_ID, _varint(len(uid)), uid, _TIME_ZONE, _varint(len(zone)), zone]
    for channel, granted in consents:
        key = channel.encode()
        size = _varint(len(key))
        parts += (_CONSENT, _varint(1 + len(size) + len(key) + 2), _USER_ID, size, key,
                  _GRANTED[granted])
    return b"".join(parts)


# What a user without a stored profile reads as (tz_and_consents(None)).
_NO_PROFILE = np.frombuffer(UserProfile().to_bytes(), np.uint8)


def user_reply(
    record: bytes | memoryview,
    profile: bytes | memoryview | None,
    user_id: str,
    names: tuple[np.ndarray, np.ndarray],
    half_life_seconds: float,
) -> bytes:
    """The serialised GetUser reply for a user's stored record and profile bytes
    (``users.stored_bytes``): the message :func:`fill_user_state` fills, as bytes, which
    the handler returns as they are (GetUser's response serializer passes bytes through:
    parsing them into a message for grpc to serialise again cost two passes a call)."""
    raw = np.frombuffer(record, np.uint8)
    uid = np.frombuffer(user_id.encode(), np.uint8)
    stored = _NO_PROFILE if profile is None else np.frombuffer(profile, np.uint8)
    reply = get_user_reply_from_profile(raw, uid, stored, names[0], names[1],
                                        half_life_seconds)
    if not reply.shape[0]:  # the profile has an escaped string: JSON in Python
        prefix = np.frombuffer(user_prefix(profile, user_id), np.uint8)
        reply = get_user_reply_trusted(raw, prefix, names[0], names[1], half_life_seconds)
    return reply.tobytes()


def reply_bytes(reply: bytes | pb.GetUserResponse) -> bytes:
    """GetUser's response serializer: the handler's bytes as they are; a message (a reply
    forwarded from the user's node in cluster mode) serialised."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def _set_time(ts: Timestamp, seconds: float) -> None:
    whole = math.floor(seconds)
    ts.seconds = whole
    ts.nanos = min(int((seconds - whole) * 1e9), 999_999_999)


def fill_user_state(
    msg: pb.UserState,
    user_id: str,
    values: list[float],
    profile: UserProfile,
    type_names: dict[int, str],
    half_life_seconds: float,
) -> None:
    """Fill an empty ``msg`` (the reply's own field: nothing is copied afterwards).
    ``values``: the stored record as one list (``users.decode_record(...).tolist()``)."""
    s = values
    totals = values[u.TOTALS : u.TOTALS + u.N_TYPES]
    last = values[u.TYPE_LAST : u.TYPE_LAST + u.N_TYPES]
    counts = values[u.COUNTS : u.COUNTS + u.N_TYPES]
    used = sorted((slot for slot, total in enumerate(totals) if total), key=lambda k: -last[k])
    msg.user_id = user_id
    msg.event_count = int(s[u.S_EVENT_COUNT])
    msg.time_zone = profile.tz
    msg.half_life_seconds = half_life_seconds
    msg.local_hour_profile.extend(values[u.HOURS : u.HOURS + u.N_HOURS])
    _set_time(msg.first_seen, s[u.S_FIRST_SEEN])
    _set_time(msg.last_seen, s[u.S_LAST_SEEN])
    event_types = msg.event_types
    for slot in used:
        stats = event_types.add(type=type_names.get(slot, f"(slot {slot})"),
                                count=int(totals[slot]), decayed_count=counts[slot])
        _set_time(stats.last_seen, last[slot])
    n = s[u.S_AMOUNT_COUNT]
    if n > 0:
        variance = s[u.S_AMOUNT_M2] / (n - 1) if n > 1 else 0.0
        amounts = msg.amounts
        amounts.count = int(n)
        amounts.mean = s[u.S_AMOUNT_MEAN]
        amounts.stddev = math.sqrt(max(variance, 0.0))
        amounts.min = s[u.S_AMOUNT_MIN]
        amounts.max = s[u.S_AMOUNT_MAX]
        amounts.last = s[u.S_AMOUNT_LAST]
    if profile.consents:
        consents = msg.consents
        for channel, (granted, _) in profile.consents.items():
            consents[channel] = granted


def user_state_message(
    user_id: str,
    values: list[float],
    profile: UserProfile,
    type_names: dict[int, str],
    half_life_seconds: float,
) -> pb.UserState:
    """:func:`fill_user_state` into a new message."""
    msg = pb.UserState()
    fill_user_state(msg, user_id, values, profile, type_names, half_life_seconds)
    return msg
