"""Policy-quality simulation: does the factorised bandit find the best combination?

A synthetic world with a known best combination per user type. Each user type has a hidden
conversion probability for every combination of 6 messages × 5 channels × 6 send-time slots
× 4 frequencies × 5 offers (3,600 combinations), built from per-dimension preferences plus
two interactions (channel × send time, message × offer) on the logit scale; "send nothing"
converts at a small baseline. The context is a noisy one-hot of the user type plus pure-noise
features (32 features with the bias), standardised by the context kernels with running
statistics.

Rewards arrive late: the learner sees them in mini-batches. We report the mean expected
reward of the policy's choices in the last fifth of the run against the oracle (the truly
best combination for each user type) and against uniform random choice, plus the policy
kernel's latency and the learner's throughput.

Run: ``python -m nudge.bench.policy_sim [--decisions 50000] [--seed 0] [--mode thompson]``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from nudge.kernels import context as ctx
from nudge.kernels import learner, policy
from nudge.kernels.action_space import ActionSpace, build_action_space
from nudge.kernels.learner import DEFAULT_INTERCEPT_VARIANCE

DIMS = (6, 5, 6, 4, 5)  # message, channel, send-time slot, frequency, offer
PAIRS = ((1, 2), (0, 4))  # channel × send time, message × offer


@dataclass(frozen=True)
class SimConfig:
    n_decisions: int = 50_000
    n_user_types: int = 6
    n_features: int = 32
    batch: int = 250  # rewards reach the learner in batches of this many decisions
    context_noise: float = 0.1  # sd of the noise on the user-type one-hot
    nothing_rate: float = 0.02  # conversion without any message
    seed: int = 0
    policy: policy.PolicyParams = field(default_factory=policy.PolicyParams)
    learner: learner.LearnerParams = field(default_factory=learner.LearnerParams)
    prior_precision: float = 1.0
    slope_precision: float | None = None  # None: prior_precision
    intercept_variance: float = DEFAULT_INTERCEPT_VARIANCE
    latency_samples: int = 2000
    mc_latency_samples: int = 200


@dataclass(frozen=True)
class SimResult:
    policy_last: float  # mean expected reward of the policy's choices, last fifth
    oracle_last: float  # mean expected reward of the oracle on the same users
    random_last: float  # mean expected reward of uniform random choice on the same users
    realised_last: float  # mean realised (0/1) reward of the policy, last fifth
    oracle_hit_rate: float  # share of last-fifth decisions that picked the oracle's combo
    kernel_p50_us: float  # Thompson kernel (no propensity), one call
    decide_p50_us: float  # public decide() wrapper without propensity
    propensity_p50_us: float  # Monte Carlo propensity (separate call), trained model
    propensity_samples: int
    updates_per_s: float  # learner rewards per second, batched as in the run
    elapsed_s: float

    @property
    def ratio(self) -> float:
        return self.policy_last / self.oracle_last

    def report(self) -> str:
        return "\n".join([
            f"last fifth: policy {self.policy_last:.4f}, oracle {self.oracle_last:.4f}, "
            f"random {self.random_last:.4f} (realised {self.realised_last:.4f})",
            f"policy / oracle = {self.ratio:.3f}   "
            f"(random / oracle = {self.random_last / self.oracle_last:.3f}; "
            f"oracle's combination chosen {self.oracle_hit_rate:.1%})",
            f"policy kernel p50 {self.kernel_p50_us:.1f} us; decide() p50 "
            f"{self.decide_p50_us:.1f} us; MC propensity p50 {self.propensity_p50_us:.0f} us "
            f"({self.propensity_samples} draws)",
            f"learner {self.updates_per_s:,.0f} reward updates/s; run {self.elapsed_s:.1f} s",
        ])


@dataclass(frozen=True)
class World:
    """Hidden truth: ``prob[user_type, combo]`` (the last combo is "send nothing")."""

    prob: np.ndarray

    @property
    def best(self) -> np.ndarray:
        return self.prob.argmax(axis=1)


def make_world(space: ActionSpace, n_types: int, nothing_rate: float,
               rng: np.random.Generator) -> World:
    values = np.array([space.combo_values(i) for i in range(space.n_combos - 1)])
    logit = np.full((n_types, space.n_combos - 1), -3.2)
    for d, size in enumerate(DIMS):
        pref = rng.normal(0.0, 0.5, size=(n_types, size))
        logit += pref[:, values[:, d]]
    for a, b in PAIRS:
        inter = rng.normal(0.0, 0.4, size=(n_types, DIMS[a], DIMS[b]))
        logit += inter[:, values[:, a], values[:, b]]
    prob = 1.0 / (1.0 + np.exp(-logit))
    nothing = np.full((n_types, 1), nothing_rate)
    return World(prob=np.concatenate([prob, nothing], axis=1))


def _p50_us(fn, n: int) -> float:
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        times[i] = time.perf_counter_ns() - t
    return float(np.median(times) / 1000.0)


def run(cfg: SimConfig | None = None) -> SimResult:
    cfg = cfg or SimConfig()
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    space = build_action_space(DIMS, PAIRS)
    world = make_world(space, cfg.n_user_types, cfg.nothing_rate, rng)
    n_raw = cfg.n_features - 1
    if n_raw < cfg.n_user_types:
        raise ValueError("n_features: must leave room for the bias and the user-type one-hot")
    layout = ctx.ContextLayout(numeric=tuple(f"f{j}" for j in range(n_raw)))
    stats = ctx.initial_stats(layout)
    snap = learner.initial_snapshot(space.n_components, cfg.n_features, cfg.prior_precision,
                                    cfg.slope_precision, cfg.intercept_variance)

    n = cfg.n_decisions
    types = rng.integers(0, cfg.n_user_types, n)
    raw = rng.normal(0.0, 1.0, size=(n, n_raw))
    raw[:, : cfg.n_user_types] *= cfg.context_noise
    raw[np.arange(n), types] += 1.0
    coins = rng.random(n)
    choices = np.empty(n, dtype=np.int64)
    xs = np.empty((n, cfg.n_features))
    learn_time = 0.0
    learned = 0
    for start in range(0, n, cfg.batch):
        stop = min(start + cfg.batch, n)
        xs[start:stop] = ctx.build_contexts(layout, stats, raw[start:stop])
        for i in range(start, stop):
            choices[i] = policy.decide(snap, space, xs[i], cfg.seed * 1_000_003 + i,
                                       params=cfg.policy, propensity=False).choice
        rewards = (coins[start:stop] < world.prob[types[start:stop],
                                                  choices[start:stop]]).astype(np.float64)
        t = time.perf_counter()  # outcomes of this batch arrive now
        snap = learner.update_posteriors(snap, space.combo_components, choices[start:stop],
                                         xs[start:stop], rewards, cfg.learner,
                                         weight=space.component_weight)
        learn_time += time.perf_counter() - t
        learned += stop - start
        stats = ctx.update_stats(layout, stats, raw[start:stop])

    last = slice(n - n // 5, n)
    expected = world.prob[types, choices]
    realised = coins < expected
    oracle = world.prob.max(axis=1)[types]
    random_mean = world.prob.mean(axis=1)[types]

    x = xs[-1]
    w, combos, mask = space.component_weight, space.kernel_components, space.combo_mask
    kmask = np.ones(space.n_components, dtype=np.uint8)
    kparams = cfg.policy.as_array()
    out_index = np.empty(3, dtype=np.int64)
    out_score = np.empty((2, 3))
    kernel_p50 = _p50_us(lambda i: policy._thompson_kernel(
        snap.mean_t, snap.factor_t, x, w, combos, mask, kmask, kparams, i, out_index, out_score),
        cfg.latency_samples)
    decide_p50 = _p50_us(lambda i: policy.decide(snap, space, xs[-1 - i % 1000], i,
                                                 propensity=False, params=cfg.policy),
                         cfg.latency_samples)
    mc_p50 = _p50_us(lambda i: policy.thompson_propensity(
        snap, space, xs[-1 - i % 1000], i, int(choices[-1 - i % 1000]), params=cfg.policy),
        cfg.mc_latency_samples)
    return SimResult(
        policy_last=float(expected[last].mean()),
        oracle_last=float(oracle[last].mean()),
        random_last=float(random_mean[last].mean()),
        realised_last=float(realised[last].mean()),
        oracle_hit_rate=float((choices[last] == world.best[types[last]]).mean()),
        kernel_p50_us=kernel_p50,
        decide_p50_us=decide_p50,
        propensity_p50_us=mc_p50,
        propensity_samples=cfg.policy.mc_samples,
        updates_per_s=learned / learn_time,
        elapsed_s=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nudge.bench.policy_sim",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=SimConfig.n_decisions)
    parser.add_argument("--batch", type=int, default=SimConfig.batch)
    parser.add_argument("--seed", type=int, default=SimConfig.seed)
    parser.add_argument("--mode", choices=(policy.MODE_THOMPSON, policy.MODE_SQUARECB),
                        default=policy.MODE_THOMPSON)
    parser.add_argument("--noise-variance", type=float,
                        default=policy.PolicyParams.noise_variance)
    parser.add_argument("--gamma-scale", type=float, default=policy.PolicyParams.gamma_scale)
    parser.add_argument("--forgetting", type=float,
                        default=learner.LearnerParams.forgetting)
    args = parser.parse_args(argv)
    cfg = SimConfig(
        n_decisions=args.decisions, batch=args.batch, seed=args.seed,
        policy=policy.PolicyParams(mode=args.mode, noise_variance=args.noise_variance,
                                   gamma_scale=args.gamma_scale),
        learner=learner.LearnerParams(forgetting=args.forgetting),
    )
    for module in (ctx, learner, policy):
        module.warm_up()
    result = run(cfg)
    print(f"{cfg.n_decisions:,} decisions, {len(DIMS)} dimensions "
          f"({np.prod(DIMS):,} combinations + nothing), {cfg.n_user_types} user types, "
          f"batch {cfg.batch}, mode {cfg.policy.mode}")
    print(result.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
