"""A Decide request's numbers, read from its wire bytes straight into the campaign's order.

Decide's request carries dozens of numbers (bench/worlds.py's campaign: 31) in a protobuf
``map<string, double>``. Read from Python they cost three passes over the map, each a few
microseconds once grpc's calls have evicted the caches: a copy into a dict (every key and
value a Python object), the property rules checked over the dict, and the campaign's
numbers picked out of it by name into the feature kernel's array. The map's wire format is
plain: each entry is a length-delimited field holding a string key (field 1) and a double
value (field 2). So one compiled pass over the request's serialised bytes checks every
entry and writes each value the campaign uses into its slot, and nothing else is built.

Why it is the same as the dict path: protobuf parses a map field entry by entry, a later
entry for a key replacing an earlier one, a missing key being "" and a missing value 0.0;
this pass does exactly that (``out[j]`` is the last entry's value for name ``j``). A key is
equal to a name when their UTF-8 bytes are equal, which is how Python compares the strings.
The rules it checks imply those of ``events._plainly_valid`` (a key of 1 to ``short_key``
bytes has 1 to ``short_key`` characters; a finite value): when it answers ``-1`` (a rule
not plainly met, or bytes it does not expect) the caller takes the dict path, which names
the field that breaks a rule. Tested against that path on random maps
(tests/kernels/test_request_numbers.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from nudge.kernels import jit

# A value beyond this (in absolute value) breaks the request rules' bound
# (server/inputs/events.py MAX_NUMBER, equal: a test checks): the dict path names it.
MAX_NUMBER = 1e18
_ENTRY_KEY = 0x0A  # map entry: key = 1, length-delimited
_ENTRY_VALUE = 0x11  # map entry: value = 2, fixed64


@njit(types.UniTuple(jit.i8, 2)(jit.u1_1d_ro, jit.i8, jit.i8), **jit.GIL)
def _varint(msg, at, end):
    """``(value, next position)`` of the varint at ``at``; next position -1 if malformed."""
    value = 0
    shift = 0
    while at < end and shift < 64:
        b = np.int64(msg[at])
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7
    return 0, -1


@njit(jit.i8(jit.u1_1d_ro, jit.i8, jit.i8, jit.i8), **jit.GIL)
def _skip(msg, at, end, wire):
    """The position past the value of wire type ``wire`` at ``at`` (a field this pass does
    not read); -1 for a malformed varint, a length past ``end`` or a wire type other than
    varint, fixed64, fixed32 and length-delimited. A fixed width may pass ``end``: the
    caller's bounds check sees it."""
    if wire == 0:
        _, at = _varint(msg, at, end)
        return at
    if wire == 1:
        return at + 8
    if wire == 5:
        return at + 4
    if wire == 2:
        length, at = _varint(msg, at, end)
        if at < 0 or length > end - at:
            return -1
        return at + length
    return -1


@njit(jit.i8(jit.u1_1d_ro, jit.i8, jit.i8), **jit.GIL)
def _hash(data, at, length):
    """FNV-1a of ``data[at:at + length]`` (63 bits, non-negative)."""
    h = np.uint64(14695981039346656037)
    for b in range(length):
        h = (h ^ np.uint64(data[at + b])) * np.uint64(1099511628211)
    return np.int64(h >> np.uint64(1))


@njit(jit.i8(jit.u1_1d_ro, jit.i8, jit.u1_1d_ro, jit.i8_1d_ro, jit.i8_1d_ro, jit.i8,
             jit.f8_1d), **jit.GIL)
def request_numbers(msg, field, names, name_at, slots, short_key, out):
    """Read the ``map<string, double>`` field number ``field`` of the message ``msg``
    (serialised bytes): ``out[j]`` the value of the last entry whose key is
    ``names[name_at[j]:name_at[j + 1]]`` (UTF-8), NaN where no entry has that key. Each
    key is looked up in ``slots`` (:func:`name_table`'s open-addressing table of name
    indices, -1 empty), not compared with every name.

    Returns the number of the map's entries (duplicates counted), or -1 when a key is
    empty or longer than ``short_key`` bytes, a value is not finite or beyond ``±MAX_NUMBER``
    (the event rules' bound), or the bytes are not
    a message this pass reads (a wire type other than varint, fixed64, fixed32 and
    length-delimited, a length past the end). Keeps the GIL: about a microsecond inside
    a handler."""
    n_names = name_at.shape[0] - 1
    mask = slots.shape[0] - 1
    for j in range(n_names):
        out[j] = math.nan
    value_bits = np.empty(1, np.float64)
    value_bytes = value_bits.view(np.uint8)
    end = msg.shape[0]
    at = 0
    count = 0
    while at < end:
        tag, at = _varint(msg, at, end)
        if at < 0:
            return -1
        if tag >> 3 != field or tag & 7 != 2:
            at = _skip(msg, at, end, tag & 7)
            if at < 0 or at > end:
                return -1
            continue
        length, at = _varint(msg, at, end)
        if at < 0 or length > end - at:
            return -1
        stop = at + length
        count += 1
        key_at = 0
        key_len = 0
        value = 0.0
        while at < stop:
            etag, at = _varint(msg, at, stop)
            if at < 0:
                return -1
            if etag == _ENTRY_KEY:
                key_len, at = _varint(msg, at, stop)
                if at < 0 or key_len > stop - at:
                    return -1
                key_at = at
                at += key_len
            elif etag == _ENTRY_VALUE:
                if stop - at < 8:
                    return -1
                for b in range(8):
                    value_bytes[b] = msg[at + b]
                value = value_bits[0]
                at += 8
            else:
                at = _skip(msg, at, stop, etag & 7)
                if at < 0:
                    return -1
        if at != stop or key_len == 0 or key_len > short_key or not abs(value) <= MAX_NUMBER:
            return -1
        h = _hash(msg, key_at, key_len) & mask
        while slots[h] >= 0:
            j = slots[h]
            a = name_at[j]
            if name_at[j + 1] - a == key_len:
                same = True
                for b in range(key_len):
                    if names[a + b] != msg[key_at + b]:
                        same = False
                        break
                if same:
                    out[j] = value
                    break
            h = (h + 1) & mask
    return count


def name_table(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(names, name_at, slots)`` for :func:`request_numbers`, all read-only: the names'
    UTF-8 bytes end to end, each one's start (with the end last), and an open-addressing
    table of their indices (a power of two at least twice the names, -1 empty; a name at
    its FNV-1a hash's slot or the first free one after it)."""
    encoded = [n.encode() for n in names]
    buffer = np.frombuffer(b"".join(encoded), np.uint8)
    if not buffer.size:
        buffer = np.zeros(0, np.uint8)
        buffer.flags.writeable = False
    at = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=at[1:])
    at.flags.writeable = False
    size = 4
    while size < 2 * len(encoded):
        size *= 2
    slots = np.full(size, -1, np.int64)
    for j, e in enumerate(encoded):
        h = _hash(np.frombuffer(e, np.uint8), 0, len(e)) & (size - 1)
        while slots[h] >= 0:
            h = (h + 1) & (size - 1)
        slots[h] = j
    slots.flags.writeable = False
    return buffer, at, slots


def warm_up() -> None:
    """Compile (or load) the kernel's signature before the server says SERVING."""
    names, at, slots = name_table(("a",))
    message = np.frombuffer(b"\x2a\x0c\x0a\x01a\x11" + np.float64(1.0).tobytes(), np.uint8)
    request_numbers(message, 5, names, at, slots, 16, np.empty(1))
