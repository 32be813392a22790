"""One default: a campaign without [exploration] runs what README "Decisions" documents and
what the policy benchmarks measure (the kernels' defaults)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from nudge.kernels import learner, policy
from nudge.server.decisions.campaign import Exploration, parse_campaign, shipped_campaigns_dir

README = Path(__file__).resolve().parents[3] / "README.md"
SHIPPED = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()


def _without_exploration(text: str) -> str:
    head, rest = text.split("\n[exploration]", 1)
    tail = rest.split("\n[", 1)[1]  # the next table
    return head + "\n[" + tail


def _readme_defaults() -> dict[str, object]:
    text = README.read_text()
    bullet = text.split("- **Defaults.**", 1)[1].split("\n- ", 1)[0]
    pairs = re.findall(r"`([a-z_]+ = [^`]+)`", bullet)
    assert pairs, "README 'Decisions' lost its Defaults bullet"
    return tomllib.loads("\n".join(pairs))


def test_no_exploration_table_parses_to_the_readme_defaults() -> None:
    campaign = parse_campaign(_without_exploration(SHIPPED), "no_exploration")
    documented = _readme_defaults()
    parsed = {f.name: getattr(campaign.exploration, f.name) for f in fields(Exploration)}
    assert set(documented) == set(parsed), "README must list every [exploration] key"
    for key, value in documented.items():
        assert parsed[key] == value, f"exploration.{key}: parser {parsed[key]!r}, README {value!r}"
    assert campaign.exploration.algorithm == "squarecb"


def test_parse_defaults_are_the_kernels_defaults() -> None:
    e = Exploration()
    p = policy.DEFAULT_POLICY
    assert (e.algorithm, e.noise_variance, e.gamma_scale, e.propensity_samples) == (
        p.mode, p.noise_variance, p.gamma_scale, p.mc_samples)
    assert e.forgetting == learner.LearnerParams().forgetting
    assert e.prior_precision == learner.DEFAULT_PRIOR_PRECISION
    assert e.slope_precision == learner.DEFAULT_SLOPE_PRECISION
    assert e.link == learner.DEFAULT_LINK
    assert e.intercept_variance == learner.DEFAULT_INTERCEPT_VARIANCE
    assert e.learned_prior == learner.DEFAULT_LEARNED_PRIOR
    assert e.credit == learner.DEFAULT_CREDIT == learner.LearnerParams().credit
    assert e.optimism == policy.DEFAULT_OPTIMISM
    assert policy.PolicyParams() == p


def test_an_empty_exploration_table_is_the_same_as_none() -> None:
    empty = _without_exploration(SHIPPED) + "\n[exploration]\n"
    assert parse_campaign(empty, "empty").exploration == Exploration()


def test_a_learned_cell_prior_covers_each_pairs_cells_with_the_logistic_link() -> None:
    from nudge.server.decisions.models import CampaignModel

    base = _without_exploration(SHIPPED) + '\n[exploration]\nlearned_prior = "cells"\n'
    model = CampaignModel.initial(parse_campaign(base, "cells"))
    space = model.campaign.space
    start, groups = sum(space.dim_sizes), []
    for a, b in space.pairs:
        groups.append((start, start + space.dim_sizes[a] * space.dim_sizes[b]))
        start = groups[-1][1]
    assert model.learner_params.prior_groups == tuple(groups)
    identity = CampaignModel.initial(parse_campaign(base + 'link = "identity"\n', "identity"))
    assert identity.learner_params.prior_groups == ()  # the identity link ignores it


def test_credit_reaches_the_learner() -> None:
    from nudge.server.decisions.models import CampaignModel

    base = _without_exploration(SHIPPED) + '\n[exploration]\ncredit = "harmonic"\n'
    model = CampaignModel.initial(parse_campaign(base, "harmonic"))
    assert model.learner_params.credit == "harmonic"
    default = CampaignModel.initial(parse_campaign(_without_exploration(SHIPPED), "default"))
    assert default.learner_params.credit == learner.DEFAULT_CREDIT
