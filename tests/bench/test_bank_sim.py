"""The bank simulator: deterministic per seed, a rulebook that does what it says, sane
baselines, and a CLI that writes its summary and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nudge.bench import bank_sim
from nudge.bench.bank_sim import (
    CHANNELS,
    RULEBOOK,
    SLOT_NAMES,
    Allowed,
    Space,
    parse_campaign,
    rulebook_choice,
    run_policy,
)


@pytest.fixture(scope="module")
def space() -> Space:
    return Space(parse_campaign(bank_sim.campaign_text(), "test"))


def _summary(policy: str, decisions: int, seed: int) -> dict:
    s = run_policy(policy, decisions, seed=seed).summary()
    s.pop("seconds")
    return s


def test_nudge_run_is_deterministic_per_seed() -> None:
    first = _summary("nudge", 400, seed=3)
    assert first == _summary("nudge", 400, seed=3)
    assert first["decisions"] == 400 and first["conversion_rate"] > 0
    assert first["holdout_decisions"] > 0


def test_baselines_are_deterministic_and_ordered() -> None:
    runs = {p: _summary(p, 3000, seed=5) for p in ("random", "rulebook", "oracle")}
    assert runs["rulebook"] == _summary("rulebook", 3000, seed=5)
    assert _summary("random", 3000, seed=6) != runs["random"]
    rate = {p: s["expected_rate_last_fifth"] for p, s in runs.items()}
    assert rate["oracle"] > 1.5 * rate["rulebook"] > 1.5 * rate["random"]
    assert runs["oracle"]["regret"] == 0.0


@pytest.mark.parametrize("segment", sorted(RULEBOOK))
def test_rulebook_follows_its_rules_when_everything_is_allowed(space: Space,
                                                                segment: str) -> None:
    allowed = Allowed("", set(CHANNELS), set(SLOT_NAMES))
    choice = rulebook_choice(space, segment, allowed)
    assert choice is not None and space.names(choice) == RULEBOOK[segment]


def test_rulebook_fallbacks(space: Space) -> None:
    # borrowers: e-mail not consented -> push (the next channel of the fallback order)
    no_email = Allowed("", set(CHANNELS) - {"email"}, set(SLOT_NAMES))
    assert space.names(rulebook_choice(space, "borrower", no_email))[1] == "push"
    # travellers: "now" in quiet hours -> the evening
    quiet = Allowed("", set(CHANNELS), set(SLOT_NAMES) - {"now"})
    assert space.names(rulebook_choice(space, "traveller", quiet))[2] == "evening"
    # savers reached by SMS: "rate_locked" is excluded on SMS -> "one_step"
    sms_only = Allowed("", {"sms"}, set(SLOT_NAMES))
    assert space.names(rulebook_choice(space, "saver", sms_only))[:2] == ("one_step", "sms")
    # salaried on in-app: in-app x morning is excluded -> lunch
    in_app = Allowed("", {"in_app"}, set(SLOT_NAMES))
    assert space.names(rulebook_choice(space, "salaried", in_app))[1:3] == ("in_app", "lunch")
    # a guardrail suppressed the decision: the rulebook sends nothing
    assert rulebook_choice(space, "gig", Allowed("frequency_cap", set(), set())) is None


def test_cli_writes_summary_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert bank_sim.main(["--decisions", "300", "--seed", "2", "--out", str(out)]) == 0
    report = json.loads((out / "summary.json").read_text())
    assert set(report["policies"]) == {"random", "rulebook", "nudge", "oracle"}
    assert "nudge_vs_oracle_last_fifth" in report and "uplift_vs_holdout" in report
    assert (out / "regret.png").stat().st_size > 10_000
    assert "nudge_vs_rulebook_last_fifth" in capsys.readouterr().out


def test_opt_out_risk_by_cause_explains_the_opt_outs() -> None:
    # The per-cause risks are the annoyance model's terms summed over contacts: their total
    # is the expected number of opt-outs.
    runs = {p: _summary(p, 4000, seed=5) for p in ("random", "rulebook")}
    for s in runs.values():
        risk = sum(s["opt_out_risk"].values())
        assert abs(s["opt_outs"] - risk) < 4 * risk**0.5 + 1, s
        assert s["risky_contacts"]["baseline"] == round(s["contacts_per_user"] * s["users"])
    # Random sends inside annoyance hours; the rulebook's slots never do.
    assert runs["random"]["opt_out_risk"]["annoy_hours"] > 0
    assert runs["rulebook"]["opt_out_risk"]["annoy_hours"] == 0


def test_twice_is_two_contacts_for_the_caps_and_a_cancelled_one_is_not_received(
        space: Space) -> None:
    # The rulebook sends gig workers "one_step" by SMS, twice: both messages count against
    # the caps (as the server counts them); a conversion before the second cancels it, so
    # the user never receives it and it adds no fatigue.
    gig = bank_sim.PERSONA_BY_NAME["gig"]
    now = bank_sim.START.timestamp() + 10 * bank_sim.HOUR
    received = {1: 0, 2: 0}
    for index in range(40):
        user = bank_sim.User(f"g{index}", index, gig, dict.fromkeys(CHANNELS, True), 5000.0)
        result = bank_sim.Result("rulebook")
        bank_sim._decide("rulebook", user, now, space, None, result, [], 0, seed=7)
        if not result.contacts:
            continue  # held out
        times = [t for t, _ in user.contacts]
        assert len(times) == 2 and times[1] - times[0] == bank_sim.DAY
        assert {c for _, c in user.contacts} == {"sms"}
        assert user.received == user.contacts[:result.contacts]
        received[result.contacts] += 1  # 1: cancelled by the goal (or opted out first)
        assert "sms" not in bank_sim.guardrails(user, now + 60).channels
    assert received[1] > 0 and received[2] > 0
