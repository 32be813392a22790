"""A user's stored state, rendered as the GetUser reply.

Built from one plain list of the record's values and one constructor call: GetUser is
measured against an empty Echo, and per-field protobuf calls and small NumPy operations
dominate its cost.
"""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from nudge.kernels import user_state as u
from nudge.server.storage.tables.users import UserProfile
from nudge.v1 import decision_service_pb2 as pb


def _timestamp(seconds: float) -> Timestamp:
    whole = math.floor(seconds)
    return Timestamp(seconds=whole, nanos=min(int((seconds - whole) * 1e9), 999_999_999))


def user_state_message(
    user_id: str,
    values: list[float],
    profile: UserProfile,
    type_names: dict[int, str],
    half_life_seconds: float,
) -> pb.UserState:
    """``values``: the stored record as one list (Store.get_user_values)."""
    s = values
    totals = values[u.TOTALS : u.TOTALS + u.N_TYPES]
    last = values[u.TYPE_LAST : u.TYPE_LAST + u.N_TYPES]
    counts = values[u.COUNTS : u.COUNTS + u.N_TYPES]
    used = sorted((slot for slot, total in enumerate(totals) if total), key=lambda k: -last[k])
    n = s[u.S_AMOUNT_COUNT]
    amounts = None
    if n > 0:
        variance = s[u.S_AMOUNT_M2] / (n - 1) if n > 1 else 0.0
        amounts = pb.AmountStats(
            count=int(n), mean=s[u.S_AMOUNT_MEAN], stddev=math.sqrt(max(variance, 0.0)),
            min=s[u.S_AMOUNT_MIN], max=s[u.S_AMOUNT_MAX], last=s[u.S_AMOUNT_LAST],
        )
    return pb.UserState(
        user_id=user_id,
        first_seen=_timestamp(s[u.S_FIRST_SEEN]),
        last_seen=_timestamp(s[u.S_LAST_SEEN]),
        event_count=int(s[u.S_EVENT_COUNT]),
        event_types=[
            pb.EventTypeStats(
                type=type_names.get(slot, f"(slot {slot})"), count=int(totals[slot]),
                decayed_count=counts[slot], last_seen=_timestamp(last[slot]),
            )
            for slot in used
        ],
        amounts=amounts,
        local_hour_profile=values[u.HOURS : u.HOURS + u.N_HOURS],
        time_zone=profile.tz,
        consents={c: granted for c, (granted, _) in profile.consents.items()},
        half_life_seconds=half_life_seconds,
    )
