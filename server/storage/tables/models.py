"""``models``: campaign name -> the learned policy snapshot and context statistics (an
``.npz`` archive with the feature and component names they were learned with), and, in
``meta``, the rewards sequence the stored models have learned up to."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

from nudge.kernels import context as ctx
from nudge.kernels.snapshot import PolicySnapshot

NAME = "models"
META = "meta"
LEARNED_SEQ_KEY = b"learner/learned_seq"

Dbs = Mapping[str, Any]


@dataclass(frozen=True)
class StoredModel:
    snapshot: PolicySnapshot
    stats: ctx.ContextStats
    # None in models stored before the names were.
    features: list[str] | None
    components: list[str] | None


def encode(
    snapshot: PolicySnapshot, stats: ctx.ContextStats, features: Sequence[str],
    components: Sequence[str],
) -> bytes:
    s, st = snapshot, stats
    buffer = io.BytesIO()
    np.savez(
        buffer, mean_t=s.mean_t, factor_t=s.factor_t, precision=s.precision, b=s.b,
        n_eff=s.n_eff, prior=np.array([s.prior_precision, s.slope_precision]),
        offset=np.array([s.offset, s.offset_var]), version=np.array([s.version]),
        component_prior=np.asarray(s.prior),
        stats_mean=st.mean, stats_var=st.var, stats_count=st.count,
        features=np.array(features), components=np.array(components),
    )
    return buffer.getvalue()


def decode(raw: bytes) -> StoredModel:
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        snapshot = PolicySnapshot(
            mean_t=data["mean_t"], factor_t=data["factor_t"], precision=data["precision"],
            b=data["b"], n_eff=data["n_eff"], prior_precision=float(data["prior"][0]),
            version=int(data["version"][0]),
            # Models stored before the slope prior had one prior for every feature.
            slope_precision=float(data["prior"][-1]),
            # … and no shared intercept.
            **({"offset": float(data["offset"][0]), "offset_var": float(data["offset"][1])}
               if "offset" in data.files else {}),
            # … and one prior for every component (built from ``prior`` above).
            prior=data["component_prior"] if "component_prior" in data.files else None,
        )
        stats = ctx.ContextStats(
            mean=data["stats_mean"], var=data["stats_var"], count=data["stats_count"]
        )
        names = {k: data[k].tolist() if k in data.files else None
                 for k in ("features", "components")}
    return StoredModel(snapshot, stats, names["features"], names["components"])


def get(txn: lmdb.Transaction, dbs: Dbs, campaign: str) -> StoredModel | None:
    raw = txn.get(campaign.encode(), db=dbs[NAME])
    return None if raw is None else decode(bytes(raw))


def put(txn: lmdb.Transaction, dbs: Dbs, campaign: str, encoded: bytes) -> None:
    txn.put(campaign.encode(), encoded, db=dbs[NAME])


def learned_seq(txn: lmdb.Transaction, dbs: Dbs) -> int:
    raw = txn.get(LEARNED_SEQ_KEY, db=dbs[META])
    return int(bytes(raw)) if raw is not None else 0


def put_learned_seq(txn: lmdb.Transaction, dbs: Dbs, seq: int) -> None:
    txn.put(LEARNED_SEQ_KEY, str(seq).encode(), db=dbs[META])
