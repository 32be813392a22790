"""The nudge command against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nudge.clients.cli import main
from nudge.server.app import NudgeServer


def run(server: NudgeServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--target", f"127.0.0.1:{server.port}", *argv])
    out, err = capsys.readouterr()
    return code, out + err


def test_track_then_user(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(server, capsys, "track", "--user", "U", "--type", "flow_abandoned",
                    "--num", "amount=5000", "--str", "step=documentation", "--event-id", "e1")
    assert code == 0
    assert json.loads(out) == {"accepted": "1", "duplicates": "0"}
    code, out = run(server, capsys, "track", "--user", "U", "--type", "flow_abandoned",
                    "--event-id", "e1")
    assert json.loads(out) == {"accepted": "0", "duplicates": "1"}
    code, out = run(server, capsys, "user", "U")
    assert code == 0
    user = json.loads(out)
    assert user["eventTypes"][0]["type"] == "flow_abandoned"
    assert user["amounts"]["mean"] == 5000.0


def test_health(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, capsys, "health") == (0, "SERVING\n")


def test_errors_print_the_status(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(server, capsys, "user", "nobody")
    assert code == 1
    assert "NOT_FOUND" in out
    code, out = run(server, capsys, "track", "--user", "U", "--type", "Bad")
    assert code == 1
    assert "INVALID_ARGUMENT: events[0].type" in out


def test_bad_key_value_is_a_usage_error(server: NudgeServer) -> None:
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        main(["--target", f"127.0.0.1:{server.port}", "track", "--user", "U", "--type", "t",
              "--num", "amount"])
    with pytest.raises(SystemExit, match="not a number"):
        main(["--target", f"127.0.0.1:{server.port}", "track", "--user", "U", "--type", "t",
              "--num", "amount=lots"])


def test_score_and_label(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(server, capsys, "score", "--user", "U", "--amount", "120.5",
                    "--country", "BR", "--transaction-id", "t1")
    assert code == 0
    reply = json.loads(out)
    assert 0 <= reply.get("score", 0.0) <= 1
    assert reply.get("baselineCount", "0") == "0"
    code, out = run(server, capsys, "label", "t1", "genuine", "--user", "U")
    assert (code, out.strip()) in {(0, "in baseline")}
    code, out = run(server, capsys, "score", "--user", "U", "--amount", "-1")
    assert code == 1 and "transaction.amount: must not be negative" in out


def test_decide_and_outcome(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    run(server, capsys, "track", "--user", "D", "--type", "loan_simulated", "--num",
        "amount=5000", "--str", "currency=USD", "--str", "consent.push=granted")
    code, out = run(server, capsys, "decide", "D", "--top-k", "2")
    assert code == 0
    reply = json.loads(out)
    assert reply["decisionId"] and reply["modelVersion"] == "loan_abandonment/v0"
    assert reply.get("actions") or reply["suppressedReason"] == "nothing_is_best"
    code, out = run(server, capsys, "outcome", reply["decisionId"], "1")
    assert (code, out.strip()) == (0, "attributed")
    code, out = run(server, capsys, "decide", "D", "--campaign", "nope")
    assert code == 1 and "INVALID_ARGUMENT: campaign: unknown campaign 'nope'" in out


def test_decide_for_an_audience_file(server: NudgeServer, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    for user in ("A1", "A2"):
        run(server, capsys, "track", "--user", user, "--type", "loan_simulated", "--num",
            "amount=5000", "--str", "currency=USD", "--str", "consent.push=granted")
    audience = tmp_path / "audience.txt"
    audience.write_text("# the loan users\nA1\n\nA2\nA1\n")
    code, out = run(server, capsys, "decide", "--audience", str(audience), "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    decisions = [json.loads(line) for line in lines[:-1]]
    assert [d["userId"] for d in decisions] == ["A1", "A2", "A1"]
    assert all(d["decisionId"] and d["modelVersion"] == "loan_abandonment/v0"
               for d in decisions)
    assert len({d["decisionId"] for d in decisions}) == 3
    assert lines[-1] == "3 decisions in " + lines[-1].split(" in ")[1]
    code, out = run(server, capsys, "decide", "A1", "--audience", str(audience))
    assert code == 2 and "not both" in out


def test_erase(server: NudgeServer, capsys: pytest.CaptureFixture[str]) -> None:
    run(server, capsys, "track", "--user", "U", "--type", "app_opened", "--event-id", "e1")
    code, out = run(server, capsys, "erase", "U")
    assert code == 0
    reply = json.loads(out)
    assert reply["deleted"] == {"users": "1", "events": "1", "seen": "1", "insights": "1"}
    code, out = run(server, capsys, "user", "U")
    assert code == 1 and "NOT_FOUND" in out
