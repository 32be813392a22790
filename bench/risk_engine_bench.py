"""ScoreTransaction's in-process engine time per call: ``RiskEngine.score`` on one transaction.

Run: ``python -m nudge.bench.risk_engine_bench [--calls 3000] [--customers 400]``.

What it measures: the work ScoreTransaction's handler hands to the risk engine (the read of
the stored customer row and time zone ahead of the lock, the model's score-and-learn kernel,
the reason codes and texts, the transaction record and the overlay), without gRPC, protobuf
or the network, so a change of the model shows up undiluted. The store is a fresh LMDB in a
temporary directory; ``bench/risk_worlds.py``'s launch world (seed 9) is backfilled
(``learn_only``, batches of 500) up to its last ``--calls`` transactions, which are then
scored one call at a time, in time order, as live traffic: each call's thread CPU time and
wall time. The engine's flusher (another thread) writes the overlay in the background, as
in the server; its time is not in the caller's thread CPU.

The box is shared: compare only with a same-run floor. To compare two models, run this
module alternately under each source tree (``PYTHONPATH`` pointing at the other tree's
``nudge`` package) and read the per-run medians side by side; ``uptime`` beside each run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from nudge.bench.risk_worlds import WORLDS, generate_world
from nudge.server.inputs.transactions import ValidTransaction
from nudge.server.risk.engine import RiskEngine
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store


def _transactions(customers: int) -> list[ValidTransaction]:
    from dataclasses import replace

    w = generate_world("launch", 9, replace(WORLDS["launch"], n_customers=customers))
    t0 = 1_767_225_600.0  # the world's times are seconds from its start
    return [ValidTransaction(f"t{i}", f"u{int(w.user[i])}", float(w.amount[i]), "EUR",
                             str(w.merchant_category[i]), str(w.country[i]),
                             str(w.channel[i]), str(w.device_id[i]), t0 + float(w.time[i]),
                             local_hour=float(w.local_hour[i]))
            for i in range(len(w))]


def measure(calls: int = 3000, customers: int = 400) -> dict[str, float]:
    """Per-call thread CPU and wall time (µs) of ``RiskEngine.score`` on one transaction:
    median, mean and 90th percentile, after a backfill of the rest of the world."""
    txs = _transactions(customers)
    if len(txs) <= calls:
        raise ValueError(f"the world has {len(txs)} transactions; ask for fewer calls")
    live = txs[-calls:]
    with tempfile.TemporaryDirectory(prefix="nudge-risk-bench-") as d:
        store = Store(Path(d) / "data")
        writer = EventWriter(store, 86_400.0)
        engine = RiskEngine(store, writer)
        try:
            history = txs[:-calls]
            for i in range(0, len(history), 500):
                engine.score(history[i:i + 500], learn_only=True)
            engine.flush()
            cpu = np.empty(calls)
            wall = np.empty(calls)
            for i, tx in enumerate(live):
                c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                engine.score([tx])
                cpu[i] = time.thread_time_ns() - c0
                wall[i] = time.perf_counter_ns() - w0
            engine.flush()
        finally:
            engine.close()
            writer.close()
            store.close()
    return {"cpu_p50_us": float(np.median(cpu)) / 1e3, "cpu_mean_us": float(cpu.mean()) / 1e3,
            "cpu_p90_us": float(np.percentile(cpu, 90)) / 1e3,
            "wall_p50_us": float(np.median(wall)) / 1e3,
            "wall_mean_us": float(wall.mean()) / 1e3,
            "wall_p90_us": float(np.percentile(wall, 90)) / 1e3, "calls": float(calls)}


def main(argv: list[str] | None = None) -> int:
    """Print one line: the per-call times of this source tree's engine."""
    ap = argparse.ArgumentParser(prog="python -m nudge.bench.risk_engine_bench",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--customers", type=int, default=400)
    ap.add_argument("--label", default="", help="a name for this tree in the output")
    args = ap.parse_args(argv)
    from nudge.kernels import risk_model

    risk_model.warm_up()
    r = measure(args.calls, args.customers)
    print(f"{args.label or risk_model.__file__}: RiskEngine.score per call, {args.calls} "
          f"calls: thread CPU p50 {r['cpu_p50_us']:.1f} µs, mean {r['cpu_mean_us']:.1f}, "
          f"p90 {r['cpu_p90_us']:.1f}; wall p50 {r['wall_p50_us']:.1f} µs, mean "
          f"{r['wall_mean_us']:.1f}, p90 {r['wall_p90_us']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
