"""Offline policy evaluation estimators: known answers, coverage, validation, obp agreement."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from nudge.server.offline.ope import (
    Estimate,
    dr,
    effective_sample_size,
    importance_weights,
    ips,
    reward_model_from_action_dist,
    snips,
    target_propensity_from_action_dist,
)

# A uniform-random log over 3 actions; the target always plays action 0.
ACTIONS = np.array([0, 0, 1, 2, 0, 1])
REWARDS = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
LOGGED = np.full(6, 1.0 / 3.0)
TARGET = (ACTIONS == 0).astype(float)  # weights 3, 3, 0, 0, 3, 0


def test_target_equal_to_logging_policy_gives_the_mean_reward() -> None:
    rng = np.random.default_rng(0)
    r = rng.random(500)
    p = rng.uniform(0.05, 1.0, 500)
    for est in (ips(r, p, p), snips(r, p, p)):
        assert est.value == pytest.approx(r.mean(), rel=1e-12)
        assert est.effective_sample_size == pytest.approx(500.0)
        assert est.n == 500
        assert est.stderr == pytest.approx(r.std(ddof=1) / np.sqrt(500), rel=1e-12)


def test_deterministic_target_on_uniform_log_hand_computed() -> None:
    # Matched rows 0, 1, 4 (rewards 1, 1, 0), each with weight 3.
    est = ips(REWARDS, LOGGED, TARGET)
    assert est.value == pytest.approx(6.0 / 6.0)  # (3 + 3 + 0) / 6
    # terms 3, 3, 0, 0, 0, 0: mean 1, sample variance (4 + 4 + 1 + 1 + 1 + 1) / 5
    assert est.stderr == pytest.approx(np.sqrt(12.0 / 5.0 / 6.0))
    assert est.effective_sample_size == pytest.approx(9.0**2 / 27.0)  # 3
    assert est.ci_low == pytest.approx(1.0 - 1.959963984540054 * est.stderr)
    assert est.ci_high == pytest.approx(1.0 + 1.959963984540054 * est.stderr)

    sn = snips(REWARDS, LOGGED, TARGET)
    assert sn.value == pytest.approx(2.0 / 3.0)  # 6 / 9: the matched rows' mean reward
    # delta method: sum w^2 (r - V)^2 / (sum w)^2 * n / (n - 1)
    # = 9 * ((1/3)^2 + (1/3)^2 + (2/3)^2) / 81 * 6 / 5
    assert sn.stderr == pytest.approx(np.sqrt(6.0 / 81.0 * 6.0 / 5.0))

    # Clipping at 2: weights 2, 2, 0, 0, 2, 0 → IPS (2 + 2) / 6; SNIPS unchanged (constant w).
    assert ips(REWARDS, LOGGED, TARGET, max_weight=2.0).value == pytest.approx(4.0 / 6.0)
    assert snips(REWARDS, LOGGED, TARGET, max_weight=2.0).value == pytest.approx(2.0 / 3.0)


def test_confidence_level_widens_the_interval() -> None:
    narrow = ips(REWARDS, LOGGED, TARGET, confidence=0.5)
    wide = ips(REWARDS, LOGGED, TARGET, confidence=0.99)
    assert narrow.value == wide.value
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low
    assert (wide.ci_high - wide.value) == pytest.approx(2.5758293035489 * wide.stderr)


def test_snips_normalised_weights_and_scale_invariance() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    r = rng.random(n)
    logged = rng.uniform(0.1, 1.0, n)
    target = rng.uniform(0.0, 0.5, n)
    w = importance_weights(logged, target)
    normalised = w / w.sum()
    assert normalised.sum() == pytest.approx(1.0)
    est = snips(r, logged, target)
    assert est.value == pytest.approx(float(normalised @ r))
    # SNIPS = IPS / mean(w), and a constant error in the target propensities cancels out.
    assert est.value == pytest.approx(ips(r, logged, target).value / w.mean())
    assert snips(r, logged, 2.0 * target).value == pytest.approx(est.value)
    assert r.min() <= est.value <= r.max()


def test_dr_with_perfect_reward_model_has_no_importance_term() -> None:
    rng = np.random.default_rng(2)
    n = 400
    q_logged = rng.random(n)
    q_target = rng.random(n)
    rewards = q_logged.copy()  # the model predicts every logged reward exactly
    logged = rng.uniform(0.01, 1.0, n)
    target = rng.uniform(0.0, 1.0, n)  # weights up to 100: irrelevant here
    est = dr(rewards, logged, target, q_logged, q_target)
    assert est.value == pytest.approx(q_target.mean(), rel=1e-12)
    assert est.stderr == pytest.approx(q_target.std(ddof=1) / np.sqrt(n), rel=1e-12)
    # A constant target-policy value: the estimate is exact and the interval collapses.
    flat = dr(rewards, logged, target, q_logged, np.full(n, 0.3))
    assert flat.value == pytest.approx(0.3)
    assert flat.stderr == pytest.approx(0.0, abs=1e-15)


def test_dr_with_a_zero_model_is_ips() -> None:
    zeros = np.zeros(6)
    a = dr(REWARDS, LOGGED, TARGET, zeros, zeros)
    b = ips(REWARDS, LOGGED, TARGET)
    assert a == b


def test_confidence_intervals_cover_the_true_value_of_a_synthetic_bandit() -> None:
    """95% intervals cover the exact policy value in at least 90 of 100 independent logs."""
    env = np.random.default_rng(1234)
    n_contexts, n_actions, n = 10, 5, 2000
    click = env.uniform(0.1, 0.6, (n_contexts, n_actions))
    logging = env.dirichlet(np.full(n_actions, 5.0), n_contexts)  # overlap: all actions > 0
    target = env.dirichlet(np.full(n_actions, 0.5), n_contexts)
    true_value = float((target * click).sum(axis=1).mean())  # contexts are uniform
    model = np.clip(click + env.normal(0.0, 0.1, click.shape), 0.0, 1.0)  # a biased model
    model_target = (target * model).sum(axis=1)

    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(100):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, n_contexts, n)
        cum = logging[x].cumsum(axis=1)
        a = (rng.random(n)[:, None] > cum).sum(axis=1).clip(max=n_actions - 1)
        r = (rng.random(n) < click[x, a]).astype(float)
        logged_p, target_p = logging[x, a], target[x, a]
        ests: dict[str, Estimate] = {
            "ips": ips(r, logged_p, target_p),
            "snips": snips(r, logged_p, target_p),
            "dr": dr(r, logged_p, target_p, model[x, a], model_target[x]),
        }
        for name, est in ests.items():
            covered[name] += int(est.ci_low <= true_value <= est.ci_high)
    assert min(covered.values()) >= 90, covered


def test_bernstein_interval_hand_computed() -> None:
    # Weights 1 and rewards in [0, 1]: the terms are the rewards, in a range of width 1.
    r = np.random.default_rng(7).random(1000)
    p = np.full(1000, 0.5)
    est = ips(r, p, p, interval="bernstein", reward_range=(0.0, 1.0))
    log_term = np.log(4.0 / 0.05)
    half = np.sqrt(2.0 * r.var(ddof=1) * log_term / 1000) + 7.0 * log_term / (3.0 * 999)
    assert (est.value, est.interval) == (pytest.approx(r.mean()), "bernstein")
    assert est.ci_high - est.value == pytest.approx(half)
    assert est.value - est.ci_low == pytest.approx(half)
    # A wider a-priori reward range widens it.
    wider = ips(r, p, p, interval="bernstein", reward_range=(-1.0, 1.0))
    assert wider.ci_high - wider.value == pytest.approx(half + 7.0 * log_term / (3.0 * 999))
    # Heavy weights on 6 decisions: the interval is clamped to the rewards' range.
    tiny = ips(REWARDS, LOGGED, TARGET, interval="bernstein")
    assert (tiny.ci_low, tiny.ci_high) == (0.0, 1.0)
    sn = snips(REWARDS, LOGGED, TARGET, interval="bernstein")
    assert 0.0 <= sn.ci_low <= sn.value <= sn.ci_high <= 1.0
    with pytest.raises(ValueError, match="interval must be one of"):
        ips(REWARDS, LOGGED, TARGET, interval="bootstrap")
    with pytest.raises(ValueError, match="rewards must lie inside reward_range"):
        ips(REWARDS, LOGGED, TARGET, interval="bernstein", reward_range=(0.0, 0.5))


def test_bernstein_covers_where_heavy_weights_break_the_normal_interval() -> None:
    """A logger that almost never takes the action the target likes: weights of 250 on a
    handful of decisions. The normal interval misses the truth far more often than 5%; the
    empirical-Bernstein one does not."""
    n, logging, target = 2000, np.array([0.998, 0.002]), np.array([0.5, 0.5])
    click = np.array([0.1, 0.5])
    truth = float(target @ click)
    covered = {"normal": 0, "bernstein": 0}
    covered_dr = {"normal": 0, "bernstein": 0}
    runs = 200
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        a = (rng.random(n) < logging[1]).astype(int)
        r = (rng.random(n) < click[a]).astype(float)
        model = np.full(2, 0.1)  # a model that knows nothing of the rare action
        for interval in covered:
            e = ips(r, logging[a], target[a], interval=interval, reward_range=(0.0, 1.0))
            covered[interval] += int(e.ci_low <= truth <= e.ci_high)
            d = dr(r, logging[a], target[a], model[a], np.full(n, float(target @ model)),
                   interval=interval, reward_range=(0.0, 1.0))
            covered_dr[interval] += int(d.ci_low <= truth <= d.ci_high)
    assert covered["normal"] < 0.9 * runs and covered_dr["normal"] < 0.9 * runs
    assert covered["bernstein"] >= 0.95 * runs and covered_dr["bernstein"] >= 0.95 * runs


def test_action_dist_helpers_match_a_loop() -> None:
    rng = np.random.default_rng(3)
    n, n_actions, n_positions = 50, 7, 3
    dist = rng.dirichlet(np.ones(n_actions), (n, n_positions)).transpose(0, 2, 1)
    q = rng.random((n, n_actions, n_positions))
    actions = rng.integers(0, n_actions, n)
    positions = rng.integers(0, n_positions, n)
    picked = target_propensity_from_action_dist(dist, actions, positions)
    q_logged, q_target = reward_model_from_action_dist(dist, q, actions, positions)
    for i in range(n):
        a, k = actions[i], positions[i]
        assert picked[i] == dist[i, a, k]
        assert q_logged[i] == q[i, a, k]
        assert q_target[i] == pytest.approx(sum(dist[i, b, k] * q[i, b, k] for b in range(7)))
    # 2-D (single position) form needs no positions.
    flat = dist[:, :, 0]
    assert np.array_equal(
        target_propensity_from_action_dist(flat, actions), flat[range(n), actions]
    )


def test_effective_sample_size_edges() -> None:
    assert effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_sample_size(np.zeros(4)) == 0.0


# --- validation -------------------------------------------------------------------------------

R, P = np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rewards": [1.0, 0.0]}, r"logged_propensity must have the same length as rewards"),
        ({"target_propensity": [0.5]}, r"target_propensity must have the same length"),
        ({"rewards": [1.0, np.nan, 0.0]}, r"rewards must be finite .* index 1"),
        ({"logged_propensity": [0.5, np.inf, 0.5]}, r"logged_propensity must be finite"),
        ({"logged_propensity": [0.5, 0.0, 0.5]}, r"logged_propensity must be in \(0, 1\] but is 0"),
        ({"logged_propensity": [0.5, 1.5, 0.5]}, r"logged_propensity must be in \(0, 1\]"),
        ({"logged_propensity": [0.5, -0.1, 0.5]}, r"logged_propensity must be in \(0, 1\]"),
        ({"target_propensity": [0.5, -0.1, 0.5]}, r"target_propensity must be in \[0, 1\]"),
        ({"target_propensity": [0.5, 1.01, 0.5]}, r"target_propensity must be in \[0, 1\]"),
        ({"rewards": [[1.0, 0.0, 1.0]]}, r"rewards must be 1-dimensional"),
        ({"rewards": [1.0]}, r"rewards must have at least 2 entries"),
        ({"max_weight": 0.0}, r"max_weight must be a finite number > 0"),
        ({"max_weight": np.inf}, r"max_weight must be a finite number > 0"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
    ],
)
@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_bad_inputs_name_the_argument_and_rule(
    estimator: str, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"rewards": R, "logged_propensity": P, "target_propensity": P}
    args.update(kwargs)
    if estimator == "dr":
        fn = dr
        args.setdefault("reward_model_logged", np.zeros(3))
        args.setdefault("reward_model_target", np.zeros(3))
    else:
        fn = ips if estimator == "ips" else snips
    with pytest.raises(ValueError, match=match):
        fn(**args)  # type: ignore[operator]


def test_dr_validates_the_reward_model_arrays() -> None:
    with pytest.raises(ValueError, match=r"reward_model_logged must have the same length"):
        dr(R, P, P, np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"reward_model_target must be finite"):
        dr(R, P, P, np.zeros(3), np.array([0.0, np.nan, 0.0]))


def test_snips_without_overlap_is_an_error_not_a_nan() -> None:
    with pytest.raises(ValueError, match=r"target_propensity is 0 for every logged action"):
        snips(R, P, np.zeros(3))
    assert ips(R, P, np.zeros(3)).value == 0.0  # IPS is defined: the target earns nothing here


def test_action_dist_validation() -> None:
    dist = np.full((3, 4, 2), 0.25)
    actions = np.array([0, 1, 3])
    with pytest.raises(ValueError, match=r"positions is required when there are 2 positions"):
        target_propensity_from_action_dist(dist, actions)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 4\), got 4 at index 1"):
        target_propensity_from_action_dist(dist, [0, 4, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"actions must be integers"):
        target_propensity_from_action_dist(dist, [0.0, 1.0, 2.0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"positions must be 1-dimensional with length 3"):
        target_propensity_from_action_dist(dist, actions, [0, 1])
    bad = dist.copy()
    bad[2, 0, 1] = 0.5
    with pytest.raises(ValueError, match=r"sum to 1 over actions: row 2, position 1"):
        target_propensity_from_action_dist(bad, actions, [0, 0, 0])
    with pytest.raises(ValueError, match=r"action_dist must have shape"):
        target_propensity_from_action_dist(np.ones(3), actions)
    with pytest.raises(ValueError, match=r"estimated_rewards must have action_dist's shape"):
        reward_model_from_action_dist(dist, np.zeros((3, 4, 1)), actions, [0, 0, 0])


# --- agreement with obp ------------------------------------------------------------------------

_OBP_MISSING = importlib.util.find_spec("obp") is None


@pytest.mark.skipif(
    _OBP_MISSING,
    reason="optional obp (Open Bandit Pipeline) not installed: "
    "pip install --no-deps obp==0.4.1 plus torch, pandas, scikit-learn, matplotlib, seaborn, "
    "tqdm, pyyaml, mypy-extensions",
)
def test_agrees_with_obp_within_one_percent_on_the_bundled_open_bandit_sample() -> None:
    # A child process: obp configures the root logger and imports torch at import time, which
    # this test session should not inherit.
    proc = subprocess.run(
        [sys.executable, "-m", "nudge.bench.ope_obp_check", "--n-sim", "20000"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if "is not importable" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agree: largest relative difference" in proc.stdout, proc.stdout
    for policy in ("bts", "eps-greedy"):
        for est in ("ips", "snips", "dr"):
            assert any(line.split()[:2] == [policy, est] for line in proc.stdout.splitlines())
