"""nudge explain: the audit view of one decision, beside a running server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nudge.clients import Client, make_event
from nudge.clients.cli import main
from nudge.server.app import NudgeServer


def test_explain_shows_why_and_why_not_the_next(
    server: NudgeServer, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    client.track([make_event("e1", "loan_simulated", numbers={"amount": 900.0},
                             strings={"currency": "BRL", "consent.push": "granted"})])
    reply = client.decide("e1", top_k=3)
    client.report_outcome(reply.decision_id, 1.0)
    server.decisions.flush()
    server.learner.step()
    server.learner.persist()
    # Another process, as an operator would run it beside the server.
    done = subprocess.run(
        [sys.executable, "-m", "nudge.clients.cli", "explain", reply.decision_id,
         "--data-dir", str(server.store.path)],
        capture_output=True, text=True, timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert f"decision {reply.decision_id}" in out and "seed" in out
    assert "status settled, reward 1" in out
    assert "NO_CONSENT" in out  # the guardrail trace
    if reply.actions:
        assert "chosen: " in out and "why not the next one" in out
        assert "message=" in out and "channel=" in out
    server.stop()  # this process may now open the store itself
    assert main(["explain", "nope", "--data-dir", str(server.store.path)]) == 1
    assert "is not in" in capsys.readouterr().err
