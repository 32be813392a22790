"""Guardrails: what a campaign may not do to this user right now.

Each guardrail masks model components (a channel, a send-time slot, a message, an offer)
or suppresses the decision outright; the trace says which rule did what, so a decision
can be explained and audited. Each guardrail can be turned off in the campaign file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from nudge.server.campaign import Campaign
from nudge.server.events import time_zone

DAY = 86_400.0
WEEK = 7 * DAY
# In-app messages are shown inside the app the user opened: no marketing consent needed.
CONSENT_EXEMPT = frozenset({"in_app"})

SUPPRESS_HOLDOUT = "holdout"
SUPPRESS_CONSENT = "no_consent"
SUPPRESS_QUIET = "quiet_hours"
SUPPRESS_CAP = "frequency_cap"
SUPPRESS_NOTHING_BEST = "nothing_is_best"
SUPPRESS_PROPERTIES = "missing_properties"


@dataclass
class Contact:
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


def in_holdout(campaign: str, user_id: str, share: float) -> bool:
    """Stable per (campaign, user): the same users stay held out across restarts."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{campaign}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def slot_times(campaign: Campaign, now: float, tz: str) -> list[float]:
    """Next occurrence of each send-time slot in the user's local time (now for "now")."""
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


def local_minute(t: float, tz: str) -> float:
    local = datetime.fromtimestamp(t, time_zone(tz))
    return local.hour * 60 + local.minute + local.second / 60.0


def apply_guardrails(
    campaign: Campaign,
    user_id: str,
    now: float,
    tz: str,
    consents: dict[str, bool],
    contacts: list[Contact],
    renderable: list[bool],
    credit_blocked: bool,
) -> GuardrailResult:
    g = campaign.guardrails
    mask = np.ones(campaign.n_components, dtype=np.uint8)
    send_at = slot_times(campaign, now, tz)
    result = GuardrailResult(mask, send_at)
    trace = result.trace
    if in_holdout(campaign.name, user_id, g.holdout):
        result.suppressed = SUPPRESS_HOLDOUT
        trace.append(("HOLDOUT", f"user is in the {g.holdout:.0%} holdout of {campaign.name}"))
        return result

    channel_ids = campaign.component_ids("channel")
    slot_ids = campaign.component_ids("send_time")
    message_ids = campaign.component_ids("message")
    offer_ids = campaign.component_ids("offer")
    open_channels = set(campaign.channels)

    if g.consent:
        for i, channel in enumerate(campaign.channels):
            if channel not in CONSENT_EXEMPT and not consents.get(channel, False):
                mask[channel_ids[i]] = 0
                open_channels.discard(channel)
                trace.append(("NO_CONSENT", f"{channel}: no consent on record"))
        if not open_channels:
            result.suppressed = SUPPRESS_CONSENT
            return result

    if g.quiet_hours is not None:
        now_minute = local_minute(now, tz)
        quiet = [
            g.is_quiet(now_minute if slot.minute_of_day is None else slot.minute_of_day)
            for slot in campaign.send_times
        ]
        for i, is_quiet in enumerate(quiet):
            if is_quiet:
                mask[slot_ids[i]] = 0
                trace.append(("QUIET_HOURS", f"{campaign.send_times[i].name}: inside quiet hours"))
        if all(quiet):
            result.suppressed = SUPPRESS_QUIET
            return result

    if g.caps is not None:
        caps = g.caps
        day = [c for c in contacts if now - c.time < DAY]
        week = [c for c in contacts if now - c.time < WEEK]
        if (caps.all_channels_day is not None and len(day) >= caps.all_channels_day) or (
            caps.all_channels_week is not None and len(week) >= caps.all_channels_week
        ):
            result.suppressed = SUPPRESS_CAP
            trace.append(("FREQUENCY_CAP", f"{len(day)} contacts today, {len(week)} this week"))
            return result
        for i, channel in enumerate(campaign.channels):
            n_day = sum(c.channel == channel for c in day)
            n_week = sum(c.channel == channel for c in week)
            capped = (caps.per_channel_day is not None and n_day >= caps.per_channel_day) or (
                caps.per_channel_week is not None and n_week >= caps.per_channel_week
            )
            if capped and mask[channel_ids[i]]:
                mask[channel_ids[i]] = 0
                open_channels.discard(channel)
                trace.append(("FREQUENCY_CAP", f"{channel}: {n_day} today, {n_week} this week"))
        if not open_channels:
            result.suppressed = SUPPRESS_CAP
            return result

    for i, ok in enumerate(renderable):
        if not ok:
            mask[message_ids[i]] = 0
            trace.append(("MISSING_PROPERTY", f"{campaign.messages[i].name}: template properties "
                          f"{list(campaign.messages[i].properties)} not all known"))
    if not any(renderable):
        result.suppressed = SUPPRESS_PROPERTIES
        return result

    if credit_blocked:
        for i, offer in enumerate(campaign.offers):
            if offer.credit:
                mask[offer_ids[i]] = 0
                trace.append(("RISK", f"{offer.name}: no credit offer while recent activity "
                              "looks anomalous"))
    return result
