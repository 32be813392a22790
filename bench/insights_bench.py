"""``nudge bench insights``: the insights' speed, ingest cost and quality (issue 18).

- **speed**: RetentionDrivers over 1,000,000 users and 30,000,000 events, end to end from
  the store (read every summary, decode, count with the kernels, estimate). The summaries
  are written straight into a real store with the table's own ``append`` (what ingest does
  for a user's first batch), not by streaming 30M events through Track: that would take
  about half an hour on this box and measure ingest, not the query. Budget: <= 5 s.
- **ingest**: the cost of keeping the summaries at ingest, measured as the same events
  written through the server's ``EventWriter`` with and without the insights hook, rounds
  interleaved (the same box, the same minute); reported as the throughput lost per CPU
  second, the median over 7 rounds of each round's own with/without ratio, budget <= 10%.
- **quality**: the planted-truth worlds (``bench/insight_worlds.py``; tuned on ``baseline``
  seed 0 only). Per world, seeds 1..N with the summaries built directly from the worlds'
  events (the equivalence with ingest is tested in ``tests/server/rpc``), and one seed fed
  through a real server's Track with back-dated event times and answered over gRPC.
  Reported: recall of the planted drivers with an effect >= +10 points in the top 5 at
  their threshold ±1, precision of the top 5 (planted drivers of any size), decoys ranked
  above a true driver, whether the planted churn flows rank first, the value driver
  first, and how often the 95% interval at the planted threshold covers the planted
  effect (over every planted driver and seed).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nudge.bench import insight_worlds as worlds


@dataclass(frozen=True)
class InsightsConfig:
    users: int = 1_000_000
    events: int = 30_000_000
    query_repeats: int = 3
    ingest_users: int = 10_000
    ingest_events_per_user: int = 10
    ingest_rounds: int = 7
    worlds: tuple[str, ...] = tuple(worlds.WORLDS)
    # Seeds never looked at in development (0 tuned, 1-5 inspected): reported as found.
    seeds: tuple[int, ...] = tuple(range(11, 21))
    track_seed: int = 11  # the seed fed through Track
    track: bool = True
    speed: bool = True


# --------------------------------------------------------------------------- quality


def evaluate(world: worlds.World, pop: Any) -> dict[str, Any]:
    """The planted-truth criteria on one world's population."""
    from nudge.server.offline import insights

    cohort = insights.Cohort(None, None, world.now)
    found = insights.retention_drivers(pop, insights.RetentionQuery(cohort, max_drivers=100))
    return score(world, found, insights.churn_flows(pop, insights.ChurnQuery(cohort)),
                 insights.value_drivers(pop, insights.ValueQuery(cohort)),
                 {name: insights.retention_effect(pop, insights.RetentionQuery(cohort), name, k)
                  for name, (k, _) in world.truth["drivers"].items()})


def score(world: worlds.World, found: Any, flows: Any, value: Any,
          at_planted: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    truth = world.truth
    ranks = {d.event_type: (i, d.min_count) for i, d in enumerate(found.drivers)}
    strong = {n: k for n, (k, e) in truth["drivers"].items() if e >= 0.10}
    found_strong = [n for n, k in strong.items()
                    if n in ranks and ranks[n][0] < 5 and abs(ranks[n][1] - k) <= 1]
    top5 = [d.event_type for d in found.drivers[:5]]
    planted = set(truth["drivers"])
    no_effect = set(truth["decoys"]) | set(truth["noise"])
    above = decoys_above_true(world, found)
    planted_flows = set(truth["churn_flows"])
    top_flows = {(d.flow, d.step) for d in flows.drivers[:len(planted_flows)]}
    value_name, value_k = truth["value_driver"]
    value_first = bool(value.drivers) and value.drivers[0].event_type == value_name \
        and abs(value.drivers[0].min_count - value_k) <= 1
    covered = [lo <= truth["drivers"][n][1] <= hi for n, (_, lo, hi) in at_planted.items()]
    return {
        "world": world.name, "seed": world.seed,
        "recall_top5": len(found_strong) / len(strong) if strong else 1.0,
        "precision_top5": sum(n in planted for n in top5) / max(len(top5), 1),
        "decoys_above_true": len(above),
        "decoys_above_names": above,
        "churn_flows_first": top_flows == planted_flows,
        "value_driver_first": value_first,
        "covered": sum(covered), "intervals": len(covered),
        "top5": [(d.event_type, d.min_count, round(d.adjusted_lift, 3))
                 for d in found.drivers[:5]],
        "raw_rank_of_decoy": _raw_decoy_rank(found, no_effect),
    }


def decoys_above_true(world: worlds.World, found: Any) -> list[str]:
    """The decoy and noise events ranked above the lowest-ranked planted driver of at least
    +10 points (the Done-when's "no pure decoy ranks above any true driver")."""
    truth = world.truth
    ranks = {d.event_type: i for i, d in enumerate(found.drivers)}
    strong = [n for n, (_, e) in truth["drivers"].items() if e >= 0.10]
    worst_true = max((ranks[n] for n in strong if n in ranks), default=len(ranks))
    no_effect = [*truth["decoys"], *truth["noise"]]
    return sorted(n for n in no_effect if n in ranks and ranks[n] < worst_true)


def outcome_redraws(name: str, seed: int, draws: int,
                    spec: worlds.WorldSpec | None = None) -> dict[str, Any]:
    """Is a run's "decoy above a true driver" the early events' doing or the outcome draw's?

    The world is drawn again ``draws`` times with the same users, activity and early events
    and each user's same retention probability, only the outcome drawn anew
    (``insight_worlds.generate``'s ``outcome_draw``). If the adjustment let a decoy through
    — residual activity confounding, a decoy riding on a driver it co-occurs with — the
    early events carry it and the failure repeats on most redraws, and the decoy's mean
    adjusted lift over them (at the threshold the run picked) stays high. If it was the
    outcome draw's luck, it repeats at about the worlds' base rate and that mean is near 0.
    Returns the run's offending decoys with their lift in the run and over the redraws, the
    planted drivers' likewise (at their planted threshold), and how many redraws failed."""
    from nudge.server.offline import insights

    def analyse(world: worlds.World) -> tuple[Any, Any, insights.RetentionQuery]:
        pop = insights.from_entries(*worlds.summary_entries(world))
        query = insights.RetentionQuery(insights.Cohort(None, None, world.now))
        found = insights.retention_drivers(pop, insights.RetentionQuery(query.cohort,
                                                                        max_drivers=100))
        return pop, found, query

    world = worlds.generate(name, seed, spec)
    pop, found, query = analyse(world)
    offenders = decoys_above_true(world, found)
    picked = {d.event_type: d.min_count for d in found.drivers}
    cells = {n: picked[n] for n in offenders}
    cells.update({n: k for n, (k, _) in world.truth["drivers"].items()})

    def lifts(pop: Any, query: insights.RetentionQuery) -> dict[str, float]:
        return {n: insights.retention_effect(pop, query, n, k)[0] for n, k in cells.items()}

    in_run = lifts(pop, query)
    failed = 0
    over: dict[str, list[float]] = {n: [] for n in cells}
    for d in range(draws):
        redrawn = worlds.generate(name, seed, spec, outcome_draw=d)
        pop, found, query = analyse(redrawn)
        failed += bool(decoys_above_true(redrawn, found))
        for n, v in lifts(pop, query).items():
            over[n].append(v)
    return {
        "world": name, "seed": seed, "draws": draws, "decoys_above": offenders,
        "draws_with_decoy_above": failed,
        "cells": {n: {"min_count": k, "lift_in_run": in_run[n],
                      "mean_lift_over_draws": float(np.nanmean(over[n])),
                      "sd_over_draws": float(np.nanstd(over[n]))}
                  for n, k in cells.items()},
    }


def _raw_decoy_rank(found: Any, no_effect: set[str]) -> int:
    """Where the best decoy would rank by raw lift (Compass's view): 0 = first."""
    by_raw = sorted(found.drivers, key=lambda d: -d.lift)
    return next((i for i, d in enumerate(by_raw) if d.event_type in no_effect), -1)


def quality(config: InsightsConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    from nudge.server.offline import insights

    rows: list[dict[str, Any]] = []
    for name in config.worlds:
        for seed in config.seeds:
            progress(f"insights quality: {name} seed {seed}")
            world = worlds.generate(name, seed)
            rows.append(evaluate(world, insights.from_entries(*worlds.summary_entries(world))))
    tracked = []
    if config.track:
        for name in config.worlds:
            progress(f"insights quality: {name} seed {config.track_seed} through Track")
            tracked.append(through_track(worlds.generate(name, config.track_seed)))
    return summarize(rows, tracked)


def summarize(rows: list[dict[str, Any]], tracked: list[dict[str, Any]]) -> dict[str, Any]:
    per_world: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["world"] for r in rows):
        mine = [r for r in rows if r["world"] == name]
        per_world[name] = {
            "recall_top5": float(np.mean([r["recall_top5"] for r in mine])),
            "precision_top5": float(np.mean([r["precision_top5"] for r in mine])),
            "decoys_above_true": int(sum(r["decoys_above_true"] for r in mine)),
            "churn_flows_first": float(np.mean([r["churn_flows_first"] for r in mine])),
            "value_driver_first": float(np.mean([r["value_driver_first"] for r in mine])),
            "coverage": sum(r["covered"] for r in mine) / max(sum(r["intervals"]
                                                                  for r in mine), 1),
            "seeds": len(mine),
            "raw_best_decoy_rank": float(np.mean([r["raw_rank_of_decoy"] for r in mine])),
        }
    all_rows = rows + tracked
    if not all_rows:
        return {"worlds": per_world, "tracked": tracked, "metrics": {}}
    metrics = {
        "insights.quality.recall_top5": min((r["recall_top5"] for r in all_rows), default=0.0),
        "insights.quality.precision_top5": float(np.mean([r["precision_top5"]
                                                          for r in all_rows])),
        "insights.quality.decoys_above_true": float(sum(r["decoys_above_true"]
                                                        for r in all_rows)),
        "insights.quality.churn_flows_first": float(np.mean([r["churn_flows_first"]
                                                             for r in all_rows])),
    }
    if rows:  # intervals at the planted threshold: from the direct runs
        metrics["insights.quality.coverage"] = (sum(r["covered"] for r in rows)
                                                / max(sum(r["intervals"] for r in rows), 1))
    return {"worlds": per_world, "tracked": tracked, "metrics": metrics}


def through_track(world: worlds.World) -> dict[str, Any]:
    """Feed the world through a real server's Track (back-dated times), ask over gRPC."""
    import grpc

    from nudge.clients import Client
    from nudge.server.app import create_server
    from nudge.server.clock import ManualClock
    from nudge.server.config import Config
    from nudge.v1 import insights_service_pb2 as pb
    from nudge.v1 import insights_service_pb2_grpc as pb_grpc

    with tempfile.TemporaryDirectory(prefix="nudge-insights-") as tmp:
        server = create_server(Config(port=0, data_dir=Path(tmp) / "data", grace_seconds=2.0),
                               clock=ManualClock(world.now))
        server.start()
        try:
            t0 = time.perf_counter()
            with Client(f"127.0.0.1:{server.port}", timeout=60.0) as client:
                for batch in worlds.world_events(world, 5_000):
                    client.track(batch)
            track_s = time.perf_counter() - t0
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.InsightsServiceStub(channel)
                found = stub.RetentionDrivers(pb.RetentionDriversRequest(max_drivers=100))
                flows = stub.ChurnFlows(pb.ChurnFlowsRequest())
                value = stub.ValueDrivers(pb.ValueDriversRequest())
                at_planted = {}
                for name, (k, _) in world.truth["drivers"].items():
                    one = stub.RetentionDrivers(pb.RetentionDriversRequest(
                        max_drivers=1000, max_threshold=k))
                    at_planted[name] = _at_threshold(one, name, k)
        finally:
            server.stop()
    row = score(world, _findings(found.drivers), _findings(flows.flows),
                _findings(value.drivers), {n: v for n, v in at_planted.items() if v})
    row["track_events_per_s"] = world.n_events / track_s
    return row


def _at_threshold(reply: Any, name: str, k: int) -> tuple[float, float, float] | None:
    # With max_threshold = k the reported threshold is at most k; only an exact k counts.
    for d in reply.drivers:
        if d.event_type == name and d.min_count == k:
            return (d.adjusted_lift, d.ci_low, d.ci_high)
    return None


@dataclass
class _Row:
    event_type: str
    min_count: int
    adjusted_lift: float
    lift: float
    flow: str = ""
    step: str = ""


@dataclass
class _Found:
    drivers: list[_Row]


def _findings(messages: Any) -> _Found:
    return _Found([_Row(getattr(m, "event_type", ""), getattr(m, "min_count", 1),
                        m.adjusted_lift, m.lift, getattr(m, "flow", ""),
                        getattr(m, "step", "")) for m in messages])


# --------------------------------------------------------------------------- speed


def synthetic_store(path: Path, users: int, events: int, seed: int = 0) -> float:
    """A store holding ``users`` summaries of ``events`` entries in all (one per event, as
    ingest appends them), written with the table's own ``append``; returns seconds."""
    from nudge.server.storage.store import Store
    from nudge.server.storage.tables import insights as table

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    types = [f"event_{i:02d}" for i in range(24)]
    weights = 1.0 / np.arange(1, len(types) + 1)
    weights /= weights.sum()
    now_hour = int(time.time() // 3600)
    store = Store(path, map_size=1 << 32)
    try:
        with store.env.begin(write=True) as txn:
            ids = [table.register_key(txn, store.dbs, t) for t in types]
            per_user = rng.poisson(events / users, users)
            offsets = np.concatenate([[0], np.cumsum(per_user)])
            n = int(offsets[-1])
            first = now_hour - rng.integers(0, 24 * 200, users)
            early = rng.random(n) < 0.5
            offset_h = np.where(early, rng.integers(0, 24 * 7, n), rng.integers(0, 24 * 120, n))
            entries = np.empty(n, table.ENTRY)
            entries["hour"] = np.repeat(first, per_user) + offset_h
            entries["key"] = np.array(ids)[rng.choice(len(types), n, p=weights)]
            entries["count"] = 1
            entries["amount"] = 0.0
            raw = entries.tobytes()
            eb = table.ENTRY_BYTES
            for u in range(users):
                table.append(txn, store.dbs, f"user-{u:08d}",
                             raw[offsets[u] * eb:offsets[u + 1] * eb])
    finally:
        store.close()
    return time.perf_counter() - t0


def speed(config: InsightsConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    from nudge.server.offline import insights
    from nudge.server.storage.readonly import ReadOnlyStore

    with tempfile.TemporaryDirectory(prefix="nudge-insights-speed-") as tmp:
        progress(f"insights speed: writing {config.users:,} summaries, "
                 f"{config.events:,} events")
        build_s = synthetic_store(Path(tmp) / "data", config.users, config.events)
        times: list[tuple[float, float, float]] = []
        found = None
        # One long-lived environment, as the server has: the first query pays the page
        # faults of mapping the table, the repeats show a warm server.
        with ReadOnlyStore(Path(tmp) / "data") as store:
            for i in range(config.query_repeats):
                progress(f"insights speed: RetentionDrivers {i + 1}/{config.query_repeats}")
                t0, c0 = time.perf_counter(), time.process_time()
                with store.read() as txn:
                    pop = insights.load_population(txn, store.dbs)
                t1 = time.perf_counter()
                found = insights.retention_drivers(pop, insights.RetentionQuery(
                    insights.Cohort(None, None, time.time())))
                times.append((t1 - t0, time.perf_counter() - t1, time.process_time() - c0))
                del pop
    total = [a + b for a, b, _ in times]
    best = int(np.argmin(total))
    assert found is not None
    return {"users": config.users, "events": config.events, "build_s": build_s,
            "retention_drivers_s": total[best], "read_s": times[best][0],
            "count_and_estimate_s": times[best][1], "cpu_s": times[best][2],
            "runs_s": total, "load_average": list(_load()),
            "judged_users": found.judged_users, "tested": found.tested,
            # The budget is stated at 1M users / 30M events: smaller runs are reported, not
            # judged against it.
            "metrics": {"insights.retention_drivers_1m_s": total[best],
                        "insights.retention_drivers_1m_cpu_s": times[best][2]}
            if config.users >= 1_000_000 and config.events >= 30_000_000 else {}}


def _load() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


# --------------------------------------------------------------------------- ingest


def ingest_loss(config: InsightsConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """Events/s through the EventWriter with and without the insights hook, interleaved."""
    from nudge.server.inputs.events import validate_event
    from nudge.server.storage.ingest import EventWriter
    from nudge.server.storage.insights_summary import InsightsSummary
    from nudge.server.storage.store import Store
    from nudge.v1 import event_pb2

    rng = np.random.default_rng(0)
    types = ["app_opened", "balance_viewed", "pix_sent", "loan_simulated", "card_activated"]
    now = time.time()
    rates: dict[str, list[float]] = {"without": [], "with": []}
    own: list[float] = []  # the summary's own CPU per event (its thread time)
    cpu_rates: dict[str, list[float]] = {"without": [], "with": []}
    # Round -1 warms up (imports, kernels, the first store's files) and is not counted.
    for r in range(-1, config.ingest_rounds):
        for mode in ("without", "with") if r % 2 == 0 else ("with", "without"):
            progress(f"insights ingest: round {r + 1}, {mode} the summary")
            with tempfile.TemporaryDirectory(prefix="nudge-insights-ingest-") as tmp:
                store = Store(Path(tmp) / "data", map_size=1 << 30)
                writer = EventWriter(store, 7 * 86_400.0)
                summary = None
                if mode == "with":  # as the server wires it: written behind (1 s)
                    summary = InsightsSummary(store, writer)
                    writer.add_event_hook(summary)
                n_events = config.ingest_users * config.ingest_events_per_user
                batches = []
                for start in range(0, n_events, 5_000):
                    batch = []
                    for i in range(start, min(n_events, start + 5_000)):
                        ev = event_pb2.Event(
                            event_id=f"e{r}-{i}", user_id=f"u{rng.integers(config.ingest_users)}",
                            type=types[i % len(types)], numbers={"amount": 100.0},
                            strings={"step": "documentation"} if i % 10 == 0 else {})
                        ev.time.FromNanoseconds(int((now - rng.uniform(0, 86_400 * 30)) * 1e9))
                        batch.append(validate_event(ev, i, now))
                    batches.append(batch)
                try:
                    t0, c0 = time.perf_counter(), time.process_time()
                    for batch in batches:
                        writer.submit(batch).result()
                    if summary is not None:  # what is still pending is part of the cost
                        summary.flush()
                    if r >= 0:
                        rates[mode].append(n_events / (time.perf_counter() - t0))
                        cpu_rates[mode].append(n_events / (time.process_time() - c0))
                        if summary is not None:
                            own.append(summary.cpu_seconds / n_events)
                finally:
                    if summary is not None:
                        summary.close()
                    writer.close()
                    store.close()
    without, with_ = float(np.median(rates["without"])), float(np.median(rates["with"]))
    cpu_without = float(np.median(cpu_rates["without"]))
    cpu_with = float(np.median(cpu_rates["with"]))
    # Judged on events per CPU second of the process: on a box shared with other jobs the
    # wall-clock rate of identical runs swings by a third (both are reported). Each round
    # runs both modes back to back, so the loss is the median over rounds of that round's
    # own ratio, both modes seeing about the same load: the box's load drifts between
    # rounds (identical rounds of one run differed by up to 31% per CPU second at load
    # 4-6). With 3 rounds and the ratio of the modes' medians, three runs on 2026-12-03
    # gave 29%, 9% and 4%.
    paired = [1.0 - w / wo for w, wo in zip(cpu_rates["with"], cpu_rates["without"],
                                            strict=True)]
    loss = float(np.median(paired))
    # The same cost from the summary's own thread time (hook and folds; not the commit's
    # extra pages, which the whole-process figure includes): steadier on a busy box.
    own_per_event = float(np.median(own))
    own_loss = 1.0 - 1.0 / (1.0 + own_per_event * cpu_without)
    return {"events_per_s_without": without, "events_per_s_with": with_,
            "wall_loss": 1.0 - with_ / without, "events_per_cpu_s_without": cpu_without,
            "events_per_cpu_s_with": cpu_with, "loss": loss, "paired_losses": paired,
            "rounds": rates,
            "cpu_rounds": cpu_rates, "load_average": list(_load()),
            "summary_cpu_us_per_event": 1e6 * own_per_event, "summary_cpu_loss": own_loss,
            # One round (--quick) is too noisy to judge.
            "metrics": {"insights.ingest_throughput_loss": loss}
            if config.ingest_rounds >= 3 else {}}


def run(config: InsightsConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    out: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    if config.speed:
        out["speed"] = speed(config, progress)
        metrics.update(out["speed"].pop("metrics"))
        out["ingest"] = ingest_loss(config, progress)
        metrics.update(out["ingest"].pop("metrics"))
    if config.worlds and (config.seeds or config.track):
        out["quality"] = quality(config, progress)
        metrics.update(out["quality"].pop("metrics"))
    out["metrics"] = {k: v for k, v in metrics.items() if not math.isnan(v)}
    return out


def tables(section: dict[str, Any]) -> list[Any]:
    """The section's tables for the bench report."""
    from nudge.bench.report import Table

    out = []
    if "speed" in section:
        s = section["speed"]
        load = ", ".join(f"{x:.1f}" for x in s["load_average"])
        out.append(Table(
            f"Insights: RetentionDrivers over {s['users']:,} users, {s['events']:,} events",
            ("part", "seconds"),
            [("read every summary", f"{s['read_s']:.2f}"),
             ("count (kernels) and estimate", f"{s['count_and_estimate_s']:.2f}"),
             ("total (best of runs)", f"{s['retention_drivers_s']:.2f}"),
             ("CPU time of that run", f"{s['cpu_s']:.2f}"),
             ("every run", ", ".join(f"{x:.2f}" for x in s["runs_s"]))],
            f"Summaries written directly with the table's append in {s['build_s']:.0f} s "
            f"(not through Track); load average at the end {load}."))
    if "ingest" in section:
        g = section["ingest"]
        out.append(Table("Insights: ingest cost of the summary (EventWriter, interleaved)",
                         ("", "events/s (wall)", "events per CPU second"),
                         [("without the summary", f"{g['events_per_s_without']:,.0f}",
                           f"{g['events_per_cpu_s_without']:,.0f}"),
                          ("with the summary", f"{g['events_per_s_with']:,.0f}",
                           f"{g['events_per_cpu_s_with']:,.0f}"),
                          ("throughput lost", f"{100 * g['wall_loss']:.1f}%",
                           f"{100 * g['loss']:.1f}%"),
                          ("the summary's own CPU (writer thread) per event, and its share",
                           "", f"{g['summary_cpu_us_per_event']:.2f} us, "
                               f"{100 * g['summary_cpu_loss']:.1f}%")],
                         "Medians over interleaved rounds; the budget is judged per CPU "
                         "second, the median of each round's own ratio (rounds: "
                         + ", ".join(f"{100 * x:.0f}%" for x in g["paired_losses"])
                         + "; load average at the end "
                         + ", ".join(f"{x:.1f}" for x in g["load_average"]) + ")."))
    if "quality" in section:
        q = section["quality"]
        rows = [(name, f"{w['recall_top5']:.2f}", f"{w['precision_top5']:.2f}",
                 str(w["decoys_above_true"]), f"{w['churn_flows_first']:.2f}",
                 f"{w['value_driver_first']:.2f}", f"{w['coverage']:.2f}",
                 f"{w['raw_best_decoy_rank'] + 1:.1f}", str(w["seeds"]))
                for name, w in q["worlds"].items()]
        rows += [(f"{t['world']} seed {t['seed']} via Track", f"{t['recall_top5']:.2f}",
                  f"{t['precision_top5']:.2f}", str(t["decoys_above_true"]),
                  f"{float(t['churn_flows_first']):.2f}", f"{float(t['value_driver_first']):.2f}",
                  "-", f"{t['raw_rank_of_decoy'] + 1}", "1") for t in q["tracked"]]
        out.append(Table(
            "Insights: planted truth (bench/insight_worlds.py)",
            ("world", "recall top 5", "precision top 5", "decoys above a true driver",
             "churn flows first", "value driver first", "CI coverage",
             "best decoy by raw lift", "seeds"), rows,
            "recall: planted drivers of >= +10 points in the top 5 at their threshold ±1; "
            "precision: planted drivers (any size) among the top 5; CI coverage: the 95% "
            "interval at the planted threshold covers the planted effect; raw lift: where "
            "Compass's unadjusted view would rank the best decoy (1 = first)."))
    return out


QUICK = InsightsConfig(users=50_000, events=1_500_000, query_repeats=1, ingest_users=2_000,
                       ingest_rounds=1, seeds=(11,), worlds=("baseline", "entangled"),
                       track_seed=11)


def quick(config: InsightsConfig) -> InsightsConfig:
    return replace(QUICK, track=config.track)
