"""The policy's view of a user right now: raw features from the stored state and the
Decide request, laid out for kernels/context.py (which standardises them)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nudge.kernels import user_state as u
from nudge.kernels.context import ContextLayout
from nudge.server.campaign import Campaign
from nudge.server.store import UserView

BASE_FEATURES = (
    "events_total",
    "recency_hours",
    "tenure_days",
    "local_hour_sin",
    "local_hour_cos",
    "amount_mean",
    "amount_last",
)
HEAVY_TAILED = ("events_total", "recency_hours", "tenure_days", "amount_mean", "amount_last")


def context_layout(campaign: Campaign) -> ContextLayout:
    spec = campaign.context
    counts = tuple(f"count.{t}" for t in spec.event_types)
    numbers = tuple(f"request.{n}" for n in spec.numbers)
    return ContextLayout(
        numeric=(*BASE_FEATURES, *counts, *numbers),
        strings=tuple((f"request.{name}", k) for name, k in spec.strings),
        log1p=(*HEAVY_TAILED, *counts),
    )


def raw_features(
    campaign: Campaign,
    layout: ContextLayout,
    view: UserView | None,
    type_slots: Mapping[str, int],
    now: float,
    local_hour: float,
    numbers: Mapping[str, float],
    strings: Mapping[str, str],
    half_life_seconds: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(numeric row with NaN for missing, string buckets with -1 for missing)."""
    values: dict[str, float] = {
        "local_hour_sin": math.sin(2 * math.pi * local_hour / 24.0),
        "local_hour_cos": math.cos(2 * math.pi * local_hour / 24.0),
    }
    if view is not None:
        s = view.scalars
        values["events_total"] = float(s[u.S_EVENT_COUNT])
        values["recency_hours"] = max(0.0, (now - float(s[u.S_LAST_SEEN])) / 3600.0)
        values["tenure_days"] = max(0.0, (now - float(s[u.S_FIRST_SEEN])) / 86400.0)
        if s[u.S_AMOUNT_COUNT] > 0:
            values["amount_mean"] = float(s[u.S_AMOUNT_MEAN])
            values["amount_last"] = float(s[u.S_AMOUNT_LAST])
        # Stored counts are as of the user's latest event; decay them to now.
        decay = 2.0 ** (-max(0.0, now - float(s[u.S_REF_TIME])) / half_life_seconds)
        for t in campaign.context.event_types:
            slot = type_slots.get(t)
            values[f"count.{t}"] = 0.0 if slot is None else float(view.counts[slot]) * decay
    for name in campaign.context.numbers:
        if name in numbers:
            values[f"request.{name}"] = float(numbers[name])
    raw = layout.numeric_vector(values)
    request_strings = {f"request.{k}": v for k, v in strings.items()}
    return raw, layout.string_buckets(request_strings)
