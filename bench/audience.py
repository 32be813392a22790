"""Audience: DecideBatch over a whole base — 1,000,000 users against bench/worlds.py's
campaign (3,600 combinations, 31 request numbers, SquareCB) in one stream, every decision
logged with its propensity as a Decide's is.

A server in a child process (as ``rpc``); ``history`` of the users get a stored event
first (the rest are new to the server: no state, no profile, still decided and logged);
then one ``nudge decide --audience``-style stream of all the ids. Reported: wall time for
the whole audience (the stream's last decision received, and the log flushed: the server
is stopped gracefully and its store opened to count the logged decisions), decisions/s,
and the seconds a million users would take at that rate (the budget's metric, so a
smaller ``--audience-users`` run is comparable; the report says which it measured).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nudge.bench.server_process import ServerProcess
from nudge.clients import Client, make_event

MILLION = 1_000_000


@dataclass(frozen=True)
class AudienceConfig:
    users: int = MILLION
    history: int = 20_000  # users given a stored event before the batch
    per_message: int = 1_000  # user ids per request message


def _user(i: int) -> str:
    return f"aud-{i:07d}"


def run(config: AudienceConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    from nudge.bench.rpc_floor import _campaigns
    from nudge.bench.worlds import NUMBER_NAMES
    from nudge.server.storage.store import Store
    from nudge.server.storage.tables import decisions as decision_table

    numbers = {name: 0.1 * (j % 7) - 0.3 for j, name in enumerate(NUMBER_NAMES)}
    with tempfile.TemporaryDirectory(prefix="nudge-audience-") as tmp:
        data = Path(tmp) / "data"
        progress("audience: starting a server")
        proc = ServerProcess(data, Path(tmp) / "server.log",
                             "--campaigns", str(_campaigns(Path(tmp) / "campaigns")))
        try:
            with Client(proc.target, timeout=120) as client:
                client.wait_until_serving(120)
                history = min(config.history, config.users)
                progress(f"audience: {history:,} users get a history")
                events = [make_event(_user(i), "app_opened", numbers={"amount": 10.0 + i % 90})
                          for i in range(history)]
                client.track_stream([events[i : i + 5_000] for i in range(0, history, 5_000)])
                progress(f"audience: DecideBatch for {config.users:,} users")
                started = time.perf_counter()
                n = logged = 0
                for decision in client.decide_batch(
                        (_user(i) for i in range(config.users)), campaign="worlds_squarecb",
                        numbers=numbers, per_message=config.per_message):
                    n += 1
                    logged += bool(decision.decision_id)
                    if n % 50_000 == 0:
                        rate = n / (time.perf_counter() - started)
                        progress(f"audience: {n:,} / {config.users:,} decisions ({rate:,.0f}/s)")
                streamed_s = time.perf_counter() - started
        finally:
            progress("audience: stopping the server (flushes the decision log)")
            proc.terminate()
        total_s = time.perf_counter() - started
        store = Store(data)
        try:
            with store.read() as txn:
                stored = txn.stat(store.dbs[decision_table.NAME])["entries"]
        finally:
            store.close()
    per_s = n / total_s
    return {
        "users": config.users,
        "history": history,
        "decisions": n,
        "logged": logged,
        "stored": int(stored),
        "streamed_s": streamed_s,
        "total_s": total_s,
        "per_s": per_s,
        "metrics": {
            "audience.decide_batch_s_per_million": MILLION / per_s,
            "audience.decide_batch_per_s": per_s,
            "audience.unlogged": float(logged - int(stored)),
        },
    }
