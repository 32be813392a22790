"""A user's stored state record straight to the bytes of its GetUser reply.

GetUser answers with a handful of numbers from the user's record (kernels/user_state.py
layout): counts and times per event type, amount statistics, the hour profile. Set one
field at a time from Python (a protobuf attribute per number, a Timestamp per time, the
record decoded to an array and then to a list first) that cost ~50 µs per call against an
empty Echo's ~9 µs. The reply's wire format is plain arithmetic on those numbers: varints,
little-endian doubles, length prefixes. So one compiled pass decodes the stored (sparse or
dense) record and writes the whole ``GetUserResponse`` message, which the handler hands
grpc as bytes (GetUser's response serializer passes bytes through).

Why the bytes are right: protobuf parsing is defined field by field, so a message written
with every scalar present parses to the same message as one built by setting the same
values (proto3 omits zeros when it serialises; an explicit zero parses to the default it
stands for). The field numbers and wire types below are those of
``proto/nudge/v1/decision_service.proto`` (UserState, EventTypeStats, AmountStats,
google.protobuf.Timestamp); ``tests/kernels/test_user_state_wire.py`` parses the bytes
and compares them, message for message, with the reply ``server/rpc/user_report.py``
builds field by field from the same record, on fresh random records.

The strings the record does not hold come in as bytes: the user id, time zone and
consents either already encoded as UserState fields (``prefix``) or, with
:func:`get_user_reply_from_profile`, read here from the stored profile's JSON (its plain
strings copied as they are; an escaped one leaves it to the caller's JSON parser), and the
event type names (one buffer for all slots, ``names[name_offsets[k]:name_offsets[k + 1]]``
for slot ``k``). Keeps the GIL: it runs for about a microsecond inside a handler.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels import user_state as u

# Wire tags (field number << 3 | wire type: 0 varint, 1 fixed64, 2 length-delimited).
_RESPONSE_USER = 0x0A  # GetUserResponse.user = 1
_FIRST_SEEN = 0x12  # UserState.first_seen = 2
_LAST_SEEN = 0x1A  # UserState.last_seen = 3
_EVENT_COUNT = 0x20  # UserState.event_count = 4
_EVENT_TYPES = 0x2A  # UserState.event_types = 5
_AMOUNTS = 0x32  # UserState.amounts = 6
_HOURS = 0x3A  # UserState.local_hour_profile = 7 (packed)
_HALF_LIFE = 0x51  # UserState.half_life_seconds = 10
_TYPE_NAME = 0x0A  # EventTypeStats.type = 1
_TYPE_COUNT = 0x10  # EventTypeStats.count = 2
_TYPE_DECAYED = 0x19  # EventTypeStats.decayed_count = 3
_TYPE_LAST_SEEN = 0x22  # EventTypeStats.last_seen = 4
_TS_SECONDS = 0x08  # Timestamp.seconds = 1
_TS_NANOS = 0x10  # Timestamp.nanos = 2
# AmountStats: count = 1 (varint), then mean, stddev, min, max, last = 2..6 (doubles).
_AMOUNT_COUNT = 0x08
_AMOUNT_DOUBLES = (0x11, 0x19, 0x21, 0x29, 0x31)
# Room before the UserState for the reply's own tag and length (a varint of <= 10 bytes).
_HEAD = 16
MASK_BYTES = (u.RECORD_LEN + 7) // 8
_U1 = jit.array(jit.u1, 1)


@njit(jit.i8(jit.u8), **jit.GIL)
def _varint_len(v):
    n = 1
    while v >= 0x80:
        v >>= np.uint64(7)
        n += 1
    return n


@njit(jit.i8(_U1, jit.i8, jit.u8), **jit.GIL)
def _put_varint(out, at, v):
    while v >= 0x80:
        out[at] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        at += 1
    out[at] = np.uint8(v)
    return at + 1


@njit(jit.i8(_U1, jit.i8, jit.i8, jit.f8, jit.f8_1d), **jit.GIL)
def _put_double(out, at, tag, x, scratch):
    out[at] = np.uint8(tag)
    scratch[0] = x
    raw = scratch.view(np.uint8)
    for i in range(8):
        out[at + 1 + i] = raw[i]
    return at + 9


@njit(jit.types.UniTuple(jit.u8, 2)(jit.f8), **jit.GIL)
def _time_parts(seconds):
    """``user_report._set_time``: whole seconds (floor) and nanoseconds (truncated, at
    most 999,999,999), as the varints' unsigned (two's complement) values."""
    whole = math.floor(seconds)
    nanos = min(np.int64((seconds - whole) * 1e9), 999_999_999)
    return np.uint64(np.int64(whole)), np.uint64(nanos)


@njit(jit.i8(jit.f8), **jit.GIL)
def _time_len(seconds):
    """Bytes of a Timestamp field's body (both parts written, zeros included)."""
    whole, nanos = _time_parts(seconds)
    return 2 + _varint_len(whole) + _varint_len(nanos)


@njit(jit.i8(_U1, jit.i8, jit.i8, jit.f8), **jit.GIL)
def _put_time(out, at, tag, seconds):
    whole, nanos = _time_parts(seconds)
    out[at] = np.uint8(tag)
    out[at + 1] = np.uint8(2 + _varint_len(whole) + _varint_len(nanos))  # < 128
    out[at + 2] = np.uint8(_TS_SECONDS)
    at = _put_varint(out, at + 3, whole)
    out[at] = np.uint8(_TS_NANOS)
    return _put_varint(out, at + 1, nanos)


@njit(jit.f8_1d(jit.u1_1d_ro), **jit.GIL)
def _decode(raw):
    """The stored record (``codecs.decode_sparse``: sparse, or dense when as long as the
    dense vector) as a new float64 vector."""
    length = u.RECORD_LEN
    out = np.zeros(length)
    n = raw.shape[0]
    if n == 8 * length:
        aligned = np.empty(n, np.uint8)
        aligned[:] = raw
        out[:] = aligned.view(np.float64)
        return out
    if n < MASK_BYTES or (n - MASK_BYTES) % 8 != 0:
        raise ValueError("record: not a stored state record")
    aligned = np.empty(n - MASK_BYTES, np.uint8)
    aligned[:] = raw[MASK_BYTES:]
    values = aligned.view(np.float64)
    k = 0
    for byte_index in range(MASK_BYTES):
        byte = raw[byte_index]
        if byte == 0:
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                i = byte_index * 8 + bit
                if i >= length or k >= values.shape[0]:
                    raise ValueError("record: mask and values disagree")
                out[i] = values[k]
                k += 1
    if k != values.shape[0]:
        raise ValueError("record: mask and values disagree")
    return out


@njit(_U1(jit.u1_1d_ro, jit.u1_1d_ro, jit.u1_1d_ro, jit.i8_1d_ro, jit.f8), **jit.GIL)
def _reply(raw, prefix, names, name_offsets, half_life_seconds):
    s = _decode(raw)
    totals = s[u.TOTALS:u.TOTALS + u.N_TYPES]
    last = s[u.TYPE_LAST:u.TYPE_LAST + u.N_TYPES]
    counts = s[u.COUNTS:u.COUNTS + u.N_TYPES]
    used = np.empty(u.N_TYPES, np.int64)
    n_used = 0
    for slot in range(u.N_TYPES):
        if totals[slot] != 0.0:  # Python's truthiness: NaN counts as used
            used[n_used] = slot
            n_used += 1
    used = used[:n_used]
    # Most recent first; ties keep slot order (Python's sorted is stable, so is mergesort).
    keys = np.empty(n_used)
    for i in range(n_used):
        keys[i] = -last[used[i]]
    order = used[np.argsort(keys, kind="mergesort")]

    size = _HEAD + prefix.shape[0] + names.shape[0] + 64 * u.N_TYPES + 512
    out = np.empty(size, np.uint8)
    scratch = np.empty(1)
    at = _HEAD
    out[at:at + prefix.shape[0]] = prefix
    at += prefix.shape[0]
    at = _put_time(out, at, _FIRST_SEEN, s[u.S_FIRST_SEEN])
    at = _put_time(out, at, _LAST_SEEN, s[u.S_LAST_SEEN])
    out[at] = np.uint8(_EVENT_COUNT)
    at = _put_varint(out, at + 1, np.uint64(np.int64(s[u.S_EVENT_COUNT])))
    for slot in order:
        start, end = name_offsets[slot], name_offsets[slot + 1]
        count = np.uint64(np.int64(totals[slot]))
        body = (1 + _varint_len(np.uint64(end - start)) + (end - start)
                + 1 + _varint_len(count) + 9 + 2 + _time_len(last[slot]))
        out[at] = np.uint8(_EVENT_TYPES)
        at = _put_varint(out, at + 1, np.uint64(body))
        out[at] = np.uint8(_TYPE_NAME)
        at = _put_varint(out, at + 1, np.uint64(end - start))
        out[at:at + end - start] = names[start:end]
        at += end - start
        out[at] = np.uint8(_TYPE_COUNT)
        at = _put_varint(out, at + 1, count)
        at = _put_double(out, at, _TYPE_DECAYED, counts[slot], scratch)
        at = _put_time(out, at, _TYPE_LAST_SEEN, last[slot])
    n = s[u.S_AMOUNT_COUNT]
    if n > 0:
        variance = s[u.S_AMOUNT_M2] / (n - 1) if n > 1 else 0.0
        # Python's max(variance, 0.0): the first unless the second is greater (NaN stays).
        stddev = math.sqrt(0.0 if variance < 0.0 else variance)
        count = np.uint64(np.int64(n))
        out[at] = np.uint8(_AMOUNTS)
        out[at + 1] = np.uint8(1 + _varint_len(count) + 5 * 9)  # < 128
        out[at + 2] = np.uint8(_AMOUNT_COUNT)
        at = _put_varint(out, at + 3, count)
        doubles = (s[u.S_AMOUNT_MEAN], stddev, s[u.S_AMOUNT_MIN], s[u.S_AMOUNT_MAX],
                   s[u.S_AMOUNT_LAST])
        for i in range(5):
            at = _put_double(out, at, _AMOUNT_DOUBLES[i], doubles[i], scratch)
    out[at] = np.uint8(_HOURS)
    at = _put_varint(out, at + 1, np.uint64(8 * u.N_HOURS))
    hours = np.ascontiguousarray(s[u.HOURS:u.HOURS + u.N_HOURS]).view(np.uint8)
    out[at:at + 8 * u.N_HOURS] = hours
    at += 8 * u.N_HOURS
    at = _put_double(out, at, _HALF_LIFE, half_life_seconds, scratch)
    # The reply: GetUserResponse.user, length-prefixed, just before the UserState.
    length = np.uint64(at - _HEAD)
    start = _HEAD - 1 - _varint_len(length)
    out[start] = np.uint8(_RESPONSE_USER)
    _put_varint(out, start + 1, length)
    return out[start:at]


# UserState string fields the prefix holds (tag bytes) and a consent map entry's parts.
_USER_ID = 0x0A  # UserState.user_id = 1; also a map entry's key = 1
_TIME_ZONE = 0x42  # UserState.time_zone = 8
_CONSENT = 0x4A  # UserState.consents = 9 (map<string, bool>)
_GRANTED = 0x10  # a map entry's value = 2 (varint; written even when false)
# A stored profile (UserProfile.to_bytes, orjson) begins with these, in this order.
_TZ_OPEN = np.frombuffer(b'{"tz":"', np.uint8)
_TZ_TIME = np.frombuffer(b',"tz_time":', np.uint8)
_CONSENTS_OPEN = np.frombuffer(b',"consents":{', np.uint8)
_TRUE = np.frombuffer(b"true", np.uint8)
_FALSE = np.frombuffer(b"false", np.uint8)
_QUOTE, _BACKSLASH, _COMMA, _COLON = 0x22, 0x5C, 0x2C, 0x3A
_LBRACKET, _RBRACKET, _RBRACE = 0x5B, 0x5D, 0x7D


@njit(jit.b1(jit.u1_1d_ro, jit.i8, jit.u1_1d_ro), **jit.GIL)
def _starts(data, at, literal):
    if at + literal.shape[0] > data.shape[0]:
        return False
    i = 0
    while i < literal.shape[0] and data[at + i] == literal[i]:
        i += 1
    return i == literal.shape[0]


@njit(jit.i8(jit.u1_1d_ro, jit.i8), **jit.GIL)
def _string_end(data, at):
    """The index of the quote closing the JSON string whose body starts at ``at``; -1 if
    it has an escape (the slow path decodes those) or does not end."""
    while at < data.shape[0]:
        c = data[at]
        if c == _QUOTE:
            return at
        if c == _BACKSLASH:
            return -1
        at += 1
    return -1


@njit(jit.i8(_U1, jit.i8, jit.i8, jit.u1_1d_ro, jit.i8, jit.i8), **jit.GIL)
def _put_string(out, at, tag, data, start, end):
    out[at] = np.uint8(tag)
    at = _put_varint(out, at + 1, np.uint64(end - start))
    out[at:at + end - start] = data[start:end]
    return at + end - start


@njit(jit.i8(jit.u1_1d_ro, jit.u1_1d_ro, _U1), **jit.GIL)
def _profile_prefix(user_id, profile, out):
    """``user_report.user_prefix`` (the UserState's user id, time zone and consents as
    fields) from a stored profile's JSON, into ``out``; its length, or -1 when the profile
    is not laid out as ``UserProfile.to_bytes`` writes it with plain strings (an escape,
    a granted flag that is not a JSON boolean): the caller then takes the slow path,
    which parses the JSON. A plain JSON string's bytes between its quotes are the UTF-8
    of the string: what the protobuf field carries."""
    if not _starts(profile, 0, _TZ_OPEN):
        return -1
    tz_start = _TZ_OPEN.shape[0]
    tz_end = _string_end(profile, tz_start)
    if tz_end < 0 or not _starts(profile, tz_end + 1, _TZ_TIME):
        return -1
    at = tz_end + 1 + _TZ_TIME.shape[0]
    while at < profile.shape[0] and profile[at] != _COMMA:  # a number or null
        at += 1
    if not _starts(profile, at, _CONSENTS_OPEN):
        return -1
    at += _CONSENTS_OPEN.shape[0]
    n = _put_string(out, 0, _USER_ID, user_id, 0, user_id.shape[0])
    n = _put_string(out, n, _TIME_ZONE, profile, tz_start, tz_end)
    if at < profile.shape[0] and profile[at] == _RBRACE:
        return n
    while True:
        if at >= profile.shape[0] or profile[at] != _QUOTE:
            return -1
        key_start = at + 1
        key_end = _string_end(profile, key_start)
        if (key_end < 0 or key_end + 2 >= profile.shape[0] or profile[key_end + 1] != _COLON
                or profile[key_end + 2] != _LBRACKET):
            return -1
        at = key_end + 3
        if _starts(profile, at, _TRUE):
            granted = 1
            at += _TRUE.shape[0]
        elif _starts(profile, at, _FALSE):
            granted = 0
            at += _FALSE.shape[0]
        else:
            return -1
        if at >= profile.shape[0] or profile[at] != _COMMA:
            return -1
        while at < profile.shape[0] and profile[at] != _RBRACKET:  # the time: a number
            at += 1
        at += 1
        if at >= profile.shape[0]:
            return -1
        size = key_end - key_start
        out[n] = np.uint8(_CONSENT)
        n = _put_varint(out, n + 1, np.uint64(1 + _varint_len(np.uint64(size)) + size + 2))
        n = _put_string(out, n, _USER_ID, profile, key_start, key_end)
        out[n] = np.uint8(_GRANTED)
        out[n + 1] = np.uint8(granted)
        n += 2
        if profile[at] == _RBRACE:
            return n
        if profile[at] != _COMMA:
            return -1
        at += 1


@njit(_U1(jit.u1_1d_ro, jit.u1_1d_ro, jit.u1_1d_ro, jit.u1_1d_ro, jit.i8_1d_ro, jit.f8),
      **jit.GIL)
def _reply_from_profile(raw, user_id, profile, names, name_offsets, half_life_seconds):
    # Each consent takes at least 11 bytes of JSON ('"":[true,0]') and at most 8 more
    # bytes of prefix than its key; the time zone likewise: the prefix fits in this.
    prefix = np.empty(user_id.shape[0] + profile.shape[0] + 32, np.uint8)
    n = _profile_prefix(user_id, profile, prefix)
    if n < 0:
        return np.empty(0, np.uint8)
    return _reply(raw, prefix[:n], names, name_offsets, half_life_seconds)


def get_user_reply_from_profile(raw: np.ndarray, user_id: np.ndarray, profile: np.ndarray,
                                names: np.ndarray, name_offsets: np.ndarray,
                                half_life_seconds: float) -> np.ndarray:
    """:func:`get_user_reply_trusted` with the prefix written here from the user id (UTF-8)
    and the stored profile's bytes (``UserProfile.to_bytes``); an empty array when the
    profile needs the slow path (see ``_profile_prefix``: the caller builds the prefix
    in Python then). The record is always checked."""
    return _reply_from_profile(raw, user_id, profile, names, name_offsets,
                               half_life_seconds)


def get_user_reply(raw: np.ndarray, prefix: np.ndarray, names: np.ndarray,
                   name_offsets: np.ndarray, half_life_seconds: float) -> np.ndarray:
    """The serialised ``GetUserResponse`` for a stored record ``raw`` (uint8, as stored):
    ``prefix`` (uint8) holds the UserState's string fields already encoded, slot ``k``'s
    event type name is ``names[name_offsets[k]:name_offsets[k + 1]]`` (``name_offsets``
    int64, ``N_TYPES + 1`` of them). Raises ValueError for bytes that are not a record."""
    if name_offsets.shape != (u.N_TYPES + 1,):
        raise ValueError(f"name_offsets: must hold {u.N_TYPES + 1} offsets")
    if name_offsets[0] != 0 or name_offsets[-1] != names.shape[0] or np.any(
            np.diff(name_offsets) < 0):
        raise ValueError("name_offsets: must rise from 0 to len(names)")
    return _reply(raw, prefix, names, name_offsets, float(half_life_seconds))


def get_user_reply_trusted(raw: np.ndarray, prefix: np.ndarray, names: np.ndarray,
                           name_offsets: np.ndarray, half_life_seconds: float) -> np.ndarray:
    """:func:`get_user_reply` without checking the names table (GetUser: built once per
    type registry by ``server/rpc/user_report.py``, checked there). The record is always
    checked."""
    return _reply(raw, prefix, names, name_offsets, half_life_seconds)


def warm_up() -> None:
    """Compile (or load) every signature before the server says SERVING."""
    record = np.zeros(u.RECORD_LEN)
    record[u.TOTALS] = 1.0
    record[u.S_AMOUNT_COUNT] = 2.0
    names = jit.readonly(np.frombuffer(b"a", np.uint8))
    offsets = np.ones(u.N_TYPES + 1, np.int64)
    offsets[0] = 0
    prefix = jit.readonly(np.zeros(0, np.uint8))
    for raw in (record.tobytes(), np.packbits(record != 0).tobytes()
                + record[record != 0].tobytes()):
        get_user_reply(jit.readonly(np.frombuffer(raw, np.uint8)), prefix, names,
                       jit.readonly(offsets), 3600.0)
        get_user_reply_from_profile(
            jit.readonly(np.frombuffer(raw, np.uint8)), jit.readonly(np.frombuffer(b"u", np.uint8)),
            jit.readonly(np.frombuffer(b'{"tz":"UTC","tz_time":null,"consents":{"a":[true,1.0]}}',
                                       np.uint8)), names, jit.readonly(offsets), 3600.0)
