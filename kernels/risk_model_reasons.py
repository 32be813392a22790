"""Reason codes with plain text for :mod:`nudge.kernels.risk_model` scores.

The codes and wording of the surprisal model they replace; what decides is a feature's
evidence (its log likelihood ratio, nats, times its supervised weight) is
at least ``min_evidence``, i.e. the transaction is that many times likelier under a takeover
than for this genuine customer. When the customer has fewer than ``weak_below`` earlier
transactions the text says the reason is weak (judged mostly against the population), and
COLD_START fires. ``RiskReason.weight`` is the feature's share of the positive evidence.

TAKEOVER_EPISODE (added with the takeover-episode filter; the codes above are unchanged)
fires when the filter, not this transaction alone, drives the score: the logit with the
"a takeover episode goes on" term minus the single-transaction logit,
L = log(1 + (a / ((1 - a)(1 - pi))) e^(z_cont - z_start)), is at least ``min_evidence``
nats, the same bar as a feature's (the odds of fraud are at least e^1.5 ~ 4.5 times what
the transaction alone gives, so the "continues" hypothesis carries at least 78% of them).
L enters the positive evidence beside the features', so the weights stay shares of one
total. The text names the previous transaction (how long ago, its P(fraud)) and the values
this one repeats from it, which is what a reviewer needs to open the two together.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nudge.kernels.risk_model import (
    D_AMOUNT_RATIO,
    D_EP_DT,
    D_EP_PREV,
    D_EVIDENCE,
    D_HISTORY,
    D_K,
    D_LOGIT,
    D_NEW,
    D_SAME,
    D_START_LOGIT,
    DEFAULT_MODEL_PARAMS,
    DETAIL_LEN,
    E_AMOUNT,
    E_COUNTRY,
    E_DEVICE,
    E_HOUR,
    E_MCC,
    E_VELOCITY,
    ModelParams,
)

AMOUNT_HIGH = "AMOUNT_HIGH"
NEW_COUNTRY = "NEW_COUNTRY"
NEW_DEVICE = "NEW_DEVICE"
NEW_MERCHANT_CATEGORY = "NEW_MERCHANT_CATEGORY"
UNUSUAL_HOUR = "UNUSUAL_HOUR"
VELOCITY_BURST = "VELOCITY_BURST"
COLD_START = "COLD_START"
TAKEOVER_EPISODE = "TAKEOVER_EPISODE"
# The amount's evidence is two-sided: the takeover amount model is wider than the
# customer's own, so an amount far *below* their usual (a small charge testing a stolen
# card) is evidence too. Named AMOUNT_HIGH with "0.1× this user's typical" it read as a
# contradiction (a hostile probe, 2026-12-03): such an amount is AMOUNT_LOW. Added at the
# end: the earlier codes keep their places and meaning.
AMOUNT_LOW = "AMOUNT_LOW"
REASON_CODES = (AMOUNT_HIGH, NEW_COUNTRY, NEW_DEVICE, NEW_MERCHANT_CATEGORY, UNUSUAL_HOUR,
                VELOCITY_BURST, COLD_START, TAKEOVER_EPISODE, AMOUNT_LOW)
_SAME_NAMES = ("country", "merchant category", "device", "channel")


class RiskReason(NamedTuple):
    """One reason: a stable ``code`` for machines, ``detail`` for people, and ``weight``.
    Immutable, as a frozen dataclass would be, but built at a tuple's cost: a frozen
    dataclass sets each field through ``object.__setattr__``, and a ScoreTransaction
    that has reasons builds one or two per call."""

    code: str
    detail: str
    weight: float


_FEATURE_REASONS = ((AMOUNT_HIGH, E_AMOUNT), (NEW_COUNTRY, E_COUNTRY), (NEW_DEVICE, E_DEVICE),
                    (NEW_MERCHANT_CATEGORY, E_MCC), (UNUSUAL_HOUR, E_HOUR),
                    (VELOCITY_BURST, E_VELOCITY))
DEFAULT_MIN_EVIDENCE = 1.5  # nats: about 4.5x likelier under a takeover
DEFAULT_WEAK_BELOW = 5  # earlier transactions


def no_reason(v: list[float], w: list[float], min_evidence: float = DEFAULT_MIN_EVIDENCE,
              weak_below: int = DEFAULT_WEAK_BELOW) -> bool:
    """Whether :func:`explain` gives no reason for a details row ``v`` (as a list) under
    the supervised weights ``w`` (a list of 7): most transactions of a known customer.
    ScoreTransaction asks this before :func:`explain` (one call instead of its argument
    handling and conversions). The evidence's max is taken in feature order, as explain's
    full path has always done (a NaN first fails the test; one after a number is skipped
    by ``max``, and the full path then gives no reason either)."""
    e = D_EVIDENCE
    return (int(v[D_HISTORY]) >= weak_below and v[D_LOGIT] - v[D_START_LOGIT] < min_evidence
            and max(w[0] * v[e], w[1] * v[e + 1], w[2] * v[e + 2], w[3] * v[e + 3],
                    w[4] * v[e + 4], w[5] * v[e + 5], w[6] * v[e + 6]) < min_evidence)


def explain(details: np.ndarray, weights: np.ndarray | None = None, *, country: str = "",
            merchant_category: str = "", local_hour: float | None = None,
            params: ModelParams = DEFAULT_MODEL_PARAMS,
            min_evidence: float = DEFAULT_MIN_EVIDENCE, weak_below: int = DEFAULT_WEAK_BELOW,
            max_reasons: int | None = None) -> list[RiskReason]:
    """Reasons for one scored transaction (a ``details`` row), strongest first.

    Args:
        weights: the population's supervised weights (``population[P_W:P_W+N_EVIDENCE]``);
            None = all 1 (the unsupervised model).
        country, merchant_category, local_hour: the raw values, for the text.
    """
    d = np.asarray(details, dtype=np.float64)
    if d.shape != (DETAIL_LEN,):
        raise ValueError(f"details must be one details row of {DETAIL_LEN} values, "
                         f"got shape {d.shape}")
    v = d.tolist()
    w = [1.0] * 7 if weights is None else np.asarray(weights, dtype=np.float64).tolist()
    if no_reason(v, w, min_evidence, weak_below):
        return []
    ev = [w[f] * v[D_EVIDENCE + f] for f in range(7)]
    episode = v[D_LOGIT] - v[D_START_LOGIT]  # >= 0: the filter's lift of the logit
    n = int(v[D_HISTORY])
    weak = n < weak_below
    positive = sum(e for e in ev if e > 0) + max(episode, 0.0)
    plural = "" if n == 1 else "s"
    suffix = f" (weak: only {n} earlier transaction{plural})" if weak else ""
    reasons = []
    for code, f in _FEATURE_REASONS:
        if ev[f] >= min_evidence:
            if f == E_AMOUNT and v[D_AMOUNT_RATIO] < 1.0:
                code = AMOUNT_LOW
            reasons.append(RiskReason(code, _text(code, v, country, merchant_category,
                                                  local_hour, params) + suffix,
                                      ev[f] / positive))
    if episode >= min_evidence:
        reasons.append(RiskReason(TAKEOVER_EPISODE, _episode_text(v), episode / positive))
    reasons.sort(key=lambda r: r.weight, reverse=True)
    if weak:
        reasons.append(RiskReason(COLD_START, f"only {n} earlier transaction{plural}: judged "
                                              "mostly against how genuine new customers "
                                              "behave", 0.0))
    return reasons if max_reasons is None else reasons[:max_reasons]


def _text(code: str, v: list[float], country: str, merchant_category: str,
          local_hour: float | None, params: ModelParams) -> str:
    if code == AMOUNT_LOW:
        return f"amount is {v[D_AMOUNT_RATIO]:.2g}× this user's typical (unusually low)"
    if code == AMOUNT_HIGH:
        r = v[D_AMOUNT_RATIO]
        return f"amount is {r:.0f}× this user's typical" if r >= 10 else \
            f"amount is {r:.1f}× this user's typical"
    if code == NEW_COUNTRY:
        where = country or "this country"
        return f"first transaction in {where}" if v[D_NEW] > 0 else \
            f"rare country for this user: {where}"
    if code == NEW_DEVICE:
        return "first transaction from this device" if v[D_NEW + 2] > 0 else \
            "device rarely used by this user"
    if code == NEW_MERCHANT_CATEGORY:
        what = f"merchant category {merchant_category}" if merchant_category else \
            "this merchant category"
        return f"first purchase in {what}" if v[D_NEW + 1] > 0 else \
            f"rare {what} for this user"
    if code == UNUSUAL_HOUR:
        if local_hour is None:
            return "unusual time of day for this user"
        minutes = int(local_hour * 60.0) % (24 * 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d} local time is unusual for this user"
    k = int(v[D_K]) + 1
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    window_minutes = params.velocity_window_s / 60.0
    window = "hour" if window_minutes == 60 else f"{window_minutes:g} minutes"
    return f"{k}{suffix} transaction in {'an ' if window == 'hour' else ''}{window}"


def _episode_text(v: list[float]) -> str:
    dt = v[D_EP_DT]
    if dt < 90.0:
        ago = f"{dt:.0f} seconds"
    elif dt < 5400.0:
        ago = f"{dt / 60.0:.0f} minutes"
    else:
        ago = f"{dt / 3600.0:.1f} hours"
    same = [name for f, name in enumerate(_SAME_NAMES) if v[D_SAME + f] == 1.0]
    text = (f"judged as one takeover episode with a transaction {ago} earlier "
            f"(P(fraud) {v[D_EP_PREV]:.2f})")
    return text + (f": same {', '.join(same)}" if same else "")
