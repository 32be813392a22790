"""``nudge evaluate`` on any campaign: a real server's log of the shipped campaign, target
policies as plug-ins, and the allowed combinations read from the trace's codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer
from nudge.server.decisions.campaign import load_campaigns
from nudge.server.decisions.guardrails import (
    TRACE_MASKED,
    Contact,
    GuardrailPlan,
    apply_guardrails,
    local_now,
)
from nudge.server.offline import evaluate
from nudge.server.offline.evaluate import LogEntry, Space, allowed_components, allowed_mask

CAMPAIGN = "loan_abandonment"


@pytest.fixture(scope="module")
def space() -> Space:
    return Space(load_campaigns()[CAMPAIGN])


def _log_decisions(server: NudgeServer, client: Client, users: int = 80) -> Path:
    """Decisions of the shipped campaign with outcomes, in a stopped server's store."""
    rng = np.random.default_rng(7)
    events = []
    for i in range(users):
        consents = {f"consent.{c}": "granted" if rng.random() < 0.6 else "revoked"
                    for c in ("push", "whatsapp", "sms", "email")}
        events.append(make_event(f"u{i}", "loan_simulated", numbers={"amount": 900.0 + i},
                                 strings={"currency": "BRL", **consents}))
    client.track(events)
    for i in range(users):
        reply = client.decide(f"u{i}", campaign=CAMPAIGN)
        if not reply.suppressed_reason or reply.suppressed_reason == "nothing_is_best":
            client.report_outcome(reply.decision_id, float(rng.random() < 0.3))
    server.decisions.flush()
    server.stop()  # this process may now open the store itself
    return server.store.path


def test_evaluate_the_shipped_campaign_from_a_real_server(
        server: NudgeServer, client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    data = _log_decisions(server, client)
    argv = ["--data-dir", str(data), "--campaign", CAMPAIGN, "--policy", "logged,uniform",
            "--json"]
    assert evaluate.main(argv) == 0
    logged, uniform = json.loads(capsys.readouterr().out)
    assert logged["policy"] == "logged" and uniform["policy"] == "uniform"
    # The logging policy evaluated on its own log: every weight is 1.
    assert logged["ips"]["value"] == pytest.approx(logged["logged_value"])
    assert logged["snips"]["value"] == pytest.approx(logged["logged_value"])
    assert uniform["n"] == logged["n"] > 50
    # Without --campaign: the first campaign by name (the only one shipped); text output.
    assert evaluate.main(["--data-dir", str(data), "--policy", "uniform"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"policy uniform: {uniform['n']} logged decisions")
    assert "ips" in out and "95% empirical-Bernstein CI" in out
    # Bernstein intervals are the default and contain the normal ones within the rewards'
    # range (a Bernstein bound is clipped to it, a normal one is not).
    sound = evaluate.evaluate_store(data, None, ["uniform"], CAMPAIGN)[0]
    normal = evaluate.evaluate_store(data, None, ["uniform"], CAMPAIGN, interval="normal")[0]
    assert sound["interval"] == "bernstein" and normal["interval"] == "normal"
    goal = load_campaigns()[CAMPAIGN].goal
    low, high = min(-goal.opt_out_cost, 0.0), max(goal.value, 0.0)
    for name in ("ips", "dr"):
        s, n = sound[name], normal[name]
        assert s["value"] == n["value"]
        assert low <= s["ci_low"] and s["ci_high"] <= high, s
        assert s["ci_low"] <= max(n["ci_low"], low), (s, n)
        assert min(n["ci_high"], high) <= s["ci_high"], (s, n)


def test_target_policies_are_plug_ins(
        server: NudgeServer, client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    data = _log_decisions(server, client, users=30)

    class Cautious:
        """A policy of its own: nothing half the time, else uniform among the allowed."""

        name = "cautious"

        def __init__(self, space: Space) -> None:
            self.k = len(space)

        def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray:
            dist = np.zeros(self.k + 1)
            dist[:self.k][allowed] = 0.5 / allowed.sum()
            dist[self.k] = 0.5
            return dist

    cautious, by_reference = evaluate.evaluate_store(
        data, None, [Cautious, "nudge.server.offline.evaluate:UniformPolicy"], CAMPAIGN)
    assert cautious["policy"] == "cautious" and by_reference["policy"] == "uniform"
    assert cautious["n"] == by_reference["n"]

    # A policy that breaks the contract (mass where the guardrails allowed nothing) is named.
    class Reckless(Cautious):
        name = "reckless"

        def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray:
            return np.full(self.k + 1, 1.0 / (self.k + 1))

    assert not evaluate.read_log(data, Space(load_campaigns()[CAMPAIGN])).allowed.all()
    with pytest.raises(ValueError, match=r"policy reckless, decision \w+: .* did not allow"):
        evaluate.evaluate_store(data, None, [Reckless], CAMPAIGN)
    # Unknown names fail clearly, listing what exists.
    with pytest.raises(ValueError, match=r"unknown 'nope'; built-in: uniform, logged"):
        evaluate.load_policy("nope", Space(load_campaigns()[CAMPAIGN]))
    with pytest.raises(ValueError, match=r"cannot load 'no\.such\.module:Policy'"):
        evaluate.load_policy("no.such.module:Policy", Space(load_campaigns()[CAMPAIGN]))
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--data-dir", str(data), "--policy", "uniform,nope"])
    assert exc.value.code == 2
    assert "nudge evaluate: error: policy: unknown 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--data-dir", str(data), "--campaign", "other"])
    assert "campaign: 'other' is not defined (campaigns: loan_abandonment)" in (
        capsys.readouterr().err)


def test_codes_not_texts_give_the_allowed_combinations(space: Space) -> None:
    campaign = space.campaign
    plan = GuardrailPlan(campaign)
    rng = np.random.default_rng(3)
    now = 1_760_000_000.0
    seen_masked = 0
    for i in range(200):
        consents = {c: bool(rng.random() < 0.5) for c in campaign.channels}
        contacts = [Contact(now - rng.random() * 86_400 * 8, str(rng.choice(campaign.channels)),
                            campaign.name) for _ in range(rng.integers(0, 4))]
        renderable = [bool(rng.random() < 0.8) for _ in campaign.messages]
        renderable[0] = True
        when = local_now(now + rng.random() * 86_400, "America/Sao_Paulo")
        guard = apply_guardrails(plan, f"user{i}", when, consents, contacts, renderable,
                                 bool(rng.random() < 0.3))
        mask = allowed_mask(space, guard.trace, guard.suppressed)
        if guard.suppressed:
            assert not mask.any()
            continue
        # Exactly the combinations whose every component the guardrails left open.
        components = np.asarray(guard.component_mask, dtype=bool)
        assert (mask == components[space.components].all(axis=1)).all()
        # Other plain-language details give the same mask: only codes are read.
        reworded = [(code, detail if code == TRACE_MASKED else "reworded for people")
                    for code, detail in guard.trace]
        assert (allowed_mask(space, reworded, "") == mask).all()
        seen_masked += not mask.all()
    assert seen_masked > 20


def test_a_trace_masked_entry_is_what_counts(space: Space) -> None:
    trace = [("NO_CONSENT", "push: no consent on record"),
             ("QUIET_HOURS", "now: inside quiet hours"),
             (TRACE_MASKED, "channel=push send_time=now")]
    mask = allowed_mask(space, trace, "")
    components = allowed_components(space, trace, "")
    assert (mask == space.allowed(components)).all()
    assert space.open_values(components, "channel") == {"whatsapp", "sms", "email", "in_app"}
    assert space.open_values(components, "send_time") == {"morning", "lunch", "evening"}
    names = [space.names(k) for k in np.flatnonzero(mask)]
    assert names and all(n[1] != "push" and n[2] != "now" for n in names)
    # The details may say anything (here: another channel): the codes decide.
    lying = [("NO_CONSENT", "email: no consent on record"), *trace[1:]]
    assert (allowed_mask(space, lying, "") == mask).all()
    assert allowed_mask(space, [], "").all()
    assert not allowed_mask(space, trace, "holdout").any()
    assert (allowed_mask(space, trace, "nothing_is_best") == mask).all()
    with pytest.raises(ValueError, match="no MASKED entry"):
        allowed_mask(space, trace[:2], "")
    with pytest.raises(ValueError, match="'channel=fax' is not a component"):
        allowed_mask(space, [(TRACE_MASKED, "channel=fax")], "")


def test_the_low_overlap_warning_names_what_failed() -> None:
    estimate = {"value": 0.1, "ci_low": 0.0, "ci_high": 1.0, "effective_sample_size": 80.0}
    result = {"policy": "rulebook", "n": 1000, "logged_value": 0.2, "largest_weight": 9.0,
              "interval": "bernstein", "low_overlap": True, "mean_weight": 0.02,
              "ips": estimate, "snips": estimate, "dr": estimate}
    text = evaluate.format_result(result)
    assert "mean importance weight 0.02 (not near 1)" in text
    assert "effective sample size" not in text.split("WARNING")[1].split(":")[0]
    few = {**estimate, "effective_sample_size": 10.0}
    text = evaluate.format_result({**result, "mean_weight": 1.1, "ips": few})
    assert "WARNING: effective sample size 10 (below 30): the target" in text


@pytest.mark.parametrize("bad", [0.0, None, 1.5])
def test_a_log_with_an_invalid_propensity_is_refused_not_skipped(
        server: NudgeServer, client: Client, capsys: pytest.CaptureFixture[str],
        bad: float | None) -> None:
    import lmdb
    import orjson

    from nudge.server.storage.tables import decisions as decision_table

    data = _log_decisions(server, client, users=20)
    env = lmdb.open(str(data), max_dbs=32, subdir=True)
    try:
        db = env.open_db(b"decisions", create=False)
        with env.begin(write=True) as txn:
            for key, raw in txn.cursor(db=db):
                r = decision_table.decode(raw)
                if r["status"] == "settled" and r["learn"]:
                    r["propensity"] = bad
                    txn.put(key, orjson.dumps(r), db=db)  # as a JSON record: both formats read
                    victim = r["decision_id"]
                    break
    finally:
        env.close()
    with pytest.raises(SystemExit) as exited:
        evaluate.main(["--data-dir", str(data), "--campaign", CAMPAIGN])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert "propensity outside (0, 1]" in err and victim in err
