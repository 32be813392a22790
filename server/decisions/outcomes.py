"""Outcomes: which decision earned what, settled durably and queued for the learner.

Goal events arriving through Track settle the user's open decisions inside their own
commit (pending decisions are written into that commit first, so none is missed); a
consent revoked for a decision's channel settles it with the campaign's opt-out cost;
ReportOutcome settles one explicitly; the learner (learner.py) settles expired ones with
reward 0 (``settle``) and learns from the rewards log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from operator import attrgetter
from typing import Any

import lmdb

from nudge.server.decisions.campaign import Campaign
from nudge.server.decisions.pending import PendingDecisions
from nudge.server.errors import InvalidArgument, NotFound
from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import deadlines, open_decisions, rewards
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables.decisions import DecisionRecord

# How long ReportOutcome looks for a decision another worker of a shared store has made
# but not yet stored (its flush follows the reply by milliseconds).
OTHER_WORKER_FLUSH_GRACE = 0.25
# Fields the Track hook reads from every event of a commit (C-level getters).
_TYPE, _CONSENTS = attrgetter("type"), attrgetter("consents")


def settle(txn: lmdb.Transaction, store: Store, record: DecisionRecord, reward: float) -> bool:
    """Give an open decision its reward and queue it for the learner (in ``txn``); False
    when it was not open."""
    if record.status != "open":
        return False
    dbs = store.dbs
    record.status = "settled"
    record.reward = float(reward)
    decision_table.put(txn, dbs, record)
    open_decisions.remove(txn, dbs, record.user_id, record.decision_id)
    deadlines.remove(txn, dbs, record.window_end, record.decision_id)
    if record.learn:
        rewards.append(txn, dbs, record.decision_id)
    return True


class Outcomes:
    """Attributes outcomes to decisions: goal events (a Track hook) and ReportOutcome."""

    def __init__(
        self, store: Store, writer: EventWriter, pending: PendingDecisions,
        campaigns: dict[str, Campaign],
    ) -> None:
        self.store = store
        self.writer = writer
        self.pending = pending
        # Called after a commit that settled decisions (the learner wakes).
        self.on_settled: Callable[[], None] = lambda: None
        # Cluster mode: ReportOutcome appends (user id, decision id, reward) to the
        # replicated log instead of settling here; the partition's owner settles it when
        # it applies the record (``settle_logged``), exactly once.
        self.log_outcome: Callable[[str, str, float], Future[bool]] | None = None
        self.replace_campaigns(campaigns)
        writer.add_event_hook(self._on_events)

    def replace_campaigns(self, campaigns: dict[str, Campaign]) -> None:
        """Attribute with these campaigns' goals from now on (decisions keep their
        campaign's name)."""
        self.campaigns = campaigns
        self._goal_types = {t for c in campaigns.values() for t in c.goal.events}
        self._opt_out_costs = any(c.goal.opt_out_cost for c in campaigns.values())

    def report(self, decision_id: str, reward: float, when: float) -> Future[bool]:
        """Settle a decision with an explicit reward; the future says whether it was
        attributed (False when it was already settled) once durable."""
        if not math.isfinite(reward):
            raise InvalidArgument("reward", "must be finite")
        campaign_name = self.pending.campaign_of(decision_id)
        if campaign_name is None:
            campaign_name = self._stored(decision_id)
        if campaign_name is None:
            raise NotFound(f"decision_id: {decision_id!r} is unknown")
        campaign = self.campaigns.get(campaign_name)
        if campaign is not None:
            low, high = campaign.goal.reward_range
            if not low <= reward <= high:
                raise InvalidArgument(
                    "reward", f"must be in [{low:g}, {high:g}] for campaign {campaign_name} "
                    "(from -max(opt_out_cost, goal value) to goal value × 10)"
                )
        if self.log_outcome is not None:
            user_id = self.pending.user_of(decision_id) or self._stored_user(decision_id)
            return self.log_outcome(user_id, decision_id, reward)
        return self.settle_logged(decision_id, reward)

    def settle_logged(
        self, decision_id: str, reward: float,
        position: Callable[[lmdb.Transaction], None] | None = None,
    ) -> Future[bool]:
        """Settle a decision in the next group commit (``position`` writes, in the same
        transaction, the log position this came from); the future says whether it was
        attributed (False when already settled) once durable, NotFound when unknown."""
        result: dict[str, Any] = {}

        def job(txn: lmdb.Transaction) -> None:
            if position is not None:
                position(txn)
            result["written"] = self.pending.write(txn)
            record = decision_table.get(txn, self.store.dbs, decision_id)
            if record is None:
                result["missing"] = True
                return
            result["attributed"] = settle(txn, self.store, record, reward)
            result["record"] = record

        future: Future[bool] = Future()

        def done(committed: Future[None]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
                return
            self.pending.stored(result["written"])  # the next flush need not repeat it
            if result.get("missing"):
                future.set_exception(NotFound(f"decision_id: {decision_id!r} is unknown"))
            else:
                if result.get("attributed"):
                    self.pending.settled([result["record"]])
                    self.on_settled()
                future.set_result(bool(result.get("attributed")))

        self.writer.submit_job(job).add_done_callback(done)
        return future

    def _stored_user(self, decision_id: str) -> str:
        with self.store.read() as txn:
            found = decision_table.get_meta(txn, self.store.dbs, decision_id)
        if found is None:
            raise NotFound(f"decision_id: {decision_id!r} is unknown")
        return str(found["user_id"])

    def _stored(self, decision_id: str) -> str | None:
        """The campaign of a stored decision, None when it is not stored. On a shared store
        the decision may have been made by another worker a moment ago and still await
        its flush (milliseconds): look again for a short while before calling it unknown."""
        deadline = time.monotonic() + (OTHER_WORKER_FLUSH_GRACE if self.store.shared else 0.0)
        while True:
            with self.store.read() as txn:
                found = decision_table.get_meta(txn, self.store.dbs, decision_id)
            if found is not None:
                return str(found["campaign"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def _on_events(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        """Goal events settle the user's open decisions of campaigns with that goal; a
        consent revoked for a decision's channel settles it with the campaign's
        opt-out cost (when it has one)."""
        if set(map(_TYPE, events)).isdisjoint(self._goal_types) and not (
                self._opt_out_costs and any(map(_CONSENTS, events))):
            return None  # no goal event and no consent: nothing to settle
        goals = [ev for ev in events
                 if ev.type in self._goal_types or (self._opt_out_costs and ev.consents
                                                    and not all(ev.consents.values()))]
        if not goals:
            return None
        written = self.pending.write(txn)
        settled: list[DecisionRecord] = []
        dbs = self.store.dbs
        for ev in goals:
            revoked = {c for c, granted in ev.consents.items() if not granted}
            for decision_id in open_decisions.of_user(txn, dbs, ev.user_id):
                record = decision_table.get(txn, dbs, decision_id)
                if record is None:
                    continue
                campaign = self.campaigns.get(record.campaign)
                if campaign is None or not record.time <= ev.time <= record.window_end:
                    continue
                if ev.type in campaign.goal.events:
                    reward = campaign.goal.value
                elif (campaign.goal.opt_out_cost and record.actions
                      and record.actions[0]["channel"] in revoked):
                    reward = -campaign.goal.opt_out_cost
                else:
                    continue
                if settle(txn, self.store, record, reward):
                    settled.append(record)

        def after() -> None:
            self.pending.stored(written)
            if settled:
                self.pending.settled(settled)
                self.on_settled()

        return after
