"""Reason codes with plain text for a risk score (pure Python over the kernel's numbers).

The kernel only sees hashed bins, so the caller passes the raw strings (country code,
merchant category) it already has. Which reasons fire is decided by :func:`reason_flags`,
vectorised so the evaluation and :func:`explain` can never disagree.

``RiskReason.weight`` is the share (0-1) of the transaction's total surprisal that the
feature explains; for ``COLD_START`` it is the share of the population baseline in the blend
(how much of the judgement is borrowed rather than this user's own history).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nudge.kernels.risk import (
    C_AMOUNT,
    C_COUNTRY,
    C_DEVICE,
    C_HOUR,
    C_MCC,
    C_VELOCITY,
    DEFAULT_PARAMS,
    DETAIL_AMOUNT_RATIO,
    DETAIL_BASELINE_COUNT,
    DETAIL_BLEND_WEIGHT,
    DETAIL_CONTRIB_OFF,
    DETAIL_LEN,
    DETAIL_TOTAL,
    DETAIL_USER_COUNTRY,
    DETAIL_USER_DEVICE,
    DETAIL_USER_MCC,
    DETAIL_VEL_WINDOW,
    DETAIL_WINDOW_COUNT_OFF,
    N_WINDOWS,
    RiskParams,
)

AMOUNT_HIGH = "AMOUNT_HIGH"
NEW_COUNTRY = "NEW_COUNTRY"
NEW_DEVICE = "NEW_DEVICE"
NEW_MERCHANT_CATEGORY = "NEW_MERCHANT_CATEGORY"
UNUSUAL_HOUR = "UNUSUAL_HOUR"
VELOCITY_BURST = "VELOCITY_BURST"
COLD_START = "COLD_START"
REASON_CODES = (AMOUNT_HIGH, NEW_COUNTRY, NEW_DEVICE, NEW_MERCHANT_CATEGORY, UNUSUAL_HOUR,
                VELOCITY_BURST, COLD_START)

# contribution index behind each feature reason
_FEATURE_REASONS = ((AMOUNT_HIGH, C_AMOUNT), (NEW_COUNTRY, C_COUNTRY), (NEW_DEVICE, C_DEVICE),
                    (NEW_MERCHANT_CATEGORY, C_MCC), (UNUSUAL_HOUR, C_HOUR),
                    (VELOCITY_BURST, C_VELOCITY))

DEFAULT_MIN_CONTRIBUTION = 3.0  # nats: about a 1-in-20 surprise for this user
DEFAULT_COLD_START_BELOW = 0.5  # fires while the user's own stats weigh less than half


@dataclass(frozen=True)
class RiskReason:
    """One reason: a stable ``code`` for machines, ``detail`` for people, and ``weight``."""

    code: str
    detail: str
    weight: float


def reason_flags(details: np.ndarray, params: RiskParams = DEFAULT_PARAMS,
                 min_contribution: float = DEFAULT_MIN_CONTRIBUTION,
                 cold_start_below: float = DEFAULT_COLD_START_BELOW) -> dict[str, np.ndarray]:
    """Which reason codes fire, for one (DETAIL_LEN,) or many (n, DETAIL_LEN) details rows.

    A feature reason fires when the feature's own surprisal (its contribution before the
    ``params.weights`` multiplier) is at least ``min_contribution`` nats: a reason says
    what is unusual for this user, even when the score weighs that feature down (as it
    does the amount). A feature with weight 0 never fires. COLD_START fires while the
    blend weight of the user's own stats is below ``cold_start_below``.
    Returns code -> bool array of length n.
    """
    d = np.atleast_2d(np.asarray(details, dtype=np.float64))
    if d.shape[1] != DETAIL_LEN:
        raise ValueError(f"details must have DETAIL_LEN={DETAIL_LEN} columns "
                         f"(RiskScore.details), got shape {d.shape}")
    flags = {code: (d[:, DETAIL_CONTRIB_OFF + c] >= min_contribution * params.weights[c])
             & (params.weights[c] > 0) for code, c in _FEATURE_REASONS}
    flags[COLD_START] = d[:, DETAIL_BLEND_WEIGHT] < cold_start_below
    return flags


def explain(details: np.ndarray, *, country: str = "", merchant_category: str = "",
            local_hour: float | None = None, params: RiskParams = DEFAULT_PARAMS,
            min_contribution: float = DEFAULT_MIN_CONTRIBUTION,
            cold_start_below: float = DEFAULT_COLD_START_BELOW,
            max_reasons: int | None = None) -> list[RiskReason]:
    """Reasons for one scored transaction, strongest first.

    Args:
        details: ``RiskScore.details`` (or one row of ``RiskBatch.details``).
        country, merchant_category: the raw strings of the transaction, for the text.
        local_hour: the hour passed to the kernel, for the text (omitted when None).
        params: the params it was scored with (their velocity windows name the window).
        min_contribution, cold_start_below: see :func:`reason_flags`.
        max_reasons: keep only the strongest few (None keeps all).
    """
    d = np.asarray(details, dtype=np.float64)
    if d.shape != (DETAIL_LEN,):
        raise ValueError(f"details must be one RiskScore.details vector of {DETAIL_LEN} "
                         f"values, got shape {d.shape}")
    # Plain Python over a list: this runs inside card authorisations, one row at a time,
    # where reason_flags' NumPy overhead would dominate. Same rule as reason_flags.
    values = d.tolist()
    total = values[DETAIL_TOTAL]
    reasons = []
    for code, c in _FEATURE_REASONS:
        weight_c = params.weights[c]
        contribution = values[DETAIL_CONTRIB_OFF + c]
        if weight_c > 0 and contribution >= min_contribution * weight_c:
            weight = contribution / total if total > 0 else 0.0
            reasons.append(RiskReason(code, _text(code, d, country, merchant_category,
                                                  local_hour, params), float(weight)))
    cold_start = values[DETAIL_BLEND_WEIGHT] < cold_start_below
    if cold_start:
        n = int(values[DETAIL_BASELINE_COUNT])
        borrowed = 1.0 - values[DETAIL_BLEND_WEIGHT]
        plural = "" if n == 1 else "s"
        reasons.append(RiskReason(
            COLD_START, f"only {n} earlier transaction{plural}: scored {borrowed:.0%} against "
                        "the population baseline", float(borrowed)))
    reasons.sort(key=lambda r: r.weight, reverse=True)
    return reasons if max_reasons is None else reasons[:max_reasons]


def _text(code: str, d: np.ndarray, country: str, merchant_category: str,
          local_hour: float | None, params: RiskParams) -> str:
    history = d[DETAIL_BASELINE_COUNT] > 0
    if code == AMOUNT_HIGH:
        return f"amount is {_times(d[DETAIL_AMOUNT_RATIO])} this user's typical"
    if code == NEW_COUNTRY:
        where = country or "this country"
        if d[DETAIL_USER_COUNTRY] == 0 or not history:
            return f"first transaction in {where}"
        return f"rare country for this user: {where}"
    if code == NEW_DEVICE:
        if d[DETAIL_USER_DEVICE] == 0 or not history:
            return "first transaction from this device"
        return "device rarely used by this user"
    if code == NEW_MERCHANT_CATEGORY:
        what = f"merchant category {merchant_category}" if merchant_category else "this " \
            "merchant category"
        if d[DETAIL_USER_MCC] == 0 or not history:
            return f"first purchase in {what}"
        return f"rare {what} for this user"
    if code == UNUSUAL_HOUR:
        if local_hour is None:
            return "unusual time of day for this user"
        minutes = int(local_hour * 60.0) % (24 * 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d} local time is unusual for this user"
    if code == VELOCITY_BURST:
        k = int(d[DETAIL_VEL_WINDOW])
        # the decayed counters decide; the exact ring counts speak. Widen the window if the
        # earlier transactions sit just outside the one that scored highest.
        while k < N_WINDOWS - 1 and d[DETAIL_WINDOW_COUNT_OFF + k] < 2:
            k += 1
        count = int(d[DETAIL_WINDOW_COUNT_OFF + k])
        while k > 0 and d[DETAIL_WINDOW_COUNT_OFF + k - 1] == count:
            k -= 1  # the same count in a shorter window says more
        return f"{_ordinal(count)} transaction in {_duration(params.velocity_windows_s[k])}"
    raise ValueError(f"unknown reason code {code!r}")


def _times(ratio: float) -> str:
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size and (seconds % size == 0 or unit == "minute"):
            value = seconds / size
            if unit == "day" and value == 1:
                return "24 hours"
            n = f"{value:g}"
            return f"{n} {unit}" if value == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"
