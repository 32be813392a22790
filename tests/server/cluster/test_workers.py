"""`nudge serve --workers 2`: two processes on one port and one LMDB store stay consistent.

A real supervisor with two real worker processes on a temporary store that starts at
LMDB's smallest map, so the map is grown by one process while the other reads and writes.
Each test talks to both workers explicitly: a channel with its own subchannel pool opens
its own connection, and SO_REUSEPORT spreads connections across the workers.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest

from nudge.bench.server_process import ServerProcess
from nudge.clients.client import Client, make_event, make_transaction
from nudge.server.decisions.campaign import shipped_campaigns_dir

pytestmark = pytest.mark.timeout(300)

SHIPPED = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()
_READY = re.compile(rb"2 workers serving on [^ ]+:(\d+)")
T0 = time.time() - 3 * 86_400.0  # event times in the past, as the server requires


class Workers:
    def __init__(self, data_dir: Path, log_path: Path, campaigns: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.campaigns = campaigns
        self.proc = ServerProcess(data_dir, log_path, "--workers", "2",
                                  "--campaigns", str(campaigns))
        deadline = time.monotonic() + 240
        while not _READY.search(log_path.read_bytes()):
            assert self.proc.running, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        self.target = self.proc.target

    def client(self) -> Client:
        channel = grpc.insecure_channel(
            self.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        return Client(self.target, channel=channel, timeout=30.0)

    def one_client_per_worker(self, attempts: int = 200) -> dict[int, Client]:
        """A client connected to each worker, keyed by worker index."""
        found: dict[int, Client] = {}
        for _ in range(attempts):
            client = self.client()
            info = client.server_info()
            if info.worker in found:
                client.close()
            else:
                found[info.worker] = client
            if len(found) == 2:
                return found
        raise AssertionError(f"connections reached workers {sorted(found)} only")


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    root = tmp_path_factory.mktemp("workers")
    campaigns = root / "campaigns"
    campaigns.mkdir()
    (campaigns / "loan.toml").write_text(SHIPPED)
    saved = os.environ.get("NUDGE_MAP_SIZE")
    os.environ["NUDGE_MAP_SIZE"] = str(64 << 10)  # grown across processes by the tests
    try:
        running = Workers(root / "data", root / "serve.log", campaigns)
    finally:
        if saved is None:
            del os.environ["NUDGE_MAP_SIZE"]
        else:
            os.environ["NUDGE_MAP_SIZE"] = saved
    yield running
    if running.proc.running:
        assert running.proc.terminate(timeout=120) == 0, running.log_path.read_text()


@pytest.fixture()
def pair(workers: Workers) -> Iterator[dict[int, Client]]:
    clients = workers.one_client_per_worker()
    yield clients
    for client in clients.values():
        client.close()


def test_both_workers_serve_and_exactly_one_leads(pair: dict[int, Client]) -> None:
    infos = [pair[i].server_info() for i in (0, 1)]
    assert [i.worker for i in infos] == [0, 1]
    assert all(i.workers == 2 for i in infos)
    assert infos[0].pid != infos[1].pid
    assert sum(i.leader for i in infos) == 1
    assert all(pair[i].health() == "SERVING" for i in (0, 1))


def test_events_through_both_workers_are_stored_exactly_once(
    pair: dict[int, Client],
) -> None:
    """Both workers write the same users at once, register new event types at once
    (one registry), and receive each other's batches again (idempotency across
    processes); every event is counted once and every type keeps its own slot."""
    users = [f"ev-user-{u}" for u in range(6)]
    types = [f"kind_{k}" for k in range(12)]
    batches = []
    for b in range(40):
        batches.append([
            make_event(users[(b + i) % len(users)], types[(b * 3 + i) % len(types)],
                       event_id=f"ev-{b}-{i}", numbers={"amount": float(i)}, time=T0 + b)
            for i in range(25)
        ])
    expected_total = Counter(e.user_id for batch in batches for e in batch)
    expected_types: dict[str, Counter[str]] = {u: Counter() for u in users}
    for batch in batches:
        for e in batch:
            expected_types[e.user_id][e.type] += 1

    def send(worker: int) -> tuple[int, int]:
        accepted = duplicates = 0
        # Each worker sends every batch, in opposite orders: half of what it sends is new.
        order = batches if worker == 0 else list(reversed(batches))
        for batch in order:
            reply = pair[worker].track(batch)
            accepted += reply.accepted
            duplicates += reply.duplicates
        return accepted, duplicates

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(send, (0, 1)))
    total_events = sum(len(b) for b in batches)
    assert sum(a for a, _ in results) == total_events
    assert sum(d for _, d in results) == total_events
    for worker in (0, 1):
        for user_id in users:
            state = pair[worker].get_user(user_id)
            assert state.event_count == expected_total[user_id]
            assert {t.type: t.count for t in state.event_types} == dict(
                expected_types[user_id]
            )


def test_scores_from_both_workers_build_one_baseline(pair: dict[int, Client]) -> None:
    """The same user's transactions scored by both workers at once: no update is lost,
    so the baseline counts every transaction that was learned."""
    user_id = "risk-user"

    def score(worker: int) -> list[bool]:
        held = []
        for i in range(40):
            reply = pair[worker].score_transaction(make_transaction(
                user_id, 42.0 + (i % 3), transaction_id=f"tx-{worker}-{i}",
                merchant_category="5411", country="BR", channel="card", device_id="d1",
                time=T0 + 60 * i + worker,
            ))
            held.append(reply.held)
        return held

    with ThreadPoolExecutor(2) as pool:
        held = [h for part in pool.map(score, (0, 1)) for h in part]
    learned = held.count(False)
    assert learned > 0
    final = pair[1].score_transaction(make_transaction(
        user_id, 43.0, transaction_id="tx-final", merchant_category="5411", country="BR",
        channel="card", device_id="d1", time=T0 + 10_000,
    ))
    assert final.baseline_count == learned
    # A transaction id scored by one worker is answered unchanged by the other.
    again = pair[0].score_transaction(make_transaction(
        user_id, 9_999.0, transaction_id="tx-1-5", time=T0,
    ))
    assert again.baseline_count < final.baseline_count


def test_a_hold_expires_into_the_profile_once_with_two_workers(
    pair: dict[int, Client]
) -> None:
    """Transactions through both workers, a takeover held, then event time moves past the
    hold delay (7 days): the leader's expiry pass folds every hold in once."""
    base = time.time() - 12 * 86_400.0
    user_id = "hold-user"
    for i in range(20):
        pair[i % 2].score_transaction(make_transaction(
            user_id, 42.0 + (i % 3), transaction_id=f"hold-{i}", merchant_category="5411",
            country="BR", channel="card", device_id="d1", time=base + i * 7_200.0))
    odd = pair[1].score_transaction(make_transaction(
        user_id, 3_000.0, transaction_id="hold-ato", merchant_category="5732", country="NG",
        channel="ecommerce", device_id="laptop", time=base + 2 * 86_400.0))
    assert odd.held
    pair[0].score_transaction(make_transaction(
        user_id, 43.0, transaction_id="hold-later", merchant_category="5411", country="BR",
        channel="card", device_id="d1", time=base + 10 * 86_400.0))
    time.sleep(5.0)  # the leader's pass runs every second
    final = pair[1].score_transaction(make_transaction(
        user_id, 43.0, transaction_id="hold-final", merchant_category="5411", country="BR",
        channel="card", device_id="d1", time=base + 10 * 86_400.0 + 60.0))
    assert final.baseline_count == 22  # 20 + the takeover (expired, unlabelled) + later


def test_one_learner_and_the_lead_passes_on_when_the_leader_dies(
    workers: Workers, pair: dict[int, Client]
) -> None:
    """Decisions made by one worker and rewarded through the other are learned once by
    the leader; followers decide with the leader's model; killing the leader hands the
    lead to the other worker, the supervisor replaces the dead one, and learning goes on
    from where it stopped."""
    for u in range(60):  # one user per decision: the caps never suppress one
        pair[u % 2].track([make_event(
            f"learn-{u}", "loan_simulated", numbers={"amount": 5000.0},
            strings={"step": "documentation", "tz": "UTC", "consent.push": "granted",
                     "consent.email": "granted"},
        )])

    def decide_and_reward(start: int, stop: int) -> int:
        attributed = 0
        for u in range(start, stop):
            decision = pair[u % 2].decide(f"learn-{u}", top_k=1)
            attributed += pair[(u + 1) % 2].report_outcome(decision.decision_id, 1.0)
        return attributed

    first = decide_and_reward(0, 30)
    assert first == 30
    versions = _wait_for_model(pair, lambda v: v > 0)
    assert len(set(versions)) == 1

    infos = {i: pair[i].server_info() for i in (0, 1)}
    leader = next(i for i in (0, 1) if infos[i].leader)
    follower = 1 - leader
    os.kill(infos[leader].pid, 9)
    deadline = time.monotonic() + 30
    while not pair[follower].server_info().leader:
        assert time.monotonic() < deadline, "the surviving worker never took the lead"
        time.sleep(0.1)

    # The supervisor restarts the dead worker; reach it again and keep going.
    deadline = time.monotonic() + 120
    while True:
        try:
            replacement = workers.one_client_per_worker(attempts=20)
            if replacement[leader].server_info().pid != infos[leader].pid:
                break
        except (AssertionError, grpc.RpcError):
            pass
        assert time.monotonic() < deadline, workers.log_path.read_text()
        time.sleep(0.5)
    for client in pair.values():
        client.close()
    pair.clear()
    pair.update(replacement)
    assert [pair[i].server_info().leader for i in (0, 1)].count(True) == 1

    second = decide_and_reward(30, 60)
    assert second == 30
    versions = _wait_for_model(pair, lambda v: v >= _rewards_logged(workers))
    assert len(set(versions)) == 1


def _wait_for_model(pair: dict[int, Client], done, timeout: float = 60.0) -> list[int]:
    """Both workers' learned positions in the rewards log, once ``done`` holds for each."""
    deadline = time.monotonic() + timeout
    while True:
        versions = [
            max(pair[i].server_info().learned_positions.values(), default=0) for i in (0, 1)
        ]
        if all(done(v) for v in versions) and len(set(versions)) == 1:
            return versions
        assert time.monotonic() < deadline, f"model versions stuck at {versions}"
        time.sleep(0.2)


def _rewards_logged(workers: Workers) -> int:
    """Entries in the rewards log (read-only, from this test process)."""
    env = lmdb.open(str(workers.data_dir), readonly=True, max_dbs=32)
    try:
        rewards = env.open_db(b"rewards", create=False)
        with env.begin() as txn:
            return int(txn.stat(rewards)["entries"])
    finally:
        env.close()


def test_sighup_reloads_the_campaigns_of_every_worker(
    workers: Workers, pair: dict[int, Client]
) -> None:
    """The supervisor passes SIGHUP on: each worker reloads the campaigns folder."""
    user = "reload-user"
    pair[0].track([make_event(user, "loan_simulated", numbers={"amount": 5000.0},
                              strings={"currency": "USD", "tz": "UTC",
                                       "consent.email": "granted"})])
    head, rest = SHIPPED.split("[messages]\n", 1)
    messages, rest = rest.split("\n\n", 1)
    messages = re.sub(r'(?m)^(\w+ = ")', r"\1[v2] ", messages)
    (workers.campaigns / "loan.toml").write_text(
        f"{head}[messages]\n{messages}\n\n{rest}".replace(
            'algorithm = "squarecb"', 'algorithm = "squarecb"\nnothing_arm = false'))
    workers.proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    for worker in (0, 1):
        while True:
            actions = pair[worker].decide(user, top_k=16, dry_run=True).actions
            # Without the "nothing" arm every reply has actions, each with a new text.
            if actions and all(a.text.startswith("[v2] ") for a in actions):
                break
            assert not any(a.text.startswith("[v2] ") for a in actions), "half reloaded"
            assert time.monotonic() < deadline, workers.log_path.read_text()
            time.sleep(0.1)
    # Each worker logs the reload after the swap a Decide already sees: wait for the line.
    while workers.log_path.read_text().count("campaigns reloaded") < 2:
        assert time.monotonic() < deadline, workers.log_path.read_text()
        time.sleep(0.1)
    assert workers.log_path.read_text().count("campaigns reloaded") == 2


def test_labels_through_either_worker_fold_a_hold_in_once(pair: dict[int, Client]) -> None:
    """The shared store's label path (each label its own commit, read back inside it):
    GENUINE through one worker folds the held transaction in, the same label through the
    other worker answers the same and folds nothing more, FRAUD keeps a hold out, and an
    id never scored is NOT_FOUND naming the field."""
    base = time.time() - 3 * 86_400.0
    user_id = "label-user"

    def score(worker: int, tx_id: str, amount: float, country: str, device: str,
              at: float) -> Any:
        return pair[worker].score_transaction(make_transaction(
            user_id, amount, transaction_id=tx_id, merchant_category="5411",
            country=country, channel="card", device_id=device, time=at))

    for i in range(20):
        score(i % 2, f"label-{i}", 40.0 + (i % 3), "BR", "d1", base + i * 3_600.0)
    trip = score(1, "label-trip", 2_500.0, "NG", "laptop", base + 86_400.0)
    ato = score(0, "label-ato", 3_000.0, "RU", "other", base + 86_400.0 + 60.0)
    assert trip.held and ato.held
    assert pair[0].label_transaction("label-trip", "genuine", user_id=user_id) is True
    assert pair[1].label_transaction("label-trip", "genuine", user_id=user_id) is True
    assert pair[1].label_transaction("label-ato", "fraud", user_id=user_id) is False
    after = score(0, "label-after", 41.0, "BR", "d1", base + 86_400.0 + 120.0)
    assert after.baseline_count == 21  # the 20, and the trip once; not the takeover
    with pytest.raises(grpc.RpcError) as err:
        pair[1].label_transaction("label-never", "fraud", user_id=user_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "transaction_id" in (err.value.details() or "")
