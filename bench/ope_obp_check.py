"""nudge's OPE estimators side by side with obp's on the Open Bandit Dataset sample.

Run: ``python -m nudge.bench.ope_obp_check [--n-sim N] [--seed S] [--tolerance T]``.

Why: :mod:`nudge.server.offline.ope` is what gates a new policy before it goes live, so its numbers
must match an independent, widely used implementation on real logged data. obp (Open Bandit
Pipeline) ships a ~10,000-row sample of the Open Bandit Dataset (ZOZOTOWN fashion
recommendations: 80 actions, 3 positions, logged by a uniform-random policy with known
propensities), so the check runs offline.

Two target policies are evaluated on the random-policy log:

* ``bts`` — obp's ``BernoulliTS`` with the ZOZOTOWN prior, its action distribution from
  ``compute_batch_action_dist`` (Monte Carlo, seeded). The sample also holds a log *collected*
  by that policy, whose mean click rate is printed as an on-policy reference.
* ``eps-greedy`` — per position, the action with the best smoothed click rate in the log, with
  probability 0.9, else uniform: large importance weights (up to ~72), a harder test.

The reward model for DR is a smoothed per-(action, position) mean click rate, and the same
array is handed to nudge's :func:`~nudge.server.offline.ope.dr` and obp's
``DoublyRobust``. IPS, SNIPS and DR point estimates must agree within ``--tolerance``
(relative, default 1%); the process exits 1 otherwise. nudge's normal/delta-method intervals
are printed beside obp's bootstrap intervals for information only (different methods; not
asserted).

obp is optional and never a dependency of nudge: without it this prints a message and exits 0.
obp 0.4.1 needs torch (imported by its estimators) and was written for pandas < 2; see
:class:`_Pandas2OpenBanditDataset` for the one incompatibility this works around.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudge.server.offline.ope import (
    dr,
    ips,
    reward_model_from_action_dist,
    snips,
    target_propensity_from_action_dist,
)

ESTIMATORS = ("ips", "snips", "dr")
# obp's ``estimator_name`` for each of ours.
OBP_NAMES = {"ips": "ipw", "snips": "snipw", "dr": "dr"}


@dataclass(frozen=True)
class Row:
    """One estimator on one target policy, nudge beside obp."""

    policy: str
    estimator: str
    nudge: float
    obp: float
    nudge_ci: tuple[float, float]
    obp_ci: tuple[float, float]
    effective_sample_size: float

    @property
    def relative_difference(self) -> float:
        return abs(self.nudge - self.obp) / max(abs(self.obp), 1e-12)


def obp_unavailable_reason() -> str | None:
    """``None`` when obp and what it imports load; else why not (printed, never raised)."""
    try:
        import obp  # noqa: F401
        from obp.dataset import OpenBanditDataset  # noqa: F401
        from obp.ope import OffPolicyEvaluation  # noqa: F401
    except ImportError as exc:  # obp itself, or torch/pandas/sklearn it imports
        return f"{type(exc).__name__}: {exc}"
    return None


def _load_dataset(behavior_policy: str) -> Any:
    """The bundled sample (no ``data_path``), loaded so it works on pandas 1 and 2."""
    import pandas as pd
    from obp.dataset import OpenBanditDataset
    from sklearn.preprocessing import LabelEncoder

    class _Pandas2OpenBanditDataset(OpenBanditDataset):
        """obp 0.4.1's ``pre_process`` with pandas 2 keyword arguments.

        obp 0.4.1 calls ``DataFrame.drop("item_feature_0", 1)`` and ``pd.concat([...], 1)``:
        pandas 2 removed the positional ``axis`` argument, so loading raises ``TypeError``.
        obp documents ``pre_process`` as the method to override for custom features; this
        override is the original body with ``axis=1`` spelled out, and ``get_dummies`` cast
        to ``uint8`` (pandas 2 returns ``bool``; pandas 1 returned ``uint8``). Nothing else in
        obp is patched, and the output is identical to obp's under pandas 1.
        """

        def pre_process(self) -> None:
            user_cols = self.data.columns.str.contains("user_feature")
            self.context = (
                pd.get_dummies(self.data.loc[:, user_cols], drop_first=True).astype(np.uint8).values
            )
            item_feature_0 = self.item_context["item_feature_0"]
            item_feature_cat = self.item_context.drop("item_feature_0", axis=1).apply(
                LabelEncoder().fit_transform
            )
            self.action_context = pd.concat([item_feature_cat, item_feature_0], axis=1).values

    return _Pandas2OpenBanditDataset(behavior_policy=behavior_policy, campaign="all")


def mean_reward_model(feedback: dict[str, Any], prior_weight: float = 10.0) -> np.ndarray:
    """``q[i, a, k]``: click rate of action ``a`` at position ``k``, shrunk to the overall rate.

    Deliberately context-free and closed-form, so nudge and obp get the *same* array and any
    difference comes from the estimators, not from model fitting.
    """
    n, n_actions = feedback["n_rounds"], feedback["n_actions"]
    action, position, reward = feedback["action"], feedback["position"], feedback["reward"]
    n_positions = int(position.max()) + 1
    clicks = np.zeros((n_actions, n_positions))
    shows = np.zeros((n_actions, n_positions))
    np.add.at(clicks, (action, position), reward)
    np.add.at(shows, (action, position), 1.0)
    base = reward.mean()
    rate = (clicks + prior_weight * base) / (shows + prior_weight)
    return np.broadcast_to(rate, (n, n_actions, n_positions)).copy()


def epsilon_greedy_action_dist(q: np.ndarray, epsilon: float = 0.1) -> np.ndarray:
    """Greedy on ``q`` per row and position with probability ``1 - epsilon``, else uniform."""
    n, n_actions, _ = q.shape
    dist = np.full(q.shape, epsilon / n_actions)
    best = q.argmax(axis=1)  # (n, n_positions)
    rows = np.arange(n)[:, None]
    cols = np.arange(q.shape[2])[None, :]
    dist[rows, best, cols] += 1.0 - epsilon
    return dist


def _bts_action_dist(feedback: dict[str, Any], n_sim: int, seed: int) -> np.ndarray:
    from obp.policy import BernoulliTS

    n_positions = int(feedback["position"].max()) + 1
    policy = BernoulliTS(
        n_actions=feedback["n_actions"],
        len_list=n_positions,
        is_zozotown_prior=True,
        campaign="all",
        random_state=seed,
    )
    return policy.compute_batch_action_dist(n_rounds=feedback["n_rounds"], n_sim=n_sim)


def compare(
    feedback: dict[str, Any],
    policy: str,
    action_dist: np.ndarray,
    q: np.ndarray,
    seed: int,
) -> list[Row]:
    """nudge and obp on one target policy; obp's intervals by its own bootstrap."""
    from obp.ope import (
        DoublyRobust,
        InverseProbabilityWeighting,
        OffPolicyEvaluation,
        SelfNormalizedInverseProbabilityWeighting,
    )

    action, position = feedback["action"], feedback["position"]
    reward, pscore = feedback["reward"], feedback["pscore"]
    target = target_propensity_from_action_dist(action_dist, action, position)
    q_logged, q_target = reward_model_from_action_dist(action_dist, q, action, position)
    ours = {
        "ips": ips(reward, pscore, target),
        "snips": snips(reward, pscore, target),
        "dr": dr(reward, pscore, target, q_logged, q_target),
    }

    ope = OffPolicyEvaluation(
        bandit_feedback=feedback,
        ope_estimators=[
            InverseProbabilityWeighting(),
            SelfNormalizedInverseProbabilityWeighting(),
            DoublyRobust(),
        ],
    )
    values = ope.estimate_policy_values(action_dist=action_dist, estimated_rewards_by_reg_model=q)
    intervals = ope.estimate_intervals(
        action_dist=action_dist,
        estimated_rewards_by_reg_model=q,
        alpha=0.05,
        n_bootstrap_samples=200,
        random_state=seed,
    )
    rows = []
    for name in ESTIMATORS:
        est, obp_name = ours[name], OBP_NAMES[name]
        rows.append(
            Row(
                policy=policy,
                estimator=name,
                nudge=est.value,
                obp=float(values[obp_name]),
                nudge_ci=(est.ci_low, est.ci_high),
                obp_ci=(
                    float(intervals[obp_name]["95.0% CI (lower)"]),
                    float(intervals[obp_name]["95.0% CI (upper)"]),
                ),
                effective_sample_size=est.effective_sample_size,
            )
        )
    return rows


def run(n_sim: int = 100_000, seed: int = 12345) -> tuple[list[Row], dict[str, float]]:
    """All comparisons, plus reference facts about the data (rows, on-policy BTS click rate)."""
    random_log = _load_dataset("random")
    feedback = random_log.obtain_batch_bandit_feedback()
    bts_log = _load_dataset("bts").obtain_batch_bandit_feedback()
    q = mean_reward_model(feedback)
    rows = compare(feedback, "bts", _bts_action_dist(feedback, n_sim, seed), q, seed)
    rows += compare(feedback, "eps-greedy", epsilon_greedy_action_dist(q), q, seed)
    facts = {
        "n_rounds": float(feedback["n_rounds"]),
        "n_actions": float(feedback["n_actions"]),
        "n_positions": float(int(feedback["position"].max()) + 1),
        "random_log_click_rate": float(feedback["reward"].mean()),
        "bts_on_policy_click_rate": float(bts_log["reward"].mean()),
    }
    return rows, facts


def _fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.5f}, {ci[1]:.5f}]"


def report(rows: list[Row], facts: dict[str, float], tolerance: float) -> str:
    lines = [
        f"Open Bandit Dataset sample (random log): {int(facts['n_rounds'])} rows, "
        f"{int(facts['n_actions'])} actions, {int(facts['n_positions'])} positions; "
        f"logged click rate {facts['random_log_click_rate']:.5f}; "
        f"BTS on-policy click rate (bts log) {facts['bts_on_policy_click_rate']:.5f}",
        "",
        f"{'policy':<11} {'est':<6} {'nudge':>9} {'obp':>9} {'rel diff':>9} {'ESS':>8}  "
        f"{'nudge 95% CI (normal)':<22}  obp 95% CI (bootstrap)",
    ]
    for r in rows:
        flag = "" if r.relative_difference <= tolerance else "  <-- DIFFERS"
        lines.append(
            f"{r.policy:<11} {r.estimator:<6} {r.nudge:>9.6f} {r.obp:>9.6f} "
            f"{r.relative_difference:>9.2e} {r.effective_sample_size:>8.1f}  "
            f"{_fmt_ci(r.nudge_ci):<22}  {_fmt_ci(r.obp_ci)}{flag}"
        )
    worst = max(r.relative_difference for r in rows)
    verdict = "agree" if worst <= tolerance else "DISAGREE"
    lines += ["", f"{verdict}: largest relative difference {worst:.2e} (tolerance {tolerance:g})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=100_000, help="BTS Monte Carlo draws")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--tolerance", type=float, default=0.01, help="max relative difference")
    args = parser.parse_args(argv)

    reason = obp_unavailable_reason()
    if reason is not None:
        print(
            "obp (Open Bandit Pipeline) is not importable, so the comparison is skipped "
            f"({reason}). It is optional; to run the check: pip install --no-deps obp==0.4.1 "
            "&& pip install torch 'pandas>=2,<3' scikit-learn matplotlib seaborn tqdm pyyaml "
            "mypy-extensions"
        )
        return 0
    rows, facts = run(n_sim=args.n_sim, seed=args.seed)
    print(report(rows, facts, args.tolerance))
    return 0 if all(r.relative_difference <= args.tolerance for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
