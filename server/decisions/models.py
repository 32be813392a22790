"""The model cache: each loaded campaign with the model deciders use for it.

A ``CampaignModel`` is never edited: the learner publishes a new one by swapping the
reference in ``ModelCache.models``, so a decider sees the old model or the new, never half
an update. Stored models (``storage/tables/models.py``) are matched to the running
campaign here: one that no longer fits starts from the prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nudge.kernels import context as ctx
from nudge.kernels import learner as lrn
from nudge.kernels import policy
from nudge.kernels.snapshot import PolicySnapshot
from nudge.server.decisions.campaign import Campaign
from nudge.server.decisions.features import context_layout
from nudge.server.errors import InvalidArgument
from nudge.server.storage.tables import models as model_table


@dataclass(frozen=True)
class CampaignModel:
    """What deciders read for one campaign; the learner publishes a new one, never edits."""

    campaign: Campaign
    layout: ctx.ContextLayout
    snapshot: PolicySnapshot
    stats: ctx.ContextStats
    # Last rewards-log sequence this model has learned from.
    learned_seq: int = 0

    @cached_property
    def version(self) -> str:
        return f"{self.campaign.name}/v{self.snapshot.version}"

    @cached_property
    def policy_params(self) -> policy.PolicyParams:
        e = self.campaign.exploration
        return policy.PolicyParams(
            mode=e.algorithm,
            noise_variance=e.noise_variance,
            gamma_scale=e.gamma_scale,
            local_dims=len(self.campaign.space.dim_sizes) if e.neighbourhood else 0,
            explore_all=e.explore_all,
            optimism=e.optimism,
            mc_samples=e.propensity_samples,
            mc_max_samples=e.propensity_samples,
        )

    @cached_property
    def learner_params(self) -> lrn.LearnerParams:
        """How outcomes update this campaign's model. The logistic link reads a reward on
        [worst, goal value]: the worst is an opt-out, or every message's contact cost."""
        e, goal = self.campaign.exploration, self.campaign.goal
        most_messages = max((f.count for f in self.campaign.frequencies), default=1)
        worst = -max(goal.opt_out_cost, goal.contact_cost * most_messages, 0.0)
        best = goal.value if goal.value > worst else worst + 1.0
        return lrn.LearnerParams(forgetting=e.forgetting, link=e.link,
                                 reward_range=(worst, best), prior_groups=self._prior_groups,
                                 credit=e.credit)

    @property
    def _prior_groups(self) -> tuple[tuple[int, int], ...]:
        """Each pair's cells, as component ranges, when their prior is learned (the
        logistic link only: the identity link ignores ``learned_prior``)."""
        e, space = self.campaign.exploration, self.campaign.space
        if e.link != lrn.LINK_LOGISTIC or e.learned_prior != lrn.LEARNED_PRIOR_CELLS:
            return ()
        return lrn.pair_cell_groups(space.dim_sizes, space.pairs)

    @classmethod
    def initial(cls, campaign: Campaign) -> CampaignModel:
        layout = context_layout(campaign)
        snapshot = lrn.initial_snapshot(
            campaign.n_components, layout.n_features, campaign.exploration.prior_precision,
            campaign.exploration.slope_precision, campaign.exploration.intercept_variance,
        )
        return cls(campaign, layout, snapshot, ctx.initial_stats(layout))


def encode_model(model: CampaignModel) -> bytes:
    """The model as stored (with the feature and component names it was learned with)."""
    return model_table.encode(model.snapshot, model.stats, model.layout.feature_names(),
                              model.campaign.component_names())


def fit_stored(
    stored: model_table.StoredModel, initial: CampaignModel, learned_seq: int
) -> CampaignModel | None:
    """The stored model for this campaign, or None when it no longer fits: another shape,
    or the same shape with features or components that mean something else (event types
    or a string's known values reordered, a value renamed)."""
    if stored.snapshot.mean_t.shape != initial.snapshot.mean_t.shape:
        return None
    if stored.features is not None and stored.features != initial.layout.feature_names():
        return None
    if (stored.components is not None
            and stored.components != initial.campaign.component_names()):
        return None
    return CampaignModel(initial.campaign, initial.layout, stored.snapshot, stored.stats,
                         learned_seq)


class ModelCache:
    """The loaded campaigns and each one's current model."""

    def __init__(self, campaigns: dict[str, Campaign], default_campaign: str | None) -> None:
        self._configured_default = default_campaign
        self.models: dict[str, CampaignModel] = {}
        self.replace(campaigns)

    def replace(self, campaigns: dict[str, Campaign]) -> None:
        """Decide with these campaigns from now on (start, and reloads without restart).

        A campaign whose dimension values and context features are unchanged keeps its
        learned model (texts, guardrails, goal and exploration settings may all change);
        one whose shape changed starts from the prior, and a new one too."""
        default = self._configured_default or sorted(campaigns)[0]
        if default not in campaigns:
            raise InvalidArgument("default_campaign", f"{default!r} is not loaded")
        models: dict[str, CampaignModel] = {}
        for name, campaign in campaigns.items():
            fresh = CampaignModel.initial(campaign)
            old = self.models.get(name)
            if (old is not None and old.layout == fresh.layout
                    and old.campaign.component_names() == campaign.component_names()):
                fresh = CampaignModel(campaign, old.layout, old.snapshot, old.stats,
                                      old.learned_seq)
            models[name] = fresh
        self.models = models
        self.campaigns = campaigns
        self.default_campaign = default

    def get(self, name: str) -> CampaignModel:
        """The model of a campaign by name ("" for the default one)."""
        name = name or self.default_campaign
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise InvalidArgument("campaign", f"unknown campaign {name!r} (loaded: {known})")
        return model
