"""The world family: calibrated generators, and short runs through a real server (tiny
sizes; the 30,000-decision figures come from `nudge bench quality`)."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.bench import worlds
from nudge.server.decisions.campaign import parse_campaign


def test_the_campaign_is_the_issues_space() -> None:
    campaign = parse_campaign(worlds.campaign_text(), worlds.CAMPAIGN)
    assert campaign.space.n_combos == worlds.N_COMBOS + 1 == 3_601
    assert (campaign.space.combo_mask[:-1].astype(bool) == worlds.ALLOWED).all()
    assert 3_000 < worlds.ALLOWED.sum() < worlds.N_COMBOS  # a few static exclusions
    assert campaign.context.numbers == worlds.NUMBER_NAMES and len(worlds.NUMBER_NAMES) == 31


@pytest.mark.parametrize("name", worlds.WORLDS)
def test_every_world_converts_3_percent_under_random(name: str) -> None:
    world = worlds.make_world(name, 3)
    h, x = world.users(np.random.default_rng(1), 3_000)
    assert x.shape == (3_000, 31) and np.isfinite(x).all()
    p = world.probabilities(h)[:, worlds.ALLOWED_ALL]
    assert abs(p[:, :-1].mean() - worlds.RANDOM_RATE) < 0.004
    best = p.max(axis=1)
    nothing_best = (p[:, -1] >= best).mean()
    if name == "nothing":
        assert 0.28 < nothing_best < 0.39
    else:
        assert nothing_best == 0.0  # every message beats nothing
    assert p.mean() / best.mean() < 0.25  # the context matters: random is far from the oracle


def test_drift_changes_the_best_message_halfway() -> None:
    world = worlds.make_world("drift", 0)
    h, _ = world.users(np.random.default_rng(2), 500)
    world.drift_at = 100
    before = world.probabilities(h, 99).argmax(axis=1)
    after = world.probabilities(h, 100).argmax(axis=1)
    assert (before != after).mean() > 0.5


@pytest.mark.parametrize(("name", "exploration"), [
    ("nothing", None),  # no [exploration] table: the defaults (SquareCB)
    ("dense", 'algorithm = "thompson"'),
])
def test_a_short_run_through_a_server_logs_only_valid_propensities(
        name: str, exploration: str | None) -> None:
    result = worlds.run(worlds.RunConfig(world=name, seed=4, decisions=300, batch=100,
                                         exploration=exploration))
    s = result.summary()
    assert s["invalid_propensities"] == 0 and 0 < s["propensity_min"] <= 1
    assert s["decisions"] == 300 and 0 < s["last_fifth"] <= 1
    assert (result.policy <= result.oracle + 1e-12).all()
    assert "| " + name in worlds.format_table([s])


def test_in_process_run_matches_the_servers_shape() -> None:
    s = worlds.run_in_process(worlds.RunConfig(world="sparse", seed=0, decisions=200,
                                               batch=100)).summary()
    assert s["invalid_propensities"] == 0 and set(s["curve"]) == set()


def _summary(world: str, seed: int, last: float, early: float | None) -> dict[str, object]:
    return {"world": world, "seed": seed, "last_fifth": last, "from_5k_to_10k": early}


def test_paired_differences_pair_runs_by_world_and_seed() -> None:
    base = [_summary("dense", 1, 0.70, 0.40), _summary("dense", 2, 0.60, 0.50),
            _summary("types", 1, 0.80, 0.60)]
    change = [_summary("types", 1, 0.75, 0.70), _summary("dense", 2, 0.66, 0.50),
              _summary("dense", 1, 0.72, 0.43), _summary("sparse", 1, 0.9, 0.9)]  # no base
    got = worlds.paired(change, base)
    assert got["runs"] == 3
    d = np.array([0.02, 0.06, -0.05])
    last = got["all"]["last_fifth"]
    assert last["n"] == 3 and last["better"] == 2
    assert np.isclose(last["diff"], d.mean())
    assert np.isclose(last["se"], d.std(ddof=1) / np.sqrt(3))
    assert np.isclose(got["by_world"]["dense"]["last_fifth"]["diff"], 0.04)
    assert got["by_world"]["types"]["from_5k_to_10k"]["se"] == 0.0  # one pair
    assert got["all"]["from_5k_to_10k"]["better"] == 2  # a tie is not better
    table = worlds.format_paired(got)
    assert "| dense | 2 |" in table and "+0.040" in table and "**all**" in table


def test_paired_differences_need_a_common_run() -> None:
    with pytest.raises(ValueError, match="same world and seed"):
        worlds.paired([_summary("dense", 1, 0.7, 0.4)], [_summary("dense", 2, 0.7, 0.4)])


def test_short_runs_skip_the_early_window_in_the_pairing() -> None:
    got = worlds.paired([_summary("dense", 1, 0.7, None)], [_summary("dense", 1, 0.6, None)])
    assert got["all"]["from_5k_to_10k"]["n"] == 0
    assert "| dense | 1 |" in worlds.format_paired(got)


def test_the_greedy_column_scores_without_changing_the_run() -> None:
    cfg = worlds.RunConfig(world="dense", seed=0, decisions=600, batch=200)
    plain = worlds.run_in_process(cfg)
    both = worlds.run_in_process(cfg, greedy=True)
    assert (both.choices == plain.choices).all()  # the greedy choice is never played
    assert both.greedy is not None and plain.greedy is None
    assert (both.greedy <= both.oracle + 1e-12).all()
    s = both.summary()
    assert s["last_fifth"] == plain.summary()["last_fifth"]
    assert 0 < s["greedy"]["last_fifth"] <= 1 and "greedy" not in plain.summary()
