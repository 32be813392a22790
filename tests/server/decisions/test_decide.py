"""Decide, ReportOutcome and learning end to end, in simulated time."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import numpy as np
import orjson
import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.server.app import NudgeServer, create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.server.decisions.campaign import load_campaigns, shipped_campaigns_dir
from nudge.server.decisions.engine import ID_POOL_DRAWS, _IdPool
from nudge.v1 import decision_service_pb2 as pb

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
# Tuesday 2026-11-24 10:00 in São Paulo (13:00 UTC).
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=SAO_PAULO).timestamp()
SHIPPED_TOML = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()
# Tests that need an action use the shipped campaign without the "send nothing" arm: a
# cold model otherwise chooses nothing about one time in five (exploration).
DEFAULT_TOML = SHIPPED_TOML.replace('algorithm = "squarecb"',
                                    'algorithm = "squarecb"\nnothing_arm = false')
ALL_CONSENTS = {f"consent.{c}": "granted" for c in ("push", "whatsapp", "sms", "email")}

Start = Callable[..., tuple[NudgeServer, Client, ManualClock]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    running: list[tuple[NudgeServer, Client]] = []

    def _start(toml: str | None = DEFAULT_TOML, clock: ManualClock | None = None,
               data: str = "data") -> tuple[NudgeServer, Client, ManualClock]:
        campaigns = None
        if toml is not None:
            campaigns = tmp_path / f"campaigns-{len(running)}"
            campaigns.mkdir()
            (campaigns / "c.toml").write_text(toml)
        clock = clock or ManualClock(T0)
        srv = create_server(
            Config(port=0, data_dir=tmp_path / data, campaigns_dir=campaigns), clock=clock
        )
        srv.start()
        c = Client(f"127.0.0.1:{srv.port}")
        running.append((srv, c))
        return srv, c, clock

    yield _start
    for srv, c in running:
        c.close()
        srv.stop()


def loan_user(client: Client, user: str, clock: ManualClock, **strings: str) -> None:
    client.track([
        make_event(user, "profile", time=clock.now() - 60,
                   strings={"tz": "America/Sao_Paulo", **ALL_CONSENTS, **strings}),
        make_event(user, "loan_simulated", time=clock.now() - 30,
                   numbers={"amount": 5000.0}, strings={"currency": "USD"}),
        # Another step than the shipped journey's trigger: these tests call Decide directly.
        make_event(user, "flow_abandoned", time=clock.now() - 10,
                   strings={"flow": "personal_loan", "step": "identity"}),
    ])


def local(t: pb.Action) -> datetime:
    return datetime.fromtimestamp(t.send_at.seconds + t.send_at.nanos * 1e-9, SAO_PAULO)


def test_decide_returns_ranked_rendered_actions_and_logs_them(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "u1", clock)
    reply = client.decide("u1", top_k=3)
    assert reply.decision_id and reply.model_version == "loan_abandonment/v0"
    assert 1 <= len(reply.actions) <= 3
    assert len({(a.message, a.channel, a.send_at.seconds, a.frequency, a.offer)
                for a in reply.actions}) == len(reply.actions)
    campaign = load_campaigns()["loan_abandonment"]
    for action in reply.actions:
        assert action.channel in campaign.channels
        assert ("{" not in action.text and "USD 5,000" in action.text) or "advisor" in action.text
    # The shipped campaign explores with SquareCB: its propensity is exact (no draws).
    assert reply.propensity_samples == 0 and 0 < reply.propensity <= 1
    srv.decisions.flush()
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record is not None and record.status == "open"
    assert record.user_id == "u1" and record.model_version == reply.model_version
    assert record.propensity == reply.propensity and record.seed > 0
    assert record.actions[0]["text"] == reply.actions[0].text
    assert len(record.x) == srv.decisions.models["loan_abandonment"].layout.n_features


def test_the_contact_cost_is_learned_per_message_sent(start: Start) -> None:
    # Only "twice": two messages per decision. b starts at 0, so after one outcome each
    # chosen component's b is (reward - cost × 2) · x: the log keeps the outcome, the
    # learner pays the cost.
    toml = (DEFAULT_TOML.replace("contact_cost = 0.02", "contact_cost = 0.25")
            .replace("once = { count = 1 }\n", "").replace("holdout = 0.05", "holdout = 0.0"))
    srv, client, clock = start(toml)
    loan_user(client, "c1", clock)
    reply = client.decide("c1")
    assert reply.actions[0].frequency == "twice"
    assert client.report_outcome(reply.decision_id, 1.0)
    srv.decisions.flush()
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.messages == 2 and record.reward == 1.0
    srv.learner.step()
    model = srv.decisions.models["loan_abandonment"]
    chosen = model.campaign.space.combo_components[record.choice]
    for component in chosen[chosen >= 0]:
        assert np.allclose(model.snapshot.b[component], 0.5 * np.asarray(record.x))


def test_nothing_is_an_arm_of_the_shipped_campaign(start: Start) -> None:
    assert load_campaigns()["loan_abandonment"].nothing_combo >= 0
    # Thompson sampling explores "nothing" visibly on a cold model (about 1 in 5).
    _, client, clock = start(SHIPPED_TOML.replace('algorithm = "squarecb"',
                                                  'algorithm = "thompson"'))
    loan_user(client, "u0", clock)
    replies = [client.decide("u0", dry_run=True) for _ in range(40)]
    nothing = [r for r in replies if not r.actions]
    assert nothing and len(nothing) < 40
    assert all(r.suppressed_reason == "nothing_is_best" for r in nothing)
    assert all(r.propensity_samples == 33 for r in replies)  # 32 re-draws + its own
    assert all(0 < r.propensity <= 1 for r in replies)


def test_thompson_sampling_states_its_monte_carlo_draws(start: Start) -> None:
    _, client, clock = start(DEFAULT_TOML.replace('algorithm = "squarecb"',
                                                  'algorithm = "thompson"'))
    loan_user(client, "t1", clock)
    reply = client.decide("t1", dry_run=True)
    assert reply.actions and reply.propensity_samples == 33  # 32 re-draws + its own
    assert 0 < reply.propensity <= 1


def test_dry_run_stores_nothing(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "u1", clock)
    reply = client.decide("u1", dry_run=True)
    srv.decisions.flush()
    assert srv.decisions.decisions([reply.decision_id]) == [None]
    assert srv.store.counts()["contacts"] == 0


def test_no_consent_leaves_only_in_app(start: Start) -> None:
    _, client, clock = start()
    client.track([make_event("u2", "loan_simulated", time=clock.now() - 5,
                             numbers={"amount": 100.0}, strings={"currency": "BRL"})])
    reply = client.decide("u2", top_k=5)
    assert {a.channel for a in reply.actions} <= {"in_app"}
    assert {r.detail.split(":")[0] for r in reply.reasons if r.code == "NO_CONSENT"} == {
        "push", "whatsapp", "sms", "email"
    }
    _, client2, clock2 = start(DEFAULT_TOML.replace(
        'values = ["push", "whatsapp", "sms", "email", "in_app"]', 'values = ["push", "sms"]'
    ).replace('channel = "in_app"\nsend_time = "morning"', 'channel = "sms"\noffer = "none"'),
        data="other")
    client2.track([make_event("u2", "loan_simulated", time=clock2.now() - 5,
                              numbers={"amount": 100.0}, strings={"currency": "BRL"})])
    suppressed = client2.decide("u2")
    assert not suppressed.actions and suppressed.suppressed_reason == "no_consent"


def test_an_explicit_in_app_revocation_is_honoured(start: Start) -> None:
    # In-app needs no consent on record, but a customer who revoked it is not messaged
    # there (until 2026-12-03 in-app was chosen whatever the profile said).
    _, client, clock = start()
    client.track([make_event("u3", "loan_simulated", time=clock.now() - 5,
                             numbers={"amount": 100.0}, strings={"currency": "BRL",
                                                                 "consent.in_app": "revoked"})])
    reply = client.decide("u3", top_k=5)
    assert not reply.actions and reply.suppressed_reason == "no_consent"
    assert "in_app: consent revoked" in {r.detail for r in reply.reasons}


@pytest.mark.parametrize("zone", ["America/Sao_Paulo", "Asia/Tokyo", "Europe/Lisbon"])
def test_quiet_hours_hold_in_the_users_zone(start: Start, zone: str) -> None:
    tz = ZoneInfo(zone)
    late = datetime(2026, 11, 24, 23, 30, tzinfo=tz).timestamp()
    _, client, clock = start(clock=ManualClock(late))
    loan_user(client, "u3", clock, tz=zone)
    reply = client.decide("u3", top_k=10)
    assert reply.actions
    for action in reply.actions:
        hour = datetime.fromtimestamp(action.send_at.seconds, tz).hour
        assert 8 <= hour < 21, (zone, hour)
    assert any(r.code == "QUIET_HOURS" and r.detail.startswith("now") for r in reply.reasons)


def test_quiet_hours_everywhere_suppress(start: Start) -> None:
    toml = DEFAULT_TOML.replace('start = "21:00", end = "08:00"', 'start = "00:00", end = "23:59"')
    _, client, clock = start(toml)
    loan_user(client, "u4", clock)
    reply = client.decide("u4")
    assert not reply.actions and reply.suppressed_reason == "quiet_hours"


def test_caps_mask_channels_then_suppress(start: Start) -> None:
    # One message per decision ("twice" would count two contacts: see the next test).
    toml = (DEFAULT_TOML.replace("all_channels_day = 2", "all_channels_day = 3")
            .replace("twice = { count = 2, gap_hours = 24 }\n", ""))
    _, client, clock = start(toml)
    loan_user(client, "u5", clock)
    used = []
    for _ in range(3):
        reply = client.decide("u5")
        assert reply.actions, reply
        used.append(reply.actions[0].channel)
        clock.advance(60)
    assert len(set(used)) == 3  # per_channel_day = 1: each contact closes its channel
    capped = client.decide("u5")
    assert not capped.actions and capped.suppressed_reason == "frequency_cap"
    clock.advance(2 * 86_400)
    assert client.decide("u5").actions  # a day later the daily caps have reset


def test_every_message_of_a_frequency_counts_against_the_caps(start: Start) -> None:
    # Only "twice" (24 h apart, inside the 72 h goal window), at most two messages per
    # channel a week and no daily caps: one decision then uses up its channel's week.
    toml = (DEFAULT_TOML
            .replace("once = { count = 1 }\n", "")
            .replace("per_channel_day = 1", "per_channel_day = 9")
            .replace("per_channel_week = 3", "per_channel_week = 2")
            .replace("all_channels_day = 2", "all_channels_day = 9")
            .replace("all_channels_week = 5", "all_channels_week = 9"))
    srv, client, clock = start(toml)
    loan_user(client, "u5b", clock)
    first = client.decide("u5b")
    assert first.actions[0].frequency == "twice"
    channel = first.actions[0].channel
    clock.advance(60)
    for flushed in (False, True):  # pending, then stored: each message counted once
        if flushed:
            srv.decisions.flush()
        again = client.decide("u5b", dry_run=True, top_k=16)
        assert again.actions and channel not in {a.channel for a in again.actions}
        assert any(r.code == "FREQUENCY_CAP" and r.detail.startswith(f"{channel}:")
                   and r.detail.endswith(" 2 this week") for r in again.reasons), again.reasons
    with srv.store.read() as txn:
        stored = orjson.loads(txn.get(b"u5b", db=srv.store.dbs["contacts"]))
    times = sorted(c[0] for c in stored)
    assert len(stored) == 2 and times[1] - times[0] == 24 * 3600.0


def test_holdout_is_stable_and_suppresses(start: Start) -> None:
    _, client, clock = start(DEFAULT_TOML.replace("holdout = 0.05", "holdout = 0.5"))
    outcomes = {}
    for k in range(20):
        user = f"h{k}"
        loan_user(client, user, clock)
        first = client.decide(user, dry_run=True)
        again = client.decide(user, dry_run=True)
        assert first.holdout == again.holdout
        outcomes[user] = first.holdout
        if first.holdout:
            assert not first.actions and first.suppressed_reason == "holdout"
    assert 3 <= sum(outcomes.values()) <= 17


def test_missing_template_properties_mask_messages_or_fail_clearly(start: Start) -> None:
    _, client, clock = start()
    client.track([make_event("u6", "profile", time=clock.now() - 5,
                             strings={"tz": "America/Sao_Paulo", **ALL_CONSENTS})])
    reply = client.decide("u6", top_k=16)
    assert {a.message for a in reply.actions} == {"advisor"}  # the only one without fields
    toml = DEFAULT_TOML.replace(
        'advisor = "Questions about your loan documents? An advisor can help you finish today."',
        'advisor = "{name}, an advisor can help you finish today."',
    )
    _, client2, clock2 = start(toml, data="other")
    client2.track([make_event("u6", "profile", time=clock2.now() - 5,
                              strings={"tz": "America/Sao_Paulo", **ALL_CONSENTS})])
    with pytest.raises(grpc.RpcError) as err:
        client2.decide("u6")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "loan_ready needs ['currency', 'amount']" in err.value.details()
    filled = client2.decide("u6", strings={"name": "Ana"})
    assert filled.actions[0].text.startswith("Ana, an advisor")


def test_credit_offers_are_withheld_after_anomalous_activity(start: Start) -> None:
    _, client, clock = start()
    loan_user(client, "u7", clock)
    history = [make_transaction("u7", 40.0, country="BR", device_id="p", merchant_category="5411",
                                time=clock.now() - 86_400 * (30 - i)) for i in range(25)]
    client.score_transactions(history)
    odd = client.score_transaction(make_transaction(
        "u7", 5_000.0, country="NG", device_id="new", merchant_category="5732",
        time=clock.now() - 600))
    assert odd.held
    reply = client.decide("u7", top_k=16)
    assert reply.actions and {a.offer for a in reply.actions} == {"none"}
    assert any(r.code == "RISK" for r in reply.reasons)


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"user_id": ""}, "user_id: must not be empty"),
        ({"campaign": "nope"}, "campaign: unknown campaign 'nope'"),
        ({"top_k": -1}, "top_k: must not be negative"),
        ({"top_k": 17}, "top_k: must be at most 16"),
        ({"numbers": {"balance": float("nan")}}, 'numbers["balance"]: must be finite'),
        # Finite, but one made a campaign's running feature variance inf (three its mean
        # NaN), for every later decision.
        ({"numbers": {"balance": 1e308}}, 'numbers["balance"]: must be at most 1e+18'),
        ({"numbers": {"a": 1.0, "balance": -2e18}}, 'numbers["balance"]: must be at most 1e+18'),
    ],
)
def test_bad_decide_requests(start: Start, request_fields: dict, message: str) -> None:
    srv, client, clock = start()
    loan_user(client, "u1", clock)
    before = srv.store.counts()
    request = pb.DecideRequest(**{"user_id": "u1", **request_fields})
    with pytest.raises(grpc.RpcError) as err:
        client.decisions.Decide(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    srv.decisions.flush()
    assert srv.store.counts() == before


def settle_and_learn(srv: NudgeServer) -> None:
    srv.decisions.flush()
    srv.learner.step()


def test_goal_event_within_the_window_rewards_the_decision(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "u8", clock)
    reply = client.decide("u8")
    clock.advance(3_600)
    client.track([make_event("u8", "loan_completed", time=clock.now())])
    settle_and_learn(srv)
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.status == "settled" and record.reward == 1.0
    assert srv.learner.learned == 1
    assert srv.decisions.models["loan_abandonment"].snapshot.version == 1


def test_window_expiry_gives_reward_zero_and_late_goals_do_not_count(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "u9", clock)
    reply = client.decide("u9")
    clock.advance(73 * 3_600)
    settle_and_learn(srv)
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.status == "settled" and record.reward == 0.0
    client.track([make_event("u9", "loan_completed", time=clock.now())])
    settle_and_learn(srv)
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.reward == 0.0 and srv.learner.learned == 1


def test_report_outcome(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "u10", clock)
    reply = client.decide("u10")
    request = pb.ReportOutcomeRequest(decision_id=reply.decision_id, reward=2.5)
    assert client.decisions.ReportOutcome(request).attributed is True
    assert client.decisions.ReportOutcome(request).attributed is False
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.reward == 2.5
    for bad, code, text in (
        (pb.ReportOutcomeRequest(decision_id="nope", reward=1), grpc.StatusCode.NOT_FOUND,
         "decision_id"),
        (pb.ReportOutcomeRequest(decision_id=reply.decision_id, reward=float("inf")),
         grpc.StatusCode.INVALID_ARGUMENT, "reward: must be finite"),
        (pb.ReportOutcomeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "decision_id"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            client.decisions.ReportOutcome(bad)
        assert err.value.code() == code and text in err.value.details()


def test_posterior_moves_toward_the_rewarded_channel(start: Start) -> None:
    srv, client, clock = start()
    campaign = load_campaigns()["loan_abandonment"]
    email = campaign.component_ids("channel")[campaign.channels.index("email")]
    before = srv.decisions.models["loan_abandonment"].snapshot.mu[email].copy()
    for k in range(60):
        user = f"p{k}"
        loan_user(client, user, clock)
        reply = client.decide(user)
        if not reply.actions:
            continue
        reward = 1.0 if reply.actions[0].channel == "email" else 0.0
        client.decisions.ReportOutcome(
            pb.ReportOutcomeRequest(decision_id=reply.decision_id, reward=reward))
    settle_and_learn(srv)
    model = srv.decisions.models["loan_abandonment"]
    after = model.snapshot.mu
    others = [campaign.component_ids("channel")[i] for i, c in enumerate(campaign.channels)
              if c != "email"]
    assert after[email][0] > before[0]
    assert all(after[email][0] > after[o][0] for o in others)


def test_models_and_open_decisions_survive_a_restart(start: Start, tmp_path: Path) -> None:
    srv, client, clock = start()
    loan_user(client, "u11", clock)
    first = client.decide("u11")
    second = client.decide("u11", dry_run=True)
    client.decisions.ReportOutcome(pb.ReportOutcomeRequest(decision_id=first.decision_id,
                                                           reward=1.0))
    settle_and_learn(srv)
    version = srv.decisions.models["loan_abandonment"].snapshot.version
    mu = srv.decisions.models["loan_abandonment"].snapshot.mu.copy()
    client.close()
    srv.stop()
    srv2 = create_server(Config(port=0, data_dir=tmp_path / "data",
                                campaigns_dir=tmp_path / "campaigns-0"), clock=clock)
    srv2.start()
    try:
        model = srv2.decisions.models["loan_abandonment"]
        assert model.snapshot.version == version
        np.testing.assert_array_equal(model.snapshot.mu, mu)
        srv2.learner.step()
        assert srv2.decisions.models["loan_abandonment"].snapshot.version == version
        assert srv2.decisions.decisions([second.decision_id]) == [None]
    finally:
        srv2.stop()


def test_a_stored_model_whose_features_mean_something_else_is_not_adopted(
        start: Start, tmp_path: Path) -> None:
    # Same shape, other meaning: a string's known values reordered. The model learned for
    # "gold" must not be read as "basic"'s after a restart; the same campaign keeps it.
    def toml(values: str) -> str:
        return DEFAULT_TOML.replace("strings = {}", f"strings = {{ tier = {values} }}")

    srv, client, clock = start(toml('["gold", "basic"]'))
    loan_user(client, "t1", clock)
    reply = client.decide("t1", strings={"tier": "gold"})
    assert client.report_outcome(reply.decision_id, 1.0)
    settle_and_learn(srv)
    version = srv.decisions.models["loan_abandonment"].snapshot.version
    assert version > 0
    client.close()
    srv.stop()
    for values, kept in (('["basic", "gold"]', False), ('["gold", "basic"]', True)):
        campaigns = tmp_path / f"restart-{kept}"
        campaigns.mkdir()
        (campaigns / "c.toml").write_text(toml(values))
        again = create_server(Config(port=0, data_dir=tmp_path / "data",
                                     campaigns_dir=campaigns), clock=clock)
        again.start()
        try:
            model = again.decisions.models["loan_abandonment"]
            assert model.snapshot.version == (version if kept else 0), values
        finally:
            again.stop()


def test_opting_out_of_the_decisions_channel_is_learned_as_a_cost(start: Start) -> None:
    srv, client, clock = start()
    loan_user(client, "o1", clock)
    reply = client.decide("o1")
    channel = reply.actions[0].channel
    other = next(c for c in ("push", "whatsapp", "sms", "email") if c != channel)
    clock.advance(600)
    client.track([make_event("o1", "profile", time=clock.now(),
                             strings={f"consent.{other}": "revoked"})])
    srv.decisions.flush()
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.status == "open"  # another channel's consent: not this decision's doing
    if channel != "in_app":
        client.track([make_event("o1", "profile", time=clock.now() + 1,
                                 strings={f"consent.{channel}": "revoked"})])
        (record,) = srv.decisions.decisions([reply.decision_id])
        cost = srv.decisions.campaigns["loan_abandonment"].goal.opt_out_cost
        assert cost > 0 and record.status == "settled" and record.reward == -cost


def test_a_flush_in_the_same_commit_never_reopens_a_settled_decision(start: Start) -> None:
    """A goal event settles a decision in the group commit that also carries a flush of
    the decision's earlier, still-open copy: the decision stays settled, is in the rewards
    log once, and its contact is stored once (found by the kill -9 loop)."""
    srv, client, clock = start()
    loan_user(client, "u20", clock)
    gate = threading.Event()
    srv.writer.submit_job(lambda txn: gate.wait())  # hold the writer: the next jobs batch
    try:
        reply = client.decide("u20")
        goal = threading.Thread(target=lambda: client.track(
            [make_event("u20", "loan_completed", time=clock.now())]))
        goal.start()
        time.sleep(0.2)  # the goal event is queued behind the held job
        flushed = srv.decisions.pending.flush_soon()  # queued after the goal event
        time.sleep(0.2)
    finally:
        gate.set()
    goal.join()
    flushed.result(timeout=10)
    srv.decisions.flush()
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.status == "settled" and record.reward == 1.0
    with srv.store.read() as txn:
        assert txn.stat(srv.store.dbs["rewards"])["entries"] == 1
        contacts = orjson.loads(bytes(txn.get(b"u20", db=srv.store.dbs["contacts"])))
    messages = 2 if reply.actions[0].frequency == "twice" else 1  # each stored once
    assert [c[3] for c in contacts] == [reply.decision_id] * messages
    assert len({c[0] for c in contacts}) == messages


def test_rewards_outside_the_campaigns_range_are_refused_and_store_nothing(
    start: Start
) -> None:
    srv, client, clock = start()
    loan_user(client, "r1", clock)
    reply = client.decide("r1")
    for reward in (1.7e308, 1e300, 11.0, -6.0):
        with pytest.raises(grpc.RpcError) as err:
            client.decisions.ReportOutcome(
                pb.ReportOutcomeRequest(decision_id=reply.decision_id, reward=reward))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "reward: must be in [-5, 10]" in err.value.details()
    srv.decisions.flush()
    (record,) = srv.decisions.decisions([reply.decision_id])
    assert record.status == "open" and record.reward is None
    # The bounds themselves are fine: goal value × 10 and -opt_out_cost.
    assert client.report_outcome(reply.decision_id, 10.0)


def test_a_record_the_learner_cannot_learn_is_quarantined_and_learning_goes_on(
    start: Start
) -> None:
    from nudge.server.decisions.outcomes import settle
    from nudge.server.storage.tables import decisions as decision_table

    srv, client, clock = start()
    poisoned = []
    for user in ("q1", "q2"):
        loan_user(client, user, clock)
        poisoned.append(client.decide(user).decision_id)
    srv.decisions.flush()

    def poison(txn) -> None:  # a rewards log written before rewards had a range
        for decision_id in poisoned:
            record = decision_table.get(txn, srv.store.dbs, decision_id)
            settle(txn, srv.store, record, 1.7e308)

    srv.writer.submit_job(poison).result()
    loan_user(client, "q3", clock)
    good = client.decide("q3").decision_id
    assert client.report_outcome(good, 1.0)
    srv.decisions.flush()
    srv.learner.step()
    srv.learner.step()
    with srv.store.read() as txn:
        from nudge.server.storage.tables import rewards
        assert srv.learner.learned_seq == rewards.last(txn, srv.store.dbs)
    assert srv.learner.quarantined == 2
    snapshot = srv.decisions.models["loan_abandonment"].snapshot
    assert np.isfinite(snapshot.mean_t).all() and np.isfinite(snapshot.b).all()


def test_decision_ids_from_the_pool_are_unique_uuid4s_across_refills() -> None:
    pool = _IdPool()
    drawn = [pool.take() for _ in range(3 * ID_POOL_DRAWS + 7)]
    ids = [i for i, _ in drawn]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).hex == i for i in ids)
    seeds = [s for _, s in drawn]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == len(seeds)
