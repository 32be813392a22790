"""The world family (deterministic per seed, history counts) and the harness on a tiny world."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nudge.bench.risk_worlds import WORLDS, generate_world
from nudge.bench.risk_worlds_eval import evaluate_world, run_model

TINY = {"n_customers": 120, "days": 24.0}


def tiny(name: str, seed: int):
    spec = WORLDS[name]
    spec = replace(spec, **TINY, warmup_days=min(spec.warmup_days, 6.0),
                   attacked_share=0.15)
    return generate_world(name, seed, spec)


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_world_is_deterministic_per_seed(name: str) -> None:
    a, b, c = tiny(name, 1), tiny(name, 1), tiny(name, 2)
    for col in ("time", "user", "amount", "local_hour", "country", "device_id", "label",
                "history", "label_index", "label_time"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert len(a) != len(c) or not np.array_equal(a.amount, c.amount)
    assert (np.diff(a.time) >= 0).all() and a.label.sum() > 0
    # history = how many earlier transactions this customer had
    for u in np.unique(a.user)[:10]:
        np.testing.assert_array_equal(a.history[a.user == u], np.arange((a.user == u).sum()))


def test_label_regimes() -> None:
    f = tiny("labels_fraud", 0)
    g = tiny("labels_genuine", 0)
    assert (f.label[f.label_index] == 1).all() and (f.label_value == 1).all()
    assert (g.label[g.label_index] == 0).all() and g.label_index.size > 0
    assert (f.label_time >= f.time[f.label_index] + 0.8 * 14 * 86400).all()
    assert tiny("launch", 0).label_index.size == 0


def test_unknown_world_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown world"):
        generate_world("nowhere", 0)


def test_harness_on_a_tiny_world() -> None:
    w = tiny("labels_genuine", 3)
    run = run_model(w)
    assert run.learned.max() <= 1  # nothing learned twice
    r = evaluate_world(w)
    assert 0.0 <= r["ap"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
    assert len(r["reliability"]) == 10 and r["weekly_genuine_alert"][0.5]
    assert r["tx_per_s"] > 0
