"""The context row Decide builds: contact pressure features, when a campaign asks, and
request strings hashed or by a known vocabulary."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from nudge.kernels import context as ctx
from nudge.kernels import user_state
from nudge.server.decisions.campaign import CampaignError, parse_campaign, shipped_campaigns_dir
from nudge.server.decisions.features import (
    FeaturePlan,
    context_layout,
    raw_features,
    user_context,
    user_contexts,
)
from nudge.server.storage.tables.users import decode_record, encode_record

NOW = 1_790_000_000.0
HOUR = 3600.0
SHIPPED = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()


def _campaign(pressure: bool | str):
    text = SHIPPED
    value = pressure if isinstance(pressure, str) else str(pressure).lower()
    text = text.replace("contact_pressure = false", f"contact_pressure = {value}")
    return parse_campaign(text, "c.toml")


def _row(contact_times: list[float], pressure: bool = True) -> dict[str, float]:
    campaign = _campaign(pressure)
    layout = context_layout(campaign)
    plan = FeaturePlan(campaign, layout)
    raw, _ = raw_features(plan, None, {}, NOW, 10.0, {}, {}, 7 * 86_400.0, contact_times)
    return dict(zip(layout.numeric, raw.tolist(), strict=True))


def test_contact_pressure_counts_the_last_seven_days_and_scheduled_sends() -> None:
    row = _row([NOW - 8 * 24 * HOUR, NOW - 30 * HOUR, NOW - 5 * HOUR, NOW + 10 * HOUR])
    assert row["contacts_7d"] == 3.0  # eight days ago is out; the scheduled one counts
    assert row["contact_recency_hours"] == 5.0  # the latest contact already sent


def test_no_contacts_is_zero_pressure_and_unknown_recency() -> None:
    row = _row([])
    assert row["contacts_7d"] == 0.0 and math.isnan(row["contact_recency_hours"])
    only_scheduled = _row([NOW + HOUR])
    assert only_scheduled["contacts_7d"] == 1.0
    assert math.isnan(only_scheduled["contact_recency_hours"])


def test_off_by_default_and_validated() -> None:
    assert "contacts_7d" not in _row([NOW - HOUR], pressure=False)
    with pytest.raises(CampaignError, match=r"context\.contact_pressure: must be true or false"):
        _campaign('"yes"')


def _rich_campaign(contact_pressure: str):  # type: ignore[no-untyped-def]
    """The shipped campaign with request numbers, strings and the given contact-pressure
    settings: (campaign, its context layout, its feature plan, its event types)."""
    text = (SHIPPED.replace("contact_pressure = false", contact_pressure)
            .replace("numbers = []", 'numbers = ["balance", "score", "age"]')
            .replace("strings = {}", 'strings = { segment = ["borrower", "saver"], device = 4 }'))
    campaign = parse_campaign(text, "c.toml")
    layout = context_layout(campaign)
    return campaign, layout, FeaturePlan(campaign, layout), list(campaign.context.event_types)


def _with_strings(strings: str):
    return parse_campaign(SHIPPED.replace("strings = {}", f"strings = {strings}"), "c.toml")


def test_a_known_vocabulary_gives_each_value_its_own_feature() -> None:
    campaign = _with_strings('{ segment = ["borrower", "saver", "gig"], device = 4 }')
    layout = context_layout(campaign)
    plan = FeaturePlan(campaign, layout)
    names = layout.feature_names()
    assert names[-8:-4] == ["request.segment=borrower", "request.segment=saver",
                            "request.segment=gig", "request.segment=(other)"]
    assert names[-1] == "request.device#3"

    def buckets(strings: dict[str, str]) -> list[int]:
        return raw_features(plan, None, {}, NOW, 10.0, {}, strings, 86_400.0)[1].tolist()

    assert buckets({"segment": "gig"})[0] == 2
    assert buckets({"segment": "student"})[0] == 3  # not listed: "(other)"
    assert buckets({})[0] == -1  # absent: no feature set
    assert buckets({"segment": "saver", "device": "ios"}) == [
        1, layout.bucket("request.device", "ios", 4)]


@pytest.mark.parametrize(("strings", "message"), [
    ("{ segment = [] }", "must list at least one non-empty string value"),
    ('{ segment = ["a", ""] }', "must list at least one non-empty string value"),
    ('{ segment = ["a", "a"] }', "must not list a value twice"),
    ('{ segment = "a" }', "must be a whole number"),
    ("[1]", "must be a table of name = buckets or name = \\[known values\\]"),
])
def test_string_features_are_validated(strings: str, message: str) -> None:
    with pytest.raises(CampaignError, match=rf"context\.strings.*{message}"):
        _with_strings(strings)


def _random_record(rng: np.random.Generator) -> np.ndarray:
    """A stored state record: sparse (a few slots set) or dense, times near NOW."""
    record = np.zeros(user_state.RECORD_LEN)
    for slot in rng.choice(user_state.RECORD_LEN, size=int(rng.integers(0, 40)), replace=False):
        record[slot] = rng.normal() * 10.0
    record[user_state.S_EVENT_COUNT] = rng.integers(1, 500)
    record[user_state.S_FIRST_SEEN] = NOW - rng.random() * 400 * 86_400.0
    record[user_state.S_LAST_SEEN] = NOW - rng.random() * 30 * 86_400.0 + 3_600.0
    record[user_state.S_REF_TIME] = record[user_state.S_LAST_SEEN]
    record[user_state.S_AMOUNT_COUNT] = rng.choice([0.0, 3.0])
    if rng.random() < 0.3:
        record[:] = rng.normal(size=user_state.RECORD_LEN)  # dense on disk
    return record


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_user_context_kernel_matches_raw_features_and_build_context(seed: int) -> None:
    """The one-call kernel Decide uses against the Python reference (raw_features, then
    context.build_context), on fresh random users, requests and model statistics."""
    rng = np.random.default_rng(seed)
    campaign, layout, plan, names = _rich_campaign("contact_pressure = true")
    for trial in range(60):
        # Some types registered, some not (a count with no slot is 0).
        type_slots = {t: int(s) for t, s in zip(names, rng.permutation(64), strict=False)
                      if rng.random() < 0.7}
        stats = ctx.update_stats(layout, ctx.initial_stats(layout),
                                 rng.normal(size=(int(rng.integers(0, 5)),
                                                  layout.n_numeric)) * 5.0)
        record = _random_record(rng) if trial % 5 else None
        stored = None if record is None else encode_record(record)
        numbers = {n: float(rng.normal() * 100.0) for n in campaign.context.numbers
                   if rng.random() < 0.7}
        numbers["not_a_feature"] = 1.0
        strings = {"segment": str(rng.choice(["borrower", "gig"]))} if trial % 2 else {}
        times = list(NOW + rng.normal(size=int(rng.integers(0, 4))) * 5 * 86_400.0)
        hour = float(rng.random() * 24.0)
        want_raw, buckets = raw_features(
            plan, None if record is None else decode_record(stored), type_slots, NOW, hour,
            numbers, strings, 86_400.0, times)
        want_x = ctx.build_context(layout, stats, want_raw, buckets)
        raw, x = user_context(plan, stats, stored, type_slots, NOW, hour, numbers, strings,
                              86_400.0, times)
        np.testing.assert_array_equal(raw, want_raw)
        np.testing.assert_allclose(x, want_x, rtol=1e-12, atol=1e-12)


def _infinite_record() -> tuple[ctx.ContextLayout, FeaturePlan, bytes]:
    """A plain campaign's layout and plan, and a stored record holding an infinite count."""
    campaign = _campaign(False)
    layout = context_layout(campaign)
    record = np.zeros(user_state.RECORD_LEN)
    record[user_state.S_EVENT_COUNT] = math.inf
    return layout, FeaturePlan(campaign, layout), encode_record(record)


def test_user_context_refuses_an_infinite_value_as_raw_features_does() -> None:
    layout, plan, stored = _infinite_record()
    with pytest.raises(ValueError, match="must not contain inf"):
        raw_features(plan, decode_record(stored), {}, NOW, 1.0, {}, {}, 86_400.0)
    with pytest.raises(ValueError, match="must not contain inf"):
        user_context(plan, ctx.initial_stats(layout), stored, {}, NOW, 1.0, {}, {}, 86_400.0)


def _early_count(count: float) -> Callable[[str, int], float]:
    """A user's insights-summary count (the same for every type and hour)."""
    return lambda _type, _hour: count


@pytest.mark.parametrize("seed", [4, 5])
def test_user_contexts_for_a_chunk_are_each_users_single_call(seed: int) -> None:
    """DecideBatch's one call over a chunk against the single-user call per user, bit for
    bit: records sparse, dense and absent, contact times per user, "reached" flags (settled
    per user from the record, or by the user's own summary counts), shared request numbers
    and strings."""
    rng = np.random.default_rng(seed)
    reached = ('contact_pressure = true\nreached = [{ event = "app_opened", at_least = 2, '
               'within_days = 7 }, { event = "pix_sent", at_least = 1, within_days = 30 }]')
    campaign, layout, plan, names = _rich_campaign(reached)
    for _ in range(10):
        type_slots = {t: int(s) for t, s in zip(names, rng.permutation(64), strict=False)
                      if rng.random() < 0.7}
        stats = ctx.update_stats(layout, ctx.initial_stats(layout),
                                 rng.normal(size=(3, layout.n_numeric)) * 5.0)
        n = int(rng.integers(1, 40))
        stored = [None if rng.random() < 0.3 else encode_record(_random_record(rng))
                  for _ in range(n)]
        numbers = {k: float(rng.normal() * 100.0) for k in campaign.context.numbers
                   if rng.random() < 0.7}
        strings = {"segment": "saver", "device": "ios"} if rng.random() < 0.5 else {}
        hours = (rng.random(n) * 24.0).tolist()
        times = [list(NOW + rng.normal(size=int(rng.integers(0, 4))) * 5 * 86_400.0)
                 for _ in range(n)]
        counts = [None if rng.random() < 0.5 else _early_count(float(rng.integers(0, 4)))
                  for _ in range(n)]
        raw, x = user_contexts(plan, stats, stored, type_slots, NOW, hours, numbers, strings,
                               86_400.0, times, counts)
        for i in range(n):
            want_raw, want_x = user_context(plan, stats, stored[i], type_slots, NOW, hours[i],
                                            numbers, strings, 86_400.0, times[i], counts[i])
            assert raw[i].tobytes() == want_raw.tobytes()
            assert x[i].tobytes() == want_x.tobytes()


def test_user_contexts_refuse_an_infinite_value_as_the_single_call_does() -> None:
    layout, plan, stored = _infinite_record()
    with pytest.raises(ValueError, match="must not contain inf"):
        user_contexts(plan, ctx.initial_stats(layout), [None, stored], {},
                      NOW, [1.0, 2.0], {}, {}, 86_400.0)
