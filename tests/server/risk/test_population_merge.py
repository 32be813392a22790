"""Cluster mode's population merge (server/risk/population_merge.py): two rows that learned
disjoint customers' transactions, merged, hold what one row that learned them all holds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from nudge.kernels import risk_model as M
from nudge.server.risk import population_merge as pm

sys.path.insert(0, str(Path(__file__).parents[2] / "kernels"))  # the kernels' test inputs
from test_risk_model import random_txs

PARAMS = M.ModelParams()
SHARED = ~pm.LOCAL  # every entry but the layout version and the case-control ring


def _learned(pop: np.ndarray, txs: np.ndarray, rows: np.ndarray, n_users: int) -> np.ndarray:
    """``pop`` after its customers learned ``txs`` (everything learned: a backfill), and
    the features of each (for labels)."""
    users = np.tile(M.new_user_state(), (n_users, 1))
    return M.score_and_learn(users, rows, pop, txs, PARAMS, hold=False).features


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_nodes_merged_hold_what_one_node_learning_both_holds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    txs_a, txs_b = random_txs(rng, 400), random_txs(rng, 300)
    rows_a, rows_b = rng.integers(0, 6, 400), rng.integers(0, 5, 300)
    start = M.new_population_state()
    node_a, node_b, one = start.copy(), start.copy(), start.copy()
    feats_a = _learned(node_a, txs_a, rows_a, 6)
    _learned(node_b, txs_b, rows_b, 5)
    # The customers are disjoint: one row learning both sees each customer's history as
    # its own node did (a customer's transactions live on one node).
    _learned(one, txs_a, rows_a, 6)
    _learned(one, txs_b, rows_b, 5)
    labels_a = (rng.random(30) < 0.5).astype(float)
    M.apply_labels(node_a, feats_a[:30], labels_a, PARAMS)
    M.apply_labels(one, feats_a[:30], labels_a, PARAMS)
    merged = pm.from_additive(
        pm.to_additive(start) + pm.delta(node_a, start) + pm.delta(node_b, start), one)
    counts = SHARED.copy()
    counts[pm.WEIGHTS] = False  # SGD steps: summed, not equal (checked below)
    np.testing.assert_allclose(merged[counts], one[counts], rtol=1e-9, atol=1e-9)
    # The amount moments (compared above) are the union's, not either node's; the
    # takeover side's (FRAUD labels) merge the same way.
    assert merged[M.P_AMT_N] == node_a[M.P_AMT_N] + node_b[M.P_AMT_N] > 0
    assert merged[M.P_FR_AMT_N] == node_a[M.P_FR_AMT_N] > 0
    # Only node a saw labels: its weights' steps are the merged weights' steps.
    np.testing.assert_allclose(merged[pm.WEIGHTS], node_a[pm.WEIGHTS], rtol=1e-12)
    np.testing.assert_array_equal(merged[pm.LOCAL], one[pm.LOCAL])  # kept as given


def test_the_additive_form_round_trips_and_refuses_a_wrong_layout() -> None:
    rng = np.random.default_rng(7)
    pop = M.new_population_state()
    _learned(pop, random_txs(rng, 200), rng.integers(0, 4, 200), 4)
    back = pm.from_additive(pm.to_additive(pop), pop)
    np.testing.assert_allclose(back, pop, rtol=1e-9, atol=1e-9)
    assert not np.any(pm.delta(pop, pop))
    with pytest.raises(ValueError, match="population"):
        pm.to_additive(np.zeros(5))
