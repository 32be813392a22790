"""Campaign files: the shipped default loads; every rule's error names file, key, rule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nudge.server.decisions.campaign import (
    DIMENSIONS,
    CampaignError,
    Frequency,
    load_campaigns,
    parse_campaign,
    shipped_campaigns_dir,
)
from nudge.server.decisions.journeys import campaign_triggers

DEFAULT = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()


def test_shipped_default_loads() -> None:
    campaigns = load_campaigns()
    c = campaigns["loan_abandonment"]
    assert c.channels == ("push", "whatsapp", "sms", "email", "in_app")
    text = c.messages[0].render({"currency": "USD", "amount": 5000.0})
    assert text == "Your USD 5,000 loan is ready. Just one document left."
    assert c.guardrails.quiet_hours == (21 * 60, 8 * 60)
    assert c.goal.events == ("loan_completed",) and c.goal.window_seconds == 72 * 3600


def test_exclusions_remove_exactly_the_matching_combinations() -> None:
    c = load_campaigns()["loan_abandonment"]
    names = {d: c.dimension_names(d) for d in DIMENSIONS}

    def excluded(combo: tuple[int, ...]) -> bool:
        m, ch, st = (names[d][combo[i]] for i, d in enumerate(DIMENSIONS[:3]))
        return (ch == "sms" and m == "rate_locked") or (ch == "in_app" and st == "morning")

    everything = list(itertools.product(*(range(len(names[d])) for d in DIMENSIONS)))
    mask = c.space.combo_mask
    assert mask.shape[0] == len(everything) + 1 and mask[c.nothing_combo] == 1
    for index, combo in enumerate(everything):
        assert c.combo_values(index) == combo
        assert bool(mask[index]) == (not excluded(combo))
    assert c.combo_values(c.nothing_combo) is None


def test_component_ids_are_named_in_the_policy_layout() -> None:
    c = load_campaigns()["loan_abandonment"]
    names = c.component_names()
    assert len(names) == c.n_components and names[-1] == "nothing"
    for index in range(0, c.space.n_combos - 1, 7):
        m, ch, st, _, off = c.combo_values(index)
        parts = [names[i] for i in c.space.combo_components[index]]
        assert parts[0] == f"message={c.messages[m].name}"
        assert parts[1] == f"channel={c.channels[ch]}"
        assert parts[5] == f"channel×send_time={c.channels[ch]}×{c.send_times[st].name}"
        assert parts[6] == f"message×offer={c.messages[m].name}×{c.offers[off].name}"
    push = c.component_ids("channel")[c.channels.index("push")]
    assert names[push] == "channel=push"


def test_missing_template_property_is_a_clear_error() -> None:
    c = load_campaigns()["loan_abandonment"]
    with pytest.raises(KeyError, match="amount"):
        c.messages[0].render({"currency": "USD"})


def test_guardrails_can_be_turned_off() -> None:
    quiet = 'quiet_hours = { start = "21:00", end = "08:00" }'
    text = DEFAULT.replace(quiet, "quiet_hours = false")
    text = text.replace("consent = true", "consent = false")
    text = text.replace("[guardrails.caps]\nper_channel_day = 1\nper_channel_week = 3\n"
                        "all_channels_day = 2\nall_channels_week = 5\n", "")
    c = parse_campaign(text.replace("holdout = 0.05", "holdout = 0.0\ncaps = false"), "x.toml")
    assert c.guardrails.quiet_hours is None and c.guardrails.caps is None
    assert not c.guardrails.consent and c.guardrails.holdout == 0.0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "loan_abandonment"', 'name = "Loan"', "campaign.name: 'Loan' must match"),
        ('values = ["push",', 'values = ["pigeon",', "channels.values: 'pigeon' is not one of"),
        ('morning = "09:00"', 'morning = "9am"',
         'send_times.morning: must be a local time "HH:MM"'),
        ("once = { count = 1 }", "once = { count = 0 }", "frequencies.once.count: must be a whole"),
        ("twice = { count = 2, gap_hours = 24 }", "twice = { count = 2 }",
         "frequencies.twice.gap_hours: must be > 0"),
        ("fee_waiver = { credit = true }", "fee_waiver = { credit = 1 }",
         "offers.fee_waiver.credit: must be true or false"),
        ('channel = "sms"\nmessage = "rate_locked"', 'channel = "sms"\nmessage = "nope"',
         "exclude[0].message: 'nope' is not one of"),
        ('events = ["loan_completed"]', "events = []", "goal.events: must be a non-empty list"),
        ("window_hours = 72", "window_hours = 0", "goal.window_hours: must be in"),
        ("contact_cost = 0.02", "contact_cost = -0.1", "goal.contact_cost: must be in"),
        ("holdout = 0.05", "holdout = 0.9", "guardrails.holdout: must be in [0, 0.5]"),
        ('start = "21:00", end = "08:00"', 'start = "21:00", end = "21:00"',
         "guardrails.quiet_hours: start and end must differ"),
        ("per_channel_day = 1", "per_channel_day = -1", "guardrails.caps.per_channel_day"),
        ('algorithm = "squarecb"', 'algorithm = "greedy"', "exploration.algorithm: must be one of"),
        ('algorithm = "squarecb"', 'learned_prior = "all"',
         "exploration.learned_prior: must be one of"),
        ('algorithm = "squarecb"', 'credit = "joint"', "exploration.credit: must be one of"),
        ('algorithm = "squarecb"', 'algorithm = "squarecb"\noptimism = -0.5',
         "exploration.optimism: must be in [0, 1000]"),
        ("[goal]", "[gaol]\nx = 1\n[goal]", "gaol: unknown key"),
        ("one_step = \"You're", "one_step = \"{amount.real} You're",
         "messages.one_step: placeholder {amount.real} must be a plain property name"),
    ],
)
def test_invalid_campaigns_name_file_key_and_rule(old: str, new: str, message: str) -> None:
    assert old in DEFAULT
    with pytest.raises(CampaignError) as err:
        parse_campaign(DEFAULT.replace(old, new, 1), "bad.toml")
    assert str(err.value).startswith("bad.toml: ")
    assert message in str(err.value)


def test_excluding_everything_is_an_error() -> None:
    text = DEFAULT + '\n[[exclude]]\noffer = "none"\n[[exclude]]\noffer = "rate_discount"\n' \
        '[[exclude]]\noffer = "fee_waiver"\n'
    with pytest.raises(CampaignError, match="rules out every combination"):
        parse_campaign(text, "all.toml")


def test_folder_with_duplicate_names_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(DEFAULT)
    (tmp_path / "b.toml").write_text(DEFAULT)
    with pytest.raises(CampaignError, match="already defined"):
        load_campaigns(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CampaignError, match="no campaign files"):
        load_campaigns(empty)
    with pytest.raises(CampaignError, match="does not exist"):
        load_campaigns(tmp_path / "missing")


def test_a_frequency_sends_the_messages_due_by_the_end_of_its_window() -> None:
    twice = Frequency("twice", 2, 24.0)
    assert twice.send_times(100.0, 100.0 + 24 * 3600) == [100.0, 100.0 + 24 * 3600]
    assert twice.send_times(100.0, 100.0 + 24 * 3600 - 1) == [100.0]
    assert twice.send_times(100.0, 99.0) == []


def test_triggers_come_from_the_same_read_as_their_campaign(tmp_path: Path) -> None:
    """A campaign carries its [[triggers]]: journeys take them from it and never read the
    file again, so an edit after loading cannot pair it with another version's triggers."""
    path = tmp_path / "loan.toml"
    path.write_text(DEFAULT)
    campaigns = load_campaigns(tmp_path)
    triggers = campaigns["loan_abandonment"].triggers
    assert triggers and all(t.campaign == "loan_abandonment" for t in triggers)
    assert [t.index for t in triggers] == list(range(len(triggers)))
    path.unlink()
    assert campaign_triggers(campaigns) == list(triggers)


REACHED = ('contact_pressure = false\n'
           'reached = [{ event = "pix_sent", at_least = 3, within_days = 7 }]')


def test_reached_flags_parse_into_features_and_named_types() -> None:
    c = parse_campaign(DEFAULT.replace("contact_pressure = false", REACHED), "c.toml")
    (flag,) = c.context.reached
    assert (flag.event, flag.at_least, flag.within_days) == ("pix_sent", 3, 7)
    assert flag.feature == "reached.pix_sent.3x7d"
    assert "pix_sent" in c.event_types  # it keeps a slot in the type registry
    assert parse_campaign(DEFAULT, "c.toml").context.reached == ()


@pytest.mark.parametrize(
    ("reached", "message"),
    [
        ('"pix_sent"', "context.reached: must be a list of at most 16 tables"),
        ('["pix_sent"]', "context.reached[0]: must be a table"),
        ('[{ event = "pix_sent", at_least = 3 }]', "context.reached[0].within_days: is required"),
        ('[{ event = "Pix Sent", at_least = 3, within_days = 7 }]',
         "context.reached[0].event: must be an event type, got 'Pix Sent'"),
        ('[{ event = "pix_sent", at_least = 0, within_days = 7 }]',
         "context.reached[0].at_least: must be a whole number ≥ 1, got 0"),
        ('[{ event = "pix_sent", at_least = 3, within_days = 401 }]',
         "context.reached[0].within_days: must be at most 400"),
        ('[{ event = "pix_sent", at_least = 1001, within_days = 7 }]',
         "context.reached[0].at_least: must be at most 1000"),
        ('[{ event = "pix_sent", at_least = 3, within_days = 7, days = 2 }]',
         "context.reached[0].days: unknown key"),
        ('[{ event = "a", at_least = 1, within_days = 7 }, '
         '{ event = "a", at_least = 1, within_days = 7 }]',
         "context.reached[1]: names the same flag as an earlier entry"),
    ],
)
def test_bad_reached_flags_name_the_entry_and_rule(reached: str, message: str) -> None:
    text = DEFAULT.replace("contact_pressure = false",
                           f"contact_pressure = false\nreached = {reached}")
    with pytest.raises(CampaignError) as err:
        parse_campaign(text, "bad.toml")
    assert str(err.value).startswith("bad.toml: ")
    assert message in str(err.value)
