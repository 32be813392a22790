"""Validation of incoming events into plain, trusted values.

A request with any invalid event is rejected whole: ``validate_events`` raises
InvalidArgument naming ``events[i].<field>`` and the rule, before anything is queued for
the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from nudge.server.errors import InvalidArgument
from nudge.v1 import event_pb2

MAX_ID_BYTES = 128
MAX_PROPERTIES = 64
MAX_KEY_BYTES = 64
MAX_STRING_BYTES = 1024
MAX_FUTURE_SECONDS = 86_400.0
# Events in one Track call or one TrackStream message (a group commit takes up to
# Config.max_batch_events from many of them).
MAX_EVENTS_PER_REQUEST = 10_000
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.]{0,63}")
# Type names already matched against TYPE_PATTERN: a stream repeats a handful of types, and
# the regex costs more than the rest of an event's checks. Bounded (cleared when full), so
# a stream of distinct junk types cannot grow it.
VALID_TYPES_KEPT = 4_096
_valid_types: set[str] = set()
TZ_KEY = "tz"
CONSENT_PREFIX = "consent."
CONSENT_VALUES = {"granted": True, "revoked": False}
AMOUNT_KEY = "amount"
# An amount's bound in absolute value: above any sum of money in any currency's smallest
# unit, and small enough that the per-user running moments (a sum of squares) stay
# finite. At 1.7e308, allowed as merely "finite", the running mean overflowed to inf and
# every later Decide for that customer failed INTERNAL.
MAX_AMOUNT = 1e18
# Every other number (an event's, a Decide request's) has the same bound, for the same
# reason: a campaign's running feature statistics are shared by every decision, and one
# request number of 1e308 (finite) before the statistics had 30 values made the variance
# inf (the feature standardised to 0 for good); 1e308, 1e308, then -1.7e308 made the mean
# NaN (checked on kernels/context.py's update, 2026-12-03).
MAX_NUMBER = MAX_AMOUNT
# Event strings that become store keys: they follow the rules of ids (check_id).
ID_STRINGS = frozenset({"transaction_id"})


@dataclass(slots=True)
class ValidEvent:
    """An event that passed validation, with its time resolved (epoch seconds)."""

    event_id: str
    user_id: str
    type: str
    time: float
    amount: float
    tz: str | None
    consents: dict[str, bool] = field(default_factory=dict)
    proto: event_pb2.Event | None = None
    # Properties other than the reserved tz/consent ones (message templates use them).
    numbers: dict[str, float] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    # Hour of day in the user's time zone; set by the writer when the event is stored.
    local_hour: float | None = None


# Names a system's zone folder holds that are not IANA zones of a place: the host's own
# zone ("localtime") and build artefacts. A customer's "tz" must mean the same on every
# server.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@lru_cache(maxsize=1)
def iana_zones() -> frozenset[str]:
    """The IANA zone names a ``tz`` may take (looked up once: the scan takes ~50 ms).
    Checked before ``ZoneInfo`` opens a file by the name: a 1,000-byte name there failed
    with OSError (file name too long), not as a bad zone."""
    return frozenset(available_timezones()) - NOT_ZONES


@lru_cache(maxsize=1024)
def time_zone(name: str) -> ZoneInfo:
    """A ZoneInfo by IANA name (cached); raises ZoneInfoNotFoundError or ValueError."""
    return ZoneInfo(name)


def check_id(value: str, field_name: str) -> None:
    """Ids become LMDB keys (at most 511 bytes) and parts of pair keys (owner + NUL +
    item): 1–128 bytes, no NUL."""
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(field_name, f"must be at most {MAX_ID_BYTES} bytes")
    if "\x00" in value:
        raise InvalidArgument(field_name, "must not contain NUL")


def timestamp_seconds(ts, field_name: str, now: float, has_time: bool) -> float:
    """Epoch seconds of a Timestamp; ``now`` when unset. Rejects the far future and < 1970."""
    if not has_time:
        return now
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field_name, "nanos must be in [0, 1e9)")
    t = ts.seconds + ts.nanos * 1e-9
    if t < 0:
        raise InvalidArgument(field_name, "must not be before 1970-01-01")
    if t > now + MAX_FUTURE_SECONDS:
        raise InvalidArgument(field_name, "must not be more than one day in the future")
    return t


def validate_event(ev: event_pb2.Event, index: int, now: float) -> ValidEvent:
    # Field names for errors are built only when a rule fails: this runs for every event.
    event_id, user_id, type_ = ev.event_id, ev.user_id, ev.type
    if (not event_id or (len(event_id) > MAX_ID_BYTES // 4
            and len(event_id.encode()) > MAX_ID_BYTES) or "\x00" in event_id):
        check_id(event_id, f"events[{index}].event_id")
    if (not user_id or (len(user_id) > MAX_ID_BYTES // 4
            and len(user_id.encode()) > MAX_ID_BYTES) or "\x00" in user_id):
        check_id(user_id, f"events[{index}].user_id")
    if type_ not in _valid_types:
        if not TYPE_PATTERN.fullmatch(type_):
            raise InvalidArgument(f"events[{index}].type", "must match [a-z][a-z0-9_.]{0,63}")
        if len(_valid_types) >= VALID_TYPES_KEPT:
            _valid_types.clear()
        _valid_types.add(type_)
    if ev.HasField("time"):
        # timestamp_seconds's rules inline (the field name is built only for an error).
        ts = ev.time
        t = ts.seconds + ts.nanos * 1e-9
        if not 0.0 <= t <= now + MAX_FUTURE_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
            t = timestamp_seconds(ts, f"events[{index}].time", now, True)
    else:
        t = now
    # upb's map containers convert to a dict through the Mapping ABC (keys(), then one
    # lookup per key in Python): iterating them directly is several times faster.
    proto_numbers, proto_strings = ev.numbers, ev.strings
    numbers = {k: proto_numbers[k] for k in proto_numbers} if proto_numbers else {}
    strings = {k: proto_strings[k] for k in proto_strings} if proto_strings else {}
    if len(numbers) + len(strings) > MAX_PROPERTIES:
        raise InvalidArgument(
            f"events[{index}]", f"at most {MAX_PROPERTIES} numbers and strings in all"
        )
    for key, value in numbers.items():
        if not key or (len(key) > MAX_KEY_BYTES // 4 and len(key.encode()) > MAX_KEY_BYTES):
            _check_key(key, f"events[{index}].numbers")
        if not -MAX_NUMBER <= value <= MAX_NUMBER:
            _check_number(value, f'events[{index}].numbers["{key}"]')
    amount = numbers.get(AMOUNT_KEY, math.nan) if numbers else math.nan
    if not strings:  # an event without strings: no time zone, consent or id to check
        return ValidEvent(event_id, user_id, type_, t, amount, None, {}, ev, numbers, strings)
    tz = None
    consents: dict[str, bool] = {}
    plain: dict[str, str] = {}
    for key, value in strings.items():
        if not key or (len(key) > MAX_KEY_BYTES // 4 and len(key.encode()) > MAX_KEY_BYTES):
            _check_key(key, f"events[{index}].strings")
        if len(value) > MAX_STRING_BYTES // 4 and len(value.encode()) > MAX_STRING_BYTES:
            raise InvalidArgument(
                f'events[{index}].strings["{key}"]', f"must be at most {MAX_STRING_BYTES} bytes"
            )
        if key == TZ_KEY:
            try:
                if value not in iana_zones():
                    raise ValueError(value)
                time_zone(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise InvalidArgument(
                    f'events[{index}].strings["{key}"]',
                    "must be an IANA time zone such as Europe/Paris",
                ) from None
            tz = value
        elif key in ID_STRINGS:
            # An id the store keys by (a transaction event's transaction_id): an id's rules.
            check_id(value, f'events[{index}].strings["{key}"]')
            plain[key] = value
        elif key.startswith(CONSENT_PREFIX):
            if value not in CONSENT_VALUES or len(key) == len(CONSENT_PREFIX):
                raise InvalidArgument(
                    f'events[{index}].strings["{key}"]', 'must be "granted" or "revoked"'
                )
            consents[key[len(CONSENT_PREFIX) :]] = CONSENT_VALUES[value]
        else:
            plain[key] = value
    return ValidEvent(event_id, user_id, type_, t, amount, tz, consents, ev, numbers, plain)


def _check_number(value: float, where: str) -> None:
    """Raises, naming the rule a number outside ``±MAX_NUMBER`` breaks."""
    if not math.isfinite(value):
        raise InvalidArgument(where, "must be finite")
    raise InvalidArgument(where, f"must be at most {MAX_NUMBER:.0e} in absolute value")


def _check_key(key: str, where: str) -> None:
    if not key:
        raise InvalidArgument(where, "property keys must not be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(
            f'{where}["{key[:16]}…"]', f"keys must be at most {MAX_KEY_BYTES} bytes"
        )


def validate_events(events: Sequence[event_pb2.Event], now: float) -> list[ValidEvent]:
    """Validate a request's events; the first invalid one rejects them all."""
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise InvalidArgument(
            "events", f"at most {MAX_EVENTS_PER_REQUEST} per request (split the batch)")
    return [validate_event(ev, i, now) for i, ev in enumerate(events)]


# A str of at most this many characters encodes to at most MAX_KEY_BYTES / MAX_STRING_BYTES
# bytes in UTF-8 (4 bytes a character at most): no need to encode it to know.
_SHORT_KEY = MAX_KEY_BYTES // 4
_SHORT_STRING = MAX_STRING_BYTES // 4


def _plainly_valid(numbers: dict[str, float], strings: dict[str, str]) -> bool:
    """True when every rule of :func:`check_properties` visibly holds, checked in a few C
    loops (Decide sends dozens of numbers on every call); False means "look closer", not
    "invalid"."""
    keys = [*numbers, *strings]
    return (
        (not keys or (min(map(len, keys)) > 0 and max(map(len, keys)) <= _SHORT_KEY))
        and (not numbers or (all(map(math.isfinite, numbers.values()))
                             and max(numbers.values()) <= MAX_NUMBER
                             and min(numbers.values()) >= -MAX_NUMBER))
        and (not strings or max(map(len, strings.values())) <= _SHORT_STRING)
    )


def check_properties(numbers: dict[str, float], strings: dict[str, str]) -> None:
    """A request's own numbers and strings (Decide): the rules of event properties."""
    if len(numbers) + len(strings) > MAX_PROPERTIES:
        raise InvalidArgument("numbers/strings",
                              f"at most {MAX_PROPERTIES} numbers and strings in all")
    if _plainly_valid(numbers, strings):
        return
    for key, value in numbers.items():
        _check_key(key, "numbers")
        if not -MAX_NUMBER <= value <= MAX_NUMBER:
            _check_number(value, f'numbers["{key}"]')
    for key, text in strings.items():
        _check_key(key, "strings")
        if len(text.encode()) > MAX_STRING_BYTES:
            raise InvalidArgument(f'strings["{key}"]', f"must be at most {MAX_STRING_BYTES} bytes")
