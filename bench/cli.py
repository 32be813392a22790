"""``nudge bench``: prove on your own hardware that nudge fits your latency budget.

The command line only parses options into a :class:`BenchConfig`; :func:`run` does the work
and returns a plain dict, which :mod:`nudge.bench.report` prints and writes. Sections:

- ``kernels``  micro-benchmarks of every kernel, sizes as parameters
- ``quality``  the fraud model on every regime of bench/risk_worlds.py (AP, recall, AP by
               history, calibration, genuine alert drift, River beside it), and the
               policy's reward against the oracle on bench/policy_sim.py's world
- ``learning`` the bank simulator: nudge against the rulebook and the oracle (conversions,
               opt-outs); ``nudge evaluate`` against obp on the Open Bandit Dataset sample
- ``rpc``      a server in a child process (or ``--target``): sequential latency against the
               Echo floor, concurrent throughput, open-loop load, durable TrackStream rate
- ``peers``    Vowpal Wabbit, MABWiser, River (optional ``bench`` extra) beside nudge
- ``startup``  process start → SERVING with a cold and a warm Numba cache
- ``storage``  bytes the store holds per user, one event for each of 1,000,000 new users
- ``insights`` RetentionDrivers over 1M users / 30M events, the ingest cost of the
               insights summary, planted-truth quality (bench/insights_bench.py)
- ``audience`` DecideBatch over 1,000,000 users against 3,600 combinations, every decision
               logged (a server in a child process)
- ``background`` Decide, GetUser and Echo timed while the server is quiet, ingests a
               steady stream, and learns from outcomes (bench/background.py)
- ``all``      every section above
- ``faults``   kill -9 in a loop, 100 rounds (not part of ``all``; see bench/faults.py);
               ``--cluster``: SIGKILL nudge nodes and NATS servers (bench/cluster_faults.py)
- ``cluster``  cluster mode on loopback against the embedded node: Track latency, durable
               events/s, local vs forwarded Decide, failover, CPU per event (not in ``all``)

Exit status: 0 when every measured budget in ``bench/budgets.toml`` is met, 1 when one is
missed or a section failed, 130 on Ctrl-C (servers the bench started are always stopped).

    python -m nudge.bench.cli all [--out bench/reports]
    python -m nudge.bench.cli rpc --target 10.0.0.5:50051
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nudge.bench import budgets as budgets_mod
from nudge.bench.audience import AudienceConfig
from nudge.bench.background import BackgroundConfig
from nudge.bench.ingest import IngestConfig
from nudge.bench.insights_bench import InsightsConfig
from nudge.bench.insights_bench import quick as insights_quick
from nudge.bench.kernels_bench import KernelsConfig
from nudge.bench.learning import LearningConfig
from nudge.bench.open_loop import OpenLoopConfig
from nudge.bench.peers import PeersConfig
from nudge.bench.quality import QualityConfig
from nudge.bench.rpc_floor import RpcConfig
from nudge.bench.startup import StartupConfig
from nudge.bench.storage import StorageConfig

SECTIONS = ("kernels", "quality", "learning", "rpc", "peers", "startup", "storage", "ingest",
            "insights", "audience", "background")
DEFAULT_OUT = Path("bench/reports")


@dataclass(frozen=True)
class BenchConfig:
    sections: tuple[str, ...]
    out: Path = DEFAULT_OUT
    budgets_path: Path | None = None
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    startup: StartupConfig = field(default_factory=StartupConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    insights: InsightsConfig = field(default_factory=InsightsConfig)
    audience: AudienceConfig = field(default_factory=AudienceConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    write_reports: bool = True
    command: str = "nudge bench"
    profile: bool = False  # rpc: profile the handlers; .prof files go beside the report


def run(config: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Run the chosen sections; a failing section is recorded and the others still run."""
    from nudge.bench import (
        audience,
        background,
        ingest,
        insights_bench,
        kernels_bench,
        learning,
        peers,
        quality,
        rpc_floor,
        startup,
        storage,
    )
    from nudge.bench.report import machine

    runners = {
        "kernels": lambda: kernels_bench.run(config.kernels, progress),
        "quality": lambda: quality.run(config.quality, progress),
        "learning": lambda: learning.run(config.learning, progress),
        "rpc": lambda: rpc_floor.run_config(config.rpc, progress),
        "peers": lambda: peers.run(config.peers, progress),
        "startup": lambda: startup.run(config.startup, progress),
        "storage": lambda: storage.run(config.storage, progress),
        "ingest": lambda: ingest.run(config.ingest, progress),
        "insights": lambda: insights_bench.run(config.insights, progress),
        "audience": lambda: audience.run(config.audience, progress),
        "background": lambda: background.run(config.background, progress),
    }
    budgets = budgets_mod.load(config.budgets_path)
    started = datetime.now(UTC).astimezone()
    if config.profile and config.rpc.profile_dir is None:
        # Beside the report: report.write names it bench-<stamp>.md from the same time.
        stamp = started.isoformat(timespec="seconds").replace(":", "").replace("-", "")
        config = replace(config, rpc=replace(config.rpc,
                                             profile_dir=config.out / f"bench-{stamp}-profile"))
    meta: dict[str, Any] = {"started": started.isoformat(timespec="seconds"),
                            "command": config.command, "machine": machine()}
    t0 = time.perf_counter()
    sections: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for name in config.sections:
        try:
            sections[name] = runners[name]()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            progress(f"{name}: failed: {errors[name]}")
            traceback.print_exc(file=sys.stderr)
    meta["elapsed_s"] = time.perf_counter() - t0
    metrics = {k: v for s in sections.values() for k, v in s.get("metrics", {}).items()}
    verdicts = budgets_mod.judge(budgets, metrics)
    return {"meta": meta, "sections": sections, "errors": errors, "metrics": metrics,
            "budgets": [v.to_dict() for v in verdicts],
            "ok": budgets_mod.all_met(verdicts) and not errors}


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("output")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="folder for the JSON, Markdown and PNG reports (default %(default)s)")
    g.add_argument("--budgets", type=Path, help="budgets file (default: bench/budgets.toml)")
    g.add_argument("--no-report", action="store_true", help="print only; write no files")
    g.add_argument("--quick", action="store_true",
                   help="tiny sizes: a smoke run in well under a minute (figures are noisy)")
    k = common.add_argument_group("kernels")
    k.add_argument("--ingest-batch", type=int, nargs="+", metavar="N")
    k.add_argument("--policy-combos", type=int, nargs="+", metavar="N",
                   help="combinations to score (20, 200, 3600 use campaign-like layouts)")
    k.add_argument("--policy-modes", nargs="+", choices=("squarecb", "thompson"))
    k.add_argument("--features", type=int)
    k.add_argument("--learner-batch", type=int)
    k.add_argument("--risk-batch", type=int)
    k.add_argument("--kernel-seconds", type=float, help="timing per kernel case")
    r = common.add_argument_group("rpc")
    r.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    r.add_argument("--serving-timeout", type=float, help="seconds to wait for SERVING")
    r.add_argument("--calls", type=int, help="sequential calls per RPC")
    r.add_argument("--events", type=int, help="events in the TrackStream throughput run")
    r.add_argument("--batch", type=int, help="events per TrackStream message")
    r.add_argument("--users", type=int, help="users given a history before measuring")
    r.add_argument("--durable-calls", type=int, help="sequential Track / TrackStream calls")
    r.add_argument("--stream-events", type=int, help="events per sequential TrackStream call")
    r.add_argument("--concurrency", type=int, help="client threads for throughput")
    r.add_argument("--throughput-seconds", type=float, help="per RPC (0 skips)")
    r.add_argument("--handler-calls", type=int,
                   help="calls per RPC in the server-side handler-time pass (0 skips)")
    r.add_argument("--metrics-url", help="/metrics of the --target server, for handler time")
    r.add_argument("--profile", action="store_true",
                   help="also profile the handlers under load (cProfile, a second server); "
                        ".prof files go beside the report")
    r.add_argument("--profile-seconds", type=float, help="load per profiled RPC")
    r.add_argument("--open-loop-rpcs", nargs="+", metavar="RPC",
                   choices=("Echo", "GetUser", "ScoreTransaction", "Decide", "Track"))
    r.add_argument("--open-loop-start", type=float, help="first rate, calls/s")
    r.add_argument("--open-loop-steps", type=int, help="rates to try (0 skips open loop)")
    r.add_argument("--open-loop-seconds", type=float, help="seconds per rate")
    p = common.add_argument_group("peers")
    p.add_argument("--peer-decisions", type=int)
    p.add_argument("--peer-seconds", type=float, help="time box per peer")
    p.add_argument("--risk-users", type=int, help="users in the River comparison stream")
    p.add_argument("--peer-worlds-decisions", type=int,
                   help="decisions per bench/worlds.py world (0 skips the worlds' peers)")
    p.add_argument("--vw-seconds", type=float, help="VW's time box per world")
    s = common.add_argument_group("startup")
    s.add_argument("--no-cold", action="store_true", help="skip the cold-cache start (~15 s)")
    s.add_argument("--warm-runs", type=int)
    st = common.add_argument_group("storage")
    st.add_argument("--storage-users", type=int, help="new users, one event each (1,000,000)")
    ig = common.add_argument_group("ingest")
    ig.add_argument("--ingest-users", type=int,
                    help="new users streamed through TrackStream, one event each (1,000,000)")
    ig.add_argument("--ingest-kinds", nargs="+", choices=("bare", "rich"))
    ins = common.add_argument_group("insights")
    ins.add_argument("--insights-users", type=int, help="users in the speed run (1,000,000)")
    ins.add_argument("--insights-events", type=int, help="events in the speed run (30,000,000)")
    ins.add_argument("--insights-seeds", type=int, help="planted-truth seeds per world (10)")
    ins.add_argument("--no-insights-track", action="store_true",
                     help="skip feeding one seed per world through a server's Track")
    au = common.add_argument_group("audience")
    au.add_argument("--audience-users", type=int,
                    help="users in the DecideBatch stream (1,000,000; all: 100,000)")
    bg = common.add_argument_group("background")
    bg.add_argument("--background-calls", type=int, help="timed calls per RPC per phase")
    bg.add_argument("--ingest-rate", type=float, help="events/s of the ingest phase's feed")
    bg.add_argument("--outcome-rate", type=float, help="outcomes/s of the outcomes phase")
    bg.add_argument("--switch-intervals-ms", type=float, nargs="+", metavar="MS",
                    help="GIL switch intervals, one server each (0: Python's 5 ms; "
                         "default: the server's own setting)")

    parser = argparse.ArgumentParser(prog="nudge bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True, metavar="SECTION")
    helps = {"kernels": "micro-benchmarks of every kernel",
             "quality": "fraud model per regime; policy reward vs the oracle",
             "learning": "the bank simulator (nudge vs rulebook and oracle); evaluate vs obp",
             "rpc": "RPC latency vs the Echo floor, throughput, open loop",
             "peers": "Vowpal Wabbit, MABWiser, River beside nudge (optional extra)",
             "startup": "process start to SERVING, cold and warm Numba cache",
             "storage": "bytes per user in the store at 1M users (about 2 minutes)",
             "ingest": "TrackStream, one event per new user (1M), vs raw LMDB commits",
             "insights": "RetentionDrivers at 1M users / 30M events, ingest cost, planted "
                         "truth (about 4 minutes)",
             "audience": "DecideBatch: 1M users x 3,600 combinations, every decision logged",
             "background": "request latency while the server ingests and learns",
             "all": "every section (5-6 minutes on the 2-core reference box)"}
    for name, text in helps.items():
        sub.add_parser(name, parents=[common], help=text, description=text)
    text = "kill -9 in a loop: nothing acknowledged lost, doubled or resent (minutes)"
    faults = sub.add_parser("faults", help=text, description=text)
    faults.add_argument("--rounds", type=int, default=100)
    faults.add_argument("--seed", type=int, default=1)
    faults.add_argument("--cluster", action="store_true",
                        help="3 NATS servers + 3 nodes: kill a node or a NATS server per "
                             "round (default 6 rounds)")
    text = "cluster mode on loopback vs the embedded node (about a minute)"
    cluster = sub.add_parser("cluster", help=text, description=text)
    cluster.add_argument("--events", type=int, default=20_000)
    return parser


def _set(obj, **values):
    """``dataclasses.replace`` for the options the user gave (None = keep the default)."""
    return replace(obj, **{k: v for k, v in values.items() if v is not None})


def config_from_args(args: argparse.Namespace, budgets: budgets_mod.Budgets) -> BenchConfig:
    """Options → config. ``--quick`` shrinks every default; explicit options still win."""
    q = args.quick
    kernels = KernelsConfig(ingest_batches=(1, 100), policy_combos=(20, 3600),
                            policy_modes=("squarecb",), learner_batch=50, risk_batch=2_000,
                            max_time=0.05) if q else KernelsConfig()
    kernels = _set(kernels, ingest_batches=_tuple(args.ingest_batch),
                   policy_combos=_tuple(args.policy_combos),
                   policy_modes=_tuple(args.policy_modes), features=args.features,
                   learner_batch=args.learner_batch, risk_batch=args.risk_batch,
                   max_time=args.kernel_seconds)
    open_loop = OpenLoopConfig(p99_ms=budgets.open_loop_p99_ms)
    if q:
        open_loop = _set(open_loop, max_steps=2, step_seconds=0.3, rpcs=("Echo", "Decide"))
    open_loop = _set(open_loop, rpcs=_tuple(args.open_loop_rpcs), start_rate=args.open_loop_start,
                     max_steps=args.open_loop_steps, step_seconds=args.open_loop_seconds)
    rpc = (RpcConfig(calls=100, events=5_000, batch=500, users=50, durable_calls=10,
                     stream_events=20, concurrency=4, throughput_seconds=0.4, handler_calls=100,
                     profile_seconds=0.5)
           if q else RpcConfig(durable_calls=300, throughput_seconds=2.0))
    rpc = _set(rpc, target=args.target, calls=args.calls, events=args.events, batch=args.batch,
               users=args.users, durable_calls=args.durable_calls,
               stream_events=args.stream_events, concurrency=args.concurrency,
               throughput_seconds=args.throughput_seconds, budgets=budgets,
               serving_timeout=args.serving_timeout, handler_calls=args.handler_calls,
               metrics_url=args.metrics_url, profile_seconds=args.profile_seconds)
    rpc = replace(rpc, open_loop=open_loop if open_loop.max_steps > 0 else None)
    peers = (PeersConfig(decisions=200, seconds=2.0, risk_users=40, worlds=("dense",),
                         worlds_decisions=2_000, vw_seconds=5.0) if q else PeersConfig())
    peers = _set(peers, decisions=args.peer_decisions, seconds=args.peer_seconds,
                 risk_users=args.risk_users, worlds_decisions=args.peer_worlds_decisions,
                 vw_seconds=args.vw_seconds)
    quality = (QualityConfig(customers=200, seeds=(1,), policy_decisions=5_000,
                             with_river=False, worlds_decisions=300,
                             worlds=("dense", "nothing"), insights_seeds=(11,),
                             insights_track=False)
               if q else QualityConfig())
    learning = LearningConfig(decisions=1_500, obp_draws=1_000) if q else LearningConfig()
    startup = StartupConfig(cold=not (q or args.no_cold), warm_runs=1 if q else 2)
    startup = _set(startup, warm_runs=args.warm_runs)
    # Bytes per user hardly move with N (811 at 1,000,000, 793 at 20,000): ``all`` measures
    # 200,000 users to stay under 5 minutes; ``nudge bench storage`` the full million.
    storage = StorageConfig(users=20_000 if q else 200_000 if args.section == "all"
                            else StorageConfig().users)
    storage = _set(storage, users=args.storage_users)
    # ``all`` streams 200,000 new users per kind; ``nudge bench ingest`` the full million.
    ingest = IngestConfig(users=20_000 if q else 200_000 if args.section == "all"
                          else IngestConfig().users)
    ingest = _set(ingest, users=args.ingest_users, kinds=_tuple(args.ingest_kinds))
    insights = insights_quick(InsightsConfig()) if q else InsightsConfig()
    insights = _set(insights, users=args.insights_users, events=args.insights_events,
                    seeds=None if args.insights_seeds is None
                    else tuple(range(11, 11 + args.insights_seeds)))
    if args.no_insights_track:
        insights = replace(insights, track=False)
    # The budget is stated per million users at the measured rate: ``all`` measures
    # 100,000 to stay within its minutes, ``nudge bench audience`` the full million.
    audience = AudienceConfig(users=2_000 if q else 100_000 if args.section == "all"
                              else AudienceConfig().users, history=500 if q else 20_000)
    audience = _set(audience, users=args.audience_users)
    # ``all`` times 500 calls per phase (about a minute), ``nudge bench background`` 1,000.
    background = (BackgroundConfig(calls=50, users=20, ingest_rate=500.0, outcome_rate=50.0,
                                   settle_seconds=0.5) if q
                  else BackgroundConfig(calls=500) if args.section == "all"
                  else BackgroundConfig())
    background = _set(background, calls=args.background_calls, ingest_rate=args.ingest_rate,
                      outcome_rate=args.outcome_rate,
                      switch_intervals_ms=_tuple(args.switch_intervals_ms))
    sections = SECTIONS if args.section == "all" else (args.section,)
    return BenchConfig(sections=sections, out=args.out, budgets_path=args.budgets,
                       profile=args.profile,
                       kernels=kernels, quality=quality, learning=learning, rpc=rpc, peers=peers,
                       startup=startup, storage=storage, ingest=ingest,
                       insights=insights, audience=audience, background=background,
                       write_reports=not args.no_report,
                       command="nudge bench " + " ".join(args.argv))


def _tuple(v: list | None) -> tuple | None:
    return None if v is None else tuple(v)


def main(argv: list[str] | None = None) -> int:
    """``nudge bench SECTION [options]``; returns the exit status."""
    try:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    except ImportError:
        print("nudge bench needs the bench extra: pip install 'nudge[bench]'", file=sys.stderr)
        return 2

    from nudge.bench import report

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.section == "faults" and args.cluster:
        from nudge.bench import cluster_faults

        rounds = args.rounds if "--rounds" in argv else 6
        return cluster_faults.main(["--rounds", str(rounds), "--seed", str(args.seed)])
    if args.section == "cluster":
        from nudge.bench import cluster_bench

        return cluster_bench.main(["--events", str(args.events)])
    if args.section == "faults":  # pass or fail, with its own summary: no budgets, no report
        from nudge.bench import faults

        return faults.main(["--rounds", str(args.rounds), "--seed", str(args.seed)])
    try:
        budgets = budgets_mod.load(args.budgets)
    except (OSError, ValueError) as exc:
        print(f"nudge bench: --budgets: {exc}", file=sys.stderr)
        return 2
    config = config_from_args(args, budgets)
    # Piped output (CI logs, tee) gets a wide table instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("starting", total=None)
            result = run(config, lambda msg: bar.update(task, description=msg))
    except KeyboardInterrupt:
        print("nudge bench: interrupted; servers it started were stopped", file=sys.stderr)
        return 130
    report.print_console(result, console)
    for name, err in result["errors"].items():
        console.print(f"[bold red]{name} failed:[/] {err}")
    if config.write_reports:
        paths = report.write(result, config.out)
        console.print("reports: " + ", ".join(str(p) for k, p in paths.items()
                                              if not k.startswith("latest")))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
