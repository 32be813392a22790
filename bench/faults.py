"""kill -9 in a loop: after every crash, no acknowledged event is lost or counted twice,
acknowledged outcomes are learned exactly once, acknowledged deliveries stay sent, and the
store opens cleanly.

Each round starts ``nudge serve`` on the same data folder and runs four clients at once —
TrackStream of events; Decide followed by ReportOutcome or a goal event (so the learner
is busy); journey triggers (so the outbox fills); a channel adapter that streams
deliveries and acknowledges most of them — and SIGKILLs the server at a random moment.
Every fourth round outlives the learner's persist interval, so its stored position moves.
Between rounds, with the server dead, the harness opens the store itself and checks:

- every acknowledged event is stored, none twice (per-user counts against what was sent);
- every acknowledged outcome (ReportOutcome, or a goal event after a decision) is settled
  with its reward and appears once in the rewards log; a settled decision stays settled;
- the learner's stored models are the rewards log up to its stored position, each outcome
  applied once (recomputed here from the log, with the campaign's forgetting of 1 and
  identity link);
- a delivery acknowledged SENT stays SENT and is never streamed again; one streamed but
  not acknowledged is still leased (or sent, if only the reply was lost).

At the end the producer replays every event it sent (as a producer does after a crash),
the adapter drains the outbox — every leased delivery must be streamed again — and the
learner, caught up, must have applied the whole rewards log exactly once.

    python -m nudge.bench.faults [--rounds 100] [--seed 1]
    nudge bench faults --rounds 100
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np

from nudge.bench.server_process import ServerProcess
from nudge.clients import Client, make_event
from nudge.v1 import delivery_service_pb2 as dpb
from nudge.v1 import delivery_service_pb2_grpc as dgrpc
from nudge.v1 import event_pb2

USERS = 20
CAMPAIGN = "faults"
# One campaign with no guardrail in the way: every Decide is open and learnable, every
# journey trigger becomes a delivery due now. forgetting = 1 makes the learner's state a
# plain sum over the rewards log, so the harness can recompute it exactly.
CAMPAIGN_TOML = f"""
[campaign]
name = "{CAMPAIGN}"

[messages]
ready = "Your loan is ready."
step = "One step left."

[channels]
values = ["push", "email"]

[send_times]
now = "now"

[frequencies]
once = {{ count = 1 }}

[offers]
none = {{}}

[[triggers]]
event = "flow_abandoned"
window_hours = 24

[goal]
events = ["loan_completed"]
value = 1.0
window_hours = 72

[guardrails]
consent = false
holdout = 0.0

[exploration]
algorithm = "squarecb"
forgetting = 1.0
nothing_arm = false
# The identity link's b is a sum over the rewards log, so the check below recomputes it
# exactly; the logistic link's state depends on the order and batching of its steps.
link = "identity"
"""
GOAL_VALUE = 1.0
LEASE_SECONDS = 1
# The learner stores its models every 5 s (server/decisions/learner.py): a longer round lets it.
LONG_ROUND_EVERY = 4
LONG_ROUND_SECONDS = (5.5, 7.0)
SHORT_ROUND_SECONDS = (0.05, 1.2)


@dataclass
class FaultReport:
    rounds: int = 0
    events_sent: int = 0
    events_acknowledged: int = 0
    decisions: int = 0
    outcomes_acknowledged: int = 0
    goals_acknowledged: int = 0
    deliveries_streamed: int = 0
    deliveries_acknowledged: int = 0
    redeliveries: int = 0
    # Rounds after which the learner's stored position had moved (it persisted mid-life).
    learner_persists: int = 0
    outcomes_learned: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Ledger:
    """What the clients sent and what the server acknowledged, shared by their threads."""

    report: FaultReport
    lock: threading.RLock = field(default_factory=threading.RLock)
    sent: dict[str, str] = field(default_factory=dict)  # event_id -> user_id
    batches: list[list[event_pb2.Event]] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)  # event ids
    outcomes: dict[str, float] = field(default_factory=dict)  # decision_id -> reward
    streamed: Counter[str] = field(default_factory=Counter)  # delivery_id -> times
    # AckDelivery(SENT) answered OK: delivery_id -> when the answer came
    sent_acked: dict[str, float] = field(default_factory=dict)

    def sending(self, events: list[event_pb2.Event]) -> None:
        with self.lock:
            self.batches.append(events)
            for e in events:
                self.sent[e.event_id] = e.user_id
            self.report.events_sent += len(events)

    def acknowledged(self, events: list[event_pb2.Event]) -> None:
        with self.lock:
            self.acked.update(e.event_id for e in events)
            self.report.events_acknowledged += len(events)

    def problem(self, text: str) -> None:
        with self.lock:
            self.report.problems.append(text)


# -- the four clients ----------------------------------------------------------------------


def _batch(rng: random.Random, tag: str, size: int) -> list[event_pb2.Event]:
    return [
        make_event(f"f{rng.randrange(USERS)}", "loan_simulated", event_id=f"{tag}-{i}",
                   numbers={"amount": 1000.0 + i}, strings={"currency": "USD"})
        for i in range(size)
    ]


def _track_streams(client: Client, ledger: _Ledger, rng: random.Random, round_: int,
                   stop: threading.Event) -> None:
    k = 0
    while not stop.is_set():
        batches = [_batch(rng, f"r{round_}-s{k}-{j}", rng.choice((1, 20, 100)))
                   for j in range(rng.randint(1, 3))]
        events = [e for b in batches for e in b]
        ledger.sending(events)
        client.track_stream(batches)
        ledger.acknowledged(events)
        k += 1
        time.sleep(0.01)


def _decide_and_learn(client: Client, ledger: _Ledger, rng: random.Random, round_: int,
                      stop: threading.Event) -> None:
    k = 0
    while not stop.is_set():
        user = f"f{rng.randrange(USERS)}"
        reply = client.decide(user)
        with ledger.lock:
            ledger.report.decisions += 1
        if rng.random() < 0.5:
            reward = rng.choice((0.0, 0.5, 1.0))
            if client.report_outcome(reply.decision_id, reward):
                with ledger.lock:
                    ledger.outcomes[reply.decision_id] = reward
                    ledger.report.outcomes_acknowledged += 1
            else:
                ledger.problem(f"round {round_}: a fresh decision was already settled")
        else:  # the goal arrives as an event and settles the user's open decisions
            goal = [make_event(user, "loan_completed", event_id=f"r{round_}-g{k}")]
            ledger.sending(goal)
            client.track(goal)
            ledger.acknowledged(goal)
            with ledger.lock:
                ledger.outcomes[reply.decision_id] = GOAL_VALUE
                ledger.report.goals_acknowledged += 1
        k += 1


def _trigger_journeys(client: Client, ledger: _Ledger, rng: random.Random, round_: int,
                      stop: threading.Event) -> None:
    k = 0
    while not stop.is_set():
        events = [make_event(f"j{round_}-{k}-{i}", "flow_abandoned", event_id=f"r{round_}-j{k}-{i}")
                  for i in range(rng.randint(1, 3))]
        ledger.sending(events)
        client.track(events)
        ledger.acknowledged(events)
        k += 1
        time.sleep(0.03)


class _Adapter:
    """A channel adapter: streams deliveries and acknowledges most of them SENT; the rest
    it drops, as if it crashed before sending, so their leases expire."""

    def __init__(self, client: Client, ledger: _Ledger, rng: random.Random, round_: int,
                 ack_share: float = 0.75) -> None:
        self.stub = dgrpc.DeliveryServiceStub(client.channel)
        self.ledger = ledger
        self.rng = rng
        self.round = round_
        self.ack_share = ack_share
        self.last_streamed = time.monotonic()
        self.stream = self.stub.StreamDeliveries(dpb.StreamDeliveriesRequest(
            adapter_id="faults", lease_seconds=LEASE_SECONDS))

    def __call__(self, stop: threading.Event) -> None:
        ledger = self.ledger
        for reply in self.stream:
            delivery_id = reply.delivery.delivery_id
            self.last_streamed = time.monotonic()
            # A lease taken before the acknowledgement committed may still arrive after it;
            # one taken after the acknowledgement was answered is a redelivery of a sent one.
            leased_at = reply.delivery.lease_expires_at.ToNanoseconds() / 1e9 - LEASE_SECONDS
            with ledger.lock:
                again = ledger.streamed[delivery_id] > 0
                ledger.streamed[delivery_id] += 1
                ledger.report.deliveries_streamed += 1
                ledger.report.redeliveries += again
                acked_at = ledger.sent_acked.get(delivery_id)
            if acked_at is not None and leased_at > acked_at:
                ledger.problem(f"round {self.round}: delivery {delivery_id} streamed again "
                               "after its SENT acknowledgement")
            if self.rng.random() < self.ack_share:
                self.stub.AckDelivery(dpb.AckDeliveryRequest(
                    delivery_id=delivery_id, status=dpb.DELIVERY_STATUS_SENT), timeout=30)
                with ledger.lock:
                    ledger.sent_acked[delivery_id] = time.time()
                    ledger.report.deliveries_acknowledged += 1

    def cancel(self) -> None:
        self.stream.cancel()


def _until_killed(name: str, work: Callable[[threading.Event], None], ledger: _Ledger,
                  killed: threading.Event, stop: threading.Event, round_: int) -> threading.Thread:
    """Run ``work`` in a thread until the kill (or ``stop``); an RPC failing before the kill
    is a problem."""

    def body() -> None:
        try:
            work(stop)
        except grpc.RpcError as exc:
            if not killed.is_set() and not stop.is_set():
                ledger.problem(f"round {round_}: {name} failed with the server up: "
                               f"{exc.code().name}: {exc.details()}")

    thread = threading.Thread(target=body, name=f"faults-{name}", daemon=True)
    thread.start()
    return thread


# -- checks on the store, with the server dead -----------------------------------------------


@dataclass
class _Stored:
    counts: Counter[str]
    rewards: list[tuple[int, str]]
    decisions: dict[str, dict]
    learned_seq: int
    model: dict[str, np.ndarray] | None
    deliveries: dict[str, str]  # delivery_id -> status


def read_store(data_dir: Path, decision_ids: Iterable[str] = ()) -> _Stored:
    """Open the store as the server would (a failure to open is the finding) and read
    what the checks need: the decisions in the rewards log and ``decision_ids``."""
    from nudge.kernels import user_state
    from nudge.server.storage.store import Store
    from nudge.server.storage.tables import decisions as decision_table
    from nudge.server.storage.tables import deliveries as delivery_table
    from nudge.server.storage.tables import models as model_table
    from nudge.server.storage.tables import rewards as reward_log
    from nudge.server.storage.tables import users

    store = Store(data_dir)
    try:
        dbs = store.dbs
        with store.read() as txn:
            counts = Counter({
                user_id: int(v[user_state.S_EVENT_COUNT])
                for user_id, v in users.records(txn, dbs)
            })
            rewards = list(reward_log.since(txn, dbs, 0))
            decisions = {}
            for decision_id in {d for _, d in rewards}.union(decision_ids):
                fields = decision_table.get_fields(txn, dbs, decision_id)
                if fields is not None:
                    decisions[decision_id] = fields
            learned_seq = model_table.learned_seq(txn, dbs)
            stored = model_table.get(txn, dbs, CAMPAIGN)
            model = None
            if stored is not None:
                model = {"n_eff": stored.snapshot.n_eff, "b": stored.snapshot.b}
            deliveries = {d.delivery_id: d.status for d in delivery_table.every(txn, dbs)}
    finally:
        store.close()
    return _Stored(counts, rewards, decisions, learned_seq, model, deliveries)


def _check_events(s: _Stored, ledger: _Ledger, where: str, final: bool) -> None:
    most = Counter(ledger.sent.values())
    least = most if final else Counter(ledger.sent[e] for e in ledger.acked)
    if s.counts - most:
        ledger.problem(f"{where}: events counted twice: {dict(s.counts - most)}")
    if least - s.counts:
        what = "after the replay, events missing" if final else "acknowledged events lost"
        ledger.problem(f"{where}: {what}: {dict(least - s.counts)}")


def _check_outcomes(s: _Stored, ledger: _Ledger, where: str) -> None:
    in_log = Counter(decision_id for _, decision_id in s.rewards)
    twice = [d for d, n in in_log.items() if n > 1]
    if twice:
        ledger.problem(f"{where}: {len(twice)} decisions settled twice in the rewards log")
    for decision_id, reward in ledger.outcomes.items():
        record = s.decisions.get(decision_id)
        if record is None or record["status"] != "settled":
            ledger.problem(f"{where}: acknowledged outcome of {decision_id} lost "
                           f"({'no record' if record is None else record['status']})")
        elif record["reward"] != reward:
            ledger.problem(f"{where}: decision {decision_id} settled with reward "
                           f"{record['reward']}, acknowledged {reward}")
        elif decision_id not in in_log:
            ledger.problem(f"{where}: settled decision {decision_id} is not in the rewards log")


def _combo_components() -> np.ndarray:
    from nudge.server.decisions.campaign import parse_campaign

    return np.asarray(parse_campaign(CAMPAIGN_TOML, CAMPAIGN).space.combo_components)


def _check_learner(s: _Stored, ledger: _Ledger, where: str, combos: np.ndarray) -> None:
    """The stored models must be the rewards log up to the stored position, learned once."""
    last = s.rewards[-1][0] if s.rewards else 0
    if s.learned_seq > last:
        ledger.problem(f"{where}: learner position {s.learned_seq} is past the rewards log "
                       f"({last})")
    if s.model is None:
        if s.learned_seq:
            ledger.problem(f"{where}: learner position {s.learned_seq} stored without models")
        return
    n_eff = np.zeros_like(s.model["n_eff"])
    b = np.zeros_like(s.model["b"])
    for seq, decision_id in s.rewards:
        if seq > s.learned_seq:
            break
        record = s.decisions.get(decision_id)
        if record is None:
            ledger.problem(f"{where}: rewards log entry {seq} names a missing decision")
            continue
        x = np.asarray(record["x"], dtype=np.float64)
        if len(x) != b.shape[1]:  # made for another context layout: the learner skips it too
            continue
        for c in combos[record["choice"]]:
            if c < 0:
                break
            n_eff[c] += 1.0
            b[c] += (record["reward"] or 0.0) * x
    if not np.array_equal(n_eff, s.model["n_eff"]):
        ledger.problem(f"{where}: stored models learned {s.model['n_eff'].sum():.0f} "
                       f"component updates; the rewards log up to position {s.learned_seq} "
                       f"holds {n_eff.sum():.0f}")
    elif not np.allclose(b, s.model["b"], rtol=1e-9, atol=1e-9):
        ledger.problem(f"{where}: stored models' rewards differ from the rewards log up to "
                       f"position {s.learned_seq}")


def _check_deliveries(s: _Stored, ledger: _Ledger, where: str, final: bool) -> None:
    for delivery_id in ledger.sent_acked:
        if s.deliveries.get(delivery_id) != "sent":
            ledger.problem(f"{where}: delivery {delivery_id} acknowledged SENT is "
                           f"{s.deliveries.get(delivery_id)}")
    unacked = ledger.streamed.keys() - ledger.sent_acked.keys()
    allowed = ("sent",) if final else ("leased", "sent")
    for delivery_id in unacked:  # "sent" only when the acknowledgement's reply was lost
        if s.deliveries.get(delivery_id) not in allowed:
            ledger.problem(f"{where}: delivery {delivery_id} streamed, never acknowledged, "
                           f"is {s.deliveries.get(delivery_id)}")
    for delivery_id, status in s.deliveries.items():
        if status == "sent" and delivery_id not in ledger.streamed:
            ledger.problem(f"{where}: delivery {delivery_id} is sent but was never streamed")
        if final and status in ("scheduled", "leased"):
            ledger.problem(f"{where}: delivery {delivery_id} still {status} after the drain")


def _check_store(data_dir: Path, ledger: _Ledger, where: str, combos: np.ndarray,
                 final: bool = False) -> _Stored | None:
    try:
        with ledger.lock:
            wanted = list(ledger.outcomes)
        s = read_store(data_dir, wanted)
    except Exception as exc:  # the store must open cleanly after any crash
        ledger.problem(f"{where}: the store does not open: {type(exc).__name__}: {exc}")
        return None
    with ledger.lock:
        _check_events(s, ledger, where, final)
        _check_outcomes(s, ledger, where)
        _check_learner(s, ledger, where, combos)
        _check_deliveries(s, ledger, where, final)
    return s


# -- the loop ------------------------------------------------------------------------------


def _serve(data_dir: Path, log_path: Path, campaigns: Path) -> ServerProcess:
    return ServerProcess(data_dir, log_path, "--campaigns", str(campaigns))


def run(rounds: int, data_dir: Path, log_path: Path, seed: int = 1) -> FaultReport:
    rng = random.Random(seed)
    report = FaultReport()
    ledger = _Ledger(report)
    combos = _combo_components()
    campaigns = log_path.parent / "faults-campaigns"
    campaigns.mkdir(parents=True, exist_ok=True)
    (campaigns / f"{CAMPAIGN}.toml").write_text(CAMPAIGN_TOML)
    learned_seq = 0
    for round_ in range(rounds):
        proc = _serve(data_dir, log_path, campaigns)
        try:
            with Client(proc.target, timeout=30, retries=0) as client:
                client.wait_until_serving()
                _settled_stay_settled(client, ledger, rng, round_)
                _kill_during_work(client, proc, ledger, rng, round_)
        finally:
            if proc.running:
                proc.kill()
        report.rounds += 1
        stored = _check_store(data_dir, ledger, f"after round {round_}", combos)
        if stored is not None and stored.learned_seq > learned_seq:
            report.learner_persists += 1
            learned_seq = stored.learned_seq
    _final(data_dir, log_path, campaigns, ledger, rng, combos)
    return report


def _settled_stay_settled(client: Client, ledger: _Ledger, rng: random.Random,
                          round_: int) -> None:
    with ledger.lock:
        settled = list(ledger.outcomes)
    for decision_id in rng.sample(settled, min(5, len(settled))):
        if client.report_outcome(decision_id, 1.0):
            ledger.problem(f"round {round_}: settled decision {decision_id} settled again")


def _kill_during_work(client: Client, proc: ServerProcess, ledger: _Ledger,
                      rng: random.Random, round_: int) -> None:
    long_round = round_ % LONG_ROUND_EVERY == LONG_ROUND_EVERY - 1
    delay = rng.uniform(*(LONG_ROUND_SECONDS if long_round else SHORT_ROUND_SECONDS))
    killed, stop = threading.Event(), threading.Event()

    def seeded() -> random.Random:  # each thread its own stream, all from the seed
        return random.Random(rng.random())

    adapter = _Adapter(client, ledger, seeded(), round_)
    work: dict[str, Callable[[threading.Event], None]] = {
        "TrackStream": partial(_track_streams, client, ledger, seeded(), round_),
        "Decide": partial(_decide_and_learn, client, ledger, seeded(), round_),
        "journeys": partial(_trigger_journeys, client, ledger, seeded(), round_),
        "deliveries": adapter,
    }
    threads = [_until_killed(name, w, ledger, killed, stop, round_) for name, w in work.items()]
    time.sleep(delay)
    killed.set()
    proc.kill()
    stop.set()
    adapter.cancel()
    for thread in threads:
        thread.join(60)
        if thread.is_alive():
            ledger.problem(f"round {round_}: {thread.name} still running a minute after the kill")


def _final(data_dir: Path, log_path: Path, campaigns: Path, ledger: _Ledger,
           rng: random.Random, combos: np.ndarray) -> None:
    """Replay everything, drain the outbox, let the learner catch up; stop gracefully."""
    proc = _serve(data_dir, log_path, campaigns)
    try:
        with Client(proc.target, timeout=60) as client:
            client.wait_until_serving()
            replay = [e for batch in ledger.batches for e in batch]
            for i in range(0, len(replay), 1000):  # the producer replays everything it sent
                client.track(replay[i:i + 1000])
            if stored_counts(client, [f"f{u}" for u in range(USERS)]) != Counter(
                {u: n for u, n in Counter(ledger.sent.values()).items() if u.startswith("f")}
            ):
                ledger.problem("final: after replaying every batch, GetUser counts differ "
                               "from what was sent once")
            _drain(client, ledger, rng)
    finally:
        code = proc.terminate() if proc.running else None
    if code:
        ledger.problem(f"final: the server exited with status {code} on SIGTERM")
    for attempt in range(3):
        stored = read_store(data_dir)
        last = stored.rewards[-1][0] if stored.rewards else 0
        if stored.learned_seq >= last:
            break
        # Stopped before the learner's last step: a restart resumes from its position.
        proc = _serve(data_dir, log_path, campaigns)
        time.sleep(1.0 + attempt)
        proc.terminate()
    else:
        ledger.problem(f"final: the learner stopped at position {stored.learned_seq} of {last}")
    ledger.report.outcomes_learned = stored.learned_seq
    _check_store(data_dir, ledger, "final", combos, final=True)


def _drain(client: Client, ledger: _Ledger, rng: random.Random, idle: float = 3.0,
           limit: float = 120.0) -> None:
    """Acknowledge every delivery until none has come for ``idle`` seconds (leases are 1 s:
    anything leased before the last crash comes again)."""
    killed, stop = threading.Event(), threading.Event()
    adapter = _Adapter(client, ledger, random.Random(rng.random()), -1, ack_share=1.0)
    thread = _until_killed("drain", adapter, ledger, killed, stop, -1)
    deadline = time.monotonic() + limit
    while time.monotonic() - adapter.last_streamed < idle and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    adapter.cancel()
    thread.join(30)


def stored_counts(client: Client, user_ids: list[str]) -> Counter[str]:
    """Events the server holds per user (users it never saw are absent)."""
    out: Counter[str] = Counter()
    for user_id in user_ids:
        try:
            out[user_id] = client.get_user(user_id).event_count
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nudge-faults-") as tmp:
        report = run(args.rounds, Path(tmp) / "data", Path(tmp) / "server.log", args.seed)
    r = report
    print(f"{r.rounds} kill -9 rounds in {time.perf_counter() - start:.0f} s: "
          f"{r.events_acknowledged:,} events acknowledged ({r.events_sent:,} sent), "
          f"{r.decisions:,} decisions, {r.outcomes_acknowledged:,} outcomes and "
          f"{r.goals_acknowledged:,} goal events acknowledged, {r.outcomes_learned:,} outcomes "
          f"learned (position stored mid-life after {r.learner_persists} rounds), "
          f"{r.deliveries_streamed:,} deliveries streamed ({r.redeliveries:,} again after an "
          f"expired lease), {r.deliveries_acknowledged:,} acknowledged sent; "
          f"{len(r.problems)} problems")
    for problem in r.problems[:50]:
        print(f"  {problem}")
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
