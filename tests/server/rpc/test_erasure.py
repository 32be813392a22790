"""EraseUser: nothing stored with the user's id (or pseudonym) remains; decisions are kept
under an unlinkable pseudonym; other users are untouched."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.server.rpc.privacy import Pseudonyms
from nudge.server.storage import user_scan
from nudge.server.storage.erasure import ERASED_PREFIX
from nudge.server.storage.tables import decisions

ALICE = "alice.silva@example-bank.com"
BOB = "bob.costa@example-bank.com"


def _everything(srv: NudgeServer) -> list[tuple[str, bytes, bytes]]:
    with srv.store.read() as txn:
        return [(name, bytes(k), bytes(v)) for name, db in srv.store.dbs.items()
                for k, v in txn.cursor(db=db)]


def _scan_in_this_process(*args: object) -> None:
    """Stands for ``user_scan.scan`` in the serving process only: the child process
    imports the module afresh and runs the real one."""
    raise AssertionError("the log was scanned in the serving process")


def _journey(c: Client, user: str) -> None:
    strings = {"currency": "USD", "consent.push": "granted", "tz": "America/Sao_Paulo"}
    c.track([make_event(user, "loan_simulated", numbers={"amount": 5000.0}, strings=strings)])
    c.track([make_event(user, "flow_abandoned",
                        strings={"flow": "personal_loan", "step": "documentation"})])
    c.track([make_event(user, "card_payment", numbers={"amount": 31.5},
                        strings={"transaction_id": f"t-{user}", "country": "BR"})])
    c.score_transaction(make_transaction(user, 42.0, country="BR"))
    c.decide(user)


@pytest.mark.parametrize(("key", "child_scan"),
                         [(None, False), ("s3cret-key", False), (None, True)],
                         ids=["raw-ids", "pseudonymised", "scanned-in-a-child-process"])
def test_erase_user_leaves_nothing_with_the_id(
    tmp_path: Path, key: str | None, child_scan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if child_scan:  # a tiny log scanned as a big one is: read-only, in a child process
        monkeypatch.setattr(user_scan, "CHILD_SCAN_FROM_EVENTS", 0)
        monkeypatch.setattr(user_scan, "scan", _scan_in_this_process)
    # A fixed seed: the policy's choices (a message for each journey, not "nothing") are
    # then the same every run; local exploration sends nothing to a cold user about 1 in 10.
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", pseudonymize_key=key,
                               random_seed=3))
    srv.start()
    stored_alice = Pseudonyms(key)(ALICE)
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            _journey(c, ALICE)
            _journey(c, BOB)
            deadline = time.monotonic() + 10
            while srv.store.counts()["deliveries"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the journeys schedule their deliveries
            srv.decisions.flush()
            before = srv.store.counts()
            assert any(stored_alice.encode() in k + v for _, k, v in _everything(srv))

            reply = c.erase_user(ALICE)
            deleted = dict(reply.deleted)
            assert deleted["users"] == 1 and deleted["events"] == 3 and deleted["seen"] == 3
            assert deleted["risk"] == 1 and deleted["transactions"] >= 1
            assert deleted["open"] >= 1 and deleted["contacts"] == 1
            assert deleted["deliveries"] == before["deliveries"] // 2
            assert reply.decisions_pseudonymised >= 2

            for name, k, v in _everything(srv):
                for needle in {ALICE, stored_alice}:
                    assert needle.encode() not in k + v, f"{name} still holds {needle}"
            with srv.store.read() as txn:
                users = {r["user_id"] for r in decisions.stored_fields(txn, srv.store.dbs)}
            assert srv.store.counts()["decisions"] == before["decisions"]  # audit kept
            erased = [u for u in users if u.startswith(ERASED_PREFIX)]
            assert len(erased) == 1  # one person, unlinkable, still grouped

            with pytest.raises(grpc.RpcError) as err:
                c.get_user(ALICE)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert c.get_user(BOB).event_count == 3
            again = c.erase_user(ALICE)  # idempotent: nothing left to find
            assert not again.deleted and again.decisions_pseudonymised == 0
            # A new event after erasure starts a new user from nothing.
            c.track([make_event(ALICE, "app_opened")])
            assert c.get_user(ALICE).event_count == 1
    finally:
        srv.stop()


def test_erase_user_checks_its_input(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.erase_user("")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in (err.value.details() or "")
