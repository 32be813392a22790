"""Event-triggered journeys: a trigger event becomes a decision, the decision becomes
scheduled deliveries in the one outbox, and the goal (or a cancelling event) arriving
first cancels them.

Inside the Track commit that stores a trigger event, the trigger is recorded in the
``triggered`` database (durable with the event). A worker thread then decides — it needs
the committed state — schedules the chosen action inside the trigger's window (never in
quiet hours: the campaign's guardrails mask those slots), and deletes the record in the
same commit. After a crash, leftover records are processed on start.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from operator import attrgetter
from typing import Any

import lmdb

from nudge.server.clock import Clock
from nudge.server.decisions.campaign import Campaign
from nudge.server.decisions.engine import DecideInput, DecisionEngine
from nudge.server.decisions.outbox import Delivery, Outbox, new_delivery_id
from nudge.server.decisions.triggers import Trigger
from nudge.server.errors import NudgeError
from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import triggered

log = logging.getLogger(__name__)
# The type of every event of a commit, read by a C-level getter (the Track hook).
_TYPE = attrgetter("type")
ALTERNATIVES = 16
# Cluster mode: how long storing a journey may wait for the log and the owner's apply.
LOGGED_JOURNEY_TIMEOUT_SECONDS = 20.0


def campaign_triggers(campaigns: dict[str, Campaign]) -> list[Trigger]:
    """The triggers of these campaigns (parsed with each campaign, from the same file
    read)."""
    return [t for campaign in campaigns.values() for t in campaign.triggers]


class Journeys:
    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        decisions: DecisionEngine,
        outbox: Outbox,
        triggers: list[Trigger],
        clock: Clock,
    ) -> None:
        self.store = store
        self.writer = writer
        self.decisions = decisions
        self.outbox = outbox
        self.clock = clock
        self._set_triggers(triggers)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._process_lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        # Cluster mode: only triggers of users whose partition this node serves are
        # decided here, and a journey's deliveries (with the trigger they answer) go
        # through the replicated log: ``log_scheduled(user_id, journey)`` resolves once
        # this node, the owner, applied them, so the trigger is gone before the next pass
        # and a new owner replaying the log schedules the same deliveries, never others.
        self.serves: Callable[[str], bool] = lambda _user_id: True
        self.log_scheduled: Callable[[str, dict[str, Any]], Future[Any]] | None = None
        writer.add_event_hook(self._on_events)
        self._thread = threading.Thread(target=self._run, name="nudge-journeys", daemon=True)

    def _set_triggers(self, triggers: list[Trigger]) -> None:
        by_event: dict[str, list[Trigger]] = defaultdict(list)
        for t in triggers:
            by_event[t.event].append(t)
        # One tuple, swapped whole: the Track hook reads it without a lock.
        self._index = (
            list(triggers), dict(by_event), {e for t in triggers for e in t.cancel_on},
            {t.key: t for t in triggers},
        )

    @property
    def triggers(self) -> list[Trigger]:
        return self._index[0]

    def replace_triggers(self, triggers: list[Trigger]) -> None:
        """Use the triggers of reloaded campaigns. Recorded triggers are looked up by
        campaign and position when decided, so the ones waiting keep their meaning."""
        with self._process_lock:
            self._set_triggers(triggers)

    def start(self) -> None:
        self._wake.set()  # leftovers from before a restart
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- inside the Track commit ----------------------------------------------------------

    def _on_events(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        fired = cancelled = 0
        _, by_event, cancel_types, _ = self._index
        types = set(map(_TYPE, events))
        if types.isdisjoint(cancel_types) and types.isdisjoint(by_event):
            return None  # no event of a type that fires or cancels a journey
        for ev in events:
            if ev.type in cancel_types:
                cancelled += self.outbox.cancel_for_event(txn, ev.user_id, ev.type)
            for i, trigger in enumerate(by_event.get(ev.type, ())):
                if trigger.matches(ev.type, ev.numbers, ev.strings):
                    record = {"campaign": trigger.campaign, "index": trigger.index,
                              "user": ev.user_id, "time": ev.time, "event": ev.event_id}
                    triggered.put(txn, self.store.dbs, ev.user_id, ev.event_id, i, record)
                    fired += 1
        if not fired and not cancelled:
            return None
        return self._wake.set

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self.process()
            except Exception:
                log.exception("journey processing failed; will retry")

    def process(self) -> int:
        """Decide and schedule every recorded trigger; returns how many were handled.

        One caller at a time (the worker, or a test or demo driving simulated time), so
        no trigger is decided twice."""
        with self._process_lock:
            return self._process()

    def _process(self) -> int:
        with self.store.read() as txn:
            pending = triggered.pending(txn, self.store.dbs)
        for key, record in pending:
            if not self.serves(str(record.get("user", ""))):
                continue  # another node's partition (cluster): its owner decides it
            # One trigger never blocks another: one that cannot be decided for an
            # unexpected reason is dropped (logged, counted); one the store refused stays
            # recorded for the next pass.
            trigger = self._trigger_of(record)
            try:
                deliveries = [] if trigger is None else self._plan(trigger, record)
            except Exception:
                self.failed += 1
                log.exception("a journey of %s could not be decided; its trigger is dropped",
                              record.get("campaign", "a campaign"))
                deliveries = []

            def job(txn: lmdb.Transaction, key: bytes = key,
                    deliveries: list[Delivery] = deliveries) -> None:
                self.outbox.schedule(txn, deliveries)
                triggered.delete(txn, self.store.dbs, key)

            try:
                if self.log_scheduled is not None:
                    journey = {"key": key.hex(),
                               "deliveries": [d.to_bytes().decode() for d in deliveries]}
                    self.log_scheduled(str(record.get("user", "")), journey).result(
                        LOGGED_JOURNEY_TIMEOUT_SECONDS)
                else:
                    self.writer.submit_job(job).result()
            except NudgeError as exc:
                log.warning("a journey could not be stored, kept for the next pass: %s",
                            exc.message)
                continue
            self.processed += 1
        if pending:
            self.outbox.notify()
        return len(pending)

    def _trigger_of(self, record: dict) -> Trigger | None:
        """The trigger a record was made by; None when its campaign (or that trigger) was
        removed by a reload since: the record is then dropped, with a warning."""
        triggers, _, _, by_key = self._index
        if "campaign" in record:
            trigger = by_key.get((record["campaign"], int(record["index"])))
        else:  # recorded by an earlier version: a position in the list of all triggers
            position = int(record["trigger"])
            trigger = triggers[position] if position < len(triggers) else None
        if trigger is None:
            log.warning("a recorded trigger of %s no longer exists; dropped",
                        record.get("campaign", "a removed campaign"))
        return trigger

    def _plan(self, trigger: Trigger, record: dict) -> list[Delivery]:
        user_id, at = record["user"], float(record["time"])
        window_end = at + trigger.window_seconds
        if self._already_done(user_id, trigger, at):
            return []
        try:
            outcome = self.decisions.decide(
                DecideInput(user_id, trigger.campaign, at, ALTERNATIVES, {}, {}, False,
                            send_until=window_end)
            )
        except NudgeError as exc:
            log.warning("journey of %s in %s not decided: %s", "a user", trigger.campaign,
                        exc.message)
            return []
        in_window = [a for a in outcome.actions if at <= a.send_at <= window_end]
        if not in_window:
            return []
        first = in_window[0]
        # Fallbacks after a failed send: the best remaining action on each other channel.
        alternatives: list[dict] = []
        channels = {first.channel}
        for a in in_window[1:]:
            if a.channel not in channels:
                channels.add(a.channel)
                alternatives.append(dict(a.__dict__))
        campaign = self.decisions.campaigns[trigger.campaign]
        frequency = next(f for f in campaign.frequencies if f.name == first.frequency)
        return [
            Delivery(
                delivery_id=new_delivery_id(), decision_id=outcome.decision_id, user_id=user_id,
                campaign=trigger.campaign, channel=first.channel, message=first.message,
                text=first.text, offer=first.offer, due_at=due, alternatives=alternatives,
                cancel_on=list(trigger.cancel_on),
                consent_checked=campaign.guardrails.consent,
                quiet_hours=(list(campaign.guardrails.quiet_hours)
                             if campaign.guardrails.quiet_hours is not None else None),
            )
            for due in frequency.send_times(max(first.send_at, self.clock.now()), window_end)
        ]

    def _already_done(self, user_id: str, trigger: Trigger, at: float) -> bool:
        """The goal (or a cancelling event) already happened after the trigger."""
        view = self.store.get_user(user_id)
        if view is None:
            return False
        for event_type in trigger.cancel_on:
            slot = self.store.type_slots.get(event_type)
            if slot is not None and view.type_last[slot] >= at and view.totals[slot] > 0:
                return True
        return False



