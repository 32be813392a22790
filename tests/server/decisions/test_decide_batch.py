"""DecideBatch: an audience decided over one stream, each user exactly as a Decide for
that user at that time (same ids, choices, propensities, texts, logged records), by user
ids or by a segment of the stored users; bad input names the message and field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from test_decide import ALL_CONSENTS, DEFAULT_TOML, T0, loan_user

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.v1 import decision_service_pb2 as pb

Start = Callable[..., tuple[NudgeServer, Client, ManualClock]]
# The advisor message (the only one without fields) needs a name: a user with no loan
# story then has no message that can be filled.
NAMED_TOML = DEFAULT_TOML.replace(
    'advisor = "Questions about your loan documents? An advisor can help you finish today."',
    'advisor = "{name}, an advisor can help you finish today."',
)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    running: list[tuple[NudgeServer, Client]] = []

    def _start(data: str, toml: str = DEFAULT_TOML) -> tuple[NudgeServer, Client, ManualClock]:
        campaigns = tmp_path / f"campaigns-{data}"
        campaigns.mkdir()
        (campaigns / "c.toml").write_text(toml)
        clock = ManualClock(T0)
        srv = create_server(Config(port=0, data_dir=tmp_path / data, campaigns_dir=campaigns,
                                   random_seed=11), clock=clock)
        srv.start()
        client = Client(f"127.0.0.1:{srv.port}")
        running.append((srv, client))
        return srv, client, clock

    yield _start
    for srv, client in running:
        client.close()
        srv.stop()


def audience(client: Client, clock: ManualClock) -> list[str]:
    """Users of every kind: with a loan story, consent-less, never seen, and repeated."""
    for i in range(6):
        loan_user(client, f"u{i}", clock)
    client.track([make_event("quiet", "app_opened", time=clock.now() - 5)])
    return ["u0", "u1", "quiet", "nobody", "u2", "u3", "u1", "u4", "u5", "u0"]


def fields(d: pb.DecideResponse | pb.BatchDecision) -> tuple:
    return (d.decision_id, d.propensity, d.propensity_samples, d.holdout, d.suppressed_reason,
            d.model_version, [(a.message, a.channel, a.send_at.seconds, a.send_at.nanos,
                               a.frequency, a.offer, a.text, a.score) for a in d.actions],
            [(r.code, r.detail, r.weight) for r in d.reasons])


# The campaign with none of the guardrails that read the user (DecideBatch's shortcut for
# users nothing can mask: every component allowed, an empty trace).
INERT_TOML = (DEFAULT_TOML.replace("consent = true", "consent = false")
              .replace('quiet_hours = { start = "21:00", end = "08:00" }\n', "")
              .replace("holdout = 0.05", "holdout = 0.0")
              .replace("[guardrails.caps]\nper_channel_day = 1\nper_channel_week = 3\n"
                       "all_channels_day = 2\nall_channels_week = 5\n", ""))


# 4 per message: no user twice in a message; 10: u1 and u0 again in the same message (the
# engine decides them in a second run, after the first decisions' contacts are pending).
@pytest.mark.parametrize(("per_message", "toml"), [
    (4, DEFAULT_TOML), (10, DEFAULT_TOML), (10, INERT_TOML)])
def test_a_batch_decides_and_logs_each_user_as_decide_would(start: Start, per_message: int,
                                                            toml: str) -> None:
    one_srv, one, one_clock = start("one", toml)
    batch_srv, batch, batch_clock = start("batch", toml)
    users = audience(one, one_clock)
    assert audience(batch, batch_clock) == users
    singles = [one.decide(u, top_k=3) for u in users]
    got = list(batch.decide_batch(users, top_k=3, include_reasons=True,
                                  per_message=per_message))
    assert [d.user_id for d in got] == users
    assert [fields(d) for d in got] == [fields(s) for s in singles]
    assert any(d.actions for d in got)
    for srv in (one_srv, batch_srv):
        srv.decisions.flush()
    ids = [d.decision_id for d in got]
    for mine, theirs in zip(batch_srv.decisions.decisions(ids),
                            one_srv.decisions.decisions(ids), strict=True):
        assert mine is not None and theirs is not None
        assert (mine.user_id, mine.choice, mine.propensity, mine.seed, mine.status,
                mine.top, mine.trace, list(mine.x)) == (
            theirs.user_id, theirs.choice, theirs.propensity, theirs.seed, theirs.status,
            theirs.top, theirs.trace, list(theirs.x))


def test_reasons_are_left_out_unless_asked(start: Start) -> None:
    srv, client, clock = start("data")
    loan_user(client, "u1", clock)
    # A learned outcome, so the model has weights a feature can push with.
    assert client.report_outcome(client.decide("u1").decision_id, 1.0)
    srv.decisions.flush()
    srv.learner.step()
    (plain,) = client.decide_batch(["u1"], dry_run=True)
    (explained,) = client.decide_batch(["u1"], dry_run=True, include_reasons=True)
    assert not [r for r in plain.reasons if r.code == "FEATURE"]
    assert [r for r in explained.reasons if r.code == "FEATURE"]


def test_a_segment_decides_for_the_stored_users_it_matches(start: Start) -> None:
    srv, client, clock = start("data")
    for i in range(5):
        loan_user(client, f"s{i}", clock)
    client.track([make_event("other", "app_opened", time=clock.now() - 5,
                             strings=ALL_CONSENTS)])
    loaners = pb.Segment(event_types=["loan_simulated"])
    got = list(client.decide_batch(segment=loaners, dry_run=True))
    assert [d.user_id for d in got] == [f"s{i}" for i in range(5)]
    assert all(d.decision_id for d in got)
    everyone = list(client.decide_batch(segment=pb.Segment(), dry_run=True))
    assert sorted(d.user_id for d in everyone) == ["other", *[f"s{i}" for i in range(5)]]
    later = pb.Segment()
    later.seen_since.FromSeconds(int(T0) + 3600)
    assert list(client.decide_batch(segment=later, dry_run=True)) == []
    nobody = pb.Segment(event_types=["never_seen_type"])
    assert list(client.decide_batch(segment=nobody, dry_run=True)) == []
    srv.decisions.flush()  # dry runs log nothing
    assert srv.decisions.decisions([d.decision_id for d in got]) == [None] * 5


def test_a_user_no_message_fits_gets_no_decision_and_the_others_go_on(start: Start) -> None:
    _, client, clock = start("data", NAMED_TOML)
    loan_user(client, "ok", clock)
    # No amount, currency or name: no message can be filled.
    client.track([make_event("bare", "profile", time=clock.now() - 5, strings=ALL_CONSENTS)])
    with pytest.raises(grpc.RpcError) as err:
        client.decide("bare")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bare, ok = client.decide_batch(["bare", "ok"])
    assert bare.user_id == "bare" and not bare.decision_id
    assert bare.suppressed_reason == "missing_properties" and bare.reasons[0].detail
    assert ok.decision_id


def test_bad_input_names_the_message_and_field(start: Start) -> None:
    srv, client, clock = start("data")
    loan_user(client, "u1", clock)

    def stream(*messages: pb.DecideBatchRequest) -> list[pb.DecideBatchResponse]:
        return list(client.decisions.DecideBatch(iter(messages), timeout=10))

    with pytest.raises(grpc.RpcError) as err:
        stream(pb.DecideBatchRequest(user_ids=["u1"]), pb.DecideBatchRequest(user_ids=["u1", ""]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("messages[1].user_ids[1]")
    srv.decisions.flush()  # the first message's decision was made and stands
    assert srv.decisions.pending.flush_soon().result() is None
    cases = [
        (pb.DecideBatchRequest(campaign="nope", user_ids=["u1"]), "messages[0].campaign"),
        (pb.DecideBatchRequest(top_k=65, user_ids=["u1"]), "messages[0].top_k"),
        (pb.DecideBatchRequest(user_ids=["u1"], segment=pb.Segment()), "messages[0].segment"),
        (pb.DecideBatchRequest(user_ids=["u1"], numbers={"x": float("nan")}),
         'messages[0].numbers["x"]'),
    ]
    for message, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            stream(message)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.value.details().startswith(field), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stream(pb.DecideBatchRequest(user_ids=["u1"]), pb.DecideBatchRequest(segment=pb.Segment()))
    assert err.value.details().startswith("messages[1].segment")


def test_the_inert_campaign_has_no_guardrail_that_reads_the_user() -> None:
    """INERT_TOML is what it says (else the twin test above would not reach the shortcut)."""
    from nudge.server.decisions.campaign import parse_campaign
    from nudge.server.decisions.guardrails import GuardrailPlan

    assert GuardrailPlan(parse_campaign(INERT_TOML, "c.toml")).inert
    assert not GuardrailPlan(parse_campaign(DEFAULT_TOML, "c.toml")).inert
