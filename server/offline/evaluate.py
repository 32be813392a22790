"""``nudge evaluate``: what would another policy have earned on the decisions nudge logged?

Reads the decision log of a store (the LMDB data folder, opened read-only: records are JSON
in the ``decisions`` db with the context ``x``, the ``choice``, its exact ``propensity``, the
``reward`` once settled and the guardrail ``trace``) and estimates the value (reward per
decision the policy made) of a target policy with IPS, SNIPS and DR
(:mod:`nudge.server.offline.ope`), each with a 95% confidence interval: empirical Bernstein by
default (sound with heavy importance weights; a target far from the logging policy puts most
of the estimate on a few rarely logged actions, where the normal approximation
under-covers), or the normal approximation (``--interval normal``, as obp).

Any campaign (``--campaign``, default the first by name, as the server picks): its
combinations (:class:`Space`) come from the campaign file. Only decisions the policy made are
evaluated: settled, learnable ones (guardrail suppressions such as the holdout, consent or
caps are no policy's choice). Which combinations the guardrails allowed at each decision is
read from the trace's machine-readable ``MASKED`` entry (:func:`allowed_mask`), never from
the plain-language details.

Target policies are plug-ins. The contract (:class:`TargetPolicy`): an object with a
``name`` and ``distribution(entry, allowed) -> probabilities``, where ``entry`` is one logged
decision (:class:`LogEntry`: its context ``x`` as the policy saw it, ``context_value(name)``
for a string feature with known values, the ``components`` the guardrails left open, time,
user), ``allowed`` the boolean mask of the combinations the guardrails allowed (``Space``
order), and the result a float array of
``len(space) + 1`` (the last: send nothing), non-negative, summing to 1, zero where
``allowed`` is False. ``--policy`` takes a comma-separated list of:

- a built-in: ``uniform`` (uniform among the allowed combinations; nothing when none is) or
  ``logged`` (the logging policy itself, a sanity check: every weight is 1);
- a name registered in the ``nudge.policies`` entry-point group (nudge's bench registers
  ``rulebook``, the bank simulator's segmentation);
- ``module:object``.

A registered or named object is a ``TargetPolicy``, or a callable (e.g. its class) taking the
campaign's :class:`Space` and returning one.

DR's reward model is a ridge regression of the reward on each dimension's value (and
"nothing"), fitted on the log; ``--dr-context NAME`` fits one per value of a string context
feature (e.g. a customer segment sent with Decide).

    nudge evaluate --data-dir nudge-data --campaign loan_abandonment --policy uniform,logged
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lmdb
import numpy as np

from nudge.kernels.context import ContextLayout
from nudge.server.decisions.campaign import DIMENSIONS, Campaign, CampaignError, load_campaigns
from nudge.server.decisions.features import context_layout
from nudge.server.decisions.guardrails import MASKING_CODES, SUPPRESS_NOTHING_BEST, TRACE_MASKED
from nudge.server.errors import StoreError
from nudge.server.offline import ope
from nudge.server.storage.readonly import open_readonly
from nudge.server.storage.tables import decisions as decision_table

BUILTIN_POLICIES = ("uniform", "logged")
POLICY_ENTRY_POINTS = "nudge.policies"
MIN_EFFECTIVE_N = 30
# Under the logging policy the importance weights average 1 for any target policy; a mean
# far from it means the target's actions were rarely possible in the log (missing support),
# whatever the effective sample size says.
MEAN_WEIGHT_BAND = (0.5, 2.0)


class Space:
    """A campaign's combinations a policy can choose (its exclusions and "send nothing" left
    out), in the campaign's order: index ``0 .. len(space) - 1``; ``len(space)`` is nothing."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.dimensions = {dim: campaign.dimension_names(dim) for dim in DIMENSIONS}
        mask = np.asarray(campaign.space.combo_mask, dtype=bool)
        self.combos: list[int] = []
        rows = []
        for i in range(campaign.space.n_combos):
            values = campaign.combo_values(i)
            if values is None or not mask[i]:
                continue
            self.combos.append(i)
            rows.append(values)
        # [k, dimensions]: each combination's value index per dimension.
        self.values = np.array(rows, dtype=np.int64).reshape(-1, len(DIMENSIONS))
        self.index = {c: k for k, c in enumerate(self.combos)}
        ids = campaign.dimension_ids
        # [k, dimensions]: each combination's component id per dimension.
        self.components = np.stack(
            [np.asarray(ids[dim], dtype=np.int64)[self.values[:, j]]
             for j, dim in enumerate(DIMENSIONS)], axis=1)
        self.component_index = {name: i for i, name in enumerate(campaign.component_names())}
        self.by_names = {self.names(k): k for k in range(len(self.combos))}

    def __len__(self) -> int:
        return len(self.combos)

    def names(self, k: int) -> tuple[str, ...]:
        """(message, channel, send_time, frequency, offer) names of combination ``k``."""
        return tuple(self.dimensions[dim][v]
                     for dim, v in zip(DIMENSIONS, self.values[k].tolist(), strict=True))

    def open_values(self, components: np.ndarray, dim: str) -> set[str]:
        """The values of one dimension whose component ``components`` leaves open."""
        ids = self.campaign.dimension_ids[dim]
        return {name for name, i in zip(self.dimensions[dim], ids, strict=True)
                if components[i]}

    def allowed(self, components: np.ndarray) -> np.ndarray:
        """The combinations whose every component ``components`` leaves open."""
        return np.asarray(components[self.components].all(axis=1))


def allowed_components(space: Space, trace: Sequence[Sequence[str]],
                       suppressed: str) -> np.ndarray:
    """The components (``Campaign.component_names`` order) the guardrails left open at a
    logged decision.

    Read from the trace's codes: a guardrail suppression leaves nothing open; otherwise the
    ``MASKED`` entry lists the masked components (none: everything was open). The
    plain-language details of the other entries are never read."""
    if suppressed and suppressed != SUPPRESS_NOTHING_BEST:
        return np.zeros(space.campaign.n_components, dtype=bool)
    components = np.ones(space.campaign.n_components, dtype=bool)
    masked = [detail for code, detail in trace if code == TRACE_MASKED]
    if not masked:
        if any(code in MASKING_CODES for code, _ in trace):
            raise ValueError(
                "trace: masks components but has no MASKED entry (a decision logged by a "
                "nudge older than machine-readable guardrail traces); it cannot be evaluated")
        return components
    for name in masked[-1].split():
        i = space.component_index.get(name)
        if i is None:
            raise ValueError(f"trace: {name!r} is not a component of campaign "
                             f"{space.campaign.name} (was the campaign file changed?)")
        components[i] = False
    return components


def allowed_mask(space: Space, trace: Sequence[Sequence[str]], suppressed: str) -> np.ndarray:
    """The combinations (``space`` order) the guardrails allowed at a logged decision
    (:func:`allowed_components`, combined)."""
    return space.allowed(allowed_components(space, trace, suppressed))


@dataclass(frozen=True, eq=False)
class LogEntry:
    """One logged decision, as a target policy sees it."""

    decision_id: str
    user_id: str
    time: float
    # The context the logging policy saw (kernels/context.py layout: bias, standardised
    # numbers, one-hot string buckets).
    x: np.ndarray
    layout: ContextLayout
    # The components the guardrails left open (Campaign.component_names order): e.g. the
    # send times open on some channel, where the combinations say only which pairs were.
    components: np.ndarray

    def context_bucket(self, name: str) -> int:
        """The bucket of string feature ``name`` (``segment`` or ``request.segment``) in
        ``x``; -1 when the decision had no value for it."""
        start, size = _string_block(self.layout, name)
        block = self.x[start:start + size]
        return int(np.argmax(block)) if block.any() else -1

    def context_value(self, name: str) -> str | None:
        """The value of a string feature with known values; None when missing or another."""
        full = name if name.startswith("request.") else f"request.{name}"
        values = dict(self.layout.vocabularies).get(full)
        if values is None:
            raise ValueError(f"context: {name!r} has no known values in the campaign's "
                             "[context] strings (a hashed string cannot be read back)")
        bucket = self.context_bucket(full)
        return values[bucket] if 0 <= bucket < len(values) else None


@functools.cache
def _string_block(layout: ContextLayout, name: str) -> tuple[int, int]:
    """(start, size) of a string feature's one-hot block in ``x``."""
    full = name if name.startswith("request.") else f"request.{name}"
    names = [s for s, _ in layout.strings]
    if full not in names:
        raise ValueError(f"context: {name!r} is not a string feature of the campaign "
                         f"(its [context] strings: {[s[len('request.'):] for s in names]})")
    g = names.index(full)
    return int(layout.offsets()[g]), layout.strings[g][1]


@runtime_checkable
class TargetPolicy(Protocol):
    """A policy to evaluate on the log (see the module docstring for the contract)."""

    name: str

    def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray: ...


class UniformPolicy:
    """Uniform among the combinations the guardrails allowed; nothing when none was."""

    name = "uniform"

    def __init__(self, space: Space) -> None:
        self.k = len(space)

    def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray:
        dist = np.zeros(self.k + 1)
        n = int(allowed.sum())
        if n:
            dist[:self.k][allowed] = 1.0 / n
        else:
            dist[self.k] = 1.0
        return dist


class LoggedPolicy:
    """The logging policy itself. Only its propensity of the logged action is logged, not
    its full distribution: :func:`evaluate` uses that propensity (every weight is 1)."""

    name = "logged"

    def __init__(self, space: Space) -> None:
        self.k = len(space)

    def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the logging policy's distribution is not logged")


def load_policy(spec: str | object, space: Space) -> TargetPolicy:
    """A target policy from a built-in name, a ``nudge.policies`` entry point, a
    ``module:object`` reference, or an object (a TargetPolicy, or a callable making one from
    the ``space``)."""
    obj: object = spec
    if isinstance(spec, str):
        obj = _resolve(spec)
    if not isinstance(obj, TargetPolicy) or isinstance(obj, type):
        if not callable(obj):
            raise ValueError(f"policy: {spec!r} is neither a target policy nor callable")
        obj = obj(space)
    if not isinstance(obj, TargetPolicy):
        raise ValueError(f"policy: {spec!r} did not give a target policy (an object with "
                         "`name` and `distribution(entry, allowed)`)")
    return obj


def _resolve(spec: str) -> object:
    if spec == "uniform":
        return UniformPolicy
    if spec == "logged":
        return LoggedPolicy
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"policy: cannot load {spec!r}: {exc}") from None
        return obj
    registered = {ep.name: ep for ep in entry_points(group=POLICY_ENTRY_POINTS)}
    if spec not in registered:
        raise ValueError(
            f"policy: unknown {spec!r}; built-in: {', '.join(BUILTIN_POLICIES)}; registered "
            f"({POLICY_ENTRY_POINTS} entry points): {', '.join(sorted(registered)) or 'none'}; "
            "or give module:object")
    return registered[spec].load()


@dataclass
class Log:
    """The evaluable part of a decision log, one entry per logged decision."""

    entries: list[LogEntry]
    choice: np.ndarray  # index into Space; len(space) for "nothing"
    propensity: np.ndarray
    reward: np.ndarray
    allowed: np.ndarray  # [n, len(space)] what the guardrails allowed

    def __len__(self) -> int:
        return int(self.reward.shape[0])


def read_log(data_dir: Path, space: Space) -> Log:
    """Settled, learnable decisions of ``space``'s campaign in the store at ``data_dir``."""
    campaign = space.campaign.name
    rows: list[dict[str, Any]] = []
    with open_readonly(data_dir) as store, store.read() as txn:
        for r in decision_table.stored_fields(txn, store.dbs):
            if (r["campaign"] != campaign or r["status"] != "settled" or not r["learn"]
                    or r["reward"] is None):
                continue
            rows.append(r)
    rows.sort(key=lambda r: (r["time"], r["decision_id"]))
    _check_propensities(rows, campaign)
    layout = context_layout(space.campaign)
    k = len(space)
    choices = []
    for r in rows:
        c = r["choice"]
        if c != space.campaign.nothing_combo and c not in space.index:
            raise ValueError(f"decision {r['decision_id']}: choice {c} is not a combination "
                             f"of campaign {campaign} (was the campaign file changed?)")
        choices.append(space.index.get(c, k))
    components = np.zeros((len(rows), space.campaign.n_components), dtype=bool)
    for i, r in enumerate(rows):
        try:
            components[i] = allowed_components(space, r["trace"], r["suppressed"])
        except ValueError as exc:
            raise ValueError(f"decision {r['decision_id']}: {exc}") from None
    return Log(
        entries=[LogEntry(r["decision_id"], r["user_id"], r["time"],
                          np.asarray(r["x"], dtype=np.float64), layout, components[i])
                 for i, r in enumerate(rows)],
        choice=np.array(choices, dtype=np.int64),
        propensity=np.array([r["propensity"] for r in rows], dtype=np.float64),
        reward=np.array([r["reward"] for r in rows], dtype=np.float64),
        allowed=np.asarray(components[:, space.components].all(axis=2)),
    )


def _check_propensities(rows: list[dict[str, Any]], campaign: str) -> None:
    """Refuse a log with a propensity outside (0, 1]: such a row cannot be weighted, and
    skipping it would bias every estimate toward the decisions that were logged well."""
    bad = [r for r in rows
           if not (isinstance(r["propensity"], int | float) and 0.0 < r["propensity"] <= 1.0)]
    if bad:
        first = bad[0]
        raise ValueError(
            f"campaign {campaign}: {len(bad)} of {len(rows)} settled decisions have a "
            f"propensity outside (0, 1] (first: decision {first['decision_id']}, propensity "
            f"{first['propensity']!r}); the log cannot be evaluated without bias (logged "
            "before propensities were guaranteed valid?)")


def target_distribution(log: Log, space: Space, policy: TargetPolicy) -> np.ndarray:
    """``[n, len(space) + 1]``: the target's probability of each combination (last:
    nothing), checked against the contract."""
    k = len(space)
    dist = np.zeros((len(log), k + 1))
    for i, entry in enumerate(log.entries):
        p = np.asarray(policy.distribution(entry, log.allowed[i]), dtype=np.float64)
        where = f"policy {policy.name}, decision {entry.decision_id}"
        if p.shape != (k + 1,):
            raise ValueError(f"{where}: distribution must have shape ({k + 1},), got {p.shape}")
        if not np.isfinite(p).all() or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"{where}: distribution must be non-negative and sum to 1")
        if p[:k][~log.allowed[i]].sum() > 1e-9:
            raise ValueError(f"{where}: puts probability on combinations the guardrails "
                             "did not allow")
        dist[i] = p
    return dist


def context_groups(log: Log, context: str | None) -> tuple[np.ndarray, int]:
    """Each entry's group for the reward model (the bucket of string feature ``context``,
    missing last) and the number of groups; one group without ``context``."""
    if context is None or not len(log):
        return np.zeros(len(log), dtype=np.int64), 1
    layout = log.entries[0].layout
    n_buckets = dict(layout.strings).get(
        context if context.startswith("request.") else f"request.{context}", 0)
    buckets = np.array([e.context_bucket(context) for e in log.entries], dtype=np.int64)
    return np.where(buckets < 0, n_buckets, buckets), n_buckets + 1


def reward_model(log: Log, space: Space, groups: np.ndarray, n_groups: int,
                 reward_range: tuple[float, float] | None = None,
                 ridge: float = 1.0) -> np.ndarray:
    """``[n_groups, len(space) + 1]`` predicted reward: per group, a ridge regression on each
    dimension's value and "nothing", clipped to ``reward_range`` (default: the observed)."""
    k = len(space)
    sizes = [len(space.dimensions[dim]) for dim in DIMENSIONS]
    width = 2 + sum(sizes)  # intercept, nothing, dimension one-hots
    base = np.zeros((k + 1, width))
    base[:, 0] = 1.0
    base[k, 1] = 1.0
    col = 2
    for j, size in enumerate(sizes):
        base[np.arange(k), col + space.values[:, j]] = 1.0
        col += size
    table = np.zeros((n_groups, k + 1))
    overall = float(log.reward.mean()) if len(log) else 0.0
    low, high = reward_range or (float(log.reward.min()), float(log.reward.max()))
    for j in range(n_groups):
        rows = groups == j
        if not rows.any():
            table[j] = overall
            continue
        x = base[log.choice[rows]]
        y = log.reward[rows] - overall
        w = np.linalg.solve(x.T @ x + ridge * np.eye(width), x.T @ y)
        table[j] = np.clip(overall + base @ w, low, high)
    return table


def evaluate(log: Log, space: Space, policy: TargetPolicy, confidence: float = 0.95,
             max_weight: float | None = None, interval: str = "bernstein",
             reward_range: tuple[float, float] | None = None,
             dr_context: str | None = None) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of ``policy``'s value on ``log``."""
    if len(log) < 2:
        raise ValueError("the decision log holds fewer than 2 settled decisions")
    rows = np.arange(len(log))
    actions = log.choice
    groups, n_groups = context_groups(log, dr_context)
    q = reward_model(log, space, groups, n_groups, reward_range)[groups]
    q_logged = q[rows, actions]
    if isinstance(policy, LoggedPolicy):
        # The logging policy's full distribution is not logged, only its propensity of the
        # logged action: that is its target propensity (every weight is 1).
        target, q_target = log.propensity, q_logged
    else:
        dist = target_distribution(log, space, policy)
        target = dist[rows, actions]
        q_target = (dist * q).sum(axis=1)
    kw: dict[str, Any] = {"confidence": confidence, "max_weight": max_weight,
                          "interval": interval, "reward_range": reward_range}
    ips_estimate = ope.ips(log.reward, log.propensity, target, **kw)
    ips = ips_estimate.to_dict()
    weights = target / log.propensity
    mean_weight = float(weights.mean())
    return {
        "policy": policy.name,
        "n": len(log),
        # A deterministic target over hundreds of combinations rarely takes the logged
        # action: with few effective samples, or weights that do not average about 1, the
        # intervals are not to be trusted.
        "low_overlap": bool(ips_estimate.effective_sample_size < MIN_EFFECTIVE_N
                            or not MEAN_WEIGHT_BAND[0] <= mean_weight <= MEAN_WEIGHT_BAND[1]),
        "interval": interval,
        "largest_weight": float(weights.max()),
        "mean_weight": mean_weight,
        "logged_value": float(log.reward.mean()),
        "ips": ips,
        "snips": ope.snips(log.reward, log.propensity, target, **kw).to_dict(),
        "dr": ope.dr(log.reward, log.propensity, target, q_logged, q_target, **kw).to_dict(),
    }


def default_campaign(campaigns: dict[str, Campaign]) -> str:
    """The campaign a Decide without one gets when none is configured: the first by name."""
    return sorted(campaigns)[0]


def evaluate_store(data_dir: Path, campaigns_dir: Path | None,
                   policies: Sequence[str | object], campaign: str | None = None,
                   interval: str = "bernstein",
                   dr_context: str | None = None) -> list[dict[str, Any]]:
    """Evaluate each of ``policies`` (names or objects, as :func:`load_policy` takes) on
    ``campaign``'s decisions in the store at ``data_dir``."""
    campaigns = load_campaigns(campaigns_dir)
    name = campaign or default_campaign(campaigns)
    if name not in campaigns:
        raise ValueError(f"campaign: {name!r} is not defined (campaigns: "
                         f"{', '.join(sorted(campaigns))})")
    space = Space(campaigns[name])
    targets = [load_policy(p, space) for p in policies]
    log = read_log(data_dir, space)
    # Every reward the server settles lies between an opt-out's cost and the goal's value.
    goal = campaigns[name].goal
    reward_range = (min(-goal.opt_out_cost, 0.0), max(goal.value, 0.0))
    return [evaluate(log, space, p, interval=interval, reward_range=reward_range,
                     dr_context=dr_context) for p in targets]


def format_result(result: dict[str, Any]) -> str:
    lines = [f"policy {result['policy']}: {result['n']} logged decisions, logged policy's "
             f"value {result['logged_value']:.4f}, largest importance weight "
             f"{result['largest_weight']:.1f}"]
    label = {"bernstein": "empirical-Bernstein", "normal": "normal-approximation"}[
        result["interval"]]
    if result["low_overlap"]:
        ess, mean_weight = result["ips"]["effective_sample_size"], result["mean_weight"]
        why = []
        if ess < MIN_EFFECTIVE_N:
            why.append(f"effective sample size {ess:.0f} (below {MIN_EFFECTIVE_N})")
        if not MEAN_WEIGHT_BAND[0] <= mean_weight <= MEAN_WEIGHT_BAND[1]:
            why.append(f"mean importance weight {mean_weight:.2f} (not near 1)")
        lines.append(f"  WARNING: {' and '.join(why)}: the target rarely takes the logged "
                     "actions; do not trust these intervals")
    for name in ("ips", "snips", "dr"):
        e = result[name]
        lines.append(f"  {name:<5} {e['value']:.4f}  95% {label} CI [{e['ci_low']:.4f}, "
                     f"{e['ci_high']:.4f}]  effective n {e['effective_sample_size']:.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the store's data folder (LMDB)")
    parser.add_argument("--campaigns", type=Path, default=None,
                        help="campaigns folder (default: DATA_DIR/../campaigns if present, "
                             "else the shipped campaigns)")
    parser.add_argument("--campaign", default=None,
                        help="the campaign whose decisions to evaluate (default: the first "
                             "by name, as the server picks)")
    parser.add_argument("--policy", default="uniform",
                        help="comma-separated target policies: built-in "
                             f"{', '.join(BUILTIN_POLICIES)}, a name registered in the "
                             f"{POLICY_ENTRY_POINTS} entry points, or module:object")
    parser.add_argument("--dr-context", default=None, metavar="NAME",
                        help="fit DR's reward model per value of this string context "
                             "feature (e.g. segment)")
    parser.add_argument("--interval", choices=ope.INTERVALS, default="bernstein",
                        help="confidence intervals: empirical Bernstein (default; sound with "
                             "heavy importance weights) or the normal approximation (as obp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    campaigns = args.campaigns
    if campaigns is None and (args.data_dir.parent / "campaigns").is_dir():
        campaigns = args.data_dir.parent / "campaigns"
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    try:
        results = evaluate_store(args.data_dir, campaigns, policies, args.campaign,
                                 interval=args.interval, dr_context=args.dr_context)
    except (ValueError, CampaignError, lmdb.Error, StoreError, FileNotFoundError) as exc:
        parser.exit(2, f"nudge evaluate: error: {exc}\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(format_result(r) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
