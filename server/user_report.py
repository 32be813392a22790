"""A user's stored state, rendered as the GetUser reply.

Built from one plain list of the record's values and one constructor call: GetUser is
measured against an empty Echo, and per-field protobuf calls and small NumPy operations
dominate its cost.
"""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from nudge.kernels import user_state as u
from nudge.server.store import UserView
from nudge.v1 import decision_service_pb2 as pb


def _timestamp(seconds: float) -> Timestamp:
    whole = math.floor(seconds)
    return Timestamp(seconds=whole, nanos=min(int((seconds - whole) * 1e9), 999_999_999))


def user_state_message(
    view: UserView, type_names: dict[int, str], half_life_seconds: float
) -> pb.UserState:
    s = view.scalars.tolist()
    totals = view.totals.tolist()
    last = view.type_last.tolist()
    counts = view.counts.tolist()
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
        user_id=view.user_id,
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
        local_hour_profile=view.hours.tolist(),
        time_zone=view.profile.tz,
        consents={c: granted for c, (granted, _) in view.profile.consents.items()},
        half_life_seconds=half_life_seconds,
    )
