"""A family of policy-quality worlds, run through a real server (Decide + ReportOutcome only).

Every world has the same campaign: 8 messages × 5 channels × 6 send times × 3 frequencies ×
5 offers (3,600 combinations, a few static exclusions) plus "send nothing", no guardrails,
and 31 request ``numbers`` describing a fresh user per decision. Conversion is a logistic
function of per-dimension effects that depend linearly on hidden drivers ``h`` of the user,
plus interactions; the base rate is set so uniform random converts 3%. What differs:

- ``types``: six user types seen through a noisy one-hot (bench/policy_sim.py's world):
  ``h`` is the type's one-hot, the numbers its noisy copy plus 25 pure-noise numbers; both
  pairs the model has (channel × send time, message × offer) depend on the type.
- ``dense``: ``h`` = the 31 numbers, standard normal; one constant channel × send-time
  interaction (the issue's world).
- ``sparse``: only 4 of the 31 numbers matter, the rest are noise.
- ``misspecified``: ``dense`` plus a message × channel interaction the model does not have.
- ``drift``: ``dense`` whose message and offer effects are redrawn halfway through the run.
- ``nothing``: ``dense`` where contact costs users with a high first number; "send nothing"
  is best for about a third of the users.

The learning curve reports the policy's expected reward against the oracle's (the best
allowed action for that user, "nothing" included) over the 1,000 decisions before 2k, 5k,
10k and 30k decisions, over decisions 5,000–10,000 and over the last fifth.

Run: ``python -m nudge.bench.worlds [--world dense] [--seed 1] [--decisions 30000]``; with
``--against BODY`` every world and seed also runs with that [exploration] body (``''``: the
defaults) and the paired differences are printed (:func:`paired`): how a change is judged.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

WORLDS = ("types", "dense", "sparse", "misspecified", "drift", "nothing")
DIMS = (8, 5, 6, 3, 5)  # message, channel, send time, frequency, offer
N_COMBOS = int(np.prod(DIMS))
N_NUMBERS = 31
NUMBER_NAMES = tuple(f"z{j:02d}" for j in range(N_NUMBERS))
MESSAGES = tuple(f"m{j}" for j in range(DIMS[0]))
CHANNELS = ("push", "whatsapp", "sms", "email", "in_app")
SLOTS = (("now", "now"), ("early", "06:00"), ("morning", "09:00"), ("noon", "12:00"),
         ("afternoon", "15:00"), ("evening", "18:00"))
FREQUENCIES = (("once", 1), ("twice", 2), ("thrice", 3))
OFFERS = ("none", "o1", "o2", "o3", "o4")
CAMPAIGN = "worlds"
RANDOM_RATE = 0.03  # conversion of uniform random choice
# sd of a dimension value's total effect (logits) over users, in the dense worlds
EFFECT_SCALE = 0.3
CURVE_AT = (2_000, 5_000, 10_000, 30_000)
CURVE_WINDOW = 1_000
# Monday 2026-01-05 03:00 UTC: every slot's send time is a distinct instant, later today.
START = datetime(2026, 1, 5, 3, 0, tzinfo=UTC).timestamp()


# -- the campaign -----------------------------------------------------------------------------


def campaign_text(exploration: str | None = None, name: str = CAMPAIGN) -> str:
    """The worlds' campaign; ``exploration`` is an [exploration] table's body (None: no
    table, so the shipped defaults)."""
    lines = ['[campaign]', f'name = "{name}"', 'description = "policy-quality worlds"',
             '', '[messages]']
    lines += [f'{m} = "Message {m}."' for m in MESSAGES]
    lines += ['', '[channels]', f'values = {json.dumps(list(CHANNELS))}', '', '[send_times]']
    lines += [f'{name} = "{at}"' for name, at in SLOTS]
    lines += ['', '[frequencies]']
    lines += [f'{name} = {{ count = {n}, gap_hours = 24 }}' if n > 1 else
              f'{name} = {{ count = 1 }}' for name, n in FREQUENCIES]
    lines += ['', '[offers]'] + [f'{o} = {{}}' for o in OFFERS]
    for message, channel in (("m7", "sms"), ("m6", "in_app")):
        lines += ['', '[[exclude]]', f'message = "{message}"', f'channel = "{channel}"']
    lines += ['', '[[exclude]]', 'channel = "email"', 'send_time = "now"']
    lines += ['', '[goal]', 'events = ["converted"]', 'value = 1.0', 'window_hours = 720',
              'opt_out_cost = 0.0', 'contact_cost = 0.0',
              '', '[guardrails]', 'consent = false', 'holdout = 0.0']
    if exploration is not None:
        lines += ['', '[exploration]', exploration]
    lines += ['', '[context]', 'event_types = []', f'numbers = {json.dumps(list(NUMBER_NAMES))}',
              'strings = {}', 'contact_pressure = false']
    return "\n".join(lines) + "\n"


def allowed_combos() -> np.ndarray:
    """bool ``[N_COMBOS]``: the exclusions above, in the campaign's C order."""
    m, ch, st = np.indices(DIMS).reshape(len(DIMS), -1)[:3]
    out = ~((m == 7) & (ch == CHANNELS.index("sms")))
    out &= ~((m == 6) & (ch == CHANNELS.index("in_app")))
    out &= ~((ch == CHANNELS.index("email")) & (st == 0))
    return out


# -- the worlds -------------------------------------------------------------------------------


@dataclass
class World:
    """Hidden truth. ``effects[d]`` is ``[DIMS[d], 1 + H]`` (intercept, then weights on the
    drivers ``h``); ``pairs`` maps a dimension pair to ``[DIMS[a], DIMS[b], 1 + H]``; the
    "nothing" arm converts at ``nothing`` = (share of the user's worst combination, or a
    logit ``[1 + H]`` when ``nothing_logit`` is set)."""

    name: str
    n_drivers: int
    effects: list[np.ndarray]
    pairs: dict[tuple[int, int], np.ndarray]
    base: float = 0.0
    contact_cost: np.ndarray | None = None  # [1 + H]: added to every combination's logit
    nothing_logit: np.ndarray | None = None  # [1 + H]
    drift_at: int | None = None
    drifted: list[np.ndarray] | None = None
    type_noise: float = 0.0  # types: sd of the noise on the one-hot
    seed: int = 0
    users: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]] = field(
        default=lambda rng, n: (np.zeros((n, 0)), np.zeros((n, N_NUMBERS))), repr=False)

    def logits(self, h: np.ndarray, t: int = 0) -> np.ndarray:
        """``[n, N_COMBOS]`` logits for drivers ``h[n, H]`` at decision ``t``."""
        n = h.shape[0]
        h1 = np.concatenate([np.ones((n, 1)), h], axis=1)
        effects = self.drifted if self.drift_at is not None and t >= self.drift_at \
            else self.effects
        assert effects is not None
        total = np.full((n, *DIMS), self.base)
        for d, e in enumerate(effects):
            shape = [n] + [1] * len(DIMS)
            shape[1 + d] = DIMS[d]
            total += (h1 @ e.T).reshape(shape)
        for (a, b), e in self.pairs.items():
            shape = [n] + [1] * len(DIMS)
            shape[1 + a], shape[1 + b] = DIMS[a], DIMS[b]
            total += np.einsum("nk,abk->nab", h1, e).reshape(shape)
        if self.contact_cost is not None:
            total += (h1 @ self.contact_cost)[:, None, None, None, None, None]
        return total.reshape(n, N_COMBOS)

    def probabilities(self, h: np.ndarray, t: int = 0) -> np.ndarray:
        """``[n, N_COMBOS + 1]`` conversion probabilities (last: nothing)."""
        p = 1.0 / (1.0 + np.exp(-self.logits(h, t)))
        if self.nothing_logit is not None:
            n1 = np.concatenate([np.ones((h.shape[0], 1)), h], axis=1) @ self.nothing_logit
            nothing = 1.0 / (1.0 + np.exp(-n1))
        else:  # every message beats nothing
            nothing = 0.5 * p[:, ALLOWED].min(axis=1)
        return np.concatenate([p, nothing[:, None]], axis=1)


ALLOWED = allowed_combos()
ALLOWED_ALL = np.append(ALLOWED, True)


def _effects(rng: np.random.Generator, n_drivers: int, scale: float, active: np.ndarray,
             intercept: float = 0.2) -> list[np.ndarray]:
    out = []
    for size in DIMS:
        e = np.zeros((size, 1 + n_drivers))
        e[:, 0] = rng.normal(0.0, intercept, size)
        e[:, 1 + active] = rng.normal(0.0, scale / math.sqrt(len(active)), (size, len(active)))
        out.append(e)
    return out


def make_world(name: str, seed: int) -> World:
    if name not in WORLDS:
        raise ValueError(f"world: must be one of {WORLDS}, got {name!r}")
    rng = np.random.default_rng([seed, WORLDS.index(name), 17])
    if name == "types":
        k = 6
        effects = [np.concatenate([np.zeros((s, 1)), rng.normal(0.0, 0.35, (s, k))], axis=1)
                   for s in DIMS]
        pairs = {(1, 2): np.concatenate([np.zeros((5, 6, 1)), rng.normal(0, 0.3, (5, 6, k))],
                                        axis=2),
                 (0, 4): np.concatenate([np.zeros((8, 5, 1)), rng.normal(0, 0.3, (8, 5, k))],
                                        axis=2)}
        world = World(name, k, effects, pairs, type_noise=0.1, seed=seed)

        def users(r: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
            types = r.integers(0, k, n)
            h = np.eye(k)[types]
            x = r.normal(0.0, 1.0, (n, N_NUMBERS))
            x[:, :k] = h + r.normal(0.0, world.type_noise, (n, k))
            return h, x

        world.users = users
    else:
        active = np.arange(N_NUMBERS)
        if name == "sparse":
            active = np.sort(rng.choice(N_NUMBERS, 4, replace=False))
        effects = _effects(rng, N_NUMBERS, EFFECT_SCALE, active)
        chst = np.zeros((5, 6, 1 + N_NUMBERS))
        chst[:, :, 0] = rng.normal(0.0, 0.3, (5, 6))
        pairs = {(1, 2): chst}
        if name == "misspecified":  # message × channel: a pair the model does not have
            mch = np.zeros((8, 5, 1 + N_NUMBERS))
            mch[:, :, 0] = rng.normal(0.0, 0.35, (8, 5))
            mch[:, :, 1 + active[:4]] = rng.normal(0.0, 0.2, (8, 5, 4))
            pairs[(0, 1)] = mch
        world = World(name, N_NUMBERS, effects, pairs, seed=seed)
        if name == "drift":
            redrawn = _effects(rng, N_NUMBERS, EFFECT_SCALE, active)
            world.drifted = [redrawn[d] if d in (0, 4) else effects[d]
                             for d in range(len(DIMS))]
        if name == "nothing":
            cost = np.zeros(1 + N_NUMBERS)
            cost[1] = -1.0  # contact hurts users with a high z00 …
            world.contact_cost = cost
            world.nothing_logit = np.zeros(1 + N_NUMBERS)
            world.nothing_logit[1] = 0.5  # … who also convert more on their own

        def users(r: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
            x = r.normal(0.0, 1.0, (n, N_NUMBERS))
            return x, x

        world.users = users
    _calibrate(world, rng)  # drift: the redrawn effects share the base (drawn alike)
    return world


def _calibrate(world: World, rng: np.random.Generator) -> None:
    """Set ``base`` so uniform random over the allowed combinations converts RANDOM_RATE;
    in the nothing world, then set nothing's intercept so it is best for a third of users."""
    h, _ = world.users(rng, 2_000)
    world.base = 0.0
    logits = world.logits(h)[:, ALLOWED]
    base = -4.0
    for _ in range(30):  # Newton on the base: the rate is increasing and smooth in it
        p = 1.0 / (1.0 + np.exp(-(logits + base)))
        step = (p.mean() - RANDOM_RATE) / (p * (1.0 - p)).mean()
        base -= step
        if abs(step) < 1e-10:
            break
    world.base = base
    if world.nothing_logit is not None:
        best = world.probabilities(h)[:, :N_COMBOS][:, ALLOWED].max(axis=1)
        nothing_slope = world.nothing_logit[1:]
        lo, hi = -12.0, 4.0
        for _ in range(40):
            c0 = 0.5 * (lo + hi)
            p = 1.0 / (1.0 + np.exp(-(c0 + h @ nothing_slope)))
            share = (p > best).mean()
            lo, hi = (c0, hi) if share < 1.0 / 3.0 else (lo, c0)
        world.nothing_logit[0] = 0.5 * (lo + hi)


# -- a run through the server -----------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    world: str = "dense"
    seed: int = 1
    decisions: int = 30_000
    batch: int = 250  # the learner steps after every this many outcomes
    exploration: str | None = None  # an [exploration] table body; None: no table
    outcome_threads: int = 4


@dataclass
class RunResult:
    world: str
    seed: int
    decisions: int
    exploration: str | None
    policy: np.ndarray = field(repr=False)  # expected reward of each choice
    oracle: np.ndarray = field(repr=False)
    random: np.ndarray = field(repr=False)
    chose_nothing: np.ndarray = field(repr=False)
    nothing_best: np.ndarray = field(repr=False)
    invalid_propensities: int = 0
    propensity_min: float = 1.0
    seconds: float = 0.0
    # Each decision's combination (N_COMBOS: nothing), for peers fitted on the same log.
    choices: np.ndarray | None = field(default=None, repr=False)
    # In process with ``greedy``: the expected reward of the same model's greedy choice at
    # each decision (what the model knows, without the cost of exploring).
    greedy: np.ndarray | None = field(default=None, repr=False)

    def record(self, i: int, p: np.ndarray, choice: int, propensity: float) -> None:
        """Decision ``i`` chose ``choice`` (N_COMBOS: nothing) with ``propensity``; ``p`` is
        every combination's true conversion probability for that customer."""
        self.policy[i] = p[choice]
        self.oracle[i] = p[ALLOWED_ALL].max()
        self.random[i] = p[ALLOWED_ALL].mean()
        self.chose_nothing[i] = choice == N_COMBOS
        self.nothing_best[i] = p[N_COMBOS] >= self.oracle[i]
        if self.choices is not None:
            self.choices[i] = choice
        if not 0.0 < propensity <= 1.0:
            self.invalid_propensities += 1
        self.propensity_min = min(self.propensity_min, propensity)

    def ratio(self, start: int, stop: int) -> float:
        s = slice(max(start, 0), min(stop, self.decisions))
        return float(self.policy[s].sum() / self.oracle[s].sum())

    def greedy_ratio(self, start: int, stop: int) -> float | None:
        if self.greedy is None:
            return None
        s = slice(max(start, 0), min(stop, self.decisions))
        return float(self.greedy[s].sum() / self.oracle[s].sum())

    def summary(self) -> dict[str, Any]:
        n = self.decisions
        last = slice(n - n // 5, n)
        best = self.nothing_best[last]
        greedy = {} if self.greedy is None else {"greedy": {
            "last_fifth": self.greedy_ratio(n - n // 5, n),
            "from_5k_to_10k": self.greedy_ratio(5_000, 10_000) if n >= 10_000 else None,
            "curve": {str(k): self.greedy_ratio(k - CURVE_WINDOW, k) for k in CURVE_AT
                      if k <= n}}}
        return {
            "world": self.world, "seed": self.seed, "decisions": n,
            "exploration": self.exploration or "(no table: defaults)",
            "last_fifth": self.ratio(n - n // 5, n),
            "from_5k_to_10k": self.ratio(5_000, 10_000) if n >= 10_000 else None,
            "curve": {str(k): self.ratio(k - CURVE_WINDOW, k) for k in CURVE_AT if k <= n},
            "random_last_fifth": float(self.random[last].sum() / self.oracle[last].sum()),
            "oracle_last_fifth": float(self.oracle[last].mean()),
            "nothing_rate_where_best": float(self.chose_nothing[last][best].mean())
            if best.any() else None,
            "nothing_rate_elsewhere": float(self.chose_nothing[last][~best].mean()),
            "invalid_propensities": self.invalid_propensities,
            "propensity_min": self.propensity_min,
            "seconds": round(self.seconds, 1),
            **greedy,
        }



def _customers(cfg: RunConfig) -> tuple[World, np.ndarray, np.ndarray, np.ndarray]:
    """The world of a run and its customers, the same for every driver: hidden types ``h``,
    contexts ``x`` and the coins that decide each conversion (drift halfway when asked)."""
    world = make_world(cfg.world, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 99])
    h, x = world.users(rng, cfg.decisions)
    coins = rng.random(cfg.decisions)
    if cfg.world == "drift":
        world.drift_at = cfg.decisions // 2
    return world, h, x, coins

def run(cfg: RunConfig, progress: Callable[[str], None] | None = None) -> RunResult:
    """One world, one seed, through a real server in this process (a fresh store on tmpfs
    when there is one: outcomes are fsync'd, the box's disk is not what is measured)."""
    from nudge.clients.client import Client
    from nudge.server.app import create_server
    from nudge.server.clock import ManualClock
    from nudge.server.config import Config

    started = time.perf_counter()
    world, h, x, coins = _customers(cfg)
    shm = Path("/dev/shm")
    tmp = tempfile.mkdtemp(prefix="nudge-worlds-", dir=shm if shm.is_dir() else None)
    folder = Path(tmp)
    (folder / "campaigns").mkdir()
    (folder / "campaigns" / f"{CAMPAIGN}.toml").write_text(campaign_text(cfg.exploration))
    clock = ManualClock(START)
    server = create_server(Config(port=0, data_dir=folder / "data",
                                  campaigns_dir=folder / "campaigns", random_seed=cfg.seed,
                                  learner_thread=False), clock=clock)
    server.start()
    client = Client(f"127.0.0.1:{server.port}", timeout=60.0)
    pool = ThreadPoolExecutor(cfg.outcome_threads)
    n = cfg.decisions
    result = RunResult(cfg.world, cfg.seed, n, cfg.exploration, np.empty(n), np.empty(n),
                       np.empty(n), np.zeros(n, bool), np.zeros(n, bool),
                       choices=np.empty(n, dtype=np.int64))
    try:
        client.wait_until_serving()
        slot_at = _slot_instants(server)
        index = {(m, ch, s, f, o): int(np.ravel_multi_index((i, j, k, r, q), DIMS))
                 for i, m in enumerate(MESSAGES) for j, ch in enumerate(CHANNELS)
                 for k, (s, _) in enumerate(SLOTS) for r, (f, _) in enumerate(FREQUENCIES)
                 for q, o in enumerate(OFFERS)}
        for start in range(0, n, cfg.batch):
            stop = min(start + cfg.batch, n)
            prob = world.probabilities(h[start:stop], start)
            outcomes = []
            for i in range(start, stop):
                numbers = dict(zip(NUMBER_NAMES, x[i].tolist(), strict=True))
                reply = client.decide(f"w{i}", campaign=CAMPAIGN, numbers=numbers)
                if reply.actions:
                    a = reply.actions[0]
                    choice = index[(a.message, a.channel, slot_at[a.send_at.seconds],
                                    a.frequency, a.offer)]
                else:
                    choice = N_COMBOS
                p = prob[i - start]
                result.record(i, p, choice, reply.propensity)
                outcomes.append((reply.decision_id, float(coins[i] < p[choice])))
            list(pool.map(lambda o: client.report_outcome(*o), outcomes))
            server.learner.step()
            if progress and stop % 5_000 < cfg.batch:
                progress(f"{cfg.world} seed {cfg.seed}: {stop:,} decisions, ratio "
                         f"{result.ratio(stop - 1_000, stop):.3f} over the last 1,000")
    finally:
        pool.shutdown()
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def run_in_process(cfg: RunConfig, greedy: bool = False) -> RunResult:
    """The same run without the server: the decision and learning kernels called as Decide
    and the learner call them (the campaign's model, context layout and parameters; the
    learner stepping every ``batch`` outcomes). Ten times faster, for tuning only: the
    reported figures come from :func:`run`.

    ``greedy``: also score, at every decision, the combination the same model would choose
    without exploring (never played, so the run is unchanged); the gap between the two
    ratios is what exploration costs, the gap to the oracle what the model does not know."""
    from nudge.kernels import context as ctx
    from nudge.kernels import learner as lrn
    from nudge.kernels import policy
    from nudge.server.decisions.campaign import parse_campaign
    from nudge.server.decisions.features import FeaturePlan, raw_features
    from nudge.server.decisions.models import CampaignModel

    started = time.perf_counter()
    world, h, x, coins = _customers(cfg)
    campaign = parse_campaign(campaign_text(cfg.exploration), CAMPAIGN)
    model = CampaignModel.initial(campaign)
    plan = FeaturePlan(campaign, model.layout)
    hour = datetime.fromtimestamp(START, UTC).hour
    raw = np.stack([raw_features(plan, None, {}, START, hour,
                                 dict(zip(NUMBER_NAMES, row.tolist(), strict=True)), {},
                                 86_400.0)[0] for row in x])
    no_buckets = np.zeros(0, dtype=np.int64)
    space = campaign.space
    params = model.policy_params
    greedy_params = replace(params, mode=policy.MODE_SQUARECB, gamma_scale=1e12,
                            explore_all=0.0, optimism=0.0)
    learn = model.learner_params
    kmask = np.ones(space.n_components, dtype=np.uint8)
    snapshot, stats = model.snapshot, model.stats
    seeds = np.random.default_rng([cfg.seed, 7]).integers(1, 2**62, cfg.decisions)
    n = cfg.decisions
    result = RunResult(cfg.world, cfg.seed, n, cfg.exploration, np.empty(n), np.empty(n),
                       np.empty(n), np.zeros(n, bool), np.zeros(n, bool),
                       choices=np.empty(n, dtype=np.int64),
                       greedy=np.empty(n) if greedy else None)
    for start in range(0, n, cfg.batch):
        stop = min(start + cfg.batch, n)
        prob = world.probabilities(h[start:stop], start)
        xs = np.empty((stop - start, model.layout.n_features))
        chosen = np.empty(stop - start, dtype=np.int64)
        rewards = np.empty(stop - start)
        for i in range(start, stop):
            xs[i - start] = ctx.build_context_trusted(model.layout, stats, raw[i], no_buckets)
            got = policy.decide_trusted(snapshot, space, xs[i - start], int(seeds[i]), kmask,
                                        2, params)
            choice = got.choice
            chosen[i - start] = choice
            p = prob[i - start]
            result.record(i, p, choice, got.propensity)
            rewards[i - start] = float(coins[i] < p[choice])
            if result.greedy is not None:  # SquareCB with an unbounded γ: the best mean
                best = policy.decide_trusted(snapshot, space, xs[i - start], int(seeds[i]),
                                             kmask, 1, greedy_params).choice
                result.greedy[i] = p[best]
        snapshot = lrn.update_posteriors(snapshot, space.combo_components, chosen, xs, rewards,
                                         learn, weight=space.component_weight)
        stats = ctx.update_stats(model.layout, stats, raw[start:stop])
    result.seconds = time.perf_counter() - started
    return result


def _slot_instants(server: Any) -> dict[int, str]:
    """Send-time instant (seconds) → slot name, for the fixed clock of a run."""
    from nudge.server.decisions.guardrails import slot_times

    campaign = server.decisions.campaigns[CAMPAIGN]
    times = slot_times(campaign, START, "UTC")
    out = {int(t): name for t, (name, _) in zip(times, SLOTS, strict=True)}
    if len(out) != len(SLOTS):
        raise RuntimeError("two send-time slots fall on the same instant")
    return out


def format_table(summaries: list[dict[str, Any]]) -> str:
    head = ("| world | seed | last fifth | 5k–10k | @2k | @5k | @10k | @30k | random | "
            "nothing where best | invalid propensities |")
    lines = [head, "|" + "---|" * 11]
    for s in summaries:
        c = s["curve"]
        nb = s["nothing_rate_where_best"]
        lines.append(
            f"| {s['world']} | {s['seed']} | {s['last_fifth']:.3f} | "
            f"{_f(s['from_5k_to_10k'])} | {_f(c.get('2000'))} | {_f(c.get('5000'))} | "
            f"{_f(c.get('10000'))} | {_f(c.get('30000'))} | {s['random_last_fifth']:.3f} | "
            f"{'' if nb is None else f'{nb:.2f}'} | {s['invalid_propensities']} |")
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


PAIRED_MEASURES = ("last_fifth", "from_5k_to_10k")


def paired(change: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired differences ``change − base`` over the runs both hold (same world and seed).

    Why paired: a single run moves by about ±0.05 per world, mostly from its customers and
    its coins, which both settings share on the same world and seed; the difference of two
    runs on the same customers cancels most of that, so a change that is small against one
    run's spread can still be told from noise over 12-36 pairs. Per measure: the mean
    difference, its standard error (0 for a single pair) and how many pairs improved; the
    same by world."""
    keyed = {(s["world"], s["seed"]): s for s in base}
    pairs = [(s, keyed[(s["world"], s["seed"])]) for s in change
             if (s["world"], s["seed"]) in keyed]
    if not pairs:
        raise ValueError("paired: no run of the change has a base run of the same world and "
                         "seed")

    def stats(rows: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> dict[str, Any]:
        rows = [(c, b) for c, b in rows if c[key] is not None and b[key] is not None]
        d = np.array([c[key] - b[key] for c, b in rows])
        n = len(d)
        return {"n": n, "change": float(np.mean([c[key] for c, _ in rows])) if n else None,
                "base": float(np.mean([b[key] for _, b in rows])) if n else None,
                "diff": float(d.mean()) if n else None,
                "se": float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
                "better": int((d > 0).sum())}

    by_world = {}
    for name in dict.fromkeys(c["world"] for c, _ in pairs):
        rows = [(c, b) for c, b in pairs if c["world"] == name]
        by_world[name] = {m: stats(rows, m) for m in PAIRED_MEASURES}
    return {"runs": len(pairs), "all": {m: stats(pairs, m) for m in PAIRED_MEASURES},
            "by_world": by_world}


def format_paired(result: dict[str, Any]) -> str:
    """:func:`paired` as a markdown table: one row per world, then every run."""
    lines = ["| world | runs | last fifth: change, base | difference | better | "
             "5k–10k: change, base | difference | better |", "|" + "---|" * 8]

    def row(name: str, m: dict[str, Any]) -> str:
        cells = [name, str(m["last_fifth"]["n"])]
        for key in PAIRED_MEASURES:
            s = m[key]
            if not s["n"]:
                cells += ["", "", ""]
                continue
            cells += [f"{s['change']:.3f}, {s['base']:.3f}",
                      f"{s['diff']:+.3f} ± {s['se']:.3f}", f"{s['better']} of {s['n']}"]
        return "| " + " | ".join(cells) + " |"

    lines += [row(name, m) for name, m in result["by_world"].items()]
    lines.append(row("**all**", result["all"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nudge.bench.worlds",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", nargs="+", choices=WORLDS, default=list(WORLDS))
    parser.add_argument("--seed", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--decisions", type=int, default=RunConfig.decisions)
    parser.add_argument("--exploration", default=None,
                        help='an [exploration] table body, e.g. \'algorithm = "thompson"\'')
    parser.add_argument("--against", default=None, metavar="EXPLORATION",
                        help="also run every world and seed with this [exploration] body "
                        "('' for the defaults) and print the paired differences")
    parser.add_argument("--greedy", action="store_true",
                        help="in process: also score the same model's greedy choice at every "
                        "decision (the summary's 'greedy' ratios)")
    parser.add_argument("--json", type=Path, help="append each run's summary here")
    parser.add_argument("--in-process", action="store_true",
                        help="call the kernels directly instead of a server (tuning only)")
    args = parser.parse_args(argv)
    if args.greedy and not args.in_process:
        parser.error("--greedy: only with --in-process (the server's runs never ask the "
                     "model twice)")
    settings = [args.exploration] + ([args.against] if args.against is not None else [])
    summaries: list[list[dict[str, Any]]] = [[] for _ in settings]
    for seed in args.seed:
        for name in args.world:
            for exploration, out in zip(settings, summaries, strict=True):
                cfg = RunConfig(world=name, seed=seed, decisions=args.decisions,
                                exploration=exploration)
                r = (run_in_process(cfg, greedy=args.greedy) if args.in_process
                     else run(cfg, progress=print))
                s = r.summary()
                out.append(s)
                print(json.dumps(s))
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(s) + "\n")
    for exploration, out in zip(settings, summaries, strict=True):
        print(f"\n[exploration]: {exploration if exploration is not None else '(no table)'}")
        print(format_table(out))
    if args.against is not None:
        print(f"\nPaired: {args.exploration!r} against {args.against!r}")
        print(format_paired(paired(summaries[0], summaries[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

