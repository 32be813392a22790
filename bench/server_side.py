"""What the server itself says an RPC cost: handler time and handler CPU time from its
Prometheus histograms, and cProfile profiles of the handlers.

Handler time (``grpc_server_handling_seconds``) runs from the handler starting to its
reply, interceptors included; CPU time (``nudge_rpc_cpu_seconds``) is the handler thread's
own CPU over the same span. Neither includes the network, grpc's C core or the client, so
both move far less with a noisy neighbour than client latency does. The bench scrapes
/metrics before and after a phase and takes the difference: means are exact (sum / count);
percentiles are only known to a bucket, so they are reported as the bucket's upper bound
("p99 ≤").
"""

from __future__ import annotations

import json
import math
import pstats
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HANDLER = "grpc_server_handling_seconds"
CPU = "nudge_rpc_cpu_seconds"

# {(histogram, method): {"sum": s, "count": n, "buckets": {le: cumulative count}}}
Scrape = dict[tuple[str, str], dict]


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    """The handler-time and CPU-time histograms of every method, from /metrics."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (HANDLER, CPU):
            continue
        for sample in family.samples:
            h = out.setdefault((family.name, sample.labels["grpc_method"]),
                               {"sum": 0.0, "count": 0.0, "buckets": {}})
            if sample.name.endswith("_sum"):
                h["sum"] += sample.value
            elif sample.name.endswith("_count"):
                h["count"] += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                h["buckets"][le] = h["buckets"].get(le, 0.0) + sample.value
    return out


@dataclass(frozen=True)
class HandlerTime:
    """One method's handler time over one phase (µs; percentiles as bucket upper bounds)."""

    calls: int
    mean_us: float
    p50_le_us: float
    p99_le_us: float
    cpu_mean_us: float

    def to_dict(self) -> dict:
        return asdict(self)


def _delta(before: Scrape, after: Scrape, key: tuple[str, str]) -> dict:
    a = after.get(key, {"sum": 0.0, "count": 0.0, "buckets": {}})
    b = before.get(key, {"sum": 0.0, "count": 0.0, "buckets": {}})
    return {"sum": a["sum"] - b["sum"], "count": a["count"] - b["count"],
            "buckets": {le: n - b["buckets"].get(le, 0.0) for le, n in a["buckets"].items()}}


def _bound(buckets: Mapping[float, float], count: float, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (inf past the last bucket)."""
    for le in sorted(buckets):
        if buckets[le] >= q * count:
            return le
    return math.inf


def handler_time(before: Scrape, after: Scrape, method: str) -> HandlerTime | None:
    """``method``'s handler and CPU time between two scrapes (None: no call in between)."""
    wall, cpu = _delta(before, after, (HANDLER, method)), _delta(before, after, (CPU, method))
    n = wall["count"]
    if n <= 0:
        return None
    return HandlerTime(
        calls=int(n), mean_us=wall["sum"] / n * 1e6,
        p50_le_us=_bound(wall["buckets"], n, 0.5) * 1e6,
        p99_le_us=_bound(wall["buckets"], n, 0.99) * 1e6,
        cpu_mean_us=cpu["sum"] / cpu["count"] * 1e6 if cpu["count"] else math.nan)


# --------------------------------------------------------------------------- profiles

TOP = 25


def _where(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":  # a C function: pstats spells it "{built-in method ...}"
        return name
    parts = Path(file).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def top_entries(prof: Path, calls: int, sort: str, n: int = TOP) -> list[dict]:
    """The ``n`` first entries of a .prof by ``sort`` ("cumulative" or "tottime"), with
    times and call counts per RPC."""
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    index = 3 if sort == "cumulative" else 2
    rows = sorted(stats.items(), key=lambda kv: kv[1][index], reverse=True)[:n]
    per = max(calls, 1)
    return [{"function": _where(func), "calls_per_rpc": nc / per,
             "tottime_us_per_rpc": tt / per * 1e6, "cumtime_us_per_rpc": ct / per * 1e6}
            for func, (_cc, nc, tt, ct, _callers) in rows]


def read_profiles(folder: Path, rpcs: tuple[str, ...], n: int = TOP) -> dict:
    """Top entries of each RPC's profile that the server wrote into ``folder``."""
    calls = json.loads((folder / "calls.json").read_text())
    top = {}
    for rpc in rpcs:
        prof = folder / f"{rpc}.prof"
        if prof.exists():
            top[rpc] = {sort: top_entries(prof, calls.get(rpc, 0), sort, n)
                        for sort in ("cumulative", "tottime")}
    return {"folder": str(folder), "calls": {r: calls.get(r, 0) for r in top}, "top": top}
