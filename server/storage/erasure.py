"""Right to erasure: everything stored about one user goes, in one write transaction.

Deleted: the state record and profile, the logged events and their seen ids, the risk
baseline and held time, the insights summary, scored transactions, contacts, deliveries
(with their outbox and user indexes), recorded triggers, open decisions and their
deadlines. Kept, pseudonymised: decision records (the audit trail and the learner's input)
— their user id becomes ``erased_`` + an HMAC-SHA256 of it under a random key made for
this erasure and never stored, so the records of one erased user still group together but
nothing (not the server's ``pseudonymize_key``, not the raw id) links them back. An open
decision is closed (``final``): nothing will be attributed to a user who is gone.

Scored transactions are keyed by user, so the write job finds them all by prefix. The
event log and decisions have no index by user: they are scanned in a read transaction
first (not blocking writers), then the write job re-checks what it deletes and scans only
the events logged since. A decision stored between the scan and the job is not found:
erase a user no longer being served.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from dataclasses import dataclass

import lmdb

from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.tables import (
    contacts,
    deadlines,
    decisions,
    deliveries,
    events,
    insights,
    open_decisions,
    risk_baselines,
    transactions,
    triggered,
    users,
)
from nudge.server.storage.user_scan import user_records

ERASED_PREFIX = "erased_"


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed (records per kind) and how many decisions it kept
    pseudonymised."""

    deleted: dict[str, int]
    pseudonymised: int


def erasure_pseudonym(user_id: str) -> str:
    """A pseudonym no one can link back: the key is random and forgotten."""
    key = secrets.token_bytes(32)
    return ERASED_PREFIX + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def erase_user(writer: EventWriter, user_id: str) -> Erasure:
    """Erase ``user_id`` (as stored: the pseudonym when ids are pseudonymised). A big log
    is scanned in a child process (``user_scan``)."""
    store = writer.store
    dbs = store.dbs
    found = user_records(store, user_id)
    scanned_to, logged, decided = found.scanned_to, found.events, found.decisions
    pseudonym = erasure_pseudonym(user_id)

    def job(txn: lmdb.Transaction) -> Erasure:
        deleted: Counter[str] = Counter()
        held = writer.forget_cached(user_id)  # what waits in memory for a later commit
        if users.record(txn, dbs, user_id) is not None:
            deleted["users"] += 1
        users.delete(txn, dbs, user_id)
        for sequence in logged + events.of_user(txn, dbs, user_id, scanned_to):
            payload = events.get(txn, dbs, sequence)
            if payload is None:  # retention took it meanwhile
                continue
            deleted["seen"] += events.forget_seen(txn, dbs, sequence, payload)
            events.delete(txn, dbs, sequence)
            deleted["events"] += 1
        if risk_baselines.stored(txn, dbs, user_id):
            deleted["risk"] += 1
        risk_baselines.delete(txn, dbs, user_id)
        if insights.delete(txn, dbs, user_id) | ("insights" in held):
            deleted["insights"] += 1
        # Keyed by user: a prefix read inside the write finds every one, late ones too.
        for scored_key in transactions.of_user(txn, dbs, user_id):
            transactions.delete(txn, dbs, scored_key)
            deleted["transactions"] += 1
        if contacts.rows(txn, dbs, user_id):
            deleted["contacts"] += 1
        contacts.delete(txn, dbs, user_id)
        for delivery_id in deliveries.ids_of_user(txn, dbs, user_id):
            d = deliveries.get(txn, dbs, delivery_id)
            if d is not None:
                deliveries.delete(txn, dbs, d)
                deleted["deliveries"] += 1
        for key in triggered.of_user(txn, dbs, user_id):
            triggered.delete(txn, dbs, key)
            deleted["triggered"] += 1
        still_open = open_decisions.of_user(txn, dbs, user_id)
        for decision_id in still_open:
            open_decisions.remove(txn, dbs, user_id, decision_id)
            record = decisions.get(txn, dbs, decision_id)
            if record is not None:
                deadlines.remove(txn, dbs, record.window_end, decision_id)
            deleted["open"] += 1
        kept = decisions.pseudonymise(txn, dbs, sorted({*decided, *still_open}), user_id,
                                      pseudonym)
        return Erasure({k: v for k, v in deleted.items() if v}, kept)

    return writer.submit_job(job).result()
