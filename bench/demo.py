"""``nudge demo``: the DESIGN.md story, end to end, in simulated time.

A real server (in this process, on a free port, over a temporary store) with a simulated
clock; every step goes through the public gRPC API. First the model learns from earlier
journeys of simulated users (hidden truth: "loan ready" messages in the morning convert
best); then, on a Tuesday at 22:00 in São Paulo, three users simulate a USD 5,000 loan and
drop off at the documentation step:

- Ana gets the message the policy chose, the next morning after quiet hours;
- Bruno completes the loan first, and gets nothing;
- Carla has no push consent, and is reached on another channel.

A channel adapter streams due deliveries and acknowledges them, as a bank's would.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc

from nudge.clients.client import Client, make_event
from nudge.v1 import delivery_service_pb2 as dpb
from nudge.v1 import delivery_service_pb2_grpc as dgrpc

ZONE = ZoneInfo("America/Sao_Paulo")
TUESDAY_22H = datetime(2026, 11, 24, 22, 0, tzinfo=ZONE)
STEP = timedelta(minutes=15)
TRAINING_USERS = 600
# Decisions explore (SquareCB draws its choice); the seed fixes the draws, so the demo
# tells the same story every run. Other seeds tell other, equally real, stories.
DEMO_SEED = 1


@dataclass
class Timeline:
    lines: list[str] = field(default_factory=list)
    deliveries: dict[str, list[dpb.Delivery]] = field(default_factory=dict)
    delivered_at: dict[str, list[datetime]] = field(default_factory=dict)


def _abandon(client: Client, user: str, at: datetime, consents: dict[str, str]) -> None:
    t = at.timestamp()
    client.track([
        make_event(user, "profile", time=t - 3, strings={"tz": "America/Sao_Paulo", **consents}),
        make_event(user, "loan_simulated", time=t - 2, numbers={"amount": 5000.0},
                   strings={"currency": "USD"}),
        make_event(user, "flow_abandoned", time=t,
                   strings={"flow": "personal_loan", "step": "documentation"}),
    ])


def _truth(message: str, channel: str, slot_hour: int) -> float:
    """Hidden conversion probability of the simulated population (not known to nudge):
    "loan ready" converts best, push beats WhatsApp beats e-mail, mornings beat later."""
    base = {"loan_ready": 0.6, "one_step": 0.2, "rate_locked": 0.1, "advisor": 0.05}[message]
    reach = {"push": 1.0, "whatsapp": 0.7, "email": 0.4}.get(channel, 0.3)
    return base * reach * (1.0 if 8 <= slot_hour < 11 else 0.5)


def run_demo(
    out: Callable[[str], None] = print,
    training_users: int = TRAINING_USERS,
    seed: int = DEMO_SEED,
) -> Timeline:
    from nudge.server.app import create_server
    from nudge.server.clock import ManualClock
    from nudge.server.config import Config

    timeline = Timeline()

    def say(when: datetime, who: str, what: str) -> None:
        line = f"{when:%a %H:%M}  {who:<7} {what}"
        timeline.lines.append(line)
        out(line)

    clock = ManualClock((TUESDAY_22H - timedelta(days=21)).timestamp())
    with tempfile.TemporaryDirectory(prefix="nudge-demo-") as tmp:
        # Seeded: the same story every run (the learning phase included).
        server = create_server(
            Config(port=0, data_dir=Path(tmp) / "data", random_seed=seed, learner_thread=False),
            clock=clock,
        )
        server.start()
        client = Client(f"127.0.0.1:{server.port}")
        try:
            _learn_from_earlier_journeys(client, server, clock, training_users, out)
            clock.set(TUESDAY_22H.timestamp())
            stub = dgrpc.DeliveryServiceStub(client.channel)
            received: list[dpb.Delivery] = []
            arrived = threading.Condition()
            stream = stub.StreamDeliveries(dpb.StreamDeliveriesRequest(adapter_id="demo"))

            def adapter() -> None:
                try:
                    for reply in stream:
                        stub.AckDelivery(dpb.AckDeliveryRequest(
                            delivery_id=reply.delivery.delivery_id,
                            status=dpb.DELIVERY_STATUS_SENT))
                        with arrived:
                            received.append(reply.delivery)
                            arrived.notify_all()
                except grpc.RpcError:
                    pass

            thread = threading.Thread(target=adapter, daemon=True)
            thread.start()
            all_consents = {f"consent.{c}": "granted" for c in ("push", "whatsapp", "email")}
            story = {
                "ana": all_consents,
                "bruno": all_consents,
                "carla": {"consent.whatsapp": "granted", "consent.email": "granted"},
            }
            for user, consents in story.items():
                _abandon(client, user, TUESDAY_22H, consents)
                say(TUESDAY_22H, user, "simulated a USD 5,000 loan, dropped at documentation")
            server.journeys.process()
            server.decisions.flush()
            for user in story:
                for d in _scheduled(server, user):
                    due = datetime.fromtimestamp(d.due_at, ZONE)
                    (record,) = server.decisions.decisions([d.decision_id])
                    chance = f", chosen with p={record.propensity:.2g}" if record else ""
                    say(TUESDAY_22H, "nudge", f"{user}: {d.channel} at {due:%a %H:%M}, "
                        f"\"{d.text}\" (quiet hours until 08:00{chance})")
            now = TUESDAY_22H
            end = TUESDAY_22H + timedelta(days=1)
            seen = 0
            while now < end:
                now += STEP
                if now == TUESDAY_22H + timedelta(minutes=75):
                    client.track([make_event("bruno", "loan_completed", time=now.timestamp())])
                    say(now, "bruno", "completed the loan: his pending message is cancelled")
                clock.set(now.timestamp())
                n_due = _due_count(server, now.timestamp())
                server.outbox.notify()
                with arrived:
                    # Wait only for what the outbox holds due now (simulated time runs fast).
                    arrived.wait_for(partial(_reached, received, seen + n_due), timeout=5)
                    fresh, seen = received[seen:], len(received)
                for d in fresh:
                    timeline.deliveries.setdefault(d.user_id, []).append(d)
                    timeline.delivered_at.setdefault(d.user_id, []).append(now)
                    say(now, d.channel, f"→ {d.user_id}: \"{d.text}\"")
            for user in story:
                if user not in timeline.deliveries:
                    say(end, user, "nothing sent")
            stream.cancel()
            thread.join(5)
        finally:
            client.close()
            server.stop()
    return timeline


def _reached(received: list, n: int) -> bool:
    return len(received) >= n


def _due_count(server, now: float) -> int:
    """Scheduled deliveries due by ``now`` (what the adapter should receive next)."""
    from nudge.server.storage.tables import deliveries

    with server.store.read() as txn:
        return sum(d.status == deliveries.SCHEDULED and d.due_at <= now
                   for d in deliveries.every(txn, server.store.dbs))


def _scheduled(server, user: str) -> list:
    with server.store.read() as txn:
        return [d for d in server.outbox.user_deliveries(txn, user) if d.status == "scheduled"]


def _learn_from_earlier_journeys(client: Client, server, clock, n: int,
                                 out: Callable[[str], None]) -> None:
    """Earlier users abandon, nudge decides, some convert (by the hidden truth)."""
    rng = random.Random(7)
    channels = ("push", "whatsapp", "email")
    converted = 0
    for k in range(n):
        user = f"earlier-{k}"
        at = datetime.fromtimestamp(clock.now(), ZONE)
        consents = {f"consent.{c}": "granted" for c in channels if rng.random() < 0.8}
        t = at.timestamp()
        client.track([
            make_event(user, "profile", time=t - 2,
                       strings={"tz": "America/Sao_Paulo", **consents}),
            make_event(user, "loan_simulated", time=t - 1, numbers={"amount": 5000.0},
                       strings={"currency": "USD"}),
        ])
        server.learner.step()  # learn what is settled so far, in step with simulated time
        reply = client.decide(user)
        if reply.actions:
            a = reply.actions[0]
            hour = datetime.fromtimestamp(a.send_at.seconds, ZONE).hour
            if rng.random() < _truth(a.message, a.channel, hour):
                client.report_outcome(reply.decision_id, 1.0)
                converted += 1
        clock.advance(3 * 3600 + rng.random() * 3600)
    server.decisions.flush()
    clock.advance(4 * 86_400)  # every earlier window has closed: no outcome is pending
    server.learner.step()
    out(f"learned from {n} earlier journeys ({converted} converted, "
        f"{server.learner.learned} outcomes learned)")


def main() -> int:
    run_demo()
    return 0
