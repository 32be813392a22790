"""One fraud population baseline for a cluster, from what each node learned (arrays in,
arrays out; cluster/population_sync.py moves them).

The population row (``kernels.risk_model``, ``P_*``) is what genuine customers with a
given history do: novelty tables, histograms, velocity table, FRAUD-label counts — counts
that a transaction adds to, whichever node learns it. Two nodes that learned disjoint
sets of transactions therefore hold, between them, exactly what one node learning both
would hold, once each count is summed. A node ships what its row gained since its last
shipment (a *delta*) and the cluster's row is the initial row plus every delta.

**The additive form.** Counts add as they are. Three kinds of entry do not, and are
mapped to a form that does before subtracting or summing (and back after):

* *Running moments* (``P_AMT_N/MEAN/M2``, ``P_FR_AMT_N/MEAN/M2``, Welford's form) are
  stored as ``(n, n·mean, M2 + n·mean²)`` = ``(n, Σx, Σx²)``: sums, so adding two nodes'
  forms gives the moments of the union exactly (Chan et al.'s pairwise update is the
  same identity). Back: ``mean = Σx/n``, ``M2 = Σx² − (Σx)²/n``.
* *Supervised weights* (``P_W``, trained by SGD on labels) are not sufficient
  statistics: their deltas are summed as gradient steps taken in parallel from slightly
  older weights (asynchronous SGD), which converges for the small learning rate and few
  labels they see; the sum is clipped at 0 as the kernel clips each step.
* *The case-control ring* (``P_CC``, ``P_CC_POS``: the last 32 presumed-genuine
  evidence vectors, partners for FRAUD labels) is a sample, not a count: each node keeps
  its own (its own recent transactions are as good a sample as anyone's), and it is
  neither shipped nor replaced. So is the layout version ``P_VERSION``.

A new population entry that is not a count must be listed here (the merge test learns
disjoint sets on two rows and checks the merge against one row that learned both).
"""

from __future__ import annotations

import numpy as np

from nudge.kernels.risk_model import (
    CC_RING,
    N_EVIDENCE,
    P_AMT_M2,
    P_AMT_MEAN,
    P_AMT_N,
    P_CC,
    P_CC_POS,
    P_FR_AMT_M2,
    P_FR_AMT_MEAN,
    P_FR_AMT_N,
    P_VERSION,
    P_W,
    POP_LEN,
)

MOMENTS = ((P_AMT_N, P_AMT_MEAN, P_AMT_M2), (P_FR_AMT_N, P_FR_AMT_MEAN, P_FR_AMT_M2))
# Entries each node keeps for itself: the layout version and the case-control ring.
LOCAL = np.zeros(POP_LEN, dtype=bool)
LOCAL[P_VERSION] = True
LOCAL[P_CC_POS:P_CC + CC_RING * N_EVIDENCE] = True
WEIGHTS = slice(P_W, P_W + N_EVIDENCE)


def to_additive(population: np.ndarray) -> np.ndarray:
    """A population row in the additive form (a new array; local entries 0)."""
    _check(population)
    out = np.array(population, dtype=np.float64)
    for n, mean, m2 in MOMENTS:
        count, mu = out[n], out[mean]
        out[mean] = count * mu
        out[m2] = out[m2] + count * mu * mu
    out[LOCAL] = 0.0
    return out


def from_additive(additive: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The population row of an additive form, with ``local``'s own entries (a new array)."""
    _check(additive)
    _check(local)
    out = np.array(additive, dtype=np.float64)
    for n, mean, m2 in MOMENTS:
        count = out[n]
        if count > 0.0:
            mu = out[mean] / count
            out[m2] = max(out[m2] - count * mu * mu, 0.0)
            out[mean] = mu
        else:
            out[n] = out[mean] = out[m2] = 0.0
    np.maximum(out[WEIGHTS], 0.0, out=out[WEIGHTS])
    out[LOCAL] = local[LOCAL]
    return out


def delta(now: np.ndarray, since: np.ndarray) -> np.ndarray:
    """What a row gained from ``since`` to ``now``, in the additive form."""
    return to_additive(now) - to_additive(since)


def _check(row: np.ndarray) -> None:
    if row.shape != (POP_LEN,):
        raise ValueError(f"population: expected {POP_LEN} values, got shape {row.shape}")
