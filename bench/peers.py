"""Peers side by side: the same decision problem through nudge's factorised policy, Vowpal
Wabbit ``--cb_explore_adf`` and MABWiser LinTS; the same transaction stream through nudge's
per-user risk kernels and River ``HalfSpaceTrees``.

Then bench/worlds.py's family (``bench/peers_worlds.py``): nudge, Vowpal Wabbit
``--cb_explore_adf --squarecb`` and an offline logistic regression, learning curves side by
side. The first decision problem is ``bench/policy_sim.py``'s world: 3,600 combinations
(6 messages × 5 channels × 6 send times × 4 frequencies × 5 offers, two interactions) plus
"send nothing", 32 context features, rewards delivered to each learner in batches. Every system sees
the same contexts in the same order. Peers are slow at this size, so each gets a time box;
reward quality is compared over the same number of decisions (nudge's figure over a peer's
count is given beside it). The peers come from the optional ``bench`` extra
(``pip install 'nudge[peers]'``); a missing one is skipped with the reason.

    python -m nudge.bench.cli peers [--seconds 20] [--decisions 3000]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from nudge.bench.policy_sim import DIMS, PAIRS, make_world
from nudge.bench.stats import Latency

PEER_PACKAGES = {"Vowpal Wabbit": "vowpalwabbit", "MABWiser": "mabwiser", "River": "river"}
INSTALL_HINT = "pip install 'nudge[peers]'"


@dataclass(frozen=True)
class PeersConfig:
    decisions: int = 3_000  # at most this many per system (nudge always runs them all)
    seconds: float = 20.0  # time box per peer
    batch: int = 50  # rewards reach each learner in batches of this many decisions
    features: int = 32
    user_types: int = 6
    risk_users: int = 300  # River's HalfSpaceTrees costs ~0.25 ms a transaction
    seed: int = 0
    # bench/worlds.py's family (bench/peers_worlds.py): nudge, VW --squarecb and an offline
    # logistic regression on these worlds, seed ``worlds_seed`` (0 decisions: skipped).
    worlds: tuple[str, ...] = ("dense", "types")
    worlds_decisions: int = 30_000
    worlds_seed: int = 1
    vw_seconds: float = 120.0  # VW's time box per world (it scores 3,600 actions a decision)


@dataclass(frozen=True)
class Problem:
    """Contexts, hidden conversion probabilities, and the combinations' dimension values."""

    xs: np.ndarray  # [n, features], x[0] == 1
    prob: np.ndarray  # [n, n_combos] expected reward of each combination for decision i
    coins: np.ndarray  # [n] uniform draws that realise the rewards
    values: np.ndarray  # [n_combos - 1, n_dims] dimension value indices ("nothing" is last)

    @property
    def n_combos(self) -> int:
        return int(self.prob.shape[1])

    def reward(self, i: int, combo: int) -> float:
        return float(self.coins[i] < self.prob[i, combo])


@dataclass(frozen=True)
class PeerResult:
    name: str
    decisions: int
    decide: Latency
    learn_per_s: float
    reward_vs_oracle: float  # mean expected reward of its choices / the oracle's
    nudge_same_decisions: float  # nudge's reward_vs_oracle over the same decisions
    random_vs_oracle: float

    def to_dict(self) -> dict:
        return {"name": self.name, "decisions": self.decisions,
                "decide_us": self.decide.to_dict(), "learn_per_s": self.learn_per_s,
                "reward_vs_oracle": self.reward_vs_oracle,
                "nudge_same_decisions": self.nudge_same_decisions,
                "random_vs_oracle": self.random_vs_oracle}


def make_problem(config: PeersConfig) -> Problem:
    """policy_sim's world, one context per decision (a noisy user-type one-hot + noise)."""
    from nudge.kernels.action_space import build_action_space

    rng = np.random.default_rng(config.seed)
    space = build_action_space(DIMS, PAIRS)
    world = make_world(space, config.user_types, 0.02, rng)
    n, d = config.decisions, config.features
    types = rng.integers(0, config.user_types, n)
    xs = np.empty((n, d))
    xs[:, 0] = 1.0
    xs[:, 1:] = rng.normal(0.0, 1.0, size=(n, d - 1))
    xs[:, 1 : 1 + config.user_types] *= 0.1
    xs[np.arange(n), 1 + types] += 1.0
    values = np.array([space.combo_values(i) for i in range(space.n_combos - 1)])
    return Problem(xs=xs, prob=world.prob[types], coins=rng.random(n), values=values)


# A learner: decide(i) -> combo; learn(indices, combos, rewards).
Decider = Callable[[int], int]
Learner = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _simulate(problem: Problem, decide: Decider, learn: Learner, batch: int,
              seconds: float | None) -> tuple[np.ndarray, list[float], float, int]:
    """Decide, then learn each batch's rewards; stop at the time box (whole batches)."""
    n = problem.xs.shape[0]
    choices = np.empty(n, dtype=np.int64)
    times: list[float] = []
    learn_s, learned = 0.0, 0
    deadline = None if seconds is None else time.perf_counter() + seconds
    done = 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        for i in range(start, stop):
            t = time.perf_counter()
            choices[i] = decide(i)
            times.append(time.perf_counter() - t)
        idx = np.arange(start, stop)
        rewards = np.array([problem.reward(i, int(choices[i])) for i in idx])
        t = time.perf_counter()
        learn(idx, choices[start:stop], rewards)
        learn_s += time.perf_counter() - t
        learned += stop - start
        done = stop
        if deadline is not None and time.perf_counter() > deadline:
            break
    return choices[:done], times, learned / max(learn_s, 1e-9), done


def _quality(problem: Problem, choices: np.ndarray) -> tuple[float, float]:
    """(expected reward / oracle's, random's / oracle's) over the first len(choices)."""
    k = choices.size
    prob = problem.prob[:k]
    oracle = prob.max(axis=1).mean()
    return float(prob[np.arange(k), choices].mean() / oracle), float(prob.mean() / oracle)


def run_nudge(problem: Problem, config: PeersConfig) -> tuple[PeerResult, np.ndarray]:
    """nudge's policy and learner kernels, SquareCB as the shipped campaign uses."""
    from nudge.kernels import learner, policy
    from nudge.kernels.action_space import build_action_space

    policy.warm_up()
    learner.warm_up()
    space = build_action_space(DIMS, PAIRS)
    params = policy.PolicyParams(mode="squarecb")
    state = {"snap": learner.initial_snapshot(space.n_components, config.features)}

    def decide(i: int) -> int:
        return policy.decide(state["snap"], space, problem.xs[i], config.seed + i, top_k=3,
                             params=params).choice

    def learn(idx: np.ndarray, combos: np.ndarray, rewards: np.ndarray) -> None:
        state["snap"] = learner.update_posteriors(state["snap"], space.combo_components,
                                                  combos, problem.xs[idx], rewards)

    choices, times, learn_per_s, done = _simulate(problem, decide, learn, config.batch, None)
    ratio, rnd = _quality(problem, choices)
    result = PeerResult("nudge (SquareCB, Numba)", done, Latency.of(times), learn_per_s,
                        ratio, ratio, rnd)
    return result, choices


def _vw_lines(problem: Problem) -> list[str]:
    """One ADF line per combination: its dimension values and the two interaction cells
    (the structure nudge's policy is given), then "send nothing"."""
    lines = []
    for v in problem.values:
        m, c, t, f, o = (int(a) for a in v)
        lines.append(f"|A m{m} c{c} t{t} f{f} o{o} ct{c}_{t} mo{m}_{o}")
    lines.append("|A nothing")
    return lines


def run_vowpal_wabbit(problem: Problem, config: PeersConfig) -> tuple[PeerResult, np.ndarray]:
    import vowpalwabbit

    vw = vowpalwabbit.Workspace("--cb_explore_adf -q UA --epsilon 0.05 --quiet "
                                f"--random_seed {config.seed}")
    actions = _vw_lines(problem)
    rng = np.random.default_rng(config.seed)
    logged: dict[int, tuple[str, float]] = {}

    def shared(i: int) -> str:
        return "shared |U " + " ".join(f"x{j}:{v:.5f}" for j, v in enumerate(problem.xs[i]))

    def decide(i: int) -> int:
        s = shared(i)
        pmf = np.asarray(vw.predict([s, *actions]))
        combo = int(rng.choice(pmf.size, p=pmf / pmf.sum()))
        logged[i] = (s, float(pmf[combo]))
        return combo

    def learn(idx: np.ndarray, combos: np.ndarray, rewards: np.ndarray) -> None:
        for i, combo, r in zip(idx, combos, rewards, strict=True):
            s, p = logged.pop(int(i))
            lines = [s, *actions]
            lines[1 + int(combo)] = f"0:{-r}:{p} {actions[int(combo)]}"
            vw.learn(lines)

    try:
        choices, times, learn_per_s, done = _simulate(problem, decide, learn, config.batch,
                                                      config.seconds)
    finally:
        vw.finish()
    ratio, rnd = _quality(problem, choices)
    return PeerResult("Vowpal Wabbit --cb_explore_adf", done, Latency.of(times), learn_per_s,
                      ratio, float("nan"), rnd), choices


def run_mabwiser(problem: Problem, config: PeersConfig) -> tuple[PeerResult, np.ndarray]:
    from mabwiser.mab import MAB, LearningPolicy

    arms = list(range(problem.n_combos))
    mab = MAB(arms=arms, learning_policy=LearningPolicy.LinTS(alpha=1.0), seed=config.seed)
    # LinTS needs a first fit: one neutral observation of the "nothing" arm.
    mab.fit([arms[-1]], [0.0], problem.xs[:1])

    def decide(i: int) -> int:
        return int(mab.predict(problem.xs[i : i + 1]))

    def learn(idx: np.ndarray, combos: np.ndarray, rewards: np.ndarray) -> None:
        mab.partial_fit(combos.tolist(), rewards, problem.xs[idx])

    choices, times, learn_per_s, done = _simulate(problem, decide, learn,
                                                  max(1, config.batch // 5), config.seconds)
    ratio, rnd = _quality(problem, choices)
    return PeerResult("MABWiser LinTS", done, Latency.of(times), learn_per_s, ratio,
                      float("nan"), rnd), choices


def run_river(config: PeersConfig) -> dict:
    """nudge's fraud model and River HalfSpaceTrees on the same world (the ``travel``
    regime of bench/risk_worlds.py, ``risk_users`` customers)."""
    from nudge.bench.risk_eval import average_precision, roc_auc, run_half_space_trees
    from nudge.bench.risk_worlds import WORLDS, generate_world
    from nudge.bench.risk_worlds_eval import run_model

    world = generate_world("travel", config.seed,
                           replace(WORLDS["travel"], n_customers=config.risk_users))
    mask = world.time >= world.warmup_s
    y = world.label[mask]
    t = time.perf_counter()
    ours = run_model(world).scores[mask]
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    hst = run_half_space_trees(world, seed=config.seed)
    hst_s = time.perf_counter() - t
    if hst is None:
        raise ImportError("river")
    theirs = hst[mask]

    def quality(s: np.ndarray) -> tuple[float, float]:
        if not 0 < y.sum() < y.size:  # a draw too small to hold fraud
            return float("nan"), float("nan")
        return average_precision(y, s), roc_auc(y, s)

    (ap, auc), (hap, hauc) = quality(ours), quality(theirs)
    return {
        "transactions": len(world), "evaluated": int(mask.sum()), "fraud": int(y.sum()),
        "nudge": {"average_precision": ap, "roc_auc": auc,
                  "us_per_tx": ours_s / len(world) * 1e6},
        "HalfSpaceTrees": {"average_precision": hap, "roc_auc": hauc,
                           "us_per_tx": hst_s / len(world) * 1e6},
    }


def missing(package: str) -> str | None:
    """None when importable, else the reason to print."""
    try:
        __import__(package)
    except ImportError as exc:
        return (f"skipped: the optional '{package}' package is not installed ({exc}); "
                f"{INSTALL_HINT}")
    return None


def run(config: PeersConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every available peer; a missing one appears under ``skipped`` with the reason."""
    progress("peers: building the decision problem")
    problem = make_problem(config)
    progress(f"peers: nudge, {config.decisions:,} decisions")
    nudge_result, nudge_choices = run_nudge(problem, config)
    results = [nudge_result]
    skipped: dict[str, str] = {}
    for name, runner in (("Vowpal Wabbit", run_vowpal_wabbit), ("MABWiser", run_mabwiser)):
        reason = missing(PEER_PACKAGES[name])
        if reason:
            skipped[name] = reason
            continue
        progress(f"peers: {name} (time box {config.seconds:g} s)")
        try:
            r, _ = runner(problem, config)
        except Exception as exc:  # a peer's failure must not sink the whole bench
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        same, _ = _quality(problem, nudge_choices[: r.decisions])
        results.append(PeerResult(r.name, r.decisions, r.decide, r.learn_per_s,
                                  r.reward_vs_oracle, same, r.random_vs_oracle))
    out: dict = {"decisions": [r.to_dict() for r in results], "skipped": skipped,
                 "problem": {"combinations": problem.n_combos, "features": config.features,
                             "batch": config.batch, "time_box_s": config.seconds}}
    reason = missing(PEER_PACKAGES["River"])
    if reason:
        skipped["River"] = reason
    else:
        progress(f"peers: River HalfSpaceTrees on {config.risk_users} users' transactions")
        out["risk"] = run_river(config)
    if config.worlds_decisions > 0:
        from nudge.bench import peers_worlds

        out["worlds"] = peers_worlds.run(peers_worlds.WorldPeersConfig(
            worlds=config.worlds, seed=config.worlds_seed, decisions=config.worlds_decisions,
            vw_seconds=config.vw_seconds), progress)
    metrics = {"peers.nudge.decide_p50_us": nudge_result.decide.p50}
    for r in results[1:]:
        key = r.name.split()[0].lower()
        metrics[f"peers.{key}.decide_p50_us"] = r.decide.p50
    if "risk" in out:
        metrics["peers.risk.nudge_ap"] = out["risk"]["nudge"]["average_precision"]
        metrics["peers.risk.hst_ap"] = out["risk"]["HalfSpaceTrees"]["average_precision"]
    out["metrics"] = metrics
    return out
