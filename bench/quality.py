"""Model quality budgets: risk scoring's average precision on the shipped synthetic stream.

The stream is ``bench/risk_stream.py`` at its defaults (1,500 users, 60 days, 60 takeover
bursts, seed 0), streamed through the kernels as the server runs them (``bench/risk_eval.py``).
A speed budget met by a model that stopped catching fraud would be worthless, so the bench
checks both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QualityConfig:
    users: int = 1_500
    days: float = 60.0
    seed: int = 0


def run(config: QualityConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    from nudge.bench.risk_eval import evaluate
    from nudge.bench.risk_stream import generate_stream

    progress(f"quality: risk stream, {config.users:,} users × {config.days:g} days")
    stream = generate_stream(n_users=config.users, days=config.days, seed=config.seed)
    r = evaluate(stream, with_river=False, with_ablation=False)
    return {
        "risk": {"transactions": len(stream), "evaluated": r["n"], "fraud": r["n_fraud"],
                 "bursts": r["n_bursts"], **asdict(r["nudge"])},
        "metrics": {"quality.risk.average_precision": r["nudge"].average_precision,
                    "quality.risk.roc_auc": r["nudge"].roc_auc},
    }
