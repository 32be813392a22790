"""RiskService end to end on a real server and store."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.v1 import risk_service_pb2 as pb

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR = 3_600.0
DAY = 86_400.0


def habit(user: str, n: int = 30, start: float = T0) -> list[pb.Transaction]:
    """A user who buys groceries in Brazil around noon, local time, on one phone."""
    return [
        make_transaction(user, 40.0 + (i % 5) * 3, transaction_id=f"{user}-h{i}", currency="BRL",
                         merchant_category="5411", country="BR", channel="card_present",
                         device_id="phone-1", time=start + i * DAY + 15 * HOUR)
        for i in range(n)
    ]


def takeover(user: str, k: int, start: float) -> pb.Transaction:
    return make_transaction(user, 2_500.0, transaction_id=f"{user}-ato{k}", currency="BRL",
                            merchant_category="5732", country="NG", channel="ecommerce",
                            device_id=f"laptop-{k}", time=start + k * 300)


def codes(reply) -> set[str]:
    return {r.code for r in reply.reasons}


@pytest.fixture
def profiled(client: Client) -> Client:
    client.track([make_event("alice", "profile", strings={"tz": "America/Sao_Paulo"},
                             time=T0)])
    client.score_transactions(habit("alice"))
    return client


def test_normal_transaction_scores_low_and_takeover_high(profiled: Client) -> None:
    normal = profiled.score_transaction(habit("alice", 31)[-1])
    assert normal.score < 0.3 and not normal.held
    assert normal.baseline_count == 30
    odd = profiled.score_transaction(takeover("alice", 0, T0 + 31 * DAY + 5 * HOUR))
    assert odd.score > 0.6 and odd.held
    assert {"AMOUNT_HIGH", "NEW_COUNTRY", "NEW_MERCHANT_CATEGORY"} <= codes(odd)
    by_code = {r.code: r for r in odd.reasons}
    assert by_code["NEW_COUNTRY"].detail == "first transaction in NG"
    assert "× this user's typical" in by_code["AMOUNT_HIGH"].detail
    assert all(r.weight > 0 for r in odd.reasons)
    assert [r.weight for r in odd.reasons] == sorted((r.weight for r in odd.reasons), reverse=True)


def test_guard_keeps_a_burst_out_of_the_baseline(profiled: Client) -> None:
    start = T0 + 31 * DAY + 5 * HOUR
    burst = [profiled.score_transaction(takeover("alice", k, start)) for k in range(4)]
    assert all(r.held for r in burst)
    # Had the first been learned, the rest would look normal; they stay anomalous.
    assert all(r.score > 0.6 for r in burst)
    assert burst[-1].baseline_count == 30


def test_labels_fold_genuine_in_once_and_keep_fraud_out(profiled: Client) -> None:
    start = T0 + 31 * DAY
    trip = make_transaction("alice", 300.0, transaction_id="trip", country="PT",
                            merchant_category="4511", device_id="phone-1", time=start)
    assert profiled.score_transaction(trip).held
    fraud = takeover("alice", 9, start + HOUR)
    assert profiled.score_transaction(fraud).held
    assert profiled.label_transaction("trip", "genuine", user_id="alice") is True
    assert profiled.label_transaction("trip", "genuine", user_id="alice") is True
    assert profiled.label_transaction(fraud.transaction_id, "fraud", user_id="alice") is False
    after = profiled.score_transaction(habit("alice", 33, T0 + DAY)[-1])
    assert after.baseline_count == 31  # the trip once, the fraud never


def test_retry_returns_the_same_answer_and_learns_once(profiled: Client) -> None:
    tx = habit("alice", 31)[-1]
    first = profiled.score_transaction(tx)
    again = profiled.score_transaction(tx)
    assert again == first
    nxt = profiled.score_transaction(habit("alice", 32)[-1])
    assert nxt.baseline_count == first.baseline_count + 1


def test_batch_equals_one_by_one(tmp_path: Path) -> None:
    history = habit("bob") + [takeover("bob", k, T0 + 30 * DAY) for k in range(3)]
    answers = []
    for name, one_by_one in (("batch", False), ("single", True)):
        srv = create_server(Config(port=0, data_dir=tmp_path / name))
        srv.start()
        try:
            with Client(f"127.0.0.1:{srv.port}") as c:
                if one_by_one:
                    answers.append([c.score_transaction(t) for t in history])
                else:
                    answers.append(c.score_transactions(history))
        finally:
            srv.stop()
    batch, single = answers
    assert [b.score for b in batch] == pytest.approx([s.score for s in single], abs=1e-12)
    assert [b.held for b in batch] == [s.held for s in single]
    assert [b.transaction_id for b in batch] == [t.transaction_id for t in history]


def test_cold_start_borrows_from_the_population(profiled: Client) -> None:
    first = profiled.score_transaction(habit("newbie", 1)[0])
    assert first.baseline_count == 0
    assert "COLD_START" in codes(first)


def test_track_transactions_update_the_same_baseline(client: Client) -> None:
    events = [
        make_event("dave", "transaction", event_id=f"d{i}", time=T0 + i * DAY,
                   numbers={"amount": 50.0}, strings={"country": "BR", "device_id": "p1",
                                                      "merchant_category": "5411"})
        for i in range(10)
    ]
    client.track(events)
    # Scoring an id already learned through Track returns its record, learning nothing.
    replay = make_transaction("dave", 50.0, transaction_id="d3", country="BR", time=T0 + 3 * DAY)
    assert client.score_transaction(replay).baseline_count == 3
    fresh = make_transaction("dave", 55.0, country="BR", device_id="p1",
                             merchant_category="5411", time=T0 + 11 * DAY)
    assert client.score_transaction(fresh).baseline_count == 10


def test_answers_survive_a_restart(data_dir: Path) -> None:
    srv = create_server(Config(port=0, data_dir=data_dir))
    srv.start()
    with Client(f"127.0.0.1:{srv.port}") as c:
        c.score_transactions(habit("erin"))
        odd = takeover("erin", 0, T0 + 40 * DAY)
        first = c.score_transaction(odd)
    srv.stop()
    srv = create_server(Config(port=0, data_dir=data_dir))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            assert c.score_transaction(odd) == first
            assert c.label_transaction(odd.transaction_id, "genuine", user_id=odd.user_id) is True
            after = c.score_transaction(habit("erin", 31)[-1])
            assert after.baseline_count == 31
    finally:
        srv.stop()


BAD = [
    (dict(transaction_id=""), "transaction.transaction_id: must not be empty"),
    (dict(user_id=""), "transaction.user_id: must not be empty"),
    (dict(amount=-1.0), "transaction.amount: must not be negative"),
    (dict(amount=math.nan), "transaction.amount: must be finite"),
    (dict(amount=math.inf), "transaction.amount: must be finite"),
    (dict(amount=1.7e308), "transaction.amount: must be at most 1e+18"),
    (dict(currency="usd"), "transaction.currency: must be an ISO 4217 code"),
    (dict(country="Brazil"), "transaction.country: must be an ISO 3166-1 alpha-2"),
    (dict(device_id="d" * 129), "transaction.device_id: must be at most 128 bytes"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_transactions_are_rejected_and_change_nothing(
    server: NudgeServer, profiled: Client, fields: dict, message: str
) -> None:
    before = profiled.score_transaction(habit("alice", 31)[-1])
    tx = make_transaction("alice", 10.0, transaction_id="bad", country="BR", time=T0 + 31 * DAY)
    for name, value in fields.items():
        setattr(tx, name, value)
    with pytest.raises(grpc.RpcError) as err:
        profiled.score_transaction(tx)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        profiled.score_transactions([habit("alice", 32)[-1], tx])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message.replace("transaction.", "transactions[1].") in err.value.details()
    after = profiled.score_transaction(habit("alice", 32)[-1])
    assert after.baseline_count == before.baseline_count + 1


def test_transaction_ids_are_per_user_and_reveal_nothing(profiled: Client) -> None:
    # Another client (a track token) pre-registers alice's next id for mallory: alice's
    # authorisation is scored as usual and learns nothing of mallory's.
    profiled.track([make_event("mallory", "transaction", numbers={"amount": 5.0},
                               strings={"transaction_id": "alice-next"})])
    own = make_transaction("alice", 20.0, transaction_id="alice-next", time=T0 + 31 * DAY)
    reply = profiled.score_transaction(own)
    assert reply.baseline_count == 30
    stolen = make_transaction("mallory", 10.0, transaction_id="alice-h3", time=T0)
    assert profiled.score_transaction(stolen).baseline_count <= 1
    assert profiled.label_transaction("alice-next", "genuine", user_id="alice") is not None
    with pytest.raises(grpc.RpcError) as err:
        profiled.label_transaction("alice-h3", "fraud", user_id="nobody")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_label_errors(profiled: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        profiled.label_transaction("never-scored", "fraud", user_id="alice")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    request = pb.LabelTransactionRequest(transaction_id="alice-h1", user_id="alice")
    with pytest.raises(grpc.RpcError) as err:
        profiled.risk.LabelTransaction(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        profiled.risk.ScoreTransaction(pb.ScoreTransactionRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "transaction: is required" in err.value.details()


# --- the calibrated model: holds that end, labels that train, backfill ------------------

HOLD = 7 * DAY


def population_of_homebodies(client: Client, n: int = 40, days: int = 25) -> None:
    """Customers at home in BR (each on their own phone), loaded as history (backfill)."""
    history = []
    for u in range(n):
        history += [
            make_transaction(f"home{u}", 30.0 + (i * 7 + u) % 40, transaction_id=f"home{u}-{i}",
                             merchant_category=("5411", "5812", "5541")[i % 3], country="BR",
                             channel="card_present", device_id=f"phone-{u}",
                             time=T0 + i * DAY + (10 + u % 8) * HOUR)
            for i in range(days)
        ]
    history.sort(key=lambda t: t.time.seconds)
    for i in range(0, len(history), 500):
        client.score_transactions(history[i:i + 500], learn_only=True)


def learned_count(server: NudgeServer, user: str) -> int:
    from nudge.kernels.risk_model import U_N

    state = server.risk.baseline(user)
    return -1 if state is None else int(state[U_N])


def wait_for(predicate, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_score_is_a_probability(profiled: Client) -> None:
    start = T0 + 31 * DAY
    answers = profiled.score_transactions(
        habit("alice", 40, T0)[31:] + [takeover("alice", k, start + 5 * HOUR) for k in range(3)]
    )
    assert all(0.0 <= a.score <= 1.0 for a in answers)
    assert max(a.score for a in answers[:9]) < 0.05  # her habits: far below any threshold
    assert min(a.score for a in answers[9:]) > 0.5


def test_first_transaction_abroad_of_a_new_customer_is_not_alarming(client: Client) -> None:
    population_of_homebodies(client)
    first = client.score_transaction(make_transaction(
        "newcomer", 45.0, transaction_id="newcomer-1", merchant_category="5411", country="PT",
        channel="card_present", device_id="phone-n", time=T0 + 26 * DAY + 12 * HOUR))
    assert first.baseline_count == 0
    assert first.score < 0.05 and not first.held
    assert "COLD_START" in codes(first)
    assert all("weak: only 0 earlier transactions" in r.detail
               for r in first.reasons if r.code != "COLD_START")


def test_learn_only_backfill_makes_a_customer_warm(server: NudgeServer, client: Client) -> None:
    population_of_homebodies(client, n=20)
    history = habit("gina", 30)
    history.append(make_transaction("gina", 900.0, transaction_id="gina-tv", country="BR",
                                    merchant_category="5732", device_id="phone-1",
                                    time=T0 + 29 * DAY + 20 * HOUR))
    answers = client.score_transactions(history, learn_only=True)
    assert not any(a.held for a in answers) and not any(a.reasons for a in answers)
    assert learned_count(server, "gina") == 31
    assert server.risk.transaction("gina", "gina-tv").learned_by == "backfill"
    # warm: her habit is unremarkable, a takeover is not
    normal = client.score_transaction(habit("gina", 32)[-1])
    assert normal.baseline_count == 31 and not normal.held and normal.score < 0.05
    assert not any(r.code == "COLD_START" for r in normal.reasons)
    assert client.score_transaction(takeover("gina", 0, T0 + 33 * DAY)).held


def test_hold_expires_into_the_profile_once(server: NudgeServer, profiled: Client) -> None:
    t_hold = T0 + 31 * DAY + 5 * HOUR
    odd = takeover("alice", 0, t_hold)
    assert profiled.score_transaction(odd).held
    assert learned_count(server, "alice") == 30
    # event time moves on past the hold delay: the next pass folds the hold in as genuine
    later = habit("alice", 40)[-1]
    later.time.FromSeconds(int(t_hold + HOLD + HOUR))
    assert not profiled.score_transaction(later).held
    assert wait_for(lambda: learned_count(server, "alice") == 32)  # `later`, then the hold
    assert server.risk.expire_holds() == 0
    record = server.risk.transaction("alice", odd.transaction_id)
    assert record.in_baseline and record.learned_by == "hold_expiry"
    # FRAUD after expiry: recorded and trains the takeover model; the profile keeps it
    from nudge.kernels.risk_model import HOURS, P_FR_HOUR

    frauds = server.risk.population()[P_FR_HOUR:P_FR_HOUR + HOURS].sum()
    for _ in range(2):  # a retry: recorded and trained once
        assert profiled.label_transaction(odd.transaction_id, "fraud", user_id="alice") is True
    assert server.risk.population()[P_FR_HOUR:P_FR_HOUR + HOURS].sum() == frauds + 1
    assert server.risk.transaction("alice", odd.transaction_id).label == "FRAUD"
    assert learned_count(server, "alice") == 32


def test_fraud_label_within_the_delay_keeps_the_hold_out_for_good(
    server: NudgeServer, profiled: Client
) -> None:
    t_hold = T0 + 31 * DAY
    assert profiled.score_transaction(takeover("alice", 1, t_hold)).held
    assert profiled.label_transaction("alice-ato1", "fraud", user_id="alice") is False
    later = habit("alice", 40)[-1]
    later.time.FromSeconds(int(t_hold + 2 * HOLD))
    profiled.score_transaction(later)
    server.risk.expire_holds()
    assert learned_count(server, "alice") == 31  # `later` only
    assert not server.risk.transaction("alice", "alice-ato1").in_baseline


def test_hold_expiry_is_exactly_once_across_restarts(data_dir: Path) -> None:
    t_hold = T0 + 31 * DAY
    odd = takeover("hana", 0, t_hold)
    later = habit("hana", 40)[-1]
    later.time.FromSeconds(int(t_hold + HOLD + HOUR))
    counts = []
    for step in range(3):
        srv = create_server(Config(port=0, data_dir=data_dir))
        srv.start()
        try:
            with Client(f"127.0.0.1:{srv.port}") as c:
                if step == 0:
                    c.score_transactions(habit("hana"))
                    assert c.score_transaction(odd).held
                elif step == 1:
                    c.score_transaction(later)
                    assert wait_for(lambda s=srv: learned_count(s, "hana") == 32)
                else:
                    assert c.score_transaction(later) is not None  # a retry: nothing new
                    srv.risk.expire_holds()
            counts.append(learned_count(srv, "hana"))
        finally:
            srv.stop()
    assert counts == [30, 32, 32]


def test_retries_learn_once(server: NudgeServer, profiled: Client) -> None:
    tx = habit("alice", 31)[-1]
    answers = profiled.score_transactions([tx, tx])
    assert answers[0] == answers[1]
    assert profiled.score_transactions([tx], learn_only=True)[0] == answers[0]
    profiled.track([make_event("alice", "transaction", event_id="ev-31", time=T0 + 30 * DAY,
                               numbers={"amount": 41.0},
                               strings={"transaction_id": tx.transaction_id, "country": "BR"})])
    assert learned_count(server, "alice") == 31
    trip = make_transaction("alice", 300.0, transaction_id="trip2", country="PT",
                            merchant_category="4511", device_id="phone-1", time=T0 + 32 * DAY)
    assert profiled.score_transaction(trip).held
    assert profiled.label_transaction("trip2", "genuine", user_id="alice") is True
    assert profiled.label_transaction("trip2", "genuine", user_id="alice") is True
    assert learned_count(server, "alice") == 32


def test_an_erased_customers_hold_leaves_the_index(server: NudgeServer, profiled: Client) -> None:
    from nudge.server.storage.tables import risk_baselines

    t_hold = T0 + 31 * DAY
    assert profiled.score_transaction(takeover("alice", 2, t_hold)).held
    profiled.erase_user("alice")
    later = habit("zoe", 1)[0]
    later.time.FromSeconds(int(t_hold + 2 * HOLD))
    profiled.score_transaction(later)
    assert server.risk.expire_holds() == 0  # the record went with the customer
    with server.store.read() as txn:
        assert not list(risk_baselines.holds_due(txn, server.store.dbs, float("inf")))


def test_a_takeover_episode_gives_its_reason(profiled: Client) -> None:
    """The second transaction of a takeover, minutes after a suspicious first one and
    repeating its device and country, is judged with it as one episode: TAKEOVER_EPISODE
    names the earlier transaction and what is repeated. A day later nothing carries over."""
    t = T0 + 31 * DAY + 15 * HOUR

    def attacker(k: int, when: float, amount: float) -> pb.Transaction:
        return make_transaction("alice", amount, transaction_id=f"alice-ep{k}",
                                currency="BRL", merchant_category="5732", country="BR",
                                channel="ecommerce", device_id="laptop-x", time=when)

    first = profiled.score_transaction(attacker(0, t, 60.0))
    second = profiled.score_transaction(attacker(1, t + 420, 55.0))
    by_code = {r.code: r for r in second.reasons}
    assert "TAKEOVER_EPISODE" in by_code, second.reasons
    assert by_code["TAKEOVER_EPISODE"].detail.startswith(
        "judged as one takeover episode with a transaction 7 minutes earlier (P(fraud) "
        f"{first.score:.2f}): same country")
    assert "device" in by_code["TAKEOVER_EPISODE"].detail
    later = profiled.score_transaction(attacker(2, t + 3 * DAY, 45.0))
    assert "TAKEOVER_EPISODE" not in codes(later)


def test_records_kept_before_the_amount_residual_still_label_and_fold(data_dir: Path) -> None:
    """A transaction record stored before the features carried the amount residual
    (``FEAT_LEN_V3`` values) is still the model's: a FRAUD label trains the takeover model
    but not its amount moments (the residual is unknown), a GENUINE label folds it in."""
    from nudge.kernels.risk_model import (
        FEAT_LEN,
        FEAT_LEN_V3,
        HOURS,
        P_FR_AMT_N,
        P_FR_HOUR,
    )
    from nudge.server.storage.tables import transactions

    t = T0 + 31 * DAY
    srv = create_server(Config(port=0, data_dir=data_dir))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            c.score_transactions(habit("ines"))
            assert c.score_transaction(takeover("ines", 0, t)).held
            assert c.score_transaction(takeover("ines", 1, t + DAY)).held
    finally:
        srv.stop()
    srv = create_server(Config(port=0, data_dir=data_dir))
    with srv.store.write() as txn:
        for k in (0, 1):
            key = ("ines", f"ines-ato{k}")
            record = transactions.get(txn, srv.store.dbs, key)
            assert record is not None and len(record.features) == FEAT_LEN
            record.features = record.features[:FEAT_LEN_V3]
            transactions.put(txn, srv.store.dbs, key, record)
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            before = srv.risk.population()
            assert c.label_transaction("ines-ato0", "fraud", user_id="ines") is False
            after = srv.risk.population()
            assert after[P_FR_HOUR:P_FR_HOUR + HOURS].sum() == (
                before[P_FR_HOUR:P_FR_HOUR + HOURS].sum() + 1)
            assert after[P_FR_AMT_N] == before[P_FR_AMT_N]
            assert learned_count(srv, "ines") == 30
            assert c.label_transaction("ines-ato1", "genuine", user_id="ines") is True
            assert learned_count(srv, "ines") == 31
    finally:
        srv.stop()
