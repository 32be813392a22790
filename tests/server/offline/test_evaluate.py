"""``nudge evaluate`` against the simulator's truth: the estimators' intervals must hold the
true value of the evaluated policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nudge.bench.bank_sim import run_policy
from nudge.server.offline import evaluate


@pytest.fixture(scope="module")
def validation() -> dict:
    return evaluate.validate(2500, seed=1)


def test_uniform_estimates_hold_the_truth(validation: dict) -> None:
    target = validation["targets"]["uniform"]
    truth = target["true_value_on_logged_decisions"]
    for name in ("ips", "snips", "dr"):
        e = target["estimate"][name]
        assert e["ci_low"] <= truth <= e["ci_high"], (name, e, truth)
        assert e["effective_sample_size"] > 100
    # and the policy actually run in the simulator on the same seed
    assert all(ok["running_policy"] for ok in target["within_ci"].values()), target


def test_rulebook_is_flagged_low_overlap_and_dr_holds(validation: dict) -> None:
    # A deterministic rule over ~460 combinations is rarely what nudge logged: IPS/SNIPS
    # rest on a handful of decisions (flagged); DR's reward model still finds the truth.
    target = validation["targets"]["rulebook"]
    assert target["estimate"]["low_overlap"]
    # Its weights average far below 1 (the log rarely took its actions); uniform's near 1.
    assert target["estimate"]["mean_weight"] < 0.5
    uniform = validation["targets"]["uniform"]["estimate"]
    assert not uniform["low_overlap"] and 0.5 <= uniform["mean_weight"] <= 2.0
    assert target["within_ci"]["dr"]["logged_decisions"], target


def test_cli_on_a_kept_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_policy("nudge", 400, seed=2, data_dir=tmp_path / "sim")
    argv = ["--data-dir", str(tmp_path / "sim" / "data"), "--policy", "logged,uniform",
            "--json"]
    assert evaluate.main(argv) == 0
    logged, uniform = json.loads(capsys.readouterr().out)
    # The logging policy evaluated on its own log: every weight is 1.
    assert logged["ips"]["value"] == pytest.approx(logged["logged_value"])
    assert logged["snips"]["value"] == pytest.approx(logged["logged_value"])
    assert uniform["n"] == logged["n"] > 300


def test_bernstein_intervals_are_the_default_and_contain_the_normal_ones(tmp_path: Path) -> None:
    run_policy("nudge", 400, seed=4, data_dir=tmp_path / "sim")
    data, campaigns = tmp_path / "sim" / "data", tmp_path / "sim" / "campaigns"
    sound = evaluate.evaluate_store(data, campaigns, ["uniform"])[0]
    normal = evaluate.evaluate_store(data, campaigns, ["uniform"], interval="normal")[0]
    assert sound["interval"] == "bernstein" and normal["interval"] == "normal"
    assert sound["largest_weight"] > 1.0
    for name in ("ips", "dr"):
        s, n = sound[name], normal[name]
        assert s["value"] == n["value"]
        assert s["ci_low"] <= n["ci_low"] and n["ci_high"] <= s["ci_high"], (s, n)


def test_the_low_overlap_warning_names_what_failed() -> None:
    estimate = {"value": 0.1, "ci_low": 0.0, "ci_high": 1.0, "effective_sample_size": 80.0}
    result = {"policy": "rulebook", "n": 1000, "logged_value": 0.2, "largest_weight": 9.0,
              "interval": "bernstein", "low_overlap": True, "mean_weight": 0.02,
              "ips": estimate, "snips": estimate, "dr": estimate}
    text = evaluate._format(result)
    assert "mean importance weight 0.02 (not near 1)" in text
    assert "effective sample size" not in text.split("WARNING")[1].split(":")[0]
    few = {**estimate, "effective_sample_size": 10.0}
    text = evaluate._format({**result, "mean_weight": 1.1, "ips": few})
    assert "WARNING: effective sample size 10 (below 30): the target" in text
