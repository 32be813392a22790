"""Calibrated fraud probability from a likelihood ratio "takeover" vs "this genuine customer".

Why this model
--------------
The surprisal score this model replaced asked "how unusual is this for the user?" and
could not tell "unusual because the customer has no history" from "unusual for a customer who
always does the same thing". The question a bank needs answered is "how much more likely
is this transaction under a takeover than under *this* genuine customer, given what we know
about them?" — a likelihood ratio. Its genuine side is a hierarchical model: each customer's
behaviour is drawn around the population's, so with little history the population speaks,
and with much history the customer does. Its fraud side is a simple takeover model that
labels sharpen. Bayes' rule turns the ratio into P(fraud | transaction) under a stated prior
rate, so one threshold means the same for every customer. Per feature the log ratio is the
evidence a reason code reports (in nats), and it is small when history is short because
the genuine side is then broad.

The maths (per transaction x, customer history h, population state P)
-----------------------------------------------------------------------
Features are assumed independent given the class (naive Bayes); the supervised layer below
re-weighs them, which absorbs most of the double counting of correlated features:

    log LR = sum_f e_f,  e_f = clip(log p_fraud(x_f | h) - log p_genuine(x_f | h), -C, C).

Categorical f in {country, merchant category, device, channel} (hashed bins, as
``nudge.kernels.risk.category_bin`` makes them). Let n_f be the customer's learned
transactions carrying f, c(b) their count in bin b. "New" means c(b) = 0. The novelty
rate of a genuine customer, ``nu_f(n) = P(new value | n earlier)``, is learned from the
population in history buckets (0, 1, 2, 3, 4, 5-6, 7-9, 10-14, 15-19, 20-29, 30-49, 50-99,
100-199, 200+):
``nu_f(k) = (new_k + a * 1/(1+n_k)) / (tot_k + a)`` (``a`` pseudo-observations of a
Chinese-restaurant prior). nu_f(0) = 1: a first value is never evidence.

    genuine:  p_g(b) = nu_f(n) * q_pop(b)            if new,  (1 - nu_f(n)) c(b)/n_f  if seen
    takeover: p_t(b) = rho_f(n) * u_f(b)              if new,  (1 - rho_f(n)) c(b)/n_f if seen

A seen value carries one more factor: was it new only *recently* (within
``recent_window_s``: the customer's latest new value)? A takeover whose first transaction
slipped through and was learned reuses what it brought, with probability
``attacker_recent``; genuine customers repeat a recent new value at the rate r_f(n) the
population shows (learned per history bucket). So seen-recent adds log(rr / r_f(n)) and
seen-long-ago adds log((1 - rr) / (1 - r_f(n))).

q_pop(b) is the population's distribution of values *at the moment they are new to a
customer*, kept in two histograms: first values (n = 0: home countries) and later new ones
(travel destinations).
rho_f(n) = rho_f + (1 - rho_f) nu_f(n) is the chance an attacker's value is new to this
customer (an empty profile makes everything new); rho_f and the attacker's value
distribution u_f (uniform over bins a priori) are updated by FRAUD labels (Beta/Dirichlet
counts on top of the configured pseudo-counts). So for a seen value e = log((1-rho)/(1-nu)),
and for a new one e = log(rho u(b) / (nu q_pop(b))): with no history nu = rho = 1 and only
the population rarity of the value speaks; with 200 transactions from one country nu is
tiny and a new country is strong evidence.

Hour: p_g(h) = (s_u(h) + beta q_hour(h)) / (n + beta), s_u the customer's circularly smoothed
(1/4, 1/2, 1/4) hour counts, q_hour the population's; the customer's weight n/(n+beta) grows
with evidence. p_t(h): uniform over 24 hours, updated by FRAUD labels.

Hour abroad. h is the hour in the customer's *home* time zone (all the server knows), so
naive Bayes' "hour independent of country given genuine" is false when travelling: abroad,
h = local hour + (home - destination offset). The factorisation that holds is
p_g(country, h) = p_g(country) p_g(h | home or abroad): at home the customer's profile
above; abroad, q_abroad(h), the population's home-zone hours of learned transactions in a
country that is *abroad for that customer* (destinations and their offsets mixed, smoothed
as q_hour). "Abroad" is c(country) < n_country / 2: a country under half of the customer's
history, so a new one and equally the rest of a trip once its first transaction made the
country "seen" (version 3 used q_abroad only for the first transaction in a new country;
the trip's next ones fell back to the home profile and scored +4 to +6 nats of UNUSUAL_HOUR:
on held-out seeds 1-6 of the low_slow regime that was the commonest top false alarm, and
fixing it raised AP in every regime, low_slow's most, 0.804 -> 0.821 mean and 0.730 ->
0.753 on its worst seed). An attacker's hours are unchanged (p_t is not the customer's).

Amount, x = log1p(amount): customer means are N(mu, tau^2) around the population mean mu and
amounts N(mean_u, sigma_u^2) around the customer's mean. The population learns mu, the total
variance V and the pooled within-customer variance s_w^2 (from each learned transaction's
residual against its customer's running mean), so tau^2 = V - s_w^2 is *learned*. The
customer's variance is shrunk, sigma_u^2 = (S_u + nu0 s_w^2) / (n + nu0), and the posterior
of their mean is m = (n xbar/sigma_u^2 + mu/tau^2) / (n/sigma_u^2 + 1/tau^2) with variance
v = 1/(n/sigma_u^2 + 1/tau^2). Genuine: Student-t (``t_dof``) at m with scale^2 sigma_u^2 + v
(heavy tails: genuine big purchases). Takeover: N(m + delta, sigma_u^2 + v + omega^2): the
attacker spends more than usual by a factor e^delta; delta and omega are updated by FRAUD
labels with the configured prior pseudo-count n0 (``fraud_pseudo``). Each scored
transaction keeps r = x - m, its amount against the customer's predictive location then
(``F_AMT_RESID``: m moves as the customer learns, so it cannot be recomputed weeks later when
the label comes), and a FRAUD label adds r to running moments (Welford: n_F, rbar, M2;
``P_FR_AMT_*``). Then delta = (n_F rbar + n0 delta0) / (n_F + n0) and, since r's spread
among frauds is the customer's own predictive spread plus omega^2, omega^2 = (max(M2 - n_F
s_w^2, 0) + n0 omega0^2) / (n_F + n0): the pooled within-customer variance s_w^2 of each
labelled fraud is taken out (it is the floor of sigma_u^2 + v; for short histories the true
share is larger, so omega^2 errs wide, towards the prior's caution). Before this (until
2026-12-03) no kernel wrote these moments and the amount side stayed at its prior for good.
On the label regimes they move the right way but little: with 5% of frauds labelled 14 days
late, 7-23 labels reach the model in 60 days, against n0 = 20 (measured, README).

Velocity: k = the customer's scored transactions (learned or held) in the last
``velocity_window_s``, capped at 7. Genuine: the population's distribution of k at learned
transactions for customers of the same activity (6 rows: fewer than 3 learned, then by
transactions per day), add-one smoothed. Takeover: a configured distribution over k, updated
by FRAUD labels.

Posterior and supervised layer: with prior rate pi (``prior``),

    logit P(fraud | x, not A) = logit(pi) + sum_f w_f e_f,   w_f = 1 initially (pure Bayes).

Attacker-run accounts (A): when the attacker opened the account, or took it over before the
customer used it, the "customer's history" *is* the attacker's and every later value looks
seen. The account-level evidence a_u sums, over the customer's first values (n_f = 0),
clip(log u_f(b) / q_first(b)): how much likelier such first values are for an attacker than
for a genuine new customer (a first country nobody has as a home country). Attacker-run
accounts burn out fast, so their prior halves with every ``account_half_life_tx`` learned
transactions: logit P(A | history) = logit(pi) + a_u - n ln 2 / half_life, and

    score = 1 - (1 - P(A | history)) (1 - P(fraud | x, not A)).

Takeover episodes (a two-state filter over the customer's transactions): a takeover is an
*episode* of several transactions, and its first one often slips under the hold (a young
account: every value is "new" for genuine customers too, so it is weak evidence). It is
then learned, and judged alone, each later attacker transaction reusing that device and
country looks "seen": evidence *against* fraud. Judged as a sequence it is not. Let F_t be
"transaction t is the attacker's", with the hidden-Markov prior

    P(F_t | F_{t-1}) = s = exp(-dt / tau)    (the episode is still going dt later)
    P(F_t | not F_{t-1}) = pi                (a new episode starts; the prior rate)

and p = P(F_{t-1} | x_1..t-1), the previous transaction's score (kept in the customer's
row with its time and values). The forward recursion, with a = p s the prior mass of
"continuing" (an episode that ended is folded into "genuine"):

    odds(F_t | x_1..t) = pi/(1-pi) e^{z} + a / ((1-a)(1-pi)) e^{z_cont},

z = sum_f w_f e_f the evidence of a *starting* takeover above, z_cont = sum_f w_f e'_f that
of a *continuing* one: the attacker is the same person as at t-1, so for a categorical

    e'_f = log(k_f / r_f(n))            if x_f equals the previous transaction's value,
    e'_f = log(1 - k_f) + e_f           if it differs (a switch, then valued as a start),

k_f (``attacker_keeps``) the chance an attacker repeats its previous value and r_f(n) the
chance a *genuine* customer with n values does (learned from the population: per
categorical and history bucket, learned transactions that repeated the previous scored
one's value, add-half smoothed). Hour and velocity are set by the previous transaction's
time under both hypotheses, so e'_hour = e'_velocity = 0 (timing enters once, through s);
amount keeps e_f (the attacker spends as attackers do). When nothing suspicious came
before, p << pi and the recursion is the single-transaction posterior; a weak first
attacker transaction (p a few times pi) followed minutes later by one that repeats it
(e' > 0 where the single-transaction e was < 0) now adds up, which is the evidence the
single-transaction model threw away. The filter forgets on the episode's time scale tau
(``episode_timescale_s``: cash-out after a takeover takes minutes to hours), not by
counts, so a customer's ordinary life a day later is judged alone again. What it does not
fix: a genuine customer whose held transaction scored high carries that belief into their
next ones within tau, tempered only by z_cont (the same judgment a reviewer makes from the
open case); the held transaction's GENUINE label or hold delay does not reach back.

When the filter drives the score it says so: the details keep z_start (``D_START_LOGIT``,
the single-transaction logit), the previous score and the time since it, and which values
repeat it (``D_SAME``); the filter's lift z - z_start = log(1 + a/((1-a)(1-pi)) e^(z_cont -
z_start)) is the reason TAKEOVER_EPISODE when it reaches the 1.5-nat bar of a feature's
evidence (``nudge.kernels.risk_model_reasons``).

Why the filter's attacker-side constants are configured, not learned (tau =
``episode_timescale_s``, k_f = ``attacker_keeps``). Both describe the *attacker*; every
genuine-side quantity they are weighed against (r_f(n), the same-as-last rates) is learned
from the population. Unlabelled traffic cannot identify them: it is > 99% genuine, and an
EM fit of the two-state mixture to it is identified only through the priors it would
estimate (the "continuing" state is defined by k_f and tau). FRAUD labels could (pairs of
consecutive labelled frauds of one customer give k_f's Beta counts and the gaps tau's), but
with 5% of frauds labelled both of two consecutive attacker transactions are labelled for
0.05^2 = 1 in 400 pairs: on these worlds (~325 such pairs in 60 days) about one pair, and
the feature rows kept for labelling hold no same-as-last flags. What makes fixed values right is
that the score barely depends on them, because they enter only as log k_f against
log r_f(n) (r_f ~ 0.9-1 for a long history: repeats are no evidence unless k_f is far from
r_f) and as the decay of a prior a = p s that is already small unless the previous
transaction was suspicious. Measured on held-out seeds 1-6 of all eight regimes (mean AP
over regimes): tau 1 h 0.920, 3 h 0.922, 6 h (default) 0.923, 24 h 0.921; k_f a third lower
(0.7, 0.2, 0.7, 0.4) 0.921, higher (0.97, 0.5, 0.97, 0.8) 0.917; the filter off 0.881. The
values are set from the mechanics stated, not fitted: cash-out after a takeover takes
minutes to hours (tau 6 h), an attacker keeps the device and country it brought (0.9) and
shops where it can cash out (merchant category 0.3).

Labels train w by online logistic regression (SGD, L2 pull towards 1, w_f >= 0). A FRAUD
label is paired with one recently learned (presumed genuine) transaction from a ring in
the population state: a balanced case-control pair, for which the sample's logit is
sum_f w_f e_f (logit(1/2) = 0), so the slopes learn without the intercept moving off
logit(pi). A GENUINE label is a negative at the scoring logit. No labels: w stays 1.

Holds: a transaction scoring >= ``hold_threshold`` is not folded into the customer or the
population; the caller keeps its ``features`` and calls :func:`learn_held` when a GENUINE
label arrives or the hold delay (event time) passes without a FRAUD label, exactly once.
Velocity counts every scored transaction (a burst stays a burst while held).

State layouts (float64 vectors; offsets are module constants)
-------------------------------------------------------------
Customer (``USER_LEN`` = 323 values, 2,584 bytes: one LMDB page): ``U_VERSION``, ``U_N``
(learned transactions), ``U_SEEN`` (scored), ``U_FIRST`` (time of first learned),
``U_AMT_N``, ``U_AMT_MEAN``, ``U_AMT_S`` (Welford sum of squares; the count saturates at
``amount_memory`` so old habits fade), ``U_RING_POS`` and ``U_RING`` (times of the last 8
scored transactions), then per categorical a total and bin counts (``U_CAT_TOTAL[f]``,
``U_CAT_OFF[f]``; country 96, merchant category 128, device 32, channel 8 bins, hashed by
``nudge.kernels.risk.category_bin``; counts halve when the total passes ``count_cap``), then
``U_HOUR`` (24), ``U_ACCOUNT`` (a_u), ``U_RECENT_BIN`` and ``U_RECENT_TIME`` (per
categorical: the latest value that was new when learned, and when), then (layout version
3) the episode filter's ``U_EP_P`` (the latest scored transaction's score), ``U_EP_TIME``
and ``U_LAST_BIN`` (its N_CAT bins). Version-2 rows (317 values) are extended by
:func:`migrate_user_state` (the storage layer does it on read).

Population (``POP_LEN`` = 1,604 values, 12,832 bytes; see the ``P_*`` offsets): novelty
tables (per categorical and history bucket: total, new), later-new-value histograms, the
hour histogram, amount moments and pooled within-customer variance, the velocity table
(activity row x k), the takeover model's FRAUD-label counts (novelty, values, hours, k,
amount moments, no-device), the supervised weights ``P_W`` (7), the case-control ring
(32 x 7 evidence vectors), the (n_device bucket x country state x device state) table, the
abroad hour histogram (``P_HOUR_NEWC``, named when it held new countries only), the
first-value histograms and the recent-repeat table (per categorical and history bucket:
seen, seen-recent), then (version 3) the same-as-last table ``P_SAME`` (per categorical and
history bucket: learned right after scoring, repeated the previous scored transaction's
value); :func:`migrate_population_state` extends a version-2 population (1,492 values).

Using it (what the server needs)
--------------------------------
Per scored transaction: read the customer's row and the population, score, observe and
(unless held) learn both (:func:`score_and_learn`; :func:`score_one` only reads, e.g. for a
dry run). Write the customer's row back even when held: the velocity ring counts held
transactions. Keep a held transaction's ``features`` row (FEAT_LEN floats: the transaction,
its velocity count, evidence, new-value flags and amount residual r) with it; rows of
``FEAT_LEN_V3`` (kept before r was) are accepted, their r unknown: they train all but the
amount moments. On a
GENUINE label or when the hold delay passes without a FRAUD label call :func:`learn_held`
once (remember that it was learned: never twice); on any label call :func:`apply_labels`
with the features kept from scoring. Run :func:`warm_up` before reporting SERVING.

Known limits: features are hashed (a new value colliding with a usual one is missed); an
account whose first transactions are the attacker's and look ordinary to the population is
learned as the customer; quiet fraud at home, at usual hours and amounts, on the
customer's own device (first-party fraud) leaves almost no evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.risk import (
    CHANNEL_BINS,
    COUNTRY_BINS,
    DEVICE_BINS,
    MCC_BINS,
    TX_AMOUNT,
    TX_CHANNEL,
    TX_COUNTRY,
    TX_DEVICE,
    TX_HOUR,
    TX_LEN,
    TX_MCC,
    TX_TIME,
)

# 2: distinct from nudge.kernels.risk's baseline layout (1), so a row of one is never
# taken for the other.
# 3: the takeover-episode filter's fields appended to the customer layout and the
# same-as-last table to the population's (``migrate_user_state`` / ``migrate_population_state``
# extend version-2 rows).
MODEL_VERSION = 3.0
PREV_MODEL_VERSION = 2.0
N_CAT = 4  # country, merchant category, device, channel (TX_COUNTRY.. order)
CAT_BINS = (COUNTRY_BINS, MCC_BINS, DEVICE_BINS, CHANNEL_BINS)
CAT_TX = (TX_COUNTRY, TX_MCC, TX_DEVICE, TX_CHANNEL)
E_COUNTRY, E_MCC, E_DEVICE, E_CHANNEL, E_HOUR, E_AMOUNT, E_VELOCITY = range(7)
N_EVIDENCE = 7
EVIDENCE_NAMES = ("country", "merchant_category", "device", "channel", "hour", "amount",
                  "velocity")
HIST_EDGES = (0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100, 200)
N_HIST = len(HIST_EDGES)
RATE_EDGES = (0.7, 1.5, 3.0, 6.0)  # transactions per day; row 0 = fewer than 3 learned
N_RATE = len(RATE_EDGES) + 2
VEL_K = 8
RING = 8
HOURS = 24

# --- customer layout ---
U_VERSION, U_N, U_SEEN, U_FIRST, U_AMT_N, U_AMT_MEAN, U_AMT_S, U_RING_POS = range(8)
U_RING = 8
_o = U_RING + RING
U_CAT_TOTAL = []
U_CAT_OFF = []
for _b in CAT_BINS:
    U_CAT_TOTAL.append(_o)
    U_CAT_OFF.append(_o + 1)
    _o += 1 + _b
U_HOUR = _o
U_ACCOUNT = U_HOUR + HOURS  # evidence (nats) that the account was the attacker's from the start
U_RECENT_BIN = U_ACCOUNT + 1  # N_CAT: bin of the latest value that was new when learned
U_RECENT_TIME = U_RECENT_BIN + N_CAT  # N_CAT: when it was learned
USER_LEN_V2 = U_RECENT_TIME + N_CAT
# takeover-episode filter (version 3): P(fraud) of the latest scored transaction, its time,
# and its bins (-2: none scored yet)
U_EP_P = USER_LEN_V2
U_EP_TIME = U_EP_P + 1
U_LAST_BIN = U_EP_TIME + 1  # N_CAT
USER_LEN = U_LAST_BIN + N_CAT

# --- population layout ---
P_VERSION = 0
P_NOV = 1  # [f][bucket][total, new]
P_NEWHIST_TOTAL = []
P_NEWHIST_OFF = []
_o = P_NOV + N_CAT * N_HIST * 2
for _b in CAT_BINS:
    P_NEWHIST_TOTAL.append(_o)
    P_NEWHIST_OFF.append(_o + 1)
    _o += 1 + _b
P_HOUR_TOTAL = _o
P_HOUR = _o + 1
P_AMT_N = P_HOUR + HOURS
P_AMT_MEAN = P_AMT_N + 1
P_AMT_M2 = P_AMT_MEAN + 1
P_WITHIN_N = P_AMT_M2 + 1
P_WITHIN_S = P_WITHIN_N + 1
P_VEL = P_WITHIN_S + 1  # [rate row][k]
P_FR_CAT = P_VEL + N_RATE * VEL_K  # [f][total, new] from FRAUD labels
P_FR_HIST_TOTAL = []
P_FR_HIST_OFF = []
_o = P_FR_CAT + N_CAT * 2
for _b in CAT_BINS:
    P_FR_HIST_TOTAL.append(_o)
    P_FR_HIST_OFF.append(_o + 1)
    _o += 1 + _b
P_FR_HOUR = _o  # 24
P_FR_VEL = P_FR_HOUR + HOURS  # VEL_K
P_FR_AMT_N = P_FR_VEL + VEL_K
P_FR_AMT_MEAN = P_FR_AMT_N + 1
P_FR_AMT_M2 = P_FR_AMT_MEAN + 1
P_W = P_FR_AMT_M2 + 1  # N_EVIDENCE supervised weights
P_CC_POS = P_W + N_EVIDENCE
CC_RING = 32
P_CC = P_CC_POS + 1  # CC_RING evidence vectors of learned transactions
# [bucket of n_device][country seen/new][device missing/seen/new]
P_JOINT = P_CC + CC_RING * N_EVIDENCE
P_HOUR_NEWC_TOTAL = P_JOINT + N_HIST * 6
P_HOUR_NEWC = P_HOUR_NEWC_TOTAL + 1  # home-time hours of genuine transactions abroad (_abroad)
P_FR_NODEV = P_HOUR_NEWC + HOURS  # FRAUD labels without a device id
# first values: the population's distribution of a customer's *first* value (home
# countries, first merchants), kept apart from later new values (travel destinations)
P_FIRST_TOTAL = []
P_FIRST_OFF = []
_o = P_FR_NODEV + 1
for _b in CAT_BINS:
    P_FIRST_TOTAL.append(_o)
    P_FIRST_OFF.append(_o + 1)
    _o += 1 + _b
P_RECENT = _o  # [f][bucket][seen, recent]: seen values that were new within recent_window_s
POP_LEN_V2 = P_RECENT + N_CAT * N_HIST * 2
# [f][bucket][total, same]: learned transactions repeating the previous scored one's value
P_SAME = POP_LEN_V2
POP_LEN = P_SAME + N_CAT * N_HIST * 2
del _o, _b

# --- features: what a held transaction needs to be learned or trained on later ---
F_K = TX_LEN  # velocity count at scoring
F_EVIDENCE = F_K + 1
F_NEW = F_EVIDENCE + N_EVIDENCE  # N_CAT flags: 1 value new to the customer, 0 seen, -1 missing
# log1p(amount) - m: the amount against the customer's predictive location at scoring (what a
# FRAUD label teaches the takeover amount model; log of D_AMOUNT_RATIO)
F_AMT_RESID = F_NEW + N_CAT
FEAT_LEN = F_AMT_RESID + 1
# rows kept before F_AMT_RESID (stored transaction records): accepted, the residual unknown
FEAT_LEN_V3 = F_AMT_RESID

# --- details (output) ---
D_SCORE, D_LOGIT, D_LOG_LR = 0, 1, 2
D_EVIDENCE = 3
D_HISTORY = D_EVIDENCE + N_EVIDENCE  # learned transactions before this one
D_K = D_HISTORY + 1
D_HELD = D_K + 1
D_NEW = D_HELD + 1  # N_CAT flags: value new to the customer (-1 missing)
D_NOVELTY = D_NEW + N_CAT  # nu_f(n) used (genuine chance of a new value)
D_AMOUNT_RATIO = D_NOVELTY + N_CAT  # (1 + amount) / exp(the customer's predictive location)
D_ACCOUNT = D_AMOUNT_RATIO + 1  # P(account attacker-run from the start | its history)
D_EPISODE = D_ACCOUNT + 1  # a: prior chance this transaction continues a takeover episode
D_CONT_LR = D_EPISODE + 1  # log LR of the continuing attacker (z_cont) vs genuine
# the episode filter, for its reason code: the logit without the "continues" term (the
# single-transaction posterior's), the previous scored transaction's P(fraud) and the
# seconds since it, and per categorical whether this value repeats its (1 same, 0 differs,
# -1 missing here or there, or nothing scored before)
D_START_LOGIT = D_CONT_LR + 1
D_EP_PREV = D_START_LOGIT + 1
D_EP_DT = D_EP_PREV + 1
D_SAME = D_EP_DT + 1  # N_CAT
DETAIL_LEN = D_SAME + N_CAT

# --- params ---
(K_PRIOR, K_HOLD, K_CLIP, K_HOUR_PRIOR, K_NOV_PSEUDO, K_VAR_PSEUDO, K_T_DOF, K_FR_SHIFT,
 K_FR_SD, K_FR_PSEUDO, K_RATE, K_L2, K_CAP, K_AMT_MEMORY, K_VEL_WINDOW) = range(15)
K_RHO = 15  # N_CAT attacker novelty rates
K_FR_VEL = K_RHO + N_CAT  # VEL_K prior distribution of k under takeover
K_NODEV = K_FR_VEL + VEL_K
K_ACCOUNT_HALF = K_NODEV + 1
K_RECENT_WINDOW = K_ACCOUNT_HALF + 1
K_ATTACKER_RECENT = K_RECENT_WINDOW + 1
K_EPISODE = K_ATTACKER_RECENT + 1
K_KEEP = K_EPISODE + 1  # N_CAT: an attacker's chance to repeat its previous value
PARAM_LEN = K_KEEP + N_CAT


@dataclass(frozen=True)
class ModelParams:
    """Configuration (passed to the kernels as one float64 array).

    Attributes:
        prior: P(fraud) before looking at the transaction; the score is the posterior
            under this rate, so alert thresholds are probabilities.
        hold_threshold: scores at or above this are held out of the profiles until a
            GENUINE label or the hold delay (the caller's clock) passes.
        evidence_clip: |e_f| cap in nats, so no single feature decides alone.
        hour_prior: pseudo-transactions of the population hour profile in the customer's.
        novelty_pseudo: pseudo-observations of the 1/(1+n) prior in each novelty bucket.
        variance_pseudo: pseudo-transactions of the pooled within-customer variance.
        t_dof: degrees of freedom of the genuine amount distribution.
        fraud_amount_shift, fraud_amount_sd: takeover amount model, log1p scale, relative
            to the customer's typical amount.
        fraud_pseudo: weight (pseudo-labels) of the takeover model's defaults against
            FRAUD labels.
        learning_rate, l2: supervised layer SGD step and pull towards weight 1.
        count_cap: categorical counts of a customer halve when their total passes this.
        amount_memory: the amount moments weigh at most this many transactions.
        velocity_window_s: window of the velocity count k.
        attacker_novelty: chance an attacker's country / merchant category / device /
            channel is new to a customer with a long history.
        attacker_velocity: distribution of k (0..7+) under takeover, normalised.
        attacker_no_device: chance a takeover transaction carries no device id.
        account_half_life_tx: learned transactions that halve the prior of an account
            run by the attacker from its start.
        recent_window_s, attacker_recent: "recent new value" window and the chance a
            takeover transaction reuses a value that was new within it.
        episode_timescale_s: tau, the mean life of a takeover episode: P(the customer's
            next transaction is still the attacker's) decays as exp(-dt / tau); 0 turns the
            episode filter off (every transaction judged alone).
        attacker_keeps: chance a continuing attacker repeats its previous transaction's
            country / merchant category / device / channel.
    """

    prior: float = 0.003
    hold_threshold: float = 0.05
    evidence_clip: float = 6.0
    hour_prior: float = 6.0
    novelty_pseudo: float = 2.0
    variance_pseudo: float = 3.0
    t_dof: float = 4.0
    fraud_amount_shift: float = 0.7
    fraud_amount_sd: float = 1.0
    fraud_pseudo: float = 20.0
    learning_rate: float = 0.02
    l2: float = 0.01
    count_cap: float = 400.0
    amount_memory: float = 100.0
    velocity_window_s: float = 3600.0
    attacker_novelty: tuple[float, float, float, float] = (0.7, 0.6, 0.85, 0.3)
    attacker_velocity: tuple[float, ...] = (0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.05)
    attacker_no_device: float = 0.2
    account_half_life_tx: float = 5.0
    recent_window_s: float = 21600.0
    attacker_recent: float = 0.15
    episode_timescale_s: float = 21600.0
    attacker_keeps: tuple[float, float, float, float] = (0.9, 0.3, 0.9, 0.6)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            if not all(isinstance(x, int | float) and math.isfinite(x) for x in vals):
                raise ValueError(f"ModelParams.{f.name} must be finite numbers, got {v!r}")
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"ModelParams.prior must be in (0, 1), got {self.prior!r}")
        for name in ("evidence_clip", "hour_prior", "novelty_pseudo", "variance_pseudo",
                     "t_dof", "fraud_amount_sd", "fraud_pseudo", "count_cap",
                     "amount_memory", "velocity_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelParams.{name} must be > 0, got {getattr(self, name)!r}")
        if self.learning_rate < 0 or self.l2 < 0:
            raise ValueError("ModelParams.learning_rate and l2 must be >= 0")
        if len(self.attacker_novelty) != N_CAT or not all(
                0.0 < r < 1.0 for r in self.attacker_novelty):
            raise ValueError(f"ModelParams.attacker_novelty must be {N_CAT} values in (0, 1)")
        if len(self.attacker_velocity) != VEL_K or min(self.attacker_velocity) <= 0:
            raise ValueError(f"ModelParams.attacker_velocity must be {VEL_K} values > 0")
        if self.episode_timescale_s < 0:
            raise ValueError("ModelParams.episode_timescale_s must be >= 0")
        if len(self.attacker_keeps) != N_CAT or not all(
                0.0 < r < 1.0 for r in self.attacker_keeps):
            raise ValueError(f"ModelParams.attacker_keeps must be {N_CAT} values in (0, 1)")

    def to_array(self) -> np.ndarray:
        """The read-only float64 vector the kernels take (built once per object)."""
        return self._array

    @cached_property
    def _array(self) -> np.ndarray:
        a = np.empty(PARAM_LEN)
        a[:K_RHO] = (self.prior, self.hold_threshold, self.evidence_clip, self.hour_prior,
                     self.novelty_pseudo, self.variance_pseudo, self.t_dof,
                     self.fraud_amount_shift, self.fraud_amount_sd, self.fraud_pseudo,
                     self.learning_rate, self.l2, self.count_cap, self.amount_memory,
                     self.velocity_window_s)
        a[K_RHO:K_RHO + N_CAT] = self.attacker_novelty
        v = np.asarray(self.attacker_velocity, dtype=np.float64)
        a[K_FR_VEL:K_FR_VEL + VEL_K] = v / v.sum()
        a[K_NODEV] = self.attacker_no_device
        a[K_ACCOUNT_HALF] = self.account_half_life_tx
        a[K_RECENT_WINDOW] = self.recent_window_s
        a[K_ATTACKER_RECENT] = self.attacker_recent
        a[K_EPISODE] = self.episode_timescale_s
        a[K_KEEP:K_KEEP + N_CAT] = self.attacker_keeps
        a.flags.writeable = False
        return a


DEFAULT_MODEL_PARAMS = ModelParams()


def new_user_state() -> np.ndarray:
    """An empty customer state (no history)."""
    s = np.zeros(USER_LEN)
    s[U_VERSION] = MODEL_VERSION
    s[U_RING:U_RING + RING] = -np.inf
    s[U_RECENT_BIN:U_RECENT_BIN + N_CAT] = -1.0
    s[U_EP_TIME] = -np.inf
    s[U_LAST_BIN:U_LAST_BIN + N_CAT] = -2.0
    return s


def migrate_user_state(old: np.ndarray) -> np.ndarray:
    """A version-2 customer row (``USER_LEN_V2`` values) in this layout: everything kept,
    the episode filter empty (no episode open; the next transaction is judged alone)."""
    if old.shape != (USER_LEN_V2,) or old[0] != PREV_MODEL_VERSION:
        raise ValueError(f"not a version-{PREV_MODEL_VERSION:g} customer row of "
                         f"{USER_LEN_V2} values")
    s = new_user_state()
    s[1:USER_LEN_V2] = old[1:]
    return s


def migrate_population_state(old: np.ndarray) -> np.ndarray:
    """A version-2 population (``POP_LEN_V2`` values) in this layout: everything kept, the
    same-as-last table empty (it fills as transactions are learned)."""
    if old.shape != (POP_LEN_V2,) or old[0] != PREV_MODEL_VERSION:
        raise ValueError(f"not a version-{PREV_MODEL_VERSION:g} population of "
                         f"{POP_LEN_V2} values")
    p = new_population_state()
    p[1:POP_LEN_V2] = old[1:]
    return p


def new_population_state() -> np.ndarray:
    """An empty population state: supervised weights 1 (pure Bayes), nothing learned."""
    p = np.zeros(POP_LEN)
    p[P_VERSION] = MODEL_VERSION
    p[P_W:P_W + N_EVIDENCE] = 1.0
    return p


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
# Every kernel takes C-contiguous float64 vectors; what a kernel only reads is declared
# read-only, so writable arrays and LMDB views both convert to it.
_RW1, _RO1, _RW2, _RO2 = jit.f8_1d, jit.f8_1d_ro, jit.f8_2d, jit.f8_2d_ro
_I8 = jit.i8_1d
_JIT = jit.NOGIL_NUMPY_ERRORS
_CAT_TX = np.array(CAT_TX, dtype=np.int64)
_CAT_BINS = np.array(CAT_BINS, dtype=np.int64)
_U_CAT_TOTAL = np.array(U_CAT_TOTAL, dtype=np.int64)
_U_CAT_OFF = np.array(U_CAT_OFF, dtype=np.int64)
_P_NEWHIST_TOTAL = np.array(P_NEWHIST_TOTAL, dtype=np.int64)
_P_FIRST_OFF = np.array(P_FIRST_OFF, dtype=np.int64)
_P_FIRST_TOTAL = np.array(P_FIRST_TOTAL, dtype=np.int64)
_P_NEWHIST_OFF = np.array(P_NEWHIST_OFF, dtype=np.int64)
_P_FR_HIST_TOTAL = np.array(P_FR_HIST_TOTAL, dtype=np.int64)
_P_FR_HIST_OFF = np.array(P_FR_HIST_OFF, dtype=np.int64)
_HIST_EDGES = np.array(HIST_EDGES, dtype=np.float64)
_RATE_EDGES = np.array(RATE_EDGES, dtype=np.float64)
_LOG_2PI = math.log(2.0 * math.pi)


@njit(jit.f8(jit.f8), **_JIT)
def _hist_bucket(n):
    k = 0
    for j in range(1, N_HIST):
        if n >= _HIST_EDGES[j]:
            k = j
    return k


@njit(jit.f8(jit.f8, jit.f8, jit.f8), **_JIT)
def _student_t_logpdf(z, scale, dof):
    return (math.lgamma(0.5 * (dof + 1.0)) - math.lgamma(0.5 * dof)
            - 0.5 * math.log(dof * math.pi) - math.log(scale)
            - 0.5 * (dof + 1.0) * math.log1p(z * z / dof))


@njit(jit.i8(_RO1), **_JIT)
def _rate_row(user):
    n = user[U_N]
    if n < 3.0:
        return 0
    days = max((user[U_RING + int((user[U_RING_POS] + RING - 1) % RING)] - user[U_FIRST])
               / 86400.0, 1.0)
    r = n / days
    row = 1
    for j in range(_RATE_EDGES.shape[0]):
        if r >= _RATE_EDGES[j]:
            row = j + 2
    return row


@njit(jit.i8(_RO1, jit.f8, jit.f8), **_JIT)
def _velocity_k(user, t, window):
    k = 0
    for j in range(RING):
        dt = t - user[U_RING + j]
        if 0.0 <= dt <= window:
            k += 1
    return min(k, VEL_K - 1)


@njit(jit.f8_pair(_RO1), **_JIT)
def _population_amount(pop):
    """(V, s_w^2): the population's total and pooled within-customer variance of log1p."""
    var_tot = 1.0 if pop[P_AMT_N] < 2.0 else pop[P_AMT_M2] / pop[P_AMT_N]
    s_w = pop[P_WITHIN_S] / pop[P_WITHIN_N] if pop[P_WITHIN_N] >= 2.0 else 0.5 * var_tot
    return var_tot, max(s_w, 0.01)


@njit(jit.f8_pair(_RO1, _RO1, _RO1), **_JIT)
def _amount_posterior(user, pop, params):
    """(m, sigma_u^2 + v): the customer's predictive location and variance of log1p."""
    mu = 3.5 if pop[P_AMT_N] < 2.0 else pop[P_AMT_MEAN]
    var_tot, s_w = _population_amount(pop)
    tau2 = max(var_tot - s_w, 0.05)
    n = user[U_AMT_N]
    nu0 = params[K_VAR_PSEUDO]
    sig2 = (user[U_AMT_S] + nu0 * s_w) / (n + nu0)
    prec = n / sig2 + 1.0 / tau2
    m = (n * user[U_AMT_MEAN] / sig2 + mu / tau2) / prec
    return m, sig2 + 1.0 / prec


@njit(jit.f8(_RO1, jit.i8, jit.f8, _RO1), **_JIT)
def _novelty(pop, f, n, params):
    k = int(_hist_bucket(n))
    base = P_NOV + (f * N_HIST + k) * 2
    a = params[K_NOV_PSEUDO]
    return (pop[base + 1] + a / (1.0 + n)) / (pop[base] + a)


@njit(jit.f8(_RO1, jit.i8, jit.i8, jit.f8, jit.i8), **_JIT)
def _new_value_prob(pop, f, b, n, nbins):
    """q_pop(b): how often genuine customers' new value is b (first values apart)."""
    if n == 0.0:
        return (pop[_P_FIRST_OFF[f] + b] + 0.5) / (pop[_P_FIRST_TOTAL[f]] + 0.5 * nbins)
    return (pop[_P_NEWHIST_OFF[f] + b] + 0.5) / (pop[_P_NEWHIST_TOTAL[f]] + 0.5 * nbins)


@njit(jit.b1(_RO1, jit.i8, jit.i8, jit.f8, jit.f8), **_JIT)
def _is_recent(user, f, b, t, window):
    return user[U_RECENT_BIN + f] == b and 0.0 <= t - user[U_RECENT_TIME + f] <= window


@njit(jit.f8(_RO1, _RO1, _RO1, jit.i8, jit.i8, jit.f8, _RO1), **_JIT)
def _recent_evidence(user, pop, tx, f, b, n, params):
    """Extra log ratio for a seen value: was it new only recently? An attacker whose
    first transaction was learned reuses what they brought (``attacker_recent``); genuine
    customers repeat a recent new value at the rate the population shows."""
    base = P_RECENT + (f * N_HIST + int(_hist_bucket(n))) * 2
    r = (pop[base + 1] + 0.1) / (pop[base] + 1.0)
    rr = params[K_ATTACKER_RECENT]
    if _is_recent(user, f, b, tx[TX_TIME], params[K_RECENT_WINDOW]):
        return math.log(rr / r)
    return math.log((1.0 - rr) / (1.0 - r))


@njit(jit.f8(_RO1), **_JIT)
def _fr_total(pop):
    """FRAUD labels seen (the hour histogram's total)."""
    t = 0.0
    for j in range(HOURS):
        t += pop[P_FR_HOUR + j]
    return t


@njit(jit.b1(_RO1, jit.i8), **_JIT)
def _abroad(user, b):
    """Is country bin b outside the customer's home: seen in under half of their learned
    transactions (a new country, or one a trip already made "seen")? The customer's hour
    profile is in their home time zone and describes them at home; abroad it is shifted by
    the time difference, so the population's hours abroad are the genuine model there."""
    n = user[_U_CAT_TOTAL[0]]
    return b >= 0 and n > 0.0 and 2.0 * user[_U_CAT_OFF[0] + b] < n


@njit(jit.void(_RO1, _RO1, _RO1, _RO1, jit.i8, _RW1, _RW1), **_JIT)
def _evidence(user, pop, tx, params, k, ev, det):
    """Per-feature log likelihood ratios (clipped) into ev; bookkeeping into det."""
    clip = params[K_CLIP]
    fp = params[K_FR_PSEUDO]
    for f in range(N_CAT):
        b = int(tx[_CAT_TX[f]])
        if b < 0:
            ev[f] = 0.0
            det[D_NEW + f] = -1.0
            det[D_NOVELTY + f] = 0.0
            continue
        n = user[_U_CAT_TOTAL[f]]
        c = user[_U_CAT_OFF[f] + b]
        nbins = _CAT_BINS[f]
        nu = _novelty(pop, f, n, params)
        fr = P_FR_CAT + 2 * f
        rho0 = (pop[fr + 1] + fp * params[K_RHO + f]) / (pop[fr] + fp)
        rho = rho0 + (1.0 - rho0) * nu
        det[D_NOVELTY + f] = nu
        if c > 0.0:
            e = math.log((1.0 - rho) / (1.0 - nu)) if nu < 1.0 else 0.0
            e += _recent_evidence(user, pop, tx, f, b, n, params)
            det[D_NEW + f] = 0.0
        else:
            q = _new_value_prob(pop, f, b, n, nbins)
            u = ((pop[_P_FR_HIST_OFF[f] + b] + fp / nbins)
                 / (pop[_P_FR_HIST_TOTAL[f]] + fp))
            e = math.log(rho * u / (nu * q))
            det[D_NEW + f] = 1.0
        ev[f] = min(max(e, -clip), clip)
    # device given the country's novelty (chain rule: e_country + e_device = joint evidence);
    # travellers bring their card and phone, attackers bring their own device
    cs = 1 if det[D_NEW + 0] > 0.0 else 0
    ds = int(det[D_NEW + 2]) + 1  # missing 0, seen 1, new 2
    jb = P_JOINT + int(_hist_bucket(user[_U_CAT_TOTAL[2]])) * 6 + cs * 3
    pg = (pop[jb + ds] + 1.0 / 3.0) / (pop[jb] + pop[jb + 1] + pop[jb + 2] + 1.0)
    nf = _fr_total(pop)
    m = (pop[P_FR_NODEV] + fp * params[K_NODEV]) / (nf + fp)
    if ds == 0:
        e = math.log(m / pg)
    else:
        nu = det[D_NOVELTY + 2]
        fr = P_FR_CAT + 4
        rho0 = (pop[fr + 1] + fp * params[K_RHO + 2]) / (pop[fr] + fp)
        rho = rho0 + (1.0 - rho0) * nu
        if ds == 1:
            e = math.log((1.0 - m) * (1.0 - rho) / pg)
            e += _recent_evidence(user, pop, tx, 2, int(tx[TX_DEVICE]),
                                  user[_U_CAT_TOTAL[2]], params)
        else:
            b = int(tx[TX_DEVICE])
            q = _new_value_prob(pop, 2, b, user[_U_CAT_TOTAL[2]], DEVICE_BINS)
            u = ((pop[_P_FR_HIST_OFF[2] + b] + fp / DEVICE_BINS)
                 / (pop[_P_FR_HIST_TOTAL[2]] + fp))
            e = math.log((1.0 - m) * rho * u / (pg * q))
    ev[E_DEVICE] = min(max(e, -clip), clip)
    # hour
    h = int(tx[TX_HOUR])
    hm = (h + HOURS - 1) % HOURS
    hp = (h + 1) % HOURS
    su = 0.25 * user[U_HOUR + hm] + 0.5 * user[U_HOUR + h] + 0.25 * user[U_HOUR + hp]
    ph = pop[P_HOUR_TOTAL]
    sp = 0.25 * pop[P_HOUR + hm] + 0.5 * pop[P_HOUR + h] + 0.25 * pop[P_HOUR + hp]
    q = (sp + 1.0) / (ph + HOURS)
    beta = params[K_HOUR_PRIOR]
    pg = (su + beta * q) / (user[U_N] + beta)
    if _abroad(user, int(tx[TX_COUNTRY])):  # hours at home say little; the population's
        sp = (0.25 * pop[P_HOUR_NEWC + hm] + 0.5 * pop[P_HOUR_NEWC + h]
              + 0.25 * pop[P_HOUR_NEWC + hp])
        pg = (sp + 1.0) / (pop[P_HOUR_NEWC_TOTAL] + HOURS)
    pt = (pop[P_FR_HOUR + h] + fp / HOURS) / (_fr_total(pop) + fp)
    ev[E_HOUR] = min(max(math.log(pt / pg), -clip), clip)
    # amount
    x = math.log1p(tx[TX_AMOUNT])
    m, var = _amount_posterior(user, pop, params)
    det[D_AMOUNT_RATIO] = math.exp(x - m)
    scale = math.sqrt(var)
    lg = _student_t_logpdf((x - m) / scale, scale, params[K_T_DOF])
    # the labels' moments of r = x - m (F_AMT_RESID): their mean is delta's estimate; their
    # spread is the customer's own predictive spread plus omega^2, so the pooled
    # within-customer variance of each is taken out before pooling with the prior
    an = pop[P_FR_AMT_N]
    shift = (pop[P_FR_AMT_MEAN] * an + params[K_FR_SHIFT] * fp) / (an + fp)
    sd0 = params[K_FR_SD]
    s_w = _population_amount(pop)[1]
    om2 = (max(pop[P_FR_AMT_M2] - an * s_w, 0.0) + fp * sd0 * sd0) / (an + fp)
    vt = var + om2
    d = x - m - shift
    lt = -0.5 * (_LOG_2PI + math.log(vt) + d * d / vt)
    ev[E_AMOUNT] = min(max(lt - lg, -clip), clip)
    # velocity
    row = _rate_row(user)
    base = P_VEL + row * VEL_K
    tot = 0.0
    for j in range(VEL_K):
        tot += pop[base + j]
    pg = (pop[base + k] + 1.0) / (tot + VEL_K)
    pt = (pop[P_FR_VEL + k] + fp * params[K_FR_VEL + k]) / (_fr_total(pop) + fp)
    ev[E_VELOCITY] = min(max(math.log(pt / pg), -clip), clip)


@njit(jit.f8(_RO1, _RO1, _RO1, _RO1, _RO1), **_JIT)
def _continuation_llr(user, pop, tx, params, ev):
    """z_cont = sum_f w_f e'_f: the evidence that a takeover episode *continues* here. A
    categorical equal to the previous scored transaction's value: log(keep_f / r_f(n)),
    r_f(n) the population's rate of genuine repeats of the previous value; a different
    value: log(1 - keep_f) + e_f (a switch, then valued as a fresh takeover's); missing:
    e_f. Hour and velocity: 0 (set by the previous transaction's time under both
    hypotheses). Amount: e_f (the attacker spends as attackers do)."""
    clip = params[K_CLIP]
    zc = 0.0
    for f in range(N_EVIDENCE):
        e = ev[f]
        if f < N_CAT:
            b = tx[_CAT_TX[f]]
            if b >= 0.0:
                keep = params[K_KEEP + f]
                if user[U_LAST_BIN + f] == b:
                    base = P_SAME + (f * N_HIST + int(_hist_bucket(user[_U_CAT_TOTAL[f]]))) * 2
                    r = (pop[base + 1] + 0.5) / (pop[base] + 1.0)
                    e = math.log(keep / r)
                else:
                    e = math.log1p(-keep) + e
                e = min(max(e, -clip), clip)
        elif f != E_AMOUNT:  # hour, velocity
            e = 0.0
        zc += pop[P_W + f] * e
    return zc


@njit(jit.void(_RO1, _RO1, _RO1, _RO1, _RW1, _RW1), **_JIT)
def _score(user, pop, tx, params, out, feat):
    """Score into out (DETAIL_LEN) and feat (FEAT_LEN); nothing is written to user/pop."""
    k = _velocity_k(user, tx[TX_TIME], params[K_VEL_WINDOW])
    ev = out[D_EVIDENCE:D_EVIDENCE + N_EVIDENCE]
    _evidence(user, pop, tx, params, k, ev, out)
    llr = 0.0
    z = 0.0
    for f in range(N_EVIDENCE):
        llr += ev[f]
        z += pop[P_W + f] * ev[f]
    pi = params[K_PRIOR]
    lp = math.log(pi / (1.0 - pi))
    z += lp
    out[D_START_LOGIT] = z
    out[D_EP_PREV] = user[U_EP_P]
    out[D_EP_DT] = tx[TX_TIME] - user[U_EP_TIME]
    for f in range(N_CAT):
        last = user[U_LAST_BIN + f]
        b = tx[_CAT_TX[f]]
        out[D_SAME + f] = -1.0 if b < 0.0 or last < 0.0 else (1.0 if b == last else 0.0)
    # takeover-episode filter: does this transaction continue the previous one's episode?
    a = 0.0
    zc = 0.0
    tau = params[K_EPISODE]
    dt = tx[TX_TIME] - user[U_EP_TIME]
    if tau > 0.0 and dt >= 0.0 and user[U_EP_P] > 0.0:
        a = min(user[U_EP_P] * math.exp(-dt / tau), 1.0 - 1e-9)
        zc = _continuation_llr(user, pop, tx, params, ev)
        if a > 0.0:  # logit = log(e^z + a / ((1 - a)(1 - pi)) e^zc), without overflow
            zc2 = math.log(a) - math.log1p(-a) - math.log1p(-pi) + zc
            z = max(z, zc2) + math.log1p(math.exp(-abs(z - zc2)))
    out[D_EPISODE] = a
    out[D_CONT_LR] = zc
    p_tx = 1.0 / (1.0 + math.exp(-z))
    p_acct = 0.0
    half = params[K_ACCOUNT_HALF]
    if half > 0.0:
        za = lp + user[U_ACCOUNT] - user[U_N] * math.log(2.0) / half
        p_acct = 1.0 / (1.0 + math.exp(-za))
    out[D_ACCOUNT] = p_acct
    out[D_SCORE] = 1.0 - (1.0 - p_acct) * (1.0 - p_tx)
    out[D_LOGIT] = z
    out[D_LOG_LR] = llr
    out[D_HISTORY] = user[U_N]
    out[D_K] = k
    out[D_HELD] = 1.0 if out[D_SCORE] >= params[K_HOLD] else 0.0
    for j in range(TX_LEN):
        feat[j] = tx[j]
    feat[F_K] = k
    for f in range(N_EVIDENCE):
        feat[F_EVIDENCE + f] = ev[f]
    for f in range(N_CAT):
        feat[F_NEW + f] = out[D_NEW + f]
    feat[F_AMT_RESID] = math.log(out[D_AMOUNT_RATIO])


@njit(jit.void(_RW1, jit.f8), **_JIT)
def _observe(user, t):
    """Every scored transaction enters the velocity ring (held ones too)."""
    pos = int(user[U_RING_POS])
    user[U_RING + pos] = t
    user[U_RING_POS] = (pos + 1) % RING
    user[U_SEEN] += 1.0


@njit(jit.void(_RW1, _RO1, _RO1), **_JIT)
def _remember(user, tx, out):
    """The episode filter's memory: this transaction's P(fraud), time and values."""
    user[U_EP_P] = out[D_SCORE]
    user[U_EP_TIME] = tx[TX_TIME]
    for f in range(N_CAT):
        user[U_LAST_BIN + f] = tx[_CAT_TX[f]]


@njit(jit.void(_RW1, _RW1, _RO1), **_JIT)
def _count_same(user, pop, feat):
    """A transaction learned right after scoring: did it repeat the previous scored
    transaction's value (r_f(n) of the episode filter's genuine side)?"""
    for f in range(N_CAT):
        b = feat[_CAT_TX[f]]
        if b < 0.0 or user[U_LAST_BIN + f] < -1.0:
            continue
        base = P_SAME + (f * N_HIST + int(_hist_bucket(user[_U_CAT_TOTAL[f]]))) * 2
        pop[base] += 1.0
        if user[U_LAST_BIN + f] == b:
            pop[base + 1] += 1.0


@njit(jit.void(_RW1, _RW1, _RO1, _RO1), **_JIT)
def _learn(user, pop, feat, params):
    """Fold one genuine (or presumed genuine) transaction into the customer and population."""
    # population first: it learns how customers *with this history* behave
    # account evidence: how rare this customer's *first* values are among genuine
    # customers' first values (an account the attacker opened or took over at once)
    clip = params[K_CLIP]
    fp = params[K_FR_PSEUDO]
    for f in range(N_CAT):
        b = int(feat[_CAT_TX[f]])
        if b >= 0 and user[_U_CAT_TOTAL[f]] == 0.0:
            nbins = _CAT_BINS[f]
            u = ((pop[_P_FR_HIST_OFF[f] + b] + fp / nbins)
                 / (pop[_P_FR_HIST_TOTAL[f]] + fp))
            e = math.log(u / _new_value_prob(pop, f, b, 0.0, nbins))
            user[U_ACCOUNT] += min(max(e, -clip), clip)
    bc = int(feat[TX_COUNTRY])
    cs = 1 if bc >= 0 and user[_U_CAT_OFF[0] + bc] == 0.0 else 0
    bd = int(feat[TX_DEVICE])
    ds = 0 if bd < 0 else (2 if user[_U_CAT_OFF[2] + bd] == 0.0 else 1)
    pop[P_JOINT + int(_hist_bucket(user[_U_CAT_TOTAL[2]])) * 6 + cs * 3 + ds] += 1.0
    if _abroad(user, bc):
        pop[P_HOUR_NEWC + int(feat[TX_HOUR])] += 1.0
        pop[P_HOUR_NEWC_TOTAL] += 1.0
    for f in range(N_CAT):
        b = int(feat[_CAT_TX[f]])
        if b < 0:
            continue
        n = user[_U_CAT_TOTAL[f]]
        base = P_NOV + (f * N_HIST + int(_hist_bucket(n))) * 2
        pop[base] += 1.0
        if user[_U_CAT_OFF[f] + b] > 0.0:
            rb = P_RECENT + (f * N_HIST + int(_hist_bucket(n))) * 2
            pop[rb] += 1.0
            if _is_recent(user, f, b, feat[TX_TIME], params[K_RECENT_WINDOW]):
                pop[rb + 1] += 1.0
        else:
            user[U_RECENT_BIN + f] = b
            user[U_RECENT_TIME + f] = feat[TX_TIME]
            pop[base + 1] += 1.0
            if n == 0.0:
                pop[_P_FIRST_OFF[f] + b] += 1.0
                pop[_P_FIRST_TOTAL[f]] += 1.0
            else:
                pop[_P_NEWHIST_OFF[f] + b] += 1.0
                pop[_P_NEWHIST_TOTAL[f]] += 1.0
        user[_U_CAT_OFF[f] + b] += 1.0
        user[_U_CAT_TOTAL[f]] += 1.0
        if user[_U_CAT_TOTAL[f]] > params[K_CAP]:
            for j in range(_CAT_BINS[f]):
                user[_U_CAT_OFF[f] + j] *= 0.5
            user[_U_CAT_TOTAL[f]] *= 0.5
    h = int(feat[TX_HOUR])
    pop[P_HOUR + h] += 1.0
    pop[P_HOUR_TOTAL] += 1.0
    row = _rate_row(user)
    pop[P_VEL + row * VEL_K + int(feat[F_K])] += 1.0
    x = math.log1p(feat[TX_AMOUNT])
    pn = pop[P_AMT_N] + 1.0
    d = x - pop[P_AMT_MEAN]
    pop[P_AMT_MEAN] += d / pn
    pop[P_AMT_M2] += d * (x - pop[P_AMT_MEAN])
    pop[P_AMT_N] = pn
    n = user[U_AMT_N]
    if n >= 1.0:  # pooled within-customer variance: residual against the running mean
        r = x - user[U_AMT_MEAN]
        pop[P_WITHIN_S] += r * r * n / (n + 1.0)
        pop[P_WITHIN_N] += 1.0
    d = x - user[U_AMT_MEAN]
    if n + 1.0 <= params[K_AMT_MEMORY]:
        n1 = n + 1.0
        user[U_AMT_MEAN] += d / n1
        user[U_AMT_S] += d * (x - user[U_AMT_MEAN])
    else:  # exponentially weighted once the memory is full
        n1 = n
        a = 1.0 / n
        user[U_AMT_MEAN] += a * d
        user[U_AMT_S] = (1.0 - a) * (user[U_AMT_S] / n + a * d * d) * n
    user[U_AMT_N] = n1
    user[U_HOUR + h] += 1.0
    if user[U_N] == 0.0:
        user[U_FIRST] = feat[TX_TIME]
    user[U_N] += 1.0
    # case-control ring of presumed-genuine evidence
    pos = int(pop[P_CC_POS])
    for f in range(N_EVIDENCE):
        pop[P_CC + pos * N_EVIDENCE + f] = feat[F_EVIDENCE + f]
    pop[P_CC_POS] = (pos + 1) % CC_RING


@njit(jit.void(_RW1, _RO1, jit.f8, jit.f8, _RO1), **_JIT)
def _sgd(pop, ev, y, z0, params):
    z = z0
    for f in range(N_EVIDENCE):
        z += pop[P_W + f] * ev[f]
    g = 1.0 / (1.0 + math.exp(-z)) - y
    lr = params[K_RATE]
    for f in range(N_EVIDENCE):
        w = pop[P_W + f]
        pop[P_W + f] = max(w - lr * (g * ev[f] + params[K_L2] * (w - 1.0)), 0.0)


@njit(jit.void(_RW1, _RO1, jit.f8, _RO1), **_JIT)
def _label(pop, feat, y, params):
    """A label: FRAUD updates the takeover model (novelty, values, hour, velocity, no-device
    counts and the amount residual's running moments) and trains the weights against a
    presumed-genuine partner; GENUINE trains the weights as a negative."""
    ev = feat[F_EVIDENCE:F_EVIDENCE + N_EVIDENCE]
    if y > 0.5:
        for f in range(N_CAT):
            b = int(feat[_CAT_TX[f]])
            if b < 0:
                continue
            fr = P_FR_CAT + 2 * f
            pop[fr] += 1.0
            if feat[F_NEW + f] > 0.0:
                pop[fr + 1] += 1.0
            pop[_P_FR_HIST_OFF[f] + b] += 1.0
            pop[_P_FR_HIST_TOTAL[f]] += 1.0
        pop[P_FR_HOUR + int(feat[TX_HOUR])] += 1.0
        if feat[TX_DEVICE] < 0.0:
            pop[P_FR_NODEV] += 1.0
        pop[P_FR_VEL + int(feat[F_K])] += 1.0
        r = feat[F_AMT_RESID]
        if r == r:  # Welford; NaN: a row kept before the residual was (amount unknown)
            an = pop[P_FR_AMT_N] + 1.0
            d = r - pop[P_FR_AMT_MEAN]
            pop[P_FR_AMT_MEAN] += d / an
            pop[P_FR_AMT_M2] += d * (r - pop[P_FR_AMT_MEAN])
            pop[P_FR_AMT_N] = an
        _sgd(pop, ev, 1.0, 0.0, params)
        pos = int(pop[P_CC_POS])
        _sgd(pop, pop[P_CC + pos * N_EVIDENCE:P_CC + (pos + 1) * N_EVIDENCE], 0.0, 0.0,
             params)
        pop[P_CC_POS] = (pos + 1) % CC_RING
    else:
        pi = params[K_PRIOR]
        _sgd(pop, ev, 0.0, math.log(pi / (1.0 - pi)), params)


# The single-transaction kernels run for a few microseconds inside a gRPC handler: they keep
# the GIL (jit.GIL_NUMPY_ERRORS; see kernels/jit.py). Exact signatures for writable and
# read-only (LMDB view) user and population rows, so dispatch needs no conversion.
@njit([jit.void(u, p, _RO1, _RO1, _RW1, _RW1) for u in (_RO1, _RW1) for p in (_RO1, _RW1)],
      **jit.GIL_NUMPY_ERRORS)
def _score_one_kernel(user, pop, tx, params, out, feat):
    """Score one transaction (read-only inputs; no state change)."""
    _score(user, pop, tx, params, out, feat)


@njit(jit.void(_RW1, _RW1, _RO1, _RO1, jit.b1, jit.b1, _RW1, _RW1), **jit.GIL_NUMPY_ERRORS)
def _score_learn_one_kernel(user, pop, tx, params, learn, hold, out, feat):
    """Score, observe, and learn unless held; user and pop are updated in place. With
    ``hold`` False nothing is held (backfill: every transaction is learned)."""
    _score(user, pop, tx, params, out, feat)
    _observe(user, tx[TX_TIME])
    if not hold:
        out[D_HELD] = 0.0
    if learn and out[D_HELD] == 0.0:
        _count_same(user, pop, feat)
        _learn(user, pop, feat, params)
    _remember(user, tx, out)


@njit(jit.void(_RW2, _I8, _RO2, _RW1, _RO1, jit.b1, jit.b1, _RW2, _RW2), **_JIT)
def _score_learn_batch_kernel(users, rows, txs, pop, params, learn, hold, out, feats):
    """In order, each transaction as _score_learn_one_kernel on its customer's row."""
    for i in range(txs.shape[0]):
        u = users[rows[i]]
        _score(u, pop, txs[i], params, out[i], feats[i])
        _observe(u, txs[i, TX_TIME])
        if not hold:
            out[i, D_HELD] = 0.0
        if learn and out[i, D_HELD] == 0.0:
            _count_same(u, pop, feats[i])
            _learn(u, pop, feats[i], params)
        _remember(u, txs[i], out[i])


@njit(jit.void(_RW2, _I8, _RO2, _RW1, _RO1), **_JIT)
def _learn_batch_kernel(users, rows, feats, pop, params):
    for i in range(feats.shape[0]):
        _learn(users[rows[i]], pop, feats[i], params)


@njit(jit.void(_RW1, _RO2, _RO1, _RO1), **_JIT)
def _label_batch_kernel(pop, feats, labels, params):
    for i in range(feats.shape[0]):
        _label(pop, feats[i], labels[i], params)


# ---------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBatch:
    """Per transaction: ``scores`` (P(fraud)), ``held``, ``details`` (n, DETAIL_LEN) and
    ``features`` (n, FEAT_LEN; keep a held one's row to learn or label it later)."""

    scores: np.ndarray
    held: np.ndarray
    details: np.ndarray
    features: np.ndarray


def score_one(user: np.ndarray, population: np.ndarray, transaction: np.ndarray,
              params: ModelParams = DEFAULT_MODEL_PARAMS) -> tuple[float, np.ndarray,
                                                                    np.ndarray]:
    """Score one transaction without changing anything: (P(fraud), details, features).
    ``transaction`` is the ``nudge.kernels.risk.encode_transaction`` vector."""
    _check(user, "user", USER_LEN)
    _check(population, "population", POP_LEN)
    _check_tx(transaction)
    out = np.empty(DETAIL_LEN)
    feat = np.empty(FEAT_LEN)
    _score_one_kernel(user, population, transaction, params.to_array(), out, feat)
    return float(out[D_SCORE]), out, feat


def score_and_learn(users: np.ndarray, rows: np.ndarray, population: np.ndarray,
                    transactions: np.ndarray, params: ModelParams = DEFAULT_MODEL_PARAMS, *,
                    learn: bool = True, hold: bool = True) -> ModelBatch:
    """Score a time-ordered batch; each transaction is observed (velocity) and, unless held,
    learned into its customer's row of ``users`` and into ``population`` (both in place).
    ``hold=False`` holds nothing (a backfill of history the bank already trusts)."""
    _check2(users, "users", USER_LEN)
    _check(population, "population", POP_LEN, writable=True)
    txs = np.ascontiguousarray(transactions, dtype=np.float64)
    if txs.ndim != 2 or txs.shape[1] != TX_LEN:
        raise ValueError(f"transactions must be (n, {TX_LEN}) from encode_transactions")
    _check_values(txs, "transactions")
    rows_ = _check_rows(rows, txs.shape[0], users.shape[0])
    n = txs.shape[0]
    out = np.empty((n, DETAIL_LEN))
    feats = np.empty((n, FEAT_LEN))
    _score_learn_batch_kernel(users, rows_, txs, population, params.to_array(), bool(learn),
                              bool(hold), out, feats)
    return ModelBatch(scores=out[:, D_SCORE].copy(), held=out[:, D_HELD] > 0, details=out,
                      features=feats)


def score_learn_one(user: np.ndarray, population: np.ndarray, transaction: np.ndarray,
                    params: ModelParams = DEFAULT_MODEL_PARAMS, *, hold: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One transaction as :func:`score_and_learn` (``user`` and ``population`` updated in
    place), with the light checks of :func:`score_one`: (details, features)."""
    _check(user, "user", USER_LEN, writable=True)
    _check(population, "population", POP_LEN, writable=True)
    _check_tx(transaction)
    out = np.empty(DETAIL_LEN)
    feat = np.empty(FEAT_LEN)
    _score_learn_one_kernel(user, population, transaction, params.to_array(), True, bool(hold),
                            out, feat)
    return out, feat


def score_learn_one_trusted(user: np.ndarray, population: np.ndarray,
                            transaction: np.ndarray, params: ModelParams = DEFAULT_MODEL_PARAMS
                            ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_learn_one` (holding) without its checks, for a caller that built every
    input itself (ScoreTransaction: writable copies of stored rows, a vector from
    ``encode_transaction``, which validates). Anything else is undefined."""
    out = np.empty(DETAIL_LEN)
    feat = np.empty(FEAT_LEN)
    _score_learn_one_kernel(user, population, transaction, params.to_array(), True, True,
                            out, feat)
    return out, feat


def learn_held(users: np.ndarray, rows: np.ndarray, population: np.ndarray,
               features: np.ndarray, params: ModelParams = DEFAULT_MODEL_PARAMS) -> None:
    """Fold held transactions (labelled GENUINE, or past the hold delay unlabelled) into
    their customers and the population, in place. Call once per transaction, never for
    one labelled FRAUD."""
    _check2(users, "users", USER_LEN)
    _check(population, "population", POP_LEN, writable=True)
    f = _check_features(features)
    _learn_batch_kernel(users, _check_rows(rows, f.shape[0], users.shape[0]), f, population,
                        params.to_array())


def apply_labels(population: np.ndarray, features: np.ndarray, labels: np.ndarray,
                 params: ModelParams = DEFAULT_MODEL_PARAMS) -> None:
    """Train the takeover model and the supervised weights on labelled transactions
    (``labels`` 1 FRAUD, 0 GENUINE; ``features`` as returned when they were scored)."""
    _check(population, "population", POP_LEN, writable=True)
    f = _check_features(features)
    y = np.ascontiguousarray(labels, dtype=np.float64).reshape(-1)
    if y.shape[0] != f.shape[0] or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (GENUINE) or 1 (FRAUD), one per features row")
    _label_batch_kernel(population, f, y, params.to_array())


def warm_up() -> None:
    """Compile/load every kernel signature once (call before serving)."""
    from nudge.kernels.risk import encode_transaction

    users = new_user_state().reshape(1, -1)
    pop = new_population_state()
    tx = encode_transaction(10.0, 0.0, 12.0, "US", "5411", "d", "online")
    b = score_and_learn(users, np.zeros(1, np.int64), pop, tx.reshape(1, -1))
    score_and_learn(users, np.zeros(1, np.int64), pop, tx.reshape(1, -1), hold=False)
    score_learn_one(users[0], pop, tx)
    learn_held(users, np.zeros(1, np.int64), pop, b.features)
    apply_labels(pop, b.features, np.ones(1))
    for ro_u in (False, True):
        for ro_p in (False, True):
            u, p = users[0].copy(), pop.copy()
            u.flags.writeable = not ro_u
            p.flags.writeable = not ro_p
            score_one(u, p, tx)


def _check(a: np.ndarray, name: str, length: int, writable: bool = False) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.shape != (length,) \
            or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float64 vector of {length} values "
                         f"(new_{'user' if length == USER_LEN else 'population'}_state())")
    if a[0] != MODEL_VERSION:
        raise ValueError(f"{name} layout version must be {MODEL_VERSION}, got {a[0]!r}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place)")


def _check2(a: np.ndarray, name: str, width: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.ndim != 2 \
            or a.shape[1] != width or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous float64 (n, {width}) array")
    if a.shape[0] and (a[:, 0] != MODEL_VERSION).any():
        raise ValueError(f"{name} layout version must be {MODEL_VERSION} in every row")


def _check_tx(tx: np.ndarray) -> None:
    if not isinstance(tx, np.ndarray) or tx.dtype != np.float64 or tx.shape != (TX_LEN,):
        raise ValueError(f"transaction must be the float64 ({TX_LEN},) vector from "
                         "encode_transaction")
    v = tx.tolist()  # plain floats: ~1 µs, where the NumPy checks cost ~15 per call
    if not all(map(math.isfinite, v)) or v[TX_AMOUNT] < 0 or not 0.0 <= v[TX_HOUR] < 24.0 \
            or not all(-1 <= v[c] < b and v[c] == int(v[c])
                       for c, b in zip(CAT_TX, CAT_BINS, strict=True)):
        _check_values(tx.reshape(1, -1), "transaction")  # raises with the rule broken


def _check_values(m: np.ndarray, name: str) -> None:
    """Finite, amount >= 0, hour in [0, 24), bins integers in [-1, bins): the kernels
    index arrays with them."""
    if not np.isfinite(m[:, :TX_LEN]).all():
        raise ValueError(f"{name}: time, amount and local_hour must be finite")
    if (m[:, TX_AMOUNT] < 0).any():
        raise ValueError(f"{name}: amount must be >= 0")
    if ((m[:, TX_HOUR] < 0) | (m[:, TX_HOUR] >= 24)).any():
        raise ValueError(f"{name}: local_hour must be in [0, 24)")
    for col, bins in zip(CAT_TX, CAT_BINS, strict=True):
        b = m[:, col]
        if ((b < -1) | (b >= bins) | (b != np.floor(b))).any():
            raise ValueError(f"{name}: category bins must be integers in [-1, {bins}); "
                             "build transactions with encode_transaction(s)")


def _check_features(features: np.ndarray) -> np.ndarray:
    f = np.ascontiguousarray(features, dtype=np.float64)
    if f.ndim not in (1, 2) or f.shape[-1] not in (FEAT_LEN, FEAT_LEN_V3):
        raise ValueError(f"features must be rows of {FEAT_LEN} values, as returned when the "
                         "transactions were scored")
    if f.shape[-1] == FEAT_LEN_V3:  # kept before F_AMT_RESID: the residual is unknown
        f = np.concatenate([f.reshape(-1, FEAT_LEN_V3), np.full((f.size // FEAT_LEN_V3, 1),
                                                                np.nan)], axis=1)
    f = f.reshape(-1, FEAT_LEN)
    _check_values(f, "features")
    k = f[:, F_K]
    if ((k < 0) | (k >= VEL_K) | (k != np.floor(k))).any() or not np.isfinite(
            f[:, :F_AMT_RESID]).all() or np.isinf(f[:, F_AMT_RESID]).any():
        raise ValueError("features must be the rows returned when the transactions were "
                         "scored (velocity count or evidence out of range)")
    return f


def _check_rows(rows: np.ndarray, n: int, n_users: int) -> np.ndarray:
    r = np.asarray(rows)
    if r.shape != (n,) or (r.size and not np.issubdtype(r.dtype, np.integer)):
        raise ValueError(f"rows must be {n} integers (one state row per transaction)")
    if r.size and (r.min() < 0 or r.max() >= n_users):
        raise ValueError(f"rows must be in [0, {n_users})")
    return np.array(r, dtype=np.int64)
