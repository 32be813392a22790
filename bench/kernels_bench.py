"""Micro-benchmarks of every kernel on the hot paths, sizes as parameters.

Each case is ``(name, group, prepare)``: ``prepare()`` does the expensive set-up (action
spaces, trained snapshots, encoded transactions) and returns what to time, so only the call
under test is measured. ``nudge bench kernels`` runs them with :func:`nudge.bench.timing.measure`;
``tests/bench/test_kernels_benchmark.py`` runs the same cases under pytest-benchmark.

    python -m nudge.bench.cli kernels [--policy-combos 20 200 3600] [--ingest-batch 1 1000]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from nudge.bench.timing import Timing, measure

# The campaign-like layouts for a number of combinations (dimension sizes, pairwise
# interactions); 3,600 is the shipped loan-abandonment shape (see bench/policy_sim.py).
POLICY_LAYOUTS: dict[int, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {
    20: ((4, 5), ((0, 1),)),
    200: ((5, 5, 8), ((1, 2),)),
    3600: ((6, 5, 6, 4, 5), ((1, 2), (0, 4))),
}
SHIPPED_MODE = "squarecb"  # the shipped campaign's exploration (server/campaigns)


@dataclass(frozen=True)
class KernelsConfig:
    """Sizes to run; the defaults keep ``nudge bench kernels`` near 15 s on 2 cores."""

    ingest_batches: tuple[int, ...] = (1, 1_000)
    policy_combos: tuple[int, ...] = (20, 200, 3600)
    policy_modes: tuple[str, ...] = (SHIPPED_MODE, "thompson")
    features: int = 32
    learner_batch: int = 250
    risk_batch: int = 50_000
    max_time: float = 0.5  # seconds of timing per case


@dataclass(frozen=True)
class Prepared:
    """What to time: ``call`` (and ``reset`` before each round, untimed)."""

    call: Callable[[], object]
    items_per_call: int = 1
    reset: Callable[[], object] | None = None
    note: str = ""


@dataclass(frozen=True)
class KernelCase:
    name: str  # metric prefix: kernels.<name>.p50_us, kernels.<name>.items_per_s
    group: str  # pytest-benchmark group
    prepare: Callable[[], Prepared]


def layout_for(n_combos: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """A campaign-like layout with exactly ``n_combos`` combinations (before "nothing")."""
    return POLICY_LAYOUTS.get(n_combos, ((n_combos,), ()))


def _ingest(batch: int) -> Prepared:
    from nudge.kernels import user_state as us

    rng = np.random.default_rng(0)
    users = max(1, batch)
    state = us.new_records(users)
    rows = rng.integers(0, users, batch).astype(np.int64)
    slots = rng.integers(0, 8, batch).astype(np.int64)
    times = 1.7e9 + np.sort(rng.random(batch)) * 86_400
    amounts = np.where(rng.random(batch) < 0.5, rng.lognormal(4, 1, batch), np.nan)
    hours = rng.random(batch) * 24

    def call() -> None:
        us.apply_events(state, rows, slots, times, amounts, hours, 604_800.0)

    return Prepared(call, items_per_call=batch, note=f"{batch} events over {users} users")


def _trained(n_combos: int, features: int, n_updates: int = 2_000):
    """A space and a snapshot that has learned from random outcomes (not the prior)."""
    from nudge.kernels import learner
    from nudge.kernels.action_space import build_action_space

    dims, pairs = layout_for(n_combos)
    space = build_action_space(dims, pairs)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(n_updates, features))
    xs[:, 0] = 1.0
    chosen = rng.integers(0, space.n_combos, n_updates)
    snap = learner.initial_snapshot(space.n_components, features)
    snap = learner.update_posteriors(snap, space.combo_components, chosen, xs,
                                     (rng.random(n_updates) < 0.1).astype(np.float64))
    return space, snap, xs


def _policy(n_combos: int, mode: str, features: int, raw: bool) -> Prepared:
    """``raw``: the @njit kernel alone (what the kernel budget names); else the public
    ``decide()`` the server calls (validation and result objects on top)."""
    from nudge.kernels import policy

    space, snap, xs = _trained(n_combos, features)
    # Guardrails as a request carries them: one channel without consent masked out.
    component_mask = np.ones(space.n_components, dtype=np.uint8)
    component_mask[space.component_of(min(1, len(space.dim_sizes) - 1), 0)] = 0
    params = policy.PolicyParams(mode=mode)
    counter = iter(range(1 << 62))
    what = f"{space.n_combos - 1:,} combos × {features} features, {mode}, masked, top-3"
    if raw:
        x, cmask, kmask, _ = policy._request(snap, space, xs[0], 0, component_mask, None)
        out_index = np.empty(3, dtype=np.int64)
        out_score = np.empty((2, 3))
        kparams = params.as_array()
        w, combos = space.component_weight, space.kernel_components

        def thompson() -> None:
            policy._thompson_kernel(snap.mean_t, snap.factor_t, x, w, combos, cmask, kmask,
                                    kparams, next(counter), out_index, out_score)

        def squarecb() -> None:
            policy._squarecb_kernel(snap.mean_t, x, w, combos, cmask, kmask, kparams,
                                    next(counter), out_index, out_score)

        return Prepared(thompson if mode == "thompson" else squarecb,
                        note=f"{what}; @njit kernel")

    def call() -> None:
        i = next(counter)
        policy.decide(snap, space, xs[i % xs.shape[0]], i, component_mask=component_mask,
                      top_k=3, params=params, propensity=False)

    return Prepared(call, note=f"{what}; decide()")


def _learner(n_combos: int, features: int, batch: int, link: str) -> Prepared:
    """One batch of rewards through the learner with this link (the campaign default's
    is ``learner_update``)."""
    from nudge.kernels import learner

    space, snap, _ = _trained(n_combos, features, n_updates=batch)
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(batch, features))
    xs[:, 0] = 1.0
    chosen = rng.integers(0, space.n_combos, batch)
    rewards = (rng.random(batch) < 0.1).astype(np.float64)
    # The campaign default learns the pair cells' prior (logistic link): measure that.
    groups = (learner.pair_cell_groups(space.dim_sizes, space.pairs)
              if link == learner.LINK_LOGISTIC
              and learner.DEFAULT_LEARNED_PRIOR == learner.LEARNED_PRIOR_CELLS else ())
    params = learner.LearnerParams(link=link, prior_groups=groups)

    def call() -> None:
        learner.update_posteriors(snap, space.combo_components, chosen, xs, rewards, params,
                                  weight=space.component_weight)

    return Prepared(call, items_per_call=batch,
                    note=f"{link} link{', learned cell prior' if groups else ''}, {batch} "
                         f"rewards per batch, {n_combos:,} combos × {features} features")


def _risk_inputs(n: int):
    """A launch world's first ``n`` transactions, learned by the model (customers, the
    population), as the server would have them."""
    from nudge.bench.risk_worlds import WorldSpec, generate_world
    from nudge.kernels import risk_model as M
    from nudge.kernels.risk import encode_transactions

    spec = WorldSpec(n_customers=max(20, n // 90), warmup_days=0.0, late_join_share=0.0,
                     join_spread_days=21.0)
    w = generate_world("launch", 1, spec)
    n = min(n, len(w))
    txs = encode_transactions(w.amount[:n], w.time[:n], w.local_hour[:n], w.country[:n],
                              w.merchant_category[:n], w.device_id[:n], w.channel[:n])
    rows = w.user[:n].astype(np.int64)
    users = np.tile(M.new_user_state(), (w.n_users, 1))
    pop = M.new_population_state()
    M.score_and_learn(users, rows, pop, txs)
    return users, rows, pop, txs


def _risk_single(n_history: int = 2_000) -> Prepared:
    from nudge.kernels import risk_model as M

    users, rows, pop, txs = _risk_inputs(n_history)
    one = users[int(rows[-1])].copy()
    one.flags.writeable = False  # as an LMDB view
    pop.flags.writeable = False
    out = np.empty(M.DETAIL_LEN)
    feat = np.empty(M.FEAT_LEN)
    tx = txs[-1].copy()
    p = M.ModelParams().to_array()

    def call() -> None:
        M._score_one_kernel(one, pop, tx, p, out, feat)

    return Prepared(call, note="@njit kernel (risk_model), read-only state views")


def _risk_single_wrapper(n_history: int = 2_000) -> Prepared:
    from nudge.kernels import risk_model as M

    users, rows, pop, txs = _risk_inputs(n_history)
    one = users[int(rows[-1])].copy()
    one.flags.writeable = False
    pop.flags.writeable = False
    tx = txs[-1].copy()

    def call() -> None:
        M.score_one(one, pop, tx)

    return Prepared(call, note="score_one(): validation, allocation")


def _risk_batch(n: int) -> Prepared:
    from nudge.kernels import risk_model as M

    users, rows, pop, txs = _risk_inputs(n)
    work, work_pop = users.copy(), pop.copy()

    def reset() -> None:
        work[:] = users
        work_pop[:] = pop

    def call() -> None:
        M.score_and_learn(work, rows, work_pop, txs)

    return Prepared(call, items_per_call=rows.shape[0], reset=reset,
                    note=f"{rows.shape[0]:,} transactions, score + learn (risk_model)")


def cases(config: KernelsConfig) -> Iterator[KernelCase]:
    """Every case for these sizes; names are the metric prefixes budgets refer to."""
    for b in config.ingest_batches:
        yield KernelCase(f"ingest_apply_events_{b}", "ingest", partial(_ingest, b))
    for mode in config.policy_modes:
        prefix = "policy" if mode == SHIPPED_MODE else f"policy_{mode}"
        for n in config.policy_combos:
            for raw in (True, False):
                name = f"{prefix}_kernel_{n}" if raw else f"{prefix}_decide_{n}"
                yield KernelCase(name, f"policy-{mode}",
                                 partial(_policy, n, mode, config.features, raw))
    big = max(config.policy_combos)
    from nudge.kernels.learner import DEFAULT_LINK, LINK_IDENTITY, LINK_LOGISTIC

    for link in (LINK_LOGISTIC, LINK_IDENTITY):
        name = "learner_update" if link == DEFAULT_LINK else f"learner_update_{link}"
        yield KernelCase(name, "learner",
                         partial(_learner, big, config.features, config.learner_batch, link))
    yield KernelCase("risk_score_single", "risk", _risk_single)
    yield KernelCase("risk_score_single_wrapper", "risk", _risk_single_wrapper)
    yield KernelCase("risk_score_batch", "risk", lambda: _risk_batch(config.risk_batch))


@dataclass(frozen=True)
class KernelResult:
    name: str
    group: str
    note: str
    timing: Timing

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "note": self.note,
                **self.timing.to_dict()}


def warm_up() -> None:
    """Load every kernel from cache (or compile it) before timing anything."""
    from nudge.kernels.warmup import warm_up_all

    warm_up_all()


def run(config: KernelsConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Time every case; returns ``{"cases": [...], "metrics": {...}}``."""
    warm_up()
    results = []
    for case in cases(config):
        progress(f"kernels: {case.name}")
        prepared = case.prepare()
        timing = measure(prepared.call, max_time=config.max_time, reset=prepared.reset,
                         items_per_call=prepared.items_per_call)
        results.append(KernelResult(case.name, case.group, prepared.note, timing))
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"kernels.{r.name}.p50_us"] = r.timing.p50_us
        metrics[f"kernels.{r.name}.p99_us"] = r.timing.p99 * 1e6
        metrics[f"kernels.{r.name}.items_per_s"] = r.timing.items_per_s
    return {"cases": [r.to_dict() for r in results], "metrics": metrics}
