"""The policy's view of a user right now: raw features from the stored state and the
Decide request, laid out for kernels/context.py (which standardises them).

This runs inside every Decide, so the layout's positions are resolved once per campaign
(:class:`FeaturePlan`) and the row is filled by index, not through a dict of names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat

import numpy as np

from nudge.kernels import request_numbers
from nudge.kernels import user_context as uc
from nudge.kernels import user_state as u
from nudge.kernels.context import ContextLayout, ContextParams, ContextStats
from nudge.server.decisions.campaign import Campaign
from nudge.server.storage.tables.users import decode_record

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
# With ``[context] contact_pressure = true``: messages to the user from any campaign in the
# last 7 days (scheduled ones included), and hours since the last one sent.
CONTACT_FEATURES = ("contacts_7d", "contact_recency_hours")
CONTACT_WINDOW_SECONDS = 7 * 86_400.0
# (event type, hour) -> the user's events of that type before that hour (insights summary).
EarlyCount = Callable[[str, int], float]
_NO_BUCKETS = np.zeros(0, dtype=np.int64)
_NO_BUCKETS.flags.writeable = False
# user_context's empty inputs: writable, as the kernel's one signature takes them (it
# never writes them).
_NO_TIMES = np.zeros(0)
_NO_STRINGS = np.zeros(0, dtype=np.int64)
_NO_RECORD = np.zeros(0, dtype=np.uint8)
_NO_RECORD.flags.writeable = False
# Decide standardises with the default context parameters (as build_context_trusted).
_CONTEXT_PARAMS = ContextParams().as_array()


def context_layout(campaign: Campaign) -> ContextLayout:
    spec = campaign.context
    counts = tuple(f"count.{t}" for t in spec.event_types)
    numbers = tuple(f"request.{n}" for n in spec.numbers)
    contacts = CONTACT_FEATURES if spec.contact_pressure else ()
    reached = tuple(f.feature for f in spec.reached)
    return ContextLayout(
        numeric=(*BASE_FEATURES, *contacts, *counts, *numbers, *reached),
        strings=tuple((f"request.{name}", k if isinstance(k, int) else len(k) + 1)
                      for name, k in spec.strings),
        log1p=(*HEAVY_TAILED, *contacts, *counts),
        vocabularies=tuple((f"request.{name}", k) for name, k in spec.strings
                           if not isinstance(k, int)),
    )


class FeaturePlan:
    """Where each raw feature of one campaign goes in the layout's numeric row."""

    def __init__(self, campaign: Campaign, layout: ContextLayout) -> None:
        index = {name: i for i, name in enumerate(layout.numeric)}
        self.n_numeric = layout.n_numeric
        self.base = tuple(index[name] for name in BASE_FEATURES)
        # (contacts in 7 days, hours since the last contact) positions, when configured.
        self.contacts = (tuple(index[name] for name in CONTACT_FEATURES)
                         if campaign.context.contact_pressure else None)
        # (event type, position) of each decayed count feature.
        self.counts = tuple((t, index[f"count.{t}"]) for t in campaign.context.event_types)
        # (request number name, position).
        self.numbers = tuple((n, index[f"request.{n}"]) for n in campaign.context.numbers)
        # (event type, at least, within hours, position) of each "reached" insight flag.
        self.reached = tuple((f.event, f.at_least, 24 * f.within_days, index[f.feature])
                             for f in campaign.context.reached)
        # (request string name, layout name, buckets), in layout order.
        self.strings = tuple((name[len("request."):], name, k) for name, k in layout.strings)
        self.bucket = layout.bucket
        # For user_context: the request numbers' names in the kernel plan's order, the
        # layout's arrays, and the plan itself per state of the type registry (a count
        # feature's slot is the registry's; a reset replaces the dict, new types grow it).
        self.number_names = tuple(n for n, _ in self.numbers)
        # The same names as kernels/request_numbers.py reads them from a request's bytes.
        self.number_table = request_numbers.name_table(self.number_names)
        self.n_features = layout.n_features
        self.offsets, self.log1p, _ = layout.kernel_arrays
        self._kernel_plan: tuple[tuple[int, int], np.ndarray] | None = None

    def kernel_plan(self, type_slots: Mapping[str, int]) -> np.ndarray:
        """The positions as kernels/user_context.py's ``plan`` (read-only, cached)."""
        key = (id(type_slots), len(type_slots))
        cached = self._kernel_plan
        if cached is not None and cached[0] == key:
            return cached[1]
        contacts = self.contacts if self.contacts is not None else (-1, -1)
        counts = [v for t, i in self.counts
                  for v in (i, type_slots.get(t, -1))]
        # The kernel copies "numbers" into their positions: the request numbers, then the
        # "reached" flags (settled in Python before the call, see ``user_context``).
        plan = np.array([*self.base, *contacts, len(self.counts), *counts,
                         len(self.numbers) + len(self.reached),
                         *(i for _, i in self.numbers), *(r[3] for r in self.reached)],
                        dtype=np.int64)
        plan.flags.writeable = False
        self._kernel_plan = (key, plan)
        return plan


def user_context(
    plan: FeaturePlan,
    stats: ContextStats,
    record: bytes | None,
    type_slots: Mapping[str, int],
    now: float,
    local_hour: float,
    numbers: Mapping[str, float],
    strings: Mapping[str, str],
    half_life_seconds: float,
    contact_times: Sequence[float] = (),
    early_count: EarlyCount | None = None,
    number_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, x)``: :func:`raw_features` and ``context.build_context`` of them in one
    kernel call, from the record's stored bytes (None: no event stored). Raises
    ValueError on an infinite value, as :func:`raw_features` does. A campaign with
    "reached" flags settles them first (:func:`reached_flag`, from the decoded record and
    ``early_count``) and hands them to the kernel after the request numbers.
    ``number_values``, when given, are ``numbers`` already in ``plan.number_names``' order
    (NaN where absent: kernels/request_numbers.py read them from the request's bytes)."""
    nan = math.nan
    raw = np.empty(plan.n_numeric)
    x = np.empty(plan.n_features)
    request_numbers = (number_values if number_values is not None else np.fromiter(
        map(numbers.get, plan.number_names, repeat(nan)), np.float64,
        len(plan.number_names)))
    if plan.reached:
        if record is None:
            flags = [0.0] * len(plan.reached)  # no events yet: nothing reached
        else:
            floats = decode_record(record)
            flags = [reached_flag(floats, type_slots.get(t), t, k, hours, early_count)
                     for t, k, hours, _ in plan.reached]
        request_numbers = np.concatenate((request_numbers, np.array(flags)))
    ok = uc.user_context_trusted(
        _NO_RECORD if record is None else np.frombuffer(record, np.uint8),
        plan.kernel_plan(type_slots),
        np.array((now, local_hour, half_life_seconds)),
        request_numbers,
        np.array(contact_times, dtype=np.float64) if contact_times else _NO_TIMES,
        _NO_STRINGS if not plan.strings else np.array(
            [plan.bucket(full, strings[name], k) if name in strings else -1
             for name, full, k in plan.strings], dtype=np.int64),
        plan.offsets, plan.log1p, stats.mean, stats.var, stats.count, _CONTEXT_PARAMS,
        raw, x,
    )
    if not ok:
        raise ValueError("raw: must not contain inf (use NaN for a missing value)")
    return raw, x


def user_contexts(
    plan: FeaturePlan,
    stats: ContextStats,
    records: Sequence[bytes | None],
    type_slots: Mapping[str, int],
    now: float,
    local_hours: Sequence[float],
    numbers: Mapping[str, float],
    strings: Mapping[str, str],
    half_life_seconds: float,
    contact_times: Sequence[Sequence[float]] | None = None,
    early_counts: Sequence[EarlyCount | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw[n, m], x[n, d])``: :func:`user_context` for ``n`` users decided at the same
    ``now`` with the same request (DecideBatch), row ``i`` from ``records[i]``,
    ``local_hours[i]``, ``contact_times[i]`` and ``early_counts[i]``, in one kernel call over
    the chunk; each row bit for bit the single call's. Raises ValueError as it does."""
    nan = math.nan
    n = len(records)
    shared = np.fromiter(map(numbers.get, plan.number_names, repeat(nan)), np.float64,
                         len(plan.number_names))
    if plan.reached:
        rows = np.empty((n, len(shared) + len(plan.reached)))
        rows[:, :len(shared)] = shared
        for i, record in enumerate(records):
            if record is None:
                rows[i, len(shared):] = 0.0  # no events yet: nothing reached
                continue
            floats = decode_record(record)
            counts = early_counts[i] if early_counts is not None else None
            rows[i, len(shared):] = [reached_flag(floats, type_slots.get(t), t, k, hours, counts)
                                     for t, k, hours, _ in plan.reached]
    else:
        rows = np.empty((n, len(shared)))
        rows[:] = shared
    at = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([0 if r is None else len(r) for r in records], out=at[1:])
    flat = np.frombuffer(b"".join(r for r in records if r is not None), np.uint8)
    if contact_times is not None and plan.contacts is not None:
        contact_at = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(t) for t in contact_times], out=contact_at[1:])
        times = np.array([t for ts in contact_times for t in ts], dtype=np.float64)
    else:
        contact_at, times = np.zeros(n + 1, dtype=np.int64), _NO_TIMES
    buckets = np.empty((n, len(plan.strings)), dtype=np.int64)
    if plan.strings:
        buckets[:] = [plan.bucket(full, strings[name], k) if name in strings else -1
                      for name, full, k in plan.strings]
    clocks = np.empty((n, 3))
    clocks[:, 0] = now
    clocks[:, 1] = local_hours
    clocks[:, 2] = half_life_seconds
    raw = np.empty((n, plan.n_numeric))
    x = np.empty((n, plan.n_features))
    ok = np.empty(n, dtype=np.uint8)
    uc.user_contexts_trusted(
        _readonly(flat), _readonly(at), plan.kernel_plan(type_slots), clocks, rows, times,
        _readonly(contact_at), buckets, plan.offsets, plan.log1p, stats.mean, stats.var,
        stats.count, _CONTEXT_PARAMS, raw, x, ok)
    if not ok.all():
        raise ValueError("raw: must not contain inf (use NaN for a missing value)")
    return raw, x


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def raw_features(
    plan: FeaturePlan,
    record: Sequence[float] | None,
    type_slots: Mapping[str, int],
    now: float,
    local_hour: float,
    numbers: Mapping[str, float],
    strings: Mapping[str, str],
    half_life_seconds: float,
    contact_times: Sequence[float] = (),
    early_count: EarlyCount | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(numeric row with NaN for missing, string buckets with -1 for missing).

    ``record`` is the user's stored record (kernels/user_state.py layout; any sequence of
    floats), None for a user with no events. ``contact_times`` are the send times of the
    user's recent messages from any campaign. Raises ValueError on an infinite value, as
    the context builder's public entry would. ``early_count(event type, hour)`` counts
    the user's events of a type before that hour from the insights summary: asked only for
    a "reached" flag the record cannot settle (see ``reached_flag``)."""
    nan = math.nan
    values = [nan] * plan.n_numeric
    (i_events, i_recency, i_tenure, i_sin, i_cos, i_amount_mean, i_amount_last) = plan.base
    values[i_sin] = math.sin(2 * math.pi * local_hour / 24.0)
    values[i_cos] = math.cos(2 * math.pi * local_hour / 24.0)
    if plan.contacts is not None:
        i_contacts, i_contact_recency = plan.contacts
        values[i_contacts] = float(sum(1 for t in contact_times
                                       if now - t < CONTACT_WINDOW_SECONDS))
        past = [t for t in contact_times if t <= now]
        if past:
            values[i_contact_recency] = (now - max(past)) / 3600.0
    if record is not None:
        values[i_events] = float(record[u.S_EVENT_COUNT])
        values[i_recency] = max(0.0, (now - float(record[u.S_LAST_SEEN])) / 3600.0)
        values[i_tenure] = max(0.0, (now - float(record[u.S_FIRST_SEEN])) / 86400.0)
        if record[u.S_AMOUNT_COUNT] > 0:
            values[i_amount_mean] = float(record[u.S_AMOUNT_MEAN])
            values[i_amount_last] = float(record[u.S_AMOUNT_LAST])
        # Stored counts are as of the user's latest event; decay them to now.
        decay = 2.0 ** (-max(0.0, now - float(record[u.S_REF_TIME])) / half_life_seconds)
        for t, i in plan.counts:
            slot = type_slots.get(t)
            values[i] = 0.0 if slot is None else float(record[u.COUNTS + slot]) * decay
        for t, k, hours, i in plan.reached:
            values[i] = reached_flag(record, type_slots.get(t), t, k, hours, early_count)
    else:
        for _, _, _, i in plan.reached:
            values[i] = 0.0  # no events yet: nothing reached
    for name, i in plan.numbers:
        if name in numbers:
            values[i] = float(numbers[name])
    if math.inf in values or -math.inf in values:
        raise ValueError("raw: must not contain inf (use NaN for a missing value)")
    raw = np.array(values)
    if not plan.strings:
        return raw, _NO_BUCKETS
    buckets = np.array(
        [plan.bucket(full, strings[name], k) if name in strings else -1
         for name, full, k in plan.strings],
        dtype=np.int64,
    )
    return raw, buckets


def reached_flag(
    record: Sequence[float] | np.ndarray, slot: int | None, event_type: str, at_least: int,
    hours: int, early_count: EarlyCount | None,
) -> float:
    """1.0 when the user did ``event_type`` at least ``at_least`` times in the ``hours``
    after the hour of their first event, else 0.0 (NaN: unknown without the summary).

    Settled from the record Decide already read in the usual cases — fewer events of the
    type in all than the threshold (not reached), or the last one inside the window (all
    of them were: the total decides) — and only otherwise (a long-time user who kept doing
    it) by one read of the insights summary, which knows when each event happened."""
    if slot is None:
        return 0.0
    total = float(record[u.TOTALS + slot])
    if total < at_least:
        return 0.0
    until_hour = int(float(record[u.S_FIRST_SEEN]) // 3600.0) + hours
    if float(record[u.TYPE_LAST + slot]) < until_hour * 3600.0:
        return 1.0
    if early_count is None:
        return math.nan
    return 1.0 if early_count(event_type, until_hour) >= at_least else 0.0
