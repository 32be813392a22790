"""Triggered journeys and the coordinated outbox, end to end in simulated time."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import orjson
import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.server.decisions.campaign import shipped_campaigns_dir
from nudge.server.decisions.guardrails import in_holdout
from nudge.server.decisions.outbox import Delivery, new_delivery_id, quiet_until
from nudge.v1 import delivery_service_pb2 as dpb
from nudge.v1 import delivery_service_pb2_grpc as dgrpc

SAO_PAULO = "America/Sao_Paulo"
TOML = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text().replace(
    'algorithm = "squarecb"', 'algorithm = "squarecb"\nnothing_arm = false'
)
CONSENTS = {f"consent.{c}": "granted" for c in ("push", "whatsapp", "sms", "email")}


def tuesday_22h(zone: str) -> float:
    return datetime(2026, 11, 24, 22, 0, tzinfo=ZoneInfo(zone)).timestamp()


class Running:
    def __init__(self, tmp: Path, clock: ManualClock, toml: str = TOML, **config) -> None:
        campaigns = tmp / "campaigns"
        campaigns.mkdir(exist_ok=True)
        (campaigns / "loan.toml").write_text(toml)
        self.clock = clock
        self.server: NudgeServer = create_server(
            Config(port=0, data_dir=tmp / "data", campaigns_dir=campaigns, **config), clock=clock
        )
        self.server.start()
        self.client = Client(f"127.0.0.1:{self.server.port}")
        self.stub = dgrpc.DeliveryServiceStub(self.client.channel)
        self.received: queue.Queue[dpb.Delivery] = queue.Queue()
        self._streams: list[grpc.Future] = []

    def abandon(self, user: str, zone: str = SAO_PAULO, step: str = "documentation",
                **strings: str) -> None:
        at = self.clock.now()
        self.client.track([
            make_event(user, "profile", time=at - 2, strings={"tz": zone, **strings}),
            make_event(user, "loan_simulated", time=at - 1, numbers={"amount": 5000.0},
                       strings={"currency": "USD"}),
            make_event(user, "flow_abandoned", time=at,
                       strings={"flow": "personal_loan", "step": step}),
        ])
        self.server.journeys.process()

    def listen(self, *channels: str, lease_seconds: int = 60) -> None:
        stream = self.stub.StreamDeliveries(dpb.StreamDeliveriesRequest(
            channels=list(channels), adapter_id="test", lease_seconds=lease_seconds))
        self._streams.append(stream)

        def pump() -> None:
            try:
                for reply in stream:
                    self.received.put(reply.delivery)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.server.outbox.notify()

    def take(self, timeout: float = 2.0) -> dpb.Delivery | None:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, delivery_id: str, sent: bool = True) -> dpb.AckDeliveryResponse:
        status = dpb.DELIVERY_STATUS_SENT if sent else dpb.DELIVERY_STATUS_FAILED
        return self.stub.AckDelivery(dpb.AckDeliveryRequest(delivery_id=delivery_id,
                                                            status=status))

    def close(self) -> None:
        for stream in self._streams:
            stream.cancel()
        self.client.close()
        self.server.stop()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path, ManualClock(tuesday_22h(SAO_PAULO)))
    yield r
    r.close()


def scheduled(r: Running, user: str) -> list[Delivery]:
    with r.server.store.read() as txn:
        return r.server.outbox.user_deliveries(txn, user)


def test_trigger_conditions_match_and_do_not_match(run: Running) -> None:
    run.abandon("match", **CONSENTS)
    run.abandon("other-step", step="identity", **CONSENTS)
    assert len(scheduled(run, "match")) >= 1
    assert scheduled(run, "other-step") == []


@pytest.mark.parametrize("zone", [SAO_PAULO, "Asia/Tokyo", "Europe/Lisbon"])
def test_scheduled_inside_the_window_and_outside_quiet_hours(tmp_path: Path, zone: str) -> None:
    r = Running(tmp_path, ManualClock(tuesday_22h(zone)))
    try:
        r.abandon("u", zone=zone, **CONSENTS)
        deliveries = scheduled(r, "u")
        assert deliveries
        start = r.clock.now()
        for d in deliveries:
            local = datetime.fromtimestamp(d.due_at, ZoneInfo(zone))
            assert 8 <= local.hour < 21, local
            assert start <= d.due_at <= start + 24 * 3600
    finally:
        r.close()


def test_adapter_receives_exactly_what_is_due_and_acks(run: Running) -> None:
    run.abandon("ana", **CONSENTS)
    (first, *_) = sorted(scheduled(run, "ana"), key=lambda d: d.due_at)
    run.listen()
    assert run.take(0.5) is None  # 22:00, quiet hours: nothing is due yet
    run.advance(first.due_at - run.clock.now() + 1)
    got = run.take()
    assert got is not None and got.delivery_id == first.delivery_id and got.attempt == 1
    assert "USD 5,000" in got.text or "advisor" in got.text
    assert run.ack(got.delivery_id).fallback_delivery_id == ""
    assert run.server.outbox.get(got.delivery_id).status == "sent"
    assert run.ack(got.delivery_id).fallback_delivery_id == ""  # a retried ack is fine


def test_unacknowledged_lease_expires_and_is_redelivered(run: Running) -> None:
    run.abandon("ana", **CONSENTS)
    due = min(d.due_at for d in scheduled(run, "ana"))
    run.listen(lease_seconds=30)
    run.advance(due - run.clock.now() + 1)
    first = run.take()
    assert first is not None and first.attempt == 1
    run.advance(31)
    again = run.take()
    assert again is not None and again.delivery_id == first.delivery_id and again.attempt == 2


def test_consent_revoked_after_the_decision_cancels_its_deliveries(run: Running) -> None:
    # A journey's messages go out hours or days after its decision checked consent: a
    # revocation in between must stop them (until 2026-12-03 they went out).
    run.abandon("ana", **CONSENTS)
    planned = sorted(scheduled(run, "ana"), key=lambda d: d.due_at)
    assert planned and all(d.consent_checked for d in planned)
    channel = planned[0].channel
    run.client.track([make_event("ana", "profile", time=run.clock.now(),
                                 strings={f"consent.{channel}": "revoked"})])
    run.listen()
    run.advance(planned[-1].due_at - run.clock.now() + 1)
    assert run.take(0.5) is None
    after = {d.delivery_id: d for d in scheduled(run, "ana")}
    assert {after[d.delivery_id].status for d in planned} == {"cancelled"}
    assert all("no consent" in after[d.delivery_id].detail for d in planned)
    assert stored_contacts(run, "ana") == []  # a message that will not go out stops counting


def test_consent_kept_lets_the_delivery_go_and_old_records_go_as_before(run: Running) -> None:
    run.abandon("bruno", **CONSENTS)
    first = min(scheduled(run, "bruno"), key=lambda d: d.due_at)
    # A delivery stored before the field existed (no consent_checked): goes out unchecked.
    outbox, now = run.server.outbox, run.clock.now()
    old = Delivery(new_delivery_id(), "d", "gil", "loan", "sms", "m", "hello", "none", now)
    assert old.consent_checked is False
    run.server.writer.submit_job(lambda txn: outbox.schedule(txn, [old])).result()
    run.listen()
    got_old = run.take()
    assert got_old is not None and got_old.delivery_id == old.delivery_id  # no consent record
    run.ack(got_old.delivery_id)
    run.advance(first.due_at - run.clock.now() + 1)
    got = run.take()
    assert got is not None and got.delivery_id == first.delivery_id


def stored_contacts(r: Running, user: str) -> list[tuple[float, str]]:
    r.server.decisions.flush()
    with r.server.store.read() as txn:
        raw = txn.get(user.encode(), db=r.server.store.dbs["contacts"])
    return sorted((c[0], c[1]) for c in orjson.loads(raw)) if raw is not None else []


def test_goal_first_cancels_and_nothing_is_ever_streamed(run: Running) -> None:
    run.abandon("bruno", **CONSENTS)
    planned = sorted((d.due_at, d.channel) for d in scheduled(run, "bruno"))
    assert stored_contacts(run, "bruno") == planned  # the caps count what is planned
    run.clock.advance(1800)
    run.client.track([make_event("bruno", "loan_completed", time=run.clock.now())])
    assert {d.status for d in scheduled(run, "bruno")} == {"cancelled"}
    assert stored_contacts(run, "bruno") == []  # … and stop counting what will not go out
    run.listen()
    run.advance(24 * 3600)
    assert run.take(0.5) is None


def test_cancellation_racing_a_leased_delivery_is_never_both(run: Running) -> None:
    run.abandon("ana", **CONSENTS)
    run.abandon("bia", **CONSENTS)
    due = max(d.due_at for u in ("ana", "bia") for d in scheduled(run, u))
    run.listen(lease_seconds=30)
    run.advance(due - run.clock.now() + 1)
    leased = {run.take().user_id: None for _ in range(2)}
    assert set(leased) == {"ana", "bia"}
    for user in ("ana", "bia"):
        run.client.track([make_event(user, "loan_completed", time=run.clock.now())])
    ana_id = next(d.delivery_id for d in scheduled(run, "ana") if d.status == "leased")
    run.ack(ana_id)  # ana's adapter had already sent it: that stands
    run.advance(31)  # bia's lease expires unacknowledged: cancelled, not redelivered
    assert run.take(0.5) is None
    states = {u: {d.status for d in scheduled(run, u) if d.attempt} for u in ("ana", "bia")}
    assert states == {"ana": {"sent"}, "bia": {"cancelled"}}
    with pytest.raises(grpc.RpcError) as err:
        run.ack(next(d.delivery_id for d in scheduled(run, "bia") if d.attempt))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


SMALL_TOML = TOML.replace(
    "[frequencies]\nonce = { count = 1 }\ntwice = { count = 2, gap_hours = 24 }",
    "[frequencies]\nonce = { count = 1 }",
).replace(
    'none = {}\nrate_discount = { credit = true }\nfee_waiver = { credit = true }', 'none = {}'
)


def test_failed_delivery_falls_back_to_another_channel(tmp_path: Path) -> None:
    # A small campaign: the decision's top actions then span several channels.
    run = Running(tmp_path, ManualClock(tuesday_22h(SAO_PAULO)), toml=SMALL_TOML)
    try:
        _fall_back(run)
    finally:
        run.close()


def _fall_back(run: Running) -> None:
    run.abandon("carla", **CONSENTS)
    due = min(d.due_at for d in scheduled(run, "carla"))
    run.listen()
    run.advance(due - run.clock.now() + 1)
    first = run.take()
    fallback = run.ack(first.delivery_id, sent=False).fallback_delivery_id
    assert fallback
    second = run.take()
    assert second is not None and second.delivery_id == fallback
    assert second.channel != first.channel
    # The caps count the fallback's message, not the failed one.
    channels = [c for _, c in stored_contacts(run, "carla")]
    assert second.channel in channels and first.channel not in channels
    # Every channel failing in turn: nothing reached the user, nothing counts.
    current = second
    while next_id := run.ack(current.delivery_id, sent=False).fallback_delivery_id:
        current = run.take()
        assert current is not None and current.delivery_id == next_id
    assert stored_contacts(run, "carla") == []


def test_cross_channel_gap_holds_across_channels(run: Running) -> None:
    outbox = run.server.outbox
    now = run.clock.now()
    pair = [Delivery(new_delivery_id(), "d", "dora", campaign, channel, "m", "hello", "none",
                     now) for campaign, channel in (("a", "push"), ("b", "email"))]
    run.server.writer.submit_job(lambda txn: outbox.schedule(txn, pair)).result()
    run.listen()
    first = run.take()
    run.ack(first.delivery_id)
    assert run.take(0.5) is None  # the other one waits out the gap
    run.advance(3_601)
    second = run.take()
    assert second is not None and second.channel != first.channel


def test_a_delivery_the_gap_moves_into_quiet_hours_waits_for_their_end(tmp_path: Path) -> None:
    # 20:30 in São Paulo: the first goes out, the gap moves the second to 21:30, inside the
    # 21:00-08:00 quiet hours; it went out then until 2026-12-03.
    start = datetime(2026, 11, 24, 20, 30, tzinfo=ZoneInfo(SAO_PAULO)).timestamp()
    run = Running(tmp_path, ManualClock(start))
    try:
        run.client.track([make_event("hana", "profile", time=start - 5,
                                     strings={"tz": SAO_PAULO})])
        outbox = run.server.outbox
        pair = [Delivery(new_delivery_id(), "d", "hana", campaign, channel, "m", "hi", "none",
                         start, quiet_hours=[21 * 60, 8 * 60])
                for campaign, channel in (("a", "push"), ("b", "email"))]
        run.server.writer.submit_job(lambda txn: outbox.schedule(txn, pair)).result()
        run.listen()
        first = run.take()
        assert first is not None
        run.ack(first.delivery_id)
        run.advance(3_601)  # 21:30: the gap is over, the quiet hours are not
        assert run.take(0.5) is None
        (other,) = [d for d in scheduled(run, "hana") if d.delivery_id != first.delivery_id]
        assert other.status == "scheduled"
        assert datetime.fromtimestamp(other.due_at, ZoneInfo(SAO_PAULO)).strftime(
            "%d %H:%M") == "25 08:00"
        run.advance(other.due_at - run.clock.now() + 1)
        second = run.take()
        assert second is not None and second.delivery_id == other.delivery_id
    finally:
        run.close()


@pytest.mark.parametrize(("local", "zone", "want"), [
    ("2026-11-24 22:00", SAO_PAULO, "2026-11-25 08:00"),
    ("2026-11-25 07:59", SAO_PAULO, "2026-11-25 08:00"),
    ("2026-11-25 08:00", SAO_PAULO, None),
    ("2026-11-24 20:59", SAO_PAULO, None),
    ("2026-03-29 01:30", "Europe/Paris", "2026-03-29 08:00"),  # the night clocks go forward
    ("2026-10-25 02:30", "Europe/Paris", "2026-10-25 08:00"),  # ... and back
    ("2026-11-24 23:00", "Asia/Kathmandu", "2026-11-25 08:00"),
])
def test_quiet_until_in_the_user_s_zone(local: str, zone: str, want: str | None) -> None:
    at = datetime.strptime(local, "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo(zone))
    got = quiet_until(at.timestamp(), zone, [21 * 60, 8 * 60])
    assert (None if got is None else datetime.fromtimestamp(got, ZoneInfo(zone)).strftime(
        "%Y-%m-%d %H:%M")) == want
    # A daytime window that does not wrap midnight.
    assert quiet_until(at.timestamp(), zone, [0, 1]) is None or at.hour == 0


def test_pending_deliveries_survive_a_restart_once(tmp_path: Path) -> None:
    clock = ManualClock(tuesday_22h(SAO_PAULO))
    r = Running(tmp_path, clock)
    r.abandon("ana", **CONSENTS)
    r.abandon("bia", **CONSENTS)
    due = max(d.due_at for u in ("ana", "bia") for d in scheduled(r, u))
    r.listen(lease_seconds=30)
    r.advance(due - clock.now() + 1)
    got = [r.take(), r.take()]
    r.ack(got[0].delivery_id)
    r.close()
    r = Running(tmp_path, clock)
    try:
        r.listen(lease_seconds=30)
        assert r.take(0.5) is None  # the other is leased until its lease expires
        r.advance(31)
        again = r.take()
        assert again is not None and again.delivery_id == got[1].delivery_id
        assert r.take(0.5) is None  # the acknowledged one never comes back
    finally:
        r.close()


def test_bad_adapter_requests(run: Running) -> None:
    with pytest.raises(grpc.RpcError) as err:
        next(iter(run.stub.StreamDeliveries(dpb.StreamDeliveriesRequest(channels=["fax"]),
                                             timeout=5)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channels[0]" in err.value.details()
    for request, code in (
        (dpb.AckDeliveryRequest(delivery_id="nope", status=dpb.DELIVERY_STATUS_SENT),
         grpc.StatusCode.NOT_FOUND),
        (dpb.AckDeliveryRequest(delivery_id="x"), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            run.stub.AckDelivery(request)
        assert err.value.code() == code


def test_shutdown_ends_adapter_streams_instead_of_waiting_out_the_grace(tmp_path: Path) -> None:
    import time

    r = Running(tmp_path, ManualClock(tuesday_22h(SAO_PAULO)), grace_seconds=20)
    r.listen()
    time.sleep(0.3)  # the stream is open and idle
    start = time.monotonic()
    r.server.stop()
    assert time.monotonic() - start < 10
    r.client.close()


@pytest.mark.parametrize("window_hours", [24, 72])
def test_caps_count_exactly_the_messages_a_journey_will_send(tmp_path: Path,
                                                             window_hours: int) -> None:
    # Only "twice" (24 h apart): inside a 24 h trigger window the second message never
    # goes out, so it must not count against the caps either; inside 72 h it does.
    toml = (TOML.replace("once = { count = 1 }\n", "")
            .replace("window_hours = 24", f"window_hours = {window_hours}", 1))
    r = Running(tmp_path, ManualClock(tuesday_22h(SAO_PAULO)), toml=toml)
    try:
        r.abandon("tw", **CONSENTS)
        deliveries = scheduled(r, "tw")
        assert len(deliveries) == (1 if window_hours == 24 else 2)
        r.server.decisions.flush()
        with r.server.store.read() as txn:
            contacts = orjson.loads(txn.get(b"tw", db=r.server.store.dbs["contacts"]))
        assert sorted(c[0] for c in contacts) == sorted(d.due_at for d in deliveries)
    finally:
        r.close()


def test_the_policy_chooses_only_send_times_inside_the_journey_window(tmp_path: Path) -> None:
    # A 2-hour window: at 10:00 only "now" can go out (lunch is 12:30); at 22:00, inside
    # quiet hours, nothing can. What is delivered is what the decision logged as chosen.
    toml = TOML.replace("window_hours = 24", "window_hours = 2", 1)
    morning = datetime(2026, 11, 24, 10, 0, tzinfo=ZoneInfo(SAO_PAULO)).timestamp()
    r = Running(tmp_path, ManualClock(morning), toml=toml)
    try:
        users = [u for u in (f"w{k}" for k in range(12))
                 if not in_holdout("loan_abandonment", u, 0.05)][:6]
        for user in users:
            r.abandon(user, **CONSENTS)
            (delivery, *_) = scheduled(r, user)
            assert delivery.due_at == morning
            r.server.decisions.flush()
            (record,) = r.server.decisions.decisions([delivery.decision_id])
            chosen = record.actions[0]
            assert (chosen["channel"], chosen["message"]) == (delivery.channel,
                                                              delivery.message)
            assert any(code == "SEND_WINDOW" and detail.startswith("lunch")
                       for code, detail in record.trace)
        r.clock.set(tuesday_22h(SAO_PAULO))
        r.abandon("late", **CONSENTS)
        assert scheduled(r, "late") == []
    finally:
        r.close()


def test_a_template_this_user_cannot_fill_blocks_no_journey(run: Running) -> None:
    # "lots" cannot fill {amount:,.0f}: the messages that need it are masked for this user
    # (as a missing property is), and the other user's journey is decided as usual.
    at = run.clock.now()
    run.client.track([
        make_event("odd", "loan_simulated", time=at - 1,
                   strings={"amount": "lots", "currency": "USD", **CONSENTS}),
        make_event("odd", "flow_abandoned", time=at,
                   strings={"flow": "personal_loan", "step": "documentation"}),
    ])
    run.abandon("fine", **CONSENTS)
    with run.server.store.read() as txn:
        from nudge.server.storage.tables import triggered
        assert triggered.pending(txn, run.server.store.dbs) == []
    assert scheduled(run, "fine")
    for d in scheduled(run, "odd"):
        assert d.message == "advisor"
    # Decide answers (the fillable message only) rather than INTERNAL.
    reply = run.client.decide("odd", strings={"amount": "x"}, top_k=4)
    assert all(a.message == "advisor" for a in reply.actions)
