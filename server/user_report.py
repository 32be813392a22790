"""A user's stored state, rendered as the GetUser reply."""

from __future__ import annotations

import math

import numpy as np

from nudge.kernels import user_state as u
from nudge.server.store import UserView
from nudge.v1 import decision_service_pb2 as pb


def _set_time(ts, seconds: float) -> None:
    # Direct field assignment: FromNanoseconds validates and costs more, per event type.
    whole = int(seconds // 1)
    ts.seconds = whole
    ts.nanos = min(int((seconds - whole) * 1e9), 999_999_999)


def user_state_message(
    view: UserView, type_names: dict[int, str], half_life_seconds: float
) -> pb.UserState:
    s = view.scalars
    msg = pb.UserState(
        user_id=view.user_id,
        event_count=int(s[u.S_EVENT_COUNT]),
        time_zone=view.profile.tz,
        half_life_seconds=half_life_seconds,
    )
    _set_time(msg.first_seen, float(s[u.S_FIRST_SEEN]))
    _set_time(msg.last_seen, float(s[u.S_LAST_SEEN]))
    used = np.flatnonzero(view.totals)
    for slot in used[np.argsort(-view.type_last[used], kind="stable")].tolist():
        stats = msg.event_types.add(
            type=type_names.get(slot, f"(slot {slot})"),
            count=int(view.totals[slot]),
            decayed_count=float(view.counts[slot]),
        )
        _set_time(stats.last_seen, float(view.type_last[slot]))
    n = s[u.S_AMOUNT_COUNT]
    if n > 0:
        variance = s[u.S_AMOUNT_M2] / (n - 1) if n > 1 else 0.0
        msg.amounts.CopyFrom(
            pb.AmountStats(
                count=int(n),
                mean=float(s[u.S_AMOUNT_MEAN]),
                stddev=math.sqrt(max(variance, 0.0)),
                min=float(s[u.S_AMOUNT_MIN]),
                max=float(s[u.S_AMOUNT_MAX]),
                last=float(s[u.S_AMOUNT_LAST]),
            )
        )
    msg.local_hour_profile.extend(view.hours.tolist())
    for channel, (granted, _) in sorted(view.profile.consents.items()):
        msg.consents[channel] = granted
    return msg
