"""Guardrails: what a campaign may not do to this user right now.

Each guardrail masks model components (a channel, a send-time slot, a message, an offer)
or suppresses the decision outright; the trace says which rule did what, so a decision
can be explained and audited: a stable code (``TRACE_*``) and a plain-language detail per
entry, and a last ``MASKED`` entry listing the masked components machine-readably (offline
evaluation rebuilds the allowed combinations from it). Each guardrail can be turned off in
the campaign file.

This runs inside every Decide, between gRPC calls that evict the caches, where each Python
or NumPy call costs several times its warm price. So everything that depends only on the
campaign (component ids, static quiet slots, trace texts) is derived once in a
:class:`GuardrailPlan`, the user's local clock is read once per request (:func:`local_now`),
and send-time slots are converted to epoch seconds once per (zone, local date).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import NamedTuple

import numpy as np

from nudge.server.decisions.campaign import Campaign
from nudge.server.inputs.events import time_zone

DAY = 86_400.0
WEEK = 7 * DAY
# In-app messages are shown inside the app the user opened: no marketing consent needed
# (no record is required), but a customer who explicitly revoked it is not messaged there.
CONSENT_EXEMPT = frozenset({"in_app"})
# Send-time conversions remembered per plan ((zone, local date, fold) keys); cleared when full.
SLOT_DAY_CACHE = 4096

SUPPRESS_HOLDOUT = "holdout"
SUPPRESS_CONSENT = "no_consent"
SUPPRESS_QUIET = "quiet_hours"
SUPPRESS_CAP = "frequency_cap"
SUPPRESS_NOTHING_BEST = "nothing_is_best"
SUPPRESS_PROPERTIES = "missing_properties"
SUPPRESS_WINDOW = "send_window"

# Trace codes (Reason.code of Decide's guardrail reasons): stable, for machines; the detail
# beside each is plain text for people and may change.
TRACE_HOLDOUT = "HOLDOUT"
TRACE_CONSENT = "NO_CONSENT"  # a channel without consent
TRACE_QUIET = "QUIET_HOURS"  # a send-time slot inside quiet hours
TRACE_WINDOW = "SEND_WINDOW"  # a send-time slot after the journey's window
TRACE_CAP = "FREQUENCY_CAP"  # a capped channel, or every channel (then suppressed)
TRACE_PROPERTIES = "MISSING_PROPERTY"  # a message whose template cannot be filled
TRACE_RISK = "RISK"  # a credit offer while recent activity looks anomalous
# The codes that mask single components (the dimension each one masks).
MASKING_CODES = {
    TRACE_CONSENT: "channel", TRACE_QUIET: "send_time", TRACE_WINDOW: "send_time",
    TRACE_CAP: "channel", TRACE_PROPERTIES: "message", TRACE_RISK: "offer",
}
# The last entry of a trace whose guardrails masked components and let the policy decide:
# its detail lists every masked component, machine-readable, as ``Campaign.component_names``
# spells them, space-separated ("channel=push send_time=now"). Offline evaluation rebuilds
# the allowed combinations from it (nudge.server.offline.evaluate), never from the texts.
TRACE_MASKED = "MASKED"


class Contact(NamedTuple):
    """One message to the user, planned or sent. A tuple in the stored row's order
    (``tables/contacts.py``): Decide reads dozens per user, and ``Contact._make(row)`` is
    several times cheaper than a dataclass's ``__init__``."""

    time: float
    channel: str
    campaign: str
    # The decision that made it: a contact seen both stored and pending counts once.
    decision_id: str = ""


@dataclass
class GuardrailResult:
    component_mask: np.ndarray
    # UTC epoch seconds of each send-time slot's next occurrence in the user's local time.
    send_at: list[float]
    trace: list[tuple[str, str]] = field(default_factory=list)
    suppressed: str = ""


class LocalNow(NamedTuple):
    """One instant on the user's wall clock, read once per request (zoneinfo is slow)."""

    time: float
    tz: str
    local: datetime
    # Hour of day in [0, 24), fractional (as ingest.local_hour computes it).
    hour: float
    # Minute of day with seconds as a fraction, without microseconds (quiet hours).
    minute: float


def local_now(now: float, tz: str) -> LocalNow:
    """The user's local clock at ``now`` (``tz`` an IANA name; raises if unknown)."""
    local = datetime.fromtimestamp(now, time_zone(tz))
    offset = 0.0
    if tz != "UTC":
        delta = local.utcoffset()
        offset = delta.total_seconds() if delta is not None else 0.0
    hour = ((now + offset) % 86_400.0) / 3_600.0
    minute = local.hour * 60 + local.minute + local.second / 60.0
    return LocalNow(now, tz, local, hour, minute)


def in_holdout(campaign: str, user_id: str, share: float) -> bool:
    """Stable per (campaign, user): the same users stay held out across restarts."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{campaign}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def slot_times(campaign: Campaign, now: float, tz: str) -> list[float]:
    """Next occurrence of each send-time slot in the user's local time (now for "now").

    The reference definition; Decide uses :meth:`GuardrailPlan.send_times`, which gives the
    same instants (DST gaps and folds included) with one conversion per local date."""
    zone = time_zone(tz)
    local_now = datetime.fromtimestamp(now, zone)
    out = []
    for slot in campaign.send_times:
        if slot.minute_of_day is None:
            out.append(now)
            continue
        hour, minute = divmod(slot.minute_of_day, 60)
        at = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= local_now:
            at = (local_now + timedelta(days=1)).replace(
                hour=hour, minute=minute, second=0, microsecond=0
            )
        out.append(at.timestamp())
    return out


class GuardrailPlan:
    """Everything :func:`apply_guardrails` needs from one campaign, derived once."""

    def __init__(self, campaign: Campaign) -> None:
        g = campaign.guardrails
        ids = campaign.dimension_ids
        self.campaign = campaign
        self.all_allowed = b"\x01" * campaign.n_components
        # No guardrail reads the user, the clock or the contacts (no holdout, consent, quiet
        # hours or caps): only missing properties, the risk flag and a journey's window can
        # mask, so a user with none of them gets every component allowed and an empty trace
        # (DecideBatch skips the call for such users).
        self.inert = g.holdout <= 0 and not g.consent and g.quiet_hours is None and g.caps is None
        self.holdout_trace = (
            TRACE_HOLDOUT, f"user is in the {g.holdout:.0%} holdout of {campaign.name}"
        )
        # A dimension's components are consecutive ids: whether any channel is still open
        # is one slice of the mask.
        channels = ids["channel"]
        assert channels == tuple(range(channels[0], channels[0] + len(channels)))
        self.channel_slice = slice(channels[0], channels[0] + len(channels))
        # (channel, component id, trace, consented without a record) of every channel.
        self.consent = [
            (channel, ids["channel"][i],
             (TRACE_CONSENT, f"{channel}: consent revoked") if channel in CONSENT_EXEMPT
             else (TRACE_CONSENT, f"{channel}: no consent on record"),
             channel in CONSENT_EXEMPT)
            for i, channel in enumerate(campaign.channels)
        ]
        self.channels = list(zip(campaign.channels, ids["channel"], strict=True))
        self.slot_minutes = tuple(s.minute_of_day for s in campaign.send_times)
        # (component id, minute of day or None for "now", quiet if fixed, trace).
        self.slots = [
            (
                ids["send_time"][i],
                s.minute_of_day,
                s.minute_of_day is not None and g.is_quiet(s.minute_of_day),
                (TRACE_QUIET, f"{s.name}: inside quiet hours"),
            )
            for i, s in enumerate(campaign.send_times)
        ]
        self.messages = [
            (ids["message"][i], (TRACE_PROPERTIES, f"{m.name}: template properties "
                                 f"{list(m.properties)} not all known"))
            for i, m in enumerate(campaign.messages)
        ]
        self.credit_offers = [
            (ids["offer"][i], (TRACE_RISK, f"{o.name}: no credit offer while recent activity "
                               "looks anomalous"))
            for i, o in enumerate(campaign.offers)
            if o.credit
        ]
        # (component id, machine name) of every component a guardrail can mask.
        names = campaign.component_names()
        self.maskable = [
            (i, names[i]) for dim in ("message", "channel", "send_time", "offer")
            for i in ids[dim]
        ]
        self._slot_days: dict[tuple[str, int, int], tuple[list[float], list[float]]] = {}

    def send_times(self, now: LocalNow) -> list[float]:
        """Exactly :func:`slot_times`: a slot later today (by the wall clock) is today's
        occurrence, else tomorrow's (whose wall-clock date arithmetic resets ``fold``)."""
        local = now.local
        second_of_day = local.hour * 3600 + local.minute * 60 + local.second
        key = (now.tz, local.toordinal(), local.fold)
        days = self._slot_days.get(key)
        if days is None:
            days = self._slot_days_of(key)
        today, tomorrow = days
        return [
            now.time if minute is None else today[i] if minute * 60 > second_of_day
            else tomorrow[i]
            for i, minute in enumerate(self.slot_minutes)
        ]

    def _slot_days_of(self, key: tuple[str, int, int]) -> tuple[list[float], list[float]]:
        """Epoch seconds of every fixed slot on a local date (fold as given) and on the next
        date (fold 0); NaN for "now" slots."""
        tz, ordinal, fold = key
        zone = time_zone(tz)

        def on(day: date, fold: int) -> list[float]:
            return [
                math.nan if m is None else datetime(
                    day.year, day.month, day.day, m // 60, m % 60, tzinfo=zone, fold=fold
                ).timestamp()
                for m in self.slot_minutes
            ]

        days = (on(date.fromordinal(ordinal), fold), on(date.fromordinal(ordinal + 1), 0))
        if len(self._slot_days) >= SLOT_DAY_CACHE:
            self._slot_days.clear()
        self._slot_days[key] = days
        return days


def channel_consented(consents: dict[str, tuple[bool, float]], channel: str) -> bool:
    """The consent rule on a stored profile's consents (channel -> (granted, time)): a
    grant on record, or, for an exempt channel (in-app), no revocation on record."""
    stored = consents.get(channel)
    return stored[0] if stored is not None else channel in CONSENT_EXEMPT


def apply_guardrails(
    plan: GuardrailPlan,
    user_id: str,
    now: LocalNow,
    consents: dict[str, bool],
    contacts: list[Contact],
    renderable: list[bool],
    credit_blocked: bool,
    send_until: float | None = None,
    send_at: list[float] | None = None,
) -> GuardrailResult:
    """The campaign's guardrails for this user at ``now``; ``send_at`` is
    ``plan.send_times(now)`` when the caller has it already (DecideBatch: one per zone for
    the whole batch)."""
    campaign = plan.campaign
    g = campaign.guardrails
    mask = bytearray(plan.all_allowed)
    result = GuardrailResult(np.frombuffer(mask, dtype=np.uint8),
                             plan.send_times(now) if send_at is None else send_at, [])
    trace = result.trace
    if in_holdout(campaign.name, user_id, g.holdout):
        result.suppressed = SUPPRESS_HOLDOUT
        trace.append(plan.holdout_trace)
        return result

    if g.consent:
        for channel, component, why, exempt in plan.consent:
            if not consents.get(channel, exempt):
                mask[component] = 0
                trace.append(why)
        if 1 not in mask[plan.channel_slice]:
            result.suppressed = SUPPRESS_CONSENT
            return result

    if g.quiet_hours is not None:
        all_quiet = True
        for component, minute, quiet, why in plan.slots:
            if quiet or (minute is None and g.is_quiet(now.minute)):
                mask[component] = 0
                trace.append(why)
            else:
                all_quiet = False
        if all_quiet:
            result.suppressed = SUPPRESS_QUIET
            return result

    if send_until is not None:
        # A journey's window: a slot whose next occurrence falls after it could never be
        # sent, so the policy must not choose it (its logged propensity would be wrong).
        any_open = False
        for (component, _, _, _), slot, at in zip(
                plan.slots, campaign.send_times, result.send_at, strict=True):
            if at > send_until:
                if mask[component]:
                    mask[component] = 0
                    trace.append((TRACE_WINDOW, f"{slot.name}: after the journey's window"))
            elif mask[component]:
                any_open = True
        if not any_open:
            result.suppressed = SUPPRESS_WINDOW
            return result

    if g.caps is not None:
        caps = g.caps
        t = now.time
        day: dict[str, int] = {}
        week: dict[str, int] = {}
        for c in contacts:
            age = t - c.time
            if age < DAY:
                day[c.channel] = day.get(c.channel, 0) + 1
            if age < WEEK:
                week[c.channel] = week.get(c.channel, 0) + 1
        n_day, n_week = sum(day.values()), sum(week.values())
        if (caps.all_channels_day is not None and n_day >= caps.all_channels_day) or (
            caps.all_channels_week is not None and n_week >= caps.all_channels_week
        ):
            result.suppressed = SUPPRESS_CAP
            trace.append((TRACE_CAP, f"{n_day} contacts today, {n_week} this week"))
            return result
        for channel, component in plan.channels:
            c_day, c_week = day.get(channel, 0), week.get(channel, 0)
            capped = (caps.per_channel_day is not None and c_day >= caps.per_channel_day) or (
                caps.per_channel_week is not None and c_week >= caps.per_channel_week
            )
            if capped and mask[component]:
                mask[component] = 0
                trace.append((TRACE_CAP, f"{channel}: {c_day} today, {c_week} this week"))
        if 1 not in mask[plan.channel_slice]:
            result.suppressed = SUPPRESS_CAP
            return result

    for ok, (component, why) in zip(renderable, plan.messages, strict=True):
        if not ok:
            mask[component] = 0
            trace.append(why)
    if not any(renderable):
        result.suppressed = SUPPRESS_PROPERTIES
        return result

    if credit_blocked:
        for component, why in plan.credit_offers:
            mask[component] = 0
            trace.append(why)
    if trace:
        trace.append((TRACE_MASKED, " ".join(
            name for component, name in plan.maskable if not mask[component])))
    return result
