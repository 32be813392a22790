"""A user's stored state, rendered as the GetUser reply.

Built from one plain list of the record's values, filled into the reply in place: GetUser
is measured against an empty Echo, and every nested message built apart and then copied
into its parent (a Timestamp per event type, the UserState into the GetUserResponse)
costs more than the fields it carries.
"""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from nudge.kernels import user_state as u
from nudge.server.storage.tables.users import UserProfile
from nudge.v1 import decision_service_pb2 as pb


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
    ``values``: the stored record as one list (Store.get_user_values)."""
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
