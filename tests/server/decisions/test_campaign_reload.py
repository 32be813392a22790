"""Campaigns reload without a restart (SIGHUP): all or nothing, learned models kept when
the campaign's shape is unchanged, recorded triggers keep their meaning."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nudge.bench.server_process import ServerProcess
from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.server.decisions.campaign import shipped_campaigns_dir

T0 = 1_790_000_000.0  # 2026-09-21, a Monday
SHIPPED = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()
OLD_TEXT = "Questions about your loan documents? An advisor can help you finish today."


def _one_message(toml: str) -> str:
    """The shipped campaign with only its advisor message, and every decision an action
    (no "nothing" arm, cross-channel caps out of the way: a "twice" is two contacts): any
    action of a reply shows the current text."""
    head, rest = toml.split("[messages]\n", 1)
    _, rest = rest.split("\n\n", 1)
    rest = rest.replace('[[exclude]]\nchannel = "sms"\nmessage = "rate_locked"\n\n', "")
    assert "rate_locked" not in rest
    text = f'{head}[messages]\nadvisor = "{OLD_TEXT}"\n\n{rest}'
    return (text.replace('algorithm = "squarecb"', 'algorithm = "squarecb"\nnothing_arm = false')
            .replace("all_channels_day = 2", "all_channels_day = 9"))


BASE = _one_message(SHIPPED)
NEW_TEXT = "An advisor is free now to finish your loan documents with you."
CONSENTS = {f"consent.{c}": "granted" for c in ("push", "whatsapp", "sms", "email")}


class Running:
    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "campaigns"
        self.folder.mkdir()
        self.write(BASE)
        self.clock = ManualClock(T0)
        self.server: NudgeServer = create_server(
            Config(port=0, data_dir=tmp_path / "data", campaigns_dir=self.folder,
                   learner_thread=False),
            clock=self.clock,
        )
        self.server.start()
        self.client = Client(f"127.0.0.1:{self.server.port}")

    def write(self, text: str, name: str = "loan.toml") -> None:
        (self.folder / name).write_text(text)

    def user(self, user_id: str) -> None:
        self.client.track([
            make_event(user_id, "profile", time=self.clock.now() - 60,
                       strings={"tz": "UTC", **CONSENTS}),
            make_event(user_id, "loan_simulated", time=self.clock.now() - 30,
                       numbers={"amount": 5000.0}, strings={"currency": "USD"}),
        ])

    def texts(self, user_id: str, campaign: str = "") -> set[str]:
        reply = self.client.decide(user_id, campaign=campaign, top_k=3, dry_run=True)
        return {a.text for a in reply.actions}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    yield r
    r.client.close()
    r.server.stop()


def test_reload_changes_texts_and_keeps_what_was_learned(running: Running) -> None:
    running.user("u1")
    decision = running.client.decide("u1")
    running.client.report_outcome(decision.decision_id, 1.0)
    running.server.decisions.flush()
    assert running.server.learner.step() == 1
    learned = running.server.decisions.models["loan_abandonment"]
    assert OLD_TEXT in running.texts("u1")

    running.write(BASE.replace(OLD_TEXT, NEW_TEXT))
    assert running.server.reload_campaigns()
    texts = running.texts("u1")
    assert NEW_TEXT in texts and OLD_TEXT not in texts
    model = running.server.decisions.models["loan_abandonment"]
    assert model.snapshot is learned.snapshot and model.learned_seq == learned.learned_seq
    # The learner goes on from the same position, with the new campaign.
    decision = running.client.decide("u1")
    running.client.report_outcome(decision.decision_id, 0.0)
    running.server.decisions.flush()
    assert running.server.learner.step() == 1
    assert running.server.decisions.models["loan_abandonment"].campaign is model.campaign


def test_a_changed_shape_starts_the_campaign_from_the_prior(running: Running) -> None:
    running.user("u2")
    decision = running.client.decide("u2")
    running.client.report_outcome(decision.decision_id, 1.0)
    running.server.decisions.flush()
    running.server.learner.step()
    assert running.server.decisions.models["loan_abandonment"].snapshot.version == 1
    running.write(BASE.replace('algorithm = "squarecb"', 'algorithm = "thompson"').replace(
        '[offers]\nnone = {}\n', '[offers]\nnone = {}\ncashback = {}\n'))
    assert running.server.reload_campaigns()
    model = running.server.decisions.models["loan_abandonment"]
    assert model.snapshot.version == 0
    assert "offer=cashback" in model.campaign.component_names()
    assert model.campaign.exploration.algorithm == "thompson"


def test_a_bad_file_changes_nothing(running: Running) -> None:
    running.user("u3")
    before = running.server.decisions.models["loan_abandonment"]
    running.write(BASE.replace(OLD_TEXT, NEW_TEXT).replace("value = 1.0", "value = -1.0"))
    running.write("[campaign]\nname = 'second'\n", name="second.toml")
    assert not running.server.reload_campaigns()
    assert running.server.decisions.models["loan_abandonment"] is before
    assert OLD_TEXT in running.texts("u3")


def test_campaigns_can_be_added_and_removed(running: Running) -> None:
    running.user("u4")
    second = BASE.replace('name = "loan_abandonment"', 'name = "loan_second"').replace(
        OLD_TEXT, NEW_TEXT)
    running.write(second, name="second.toml")
    assert running.server.reload_campaigns()
    assert NEW_TEXT in running.texts("u4", campaign="loan_second")
    assert OLD_TEXT in running.texts("u4")  # the default campaign is still the first by name
    (running.folder / "second.toml").unlink()
    assert running.server.reload_campaigns()
    with pytest.raises(grpc.RpcError) as err:
        running.client.decide("u4", campaign="loan_second")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown campaign 'loan_second'" in err.value.details()


def test_triggers_recorded_before_a_reload_are_decided_after_it(running: Running) -> None:
    """A trigger recorded by the old campaigns is looked up by campaign and position,
    so adding a campaign (whose triggers sort first) does not change its meaning."""
    running.server.journeys.close()  # the worker would decide at once; this test does
    running.user("u5")
    running.client.track([make_event(
        "u5", "flow_abandoned", time=running.clock.now(),
        strings={"flow": "personal_loan", "step": "documentation"},
    )])
    first = BASE.replace('name = "loan_abandonment"', 'name = "a_first"').replace(
        'event = "flow_abandoned"', 'event = "card_blocked"')
    running.write(first, name="a_first.toml")
    assert running.server.reload_campaigns()
    assert running.server.journeys.process() == 1
    with running.server.store.read() as txn:
        deliveries = running.server.outbox.user_deliveries(txn, "u5")
    assert deliveries and {d.campaign for d in deliveries} == {"loan_abandonment"}


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "loan.toml").write_text(BASE)
    proc = ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--campaigns", str(folder))
    try:
        with Client(proc.target, timeout=30) as client:
            client.wait_until_serving()
            client.track([
                make_event("u6", "profile", strings={"tz": "UTC", **CONSENTS}),
                make_event("u6", "loan_simulated", numbers={"amount": 5000.0},
                           strings={"currency": "USD"}),
            ])
            assert OLD_TEXT in {a.text for a in client.decide("u6", top_k=16,
                                                                dry_run=True).actions}
            (folder / "loan.toml").write_text(BASE.replace(OLD_TEXT, NEW_TEXT))
            proc.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while NEW_TEXT not in {a.text for a in client.decide("u6", top_k=16,
                                                                   dry_run=True).actions}:
                assert time.monotonic() < deadline, proc.log_path.read_text()
                time.sleep(0.1)
        assert proc.running
    finally:
        assert proc.terminate() == 0
