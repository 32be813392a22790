"""Privacy: pseudonymous user ids, and logs at INFO without ids, amounts or texts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.server.app import create_server
from nudge.server.config import Config

RAW_ID = "alice.silva@example-bank.com"


def test_raw_user_ids_never_reach_the_store(tmp_path: Path) -> None:
    srv = create_server(Config(port=0, data_dir=tmp_path / "data",
                               pseudonymize_key="s3cret-key"))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            c.track([make_event(RAW_ID, "loan_simulated", numbers={"amount": 5000.0},
                                strings={"currency": "USD", "consent.push": "granted"})])
            c.score_transaction(make_transaction(RAW_ID, 42.0, country="BR"))
            c.decide(RAW_ID)
            user = c.get_user(RAW_ID)  # callers keep using raw ids
            assert user.event_count == 1
            assert user.user_id.startswith("p_") and RAW_ID not in user.user_id
        srv.decisions.flush()
    finally:
        srv.stop()
    assert "s3cret-key" not in repr(srv.config)
    stored = (tmp_path / "data" / "data.mdb").read_bytes()
    assert RAW_ID.encode() not in stored
    assert srv.decisions.campaigns  # the rest of the server is unaffected


def test_info_logs_carry_no_ids_amounts_or_texts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    srv = create_server(Config(port=0, data_dir=tmp_path / "data"))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            c.track([make_event(RAW_ID, "loan_simulated", numbers={"amount": 98765.0},
                                strings={"currency": "USD", "consent.push": "granted"})])
            c.score_transaction(make_transaction(RAW_ID, 12345.67, country="BR"))
            reply = c.decide(RAW_ID)
    finally:
        srv.stop()
    text = caplog.text
    assert RAW_ID not in text
    assert "98765" not in text and "12345" not in text
    for action in reply.actions:
        assert action.text not in text
