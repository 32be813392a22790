"""The context row Decide builds: contact pressure features, when a campaign asks, and
request strings hashed or by a known vocabulary."""

from __future__ import annotations

import math

import pytest

from nudge.server.decisions.campaign import CampaignError, parse_campaign, shipped_campaigns_dir
from nudge.server.decisions.features import FeaturePlan, context_layout, raw_features

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
