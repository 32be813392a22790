"""Reports of a ``nudge bench`` run: a rich table on the terminal, JSON, Markdown and a PNG.

Every format is built from the same plain tables (:func:`tables`), so the terminal, the
Markdown report and the README's Performance section never disagree.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PCT = ("p50", "p90", "p99", "p999")
PCT_LABEL = {"p50": "p50", "p90": "p90", "p99": "p99", "p999": "p99.9"}


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: Sequence[Sequence[Any]]
    note: str = ""


def machine() -> dict:
    """What the numbers were measured on (CPU, cores, memory, OS, Python, key libraries)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    mem_gib = float("nan")
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
            mem_gib = kib / 2**20
    except (OSError, StopIteration, ValueError):
        pass
    libs = {}
    for lib in ("grpcio", "numba", "numpy", "lmdb"):
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "libraries": libs,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else []}


def describe_machine(m: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average", []))
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']:g} GiB, {m['os']}, "
            f"Python {m['python']} ({libs}); load average at start {load}")


def _f(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _rpc_tables(rpc: dict) -> list[Table]:
    lat: dict = dict(rpc["latency_us"])
    ratio: dict = dict(rpc["ratio_to_echo"])
    lat.update({k: v for k, v in rpc.get("durable_latency_us", {}).items() if k != "Echo"})
    ratio.update(rpc.get("durable_ratio_to_echo", {}))
    headers = ("RPC", *(f"{PCT_LABEL[p]} µs" for p in PCT), *(f"×{PCT_LABEL[p]}" for p in PCT))
    rows = []
    for name, values in lat.items():
        label = "Echo (floor)" if name == "Echo" else name
        if name == "TrackStream":
            label = f"TrackStream ({rpc.get('stream_events', '?')} events)"
        r = ratio.get(name, {p: 1.0 for p in PCT} if name == "Echo" else {})
        rows.append((label, *(_f(values[p]) for p in PCT), *(_f(r.get(p), 2) for p in PCT)))
    note = ("Each call right after an Echo on the same connection; ×pNN is the ratio to the "
            f"Echo floor's pNN. TrackStream durable throughput "
            f"{rpc['track_stream_events_per_s']:,.0f} events/s.")
    if "durable_latency_us" in rpc:
        note += (" Track and TrackStream wait for their fsync'd commit and are timed in a "
                 "shorter pass against their own Echo floor.")
    tables = [Table("RPC sequential latency (ratios to the Echo floor of the same run)",
                    headers, rows, note)]
    if rpc.get("handler_us"):
        tables.append(_handler_table(rpc))
    tp = rpc.get("throughput", {})
    if tp:
        rows = [("Echo (floor)" if n == "Echo" else n, _f(v),
                 "1.00" if n == "Echo" else _f(tp["ratio_to_echo"][n], 2),
                 _f(tp["errors"].get(n, 0))) for n, v in tp["per_s"].items()]
        tables.append(Table(f"RPC concurrent throughput ({tp['concurrency']} client threads, "
                            "closed loop)", ("RPC", "calls/s", "×floor", "errors"), rows,
                            "Slices alternate the Echo floor and the RPC; one client process "
                            "on the same 2 cores, so the client's own CPU is part of the "
                            "figure."))
    if rpc.get("open_loop"):
        budget = rpc["open_loop"][0]["p99_budget_ms"]
        rows = []
        for s in rpc["open_loop"]:
            steps = "; ".join(f"{st['offered_per_s']:,.0f}/s → {st['latency_us']['p99'] / 1000:.1f}"
                              + (f" ({st['errors']} err)" if st["errors"] else "")
                              for st in s["steps"])
            rows.append((s["rpc"], _f(s["max_rate_within_budget_per_s"]), steps))
        tables.append(Table("Open loop (fixed request rate; latency from each call's due time)",
                            ("RPC", f"max rate with p99 ≤ {budget:g} ms", "rate → p99 ms"),
                            rows, "One client process; the sweep stops at the first rate "
                            "whose p99 leaves the budget (or whose schedule the client "
                            "could not keep)."))
    return tables


def _handler_table(rpc: dict) -> Table:
    handler, ratio = rpc["handler_us"], rpc["ratio_to_echo"]
    ratio = {**ratio, **rpc.get("durable_ratio_to_echo", {})}
    echo = handler.get("Echo", {}).get("mean_us")
    rows = []
    for name, t in handler.items():
        label = "Echo (floor)" if name == "Echo" else name
        if name == "TrackStream":
            label = f"TrackStream ({rpc.get('stream_events', '?')} events)"
        client = "1.00" if name == "Echo" else _f(ratio.get(name, {}).get("p50"), 2)
        rows.append((label, _f(t["mean_us"], 1), _f(t["p50_le_us"]), _f(t["p99_le_us"]),
                     _f(t["cpu_mean_us"], 1), _f(t["mean_us"] - echo, 1) if echo else "-",
                     client, _f(t["calls"])))
    return Table("RPC server-side handler time (the server's own histograms)",
                 ("RPC", "handler mean µs", "p50 ≤ µs", "p99 ≤ µs", "handler CPU µs",
                  "mean − Echo µs", "client ×p50", "calls"), rows,
                 "Time inside the server's handler, interceptors included "
                 "(grpc_server_handling_seconds), and the handler thread's CPU time over it "
                 "(nudge_rpc_cpu_seconds), from /metrics scraped before and after a pass of "
                 "its own per RPC; means are exact, percentiles only known to a bucket "
                 "(its upper bound). No network, grpc core or client: steadier than the "
                 "client ratios beside it. Track and TrackStream wait for an fsync, so "
                 "their handler time is mostly waiting (CPU shows the work).")


def _profile_markdown(profile: dict) -> list[str]:
    lines = ["## Profiles of the handlers under load (cProfile)", "",
             f"Raw .prof files: `{profile['folder']}` (read with `python -m pstats`). A second "
             "server on the same store, every handler under cProfile (outermost interceptor, "
             "so the interceptors are in it), loaded closed loop one RPC at a time; "
             "times are wall-clock per thread, per RPC, and the profiler slows every call "
             "several times over: read the shares, not the absolute µs.", ""]
    for rpc, top in profile["top"].items():
        for sort in ("cumulative", "tottime"):
            rows = [(e["function"], _f(e["calls_per_rpc"], 2), _f(e["tottime_us_per_rpc"], 1),
                     _f(e["cumtime_us_per_rpc"], 1)) for e in top[sort]]
            t = Table("", ("function", "calls / RPC", "tottime µs / RPC", "cumtime µs / RPC"),
                      rows)
            lines += [f"### {rpc}: top {len(rows)} by {sort} "
                      f"({profile['calls'][rpc]:,} calls profiled)", "", markdown_table(t), ""]
    return lines


def tables(result: dict) -> list[Table]:
    """Every table of a run, in the order the sections ran."""
    out: list[Table] = []
    sec = result["sections"]
    if "rpc" in sec:
        out += _rpc_tables(sec["rpc"])
    if "kernels" in sec:
        rows: list[tuple[Any, ...]] = [
            (c["name"], _f(c["p50_us"], 2), _f(c["p99_us"], 2), _f(c["items_per_s"]),
             _f(c["rounds"]), c["note"]) for c in sec["kernels"]["cases"]]
        out.append(Table("Kernels (one core; per call)",
                         ("kernel", "p50 µs", "p99 µs", "items/s", "rounds", "what"), rows,
                         "Per-call statistics as pytest-benchmark computes them (calibrated "
                         "rounds); items are events, rewards or transactions."))
    if "quality" in sec:
        q = sec["quality"]["risk"]
        rows = [(r["regime"], _f(r["fraud"]),
                 f"{_f(r['ap'], 3)} ({_f(r.get('ap_min_seed', math.nan), 3)})",
                 _f(r["recall"], 3),
                 f"{_f(r['ap_0_4'], 3)} ({_f(r.get('ap_0_4_min_seed', math.nan), 3)})",
                 _f(r["ap_5_19"], 3), _f(r["ap_20_up"], 3),
                 f"{r['top_decile_pred']:.4f} / {r['top_decile_obs']:.4f}",
                 f"{r['genuine_alert_drift']:+.3%}",
                 "-" if not r["river_ap"] else
                 f"{r['river_nudge_ap']:.3f} vs {r['river_ap']:.3f}")
                for r in q["regimes"]]
        out.append(Table(
            "Risk quality (bench/risk_worlds.py regimes; mean of seeds "
            f"{_seed_range(q['regimes'])}, worst seed in brackets)",
            ("regime", "fraud", "AP", "recall @0.5%", "AP hist 0-4", "AP 5-19", "AP 20+",
             "top decile P(fraud) / observed", "genuine alert drift",
             f"AP vs River HST ({q['river_customers']} customers)"), rows,
            "History: the customer's earlier transactions. Genuine alert drift: the weekly "
            "share of genuine transactions held (P(fraud) >= 0.05), later half of the scored "
            "weeks minus earlier half. River: the optional peers extra, seed 1."))
        policies = sec["quality"].get("policy", {})
        if policies:
            out.append(Table(
                "Policy quality (bench/policy_sim.py: known best combination per user type)",
                ("exploration", "policy, last fifth", "oracle", "random", "policy / oracle"),
                [(mode, _f(r["policy_last_fifth"], 4), _f(r["oracle_last_fifth"], 4),
                  _f(r["random_last_fifth"], 4), _f(r["ratio_to_oracle"], 3))
                 for mode, r in policies.items()],
                "Mean expected reward of the choices in the last fifth of the decisions."))
        family = sec["quality"].get("worlds", [])
        if family:
            out.append(Table(
                "Policy quality on the world family (bench/worlds.py, through a server)",
                ("world", "seed", "last fifth", "5k–10k", "@2k", "@5k", "@10k", "@30k",
                 "random", "nothing where best", "invalid propensities"),
                [(w["world"], str(w["seed"]), _f(w["last_fifth"], 3),
                  "-" if w["from_5k_to_10k"] is None else _f(w["from_5k_to_10k"], 3),
                  *("-" if w["curve"].get(k) is None else _f(w["curve"][k], 3)
                    for k in ("2000", "5000", "10000", "30000")),
                  _f(w["random_last_fifth"], 3),
                  "-" if w["nothing_rate_where_best"] is None
                  else _f(w["nothing_rate_where_best"], 2),
                  _f(w["invalid_propensities"])) for w in family],
                "Ratios of the policy's expected reward to the oracle's: over the last fifth, "
                "decisions 5,000–10,000, and the 1,000 decisions before 2k, 5k, 10k, 30k; "
                "campaign defaults (no [exploration] table)."))
    if "learning" in sec:
        out += _learning_tables(sec["learning"])
    if "peers" in sec:
        p = sec["peers"]
        rows = [(d["name"], _f(d["decisions"]), _f(d["decide_us"]["p50"]),
                 _f(d["decide_us"]["p99"]), _f(d["learn_per_s"]), _f(d["reward_vs_oracle"], 3),
                 _f(d["nudge_same_decisions"], 3), _f(d["random_vs_oracle"], 3))
                for d in p["decisions"]]
        rows += [(name, "-", "-", "-", "-", reason, "-", "-")
                 for name, reason in p["skipped"].items() if name != "River"]
        prob = p["problem"]
        out.append(Table(
            f"Peers: {prob['combinations']:,} combinations × {prob['features']} features",
            ("system", "decisions", "decide p50 µs", "p99 µs", "learns/s", "reward/oracle",
             "nudge, same decisions", "random/oracle"), rows,
            f"Rewards learned in batches of {prob['batch']}; peers time-boxed to "
            f"{prob['time_box_s']:g} s."))
        if "worlds" in p:
            wp = p["worlds"]
            rows = [(r["world"], r["learner"], _f(r["decisions"]),
                     *(_f(r["curve"].get(str(k)), 3) for k in (2_000, 5_000, 10_000, 30_000)),
                     _f(r["from_5k_to_10k"], 3), _f(r["last_fifth"], 3)) for r in wp["worlds"]]
            out.append(Table(
                f"Peers on bench/worlds.py (seed {wp['seed']})",
                ("world", "learner", "decisions", "@2k", "@5k", "@10k", "@30k", "5k–10k",
                 "last fifth"), rows,
                "Expected reward over the oracle's, 1,000 decisions before each mark (the "
                "offline fits: greedy on held-out customers after that many training "
                "decisions). VW stops at its time box."))
        if "risk" in p:
            r = p["risk"]
            rows = [(name, _f(v["average_precision"], 3), _f(v["roc_auc"], 3),
                     _f(v["us_per_tx"], 1)) for name, v in (("nudge per-user risk", r["nudge"]),
                                                            ("River HalfSpaceTrees",
                                                             r["HalfSpaceTrees"]))]
            out.append(Table(f"Peers: risk on {r['transactions']:,} transactions "
                             f"({r['fraud']} fraud)",
                             ("system", "average precision", "ROC-AUC", "µs/tx"), rows,
                             "Same stream, scored then learned in time order."))
        elif "River" in p["skipped"]:
            out.append(Table("Peers: risk", ("system", "status"),
                             [("River HalfSpaceTrees", p["skipped"]["River"])]))
    if "startup" in sec:
        s = sec["startup"]
        out.append(Table("Startup (process start → health SERVING)",
                         ("Numba cache", "seconds"),
                         ([("cold", _f(s["cold_s"], 1))] if "cold_s" in s else [])
                         + [("warm", _f(s["warm_s"], 2))]))
    if "storage" in sec:
        s = sec["storage"]
        rows = [(name, f"{d['entries']:,}", _f(d["bytes_per_user"]))
                for name, d in s["databases"].items()]
        rows += [("all (map high-water mark)", "", _f(s["used_bytes_per_user"])),
                 ("a compacted backup", "", _f(s["compact_bytes_per_user"]))]
        out.append(Table(f"Storage: bytes per user at {s['users']:,} new users, one event each",
                         ("database", "entries", "bytes/user"), rows,
                         f"Goal ≤ {s['goal_bytes_per_user']:,} bytes/user with default "
                         f"retention; written in {s['write_s']:.0f} s."))
    if "ingest" in sec:
        s = sec["ingest"]
        rows = [(kind, _f(r["events_per_s"]), _f(r["floor_events_per_s"]),
                 _f(r["share_of_floor"], 2), _f(r["server_cpu_us_per_event"], 1),
                 _f(r["floor_cpu_us_per_event"], 1), _f(r["events_per_commit"]),
                 _f(r["bytes_per_event"]))
                for kind, r in s["kinds"].items()]
        out.append(Table(
            f"Durable ingest: TrackStream, one event for each of {s['users']:,} new users",
            ("events", "events/s", "raw LMDB floor/s", "share of floor", "server CPU µs/event",
             "floor CPU µs/event", "events/commit", "bytes/event"), rows,
            "The reply comes after the last commit is on disk. Floor: the same keys and "
            "values put by a plain loop into a fresh LMDB, fsync'd in commits as large as "
            "the server's mean commit. bare = an app event with no properties; rich = a "
            "time zone, a consent and two properties (the profile is written too)."))
    if "insights" in sec or "insights" in sec.get("quality", {}):
        from nudge.bench.insights_bench import tables as insights_tables

        out += insights_tables({**sec.get("insights", {}),
                                **({"quality": sec["quality"]["insights"]}
                                   if "insights" in sec.get("quality", {}) else {})})
    if "audience" in sec:
        a = sec["audience"]
        per_million = a["metrics"]["audience.decide_batch_s_per_million"]
        out.append(Table(
            f"Audience: DecideBatch, {a['users']:,} users × 3,600 combinations (31 numbers, "
            "SquareCB)", ("users", "with history", "decisions", "logged", "stored",
                         "seconds", "decisions/s", "s per 1M users"),
            [(f"{a['users']:,}", f"{a['history']:,}", f"{a['decisions']:,}",
              f"{a['logged']:,}", f"{a['stored']:,}", _f(a["total_s"], 1), _f(a["per_s"]),
              _f(per_million, 0))],
            "One stream of user ids (1,000 per message); seconds run from the first id sent "
            "to the server's graceful stop (the decision log flushed), stored counted in the "
            "store afterwards."))
    if "background" in sec:
        from nudge.bench import background

        b = sec["background"]
        c = b["config"]
        out.append(Table(
            "Background work against a request's latency (Decide on 3,600 combinations, "
            "GetUser, Echo)", background.HEADERS, background.rows(b),
            f"Each RPC timed right after an Echo, {c['calls']:,} calls per phase; quiet: "
            f"nothing else runs; ingest: a second process streams {c['ingest_rate']:,.0f} "
            f"card transactions/s; outcomes: a second process decides and reports "
            f"{c['outcome_rate']:,.0f} outcomes/s (the learner updates the 3,600-combination "
            "model). One server per GIL switch interval (gil_switch_interval_ms). Handler "
            "mean: the server's own histogram, interceptors included."))
    rows = [(v["name"], ("≤ " + _g(v["max"])) if v["max"] is not None else "≥ " + _g(v["min"]),
             _g(v["value"]) if v["value"] is not None else "-", v["status"], v["issue"])
            for v in result["budgets"]]
    out.append(Table("Budgets (bench/budgets.toml)", ("budget", "target", "measured", "status",
                                                      "issue"), rows))
    return out


def _g(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_console(result: dict, console=None) -> None:
    """The tables on the terminal (rich), missed budgets in red."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable

    console = console or Console()
    for t in tables(result):
        rt = RichTable(title=t.title, caption=t.note or None, box=box.SIMPLE_HEAD,
                       title_justify="left", caption_justify="left")
        for i, h in enumerate(t.headers):
            rt.add_column(h, justify="left" if i == 0 or h in ("what", "issue", "rate → p99 ms")
                          else "right", overflow="fold")
        for row in t.rows:
            style = "bold red" if "MISSED" in row else None
            rt.add_row(*row, style=style)
        console.print(rt)
    missed = [v["name"] for v in result["budgets"] if v["status"] == "MISSED"]
    verdict = ("[bold green]every measured budget met[/]" if not missed
               else f"[bold red]{len(missed)} budget(s) missed:[/] " + ", ".join(missed))
    console.print(f"{verdict}  ({result['meta']['elapsed_s']:.0f} s)")


def markdown(result: dict) -> str:
    """The whole report as Markdown (the README's Performance section reuses its tables)."""
    meta = result["meta"]
    lines = [f"# nudge bench — {meta['started']}", "",
             f"Command: `{meta['command']}`; {meta['elapsed_s']:.0f} s.", "",
             f"Machine: {describe_machine(meta['machine'])}.", ""]
    for t in tables(result):
        lines += [f"## {t.title}", "", markdown_table(t), ""]
        if t.note:
            lines += [t.note, ""]
    profile = result["sections"].get("rpc", {}).get("profile")
    if profile:
        lines += _profile_markdown(profile)
    return "\n".join(lines)


def markdown_table(t: Table) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    left = {"what", "issue", "status", "rate → p99 ms", "system"}
    out = ["| " + " | ".join(cell(h) for h in t.headers) + " |",
           "|" + "|".join("---" if i == 0 or h in left else "---:"
                          for i, h in enumerate(t.headers)) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(out)


def plot(result: dict, path: Path) -> bool:
    """A PNG: RPC latency percentiles, open-loop p99 by rate, kernel p50s. False when there
    is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sec = result["sections"]
    panels = [k for k in ("rpc", "kernels") if k in sec]
    if sec.get("rpc", {}).get("open_loop"):
        panels.insert(1, "open_loop")
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "rpc":
            rpc = sec["rpc"]
            lat = {**rpc["latency_us"],
                   **{k: v for k, v in rpc.get("durable_latency_us", {}).items() if k != "Echo"}}
            names = list(lat)
            width = 0.8 / len(PCT)
            for j, p in enumerate(PCT):
                ax.bar([i + j * width for i in range(len(names))], [lat[n][p] for n in names],
                       width, label=PCT_LABEL[p])
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30,
                          ha="right")
            ax.set_yscale("log")
            ax.set_ylabel("µs")
            ax.set_title("Sequential latency")
            ax.legend(fontsize=8)
        elif panel == "open_loop":
            budget = None
            for s in sec["rpc"]["open_loop"]:
                budget = s["p99_budget_ms"]
                ax.plot([st["offered_per_s"] for st in s["steps"]],
                        [st["latency_us"]["p99"] / 1000 for st in s["steps"]], "o-",
                        label=s["rpc"])
            if budget is not None:
                ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget:g} ms")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("offered calls/s")
            ax.set_ylabel("p99 ms (from due time)")
            ax.set_title("Open loop")
            ax.legend(fontsize=8)
        else:
            cases = sec["kernels"]["cases"]
            ax.barh([c["name"] for c in cases], [c["p50_us"] for c in cases])
            ax.set_xscale("log")
            ax.set_xlabel("p50 µs per call")
            ax.set_title("Kernels")
            ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"nudge bench — {result['meta']['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(result: dict, out: Path) -> dict[str, Path]:
    """JSON, Markdown and PNG into ``out``: a timestamped copy and a ``latest`` copy."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["meta"]["started"].replace(":", "").replace("-", "")
    paths = {"json": out / f"bench-{stamp}.json", "markdown": out / f"bench-{stamp}.md",
             "png": out / f"bench-{stamp}.png"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["markdown"].write_text(markdown(result))
    if not plot(result, paths["png"]):
        del paths["png"]
    for kind, p in list(paths.items()):
        latest = out / f"latest{p.suffix}"
        latest.write_bytes(p.read_bytes())
        paths[f"latest_{kind}"] = latest
    return paths


def _learning_tables(sec: dict) -> list[Table]:
    report = sec["bank_sim"]
    rows = [(name, _f(s["decisions"]), _f(s["conversion_rate_last_fifth"], 4),
             _f(s["opt_outs"]), _f(s["contacts_per_user"], 2))
            for name, s in report["policies"].items()]
    out = [Table(
        "Bank simulator (bench/bank_sim.py, as `nudge simulate`)",
        ("policy", "decisions", "conversion, last fifth", "opt-outs", "contacts / user"), rows,
        f"nudge / oracle {report['nudge_vs_oracle_last_fifth']:.3f}, nudge / rulebook "
        f"{report['nudge_vs_rulebook_last_fifth']:.2f}×, opt-outs vs the rulebook "
        f"{report['opt_outs_vs_rulebook']:+d}.")]
    obp = sec.get("obp", {})
    if "rows" in obp:
        out.append(Table(
            "nudge evaluate vs obp (Open Bandit Dataset sample)",
            ("policy", "estimator", "nudge", "obp", "relative difference"),
            [(r["policy"], r["estimator"], _f(r["nudge"], 6), _f(r["obp"], 6),
              f"{r['relative_difference']:.1e}") for r in obp["rows"]]))
    return out


def readme_section(result: dict) -> str:
    """The body of README's "## Performance": how to reproduce, the machine, every table."""
    meta = result["meta"]
    lines = [
        "`nudge bench` proves on your own hardware that nudge fits a latency budget, and shows "
        "where the time goes. One command runs everything (about 5-6 minutes here) and writes "
        "JSON, Markdown and a PNG latency plot to `bench/reports/`; it exits non-zero when a "
        "budget in `bench/budgets.toml` is missed:",
        "",
        "```sh",
        ".venv/bin/python -m nudge.bench.cli all        # or: nudge bench all",
        ".venv/bin/python -m nudge.bench.cli rpc --target HOST:PORT   # a server you started",
        "```",
        "",
        "Sections: `kernels` (every kernel, sizes as options; the same cases run under "
        "pytest-benchmark in `tests/bench/test_kernels_benchmark.py`), `quality` (risk "
        "average precision, the policy against the oracle), `learning` (the bank simulator's "
        "50,000 decisions, `nudge evaluate` against obp), `rpc` "
        "(sequential latency against an empty Echo on the same server stack, interleaved call "
        "by call; concurrent throughput; open-loop load at fixed rates; durable TrackStream), "
        "`peers` (Vowpal Wabbit, MABWiser, River from the optional `bench` extra, skipped with "
        "a message when missing), `startup`. RPC budgets are ratios to the floor of the same "
        "run, because absolute times drift on a shared box.",
        "",
        f"Latest run ({meta['started'][:10]}, `{meta['command']}`, {meta['elapsed_s']:.0f} s) "
        f"on this box: {describe_machine(meta['machine'])}. The box is shared: "
        "re-run before trusting a single figure near its budget.",
        "",
    ]
    for t in tables(result):
        lines += [f"**{t.title}**", "", markdown_table(t), ""]
        if t.note:
            lines += [t.note, ""]
    return "\n".join(lines).rstrip() + "\n"


def _seed_range(regimes: list[dict]) -> str:
    """The seeds of the risk regime rows, as "1-6" when consecutive."""
    seeds = sorted({int(x) for r in regimes for x in r.get("seeds", ())})
    if not seeds:
        return "?"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))
