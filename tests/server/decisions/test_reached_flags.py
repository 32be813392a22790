"""A campaign's "reached" insight flag through a real server: Track back-dated events,
Decide, and read the flag's value from the stored decision record — settled from the
state record, or from the insights summary for a long-time user."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nudge.clients import Client, make_event
from nudge.server.app import create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.server.decisions.campaign import shipped_campaigns_dir
from nudge.server.decisions.features import reached_flag
from nudge.server.storage.tables import decisions

DAY = 86_400.0
NOW = 1_795_000_000.0
FLAG = "reached.pix_sent.3x7d"
TOML = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text().replace(
    "contact_pressure = false",
    'contact_pressure = false\nreached = [{ event = "pix_sent", at_least = 3, within_days = 7 }]')
FIRST = NOW - 60 * DAY
# user -> (days after FIRST of each pix_sent; every user opens the app at FIRST), the flag.
USERS = {
    "early3": ([0.5, 1.0, 6.5], 1.0),      # all inside the week: the record's total says so
    "two": ([1.0, 2.0, 30.0], 0.0),        # three in all, two in the week: the summary says
    "late": ([10.0, 11.0, 12.0, 13.0], 0.0),  # four, none in the week (summary)
    "kept_on": ([1.0, 2.0, 3.0, 20.0, 40.0], 1.0),  # three in the week, more later (summary)
    "one": ([2.0], 0.0),                   # fewer than three in all (record)
}


def test_reached_flag_values_through_a_real_server(tmp_path: Path) -> None:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "c.toml").write_text(TOML)
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", campaigns_dir=campaigns),
                        clock=ManualClock(NOW))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            events = []
            for user, (days, _) in USERS.items():
                events.append(make_event(user, "app_opened", time=FIRST, event_id=f"{user}-o"))
                events += [make_event(user, "pix_sent", time=FIRST + d * DAY,
                                      event_id=f"{user}-p{i}") for i, d in enumerate(days)]
            assert client.track(events).accepted == len(events)
            assert srv.insights_summary is not None
            srv.insights_summary.flush()
            ids = {user: client.decide(user, campaign="loan_abandonment").decision_id
                   for user in [*USERS, "never_seen"]}
        srv.decisions.flush()
        names = srv.decisions.campaign_model("loan_abandonment").layout.numeric
        at = list(names).index(FLAG)
        with srv.store.read() as txn:
            got = {user: decisions.get(txn, srv.store.dbs, i).raw[at]  # type: ignore[union-attr]
                   for user, i in ids.items()}
    finally:
        srv.stop()
    assert got == {**{u: flag for u, (_, flag) in USERS.items()}, "never_seen": 0.0}


def test_the_record_settles_the_common_cases_without_the_summary() -> None:
    """Against a slow reference (count the events inside the window) on random histories:
    the record's answer, when it gives one, is the reference's; the summary is asked only
    when the user did it often enough in all and kept doing it after the window."""
    from nudge.kernels import user_state as u

    rng = np.random.default_rng(5)
    asked = 0
    for _ in range(300):
        first = NOW - rng.uniform(1, 90) * DAY
        times = np.sort(first + rng.exponential(rng.uniform(1, 20), rng.integers(0, 8)) * DAY)
        k, days = int(rng.integers(1, 5)), int(rng.integers(1, 15))
        record = np.zeros(u.RECORD_LEN)
        record[u.S_FIRST_SEEN] = first
        record[u.TOTALS + 3] = times.size
        record[u.TYPE_LAST + 3] = times.max() if times.size else 0.0
        until_hour = int(first // 3600) + 24 * days
        inside = int((times // 3600 < until_hour).sum())
        want = 1.0 if inside >= k else 0.0
        from_record = reached_flag(record, 3, "e", k, 24 * days, None)
        if math.isnan(from_record):
            asked += 1
            assert reached_flag(record, 3, "e", k, 24 * days,
                                lambda _t, hour, ts=times: float((ts // 3600 < hour).sum())) == want
        else:
            assert from_record == want
    assert 0 < asked < 300  # both paths taken
    assert reached_flag(np.zeros(u.RECORD_LEN), None, "e", 1, 24, None) == 0.0
