"""``nudge bench`` end to end at tiny sizes: tables, reports, budgets, exit status.

No timing is asserted: the figures of a 2-core shared box are noise at these sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nudge.bench import cli, report
from nudge.server.app import NudgeServer

TINY_KERNELS = ["--ingest-batch", "2", "--policy-combos", "20", "--policy-modes", "squarecb",
                "--features", "4", "--learner-batch", "5", "--risk-batch", "200",
                "--kernel-seconds", "0.01"]


def test_kernels_writes_json_markdown_png(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["kernels", "--out", str(tmp_path), *TINY_KERNELS])
    out = capsys.readouterr().out
    assert "Kernels" in out and "Budgets" in out and "not measured" in out
    data = json.loads((tmp_path / "latest.json").read_text())
    assert "kernels" in data["sections"]
    assert data["metrics"]["kernels.policy_decide_20.p50_us"] > 0
    assert code == (0 if data["ok"] else 1)
    assert (tmp_path / "latest.md").read_text().startswith("# nudge bench")
    assert (tmp_path / "latest.png").read_bytes()[:4] == b"\x89PNG"


def test_rpc_against_a_separately_started_server(server: NudgeServer, tmp_path: Path) -> None:
    argv = ["rpc", "--target", f"127.0.0.1:{server.port}", "--calls", "20", "--events", "400",
            "--batch", "200", "--users", "10", "--durable-calls", "3", "--stream-events", "5",
            "--concurrency", "2", "--throughput-seconds", "0.2", "--open-loop-rpcs", "Echo",
            "--open-loop-steps", "1", "--open-loop-seconds", "0.1", "--out", str(tmp_path)]
    args = cli._parser().parse_args(argv)
    args.argv = argv
    config = cli.config_from_args(args, cli.budgets_mod.load())
    result = cli.run(config)
    assert not result["errors"]
    rpc = result["sections"]["rpc"]
    assert set(rpc["latency_us"]) == {"Echo", "GetUser", "ScoreTransaction", "Decide"}
    assert set(rpc["durable_latency_us"]) == {"Echo", "Track", "TrackStream"}
    assert set(rpc["throughput"]["per_s"]) == {"Echo", "GetUser", "ScoreTransaction", "Decide",
                                               "Track"}
    assert rpc["open_loop"][0]["rpc"] == "Echo"
    statuses = {v["metric"]: v["status"] for v in result["budgets"]}
    assert statuses["rpc.Decide.p99_ratio"] in ("met", "MISSED")
    assert statuses["kernels.policy_kernel_3600.p50_us"] == "not measured"
    titles = [t.title for t in report.tables(result)]
    assert any(t.startswith("RPC sequential latency") for t in titles)
    assert any(t.startswith("Open loop") for t in titles)
    md = report.markdown(result)
    assert "| Echo (floor) |" in md and "Track" in md
    assert report.plot(result, tmp_path / "p.png")


def test_a_failing_section_is_reported_not_fatal(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["rpc", "--target", "127.0.0.1:1", "--no-report", "--calls", "1",
                     "--serving-timeout", "0.5"])
    assert code == 1
    assert "rpc failed" in capsys.readouterr().out


def test_bad_budgets_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "b.toml"
    bad.write_text("schema = 3\n")
    assert cli.main(["kernels", "--budgets", str(bad)]) == 2


def test_module_entry_point_help() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nudge.bench.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for section in ("kernels", "rpc", "peers", "startup", "all"):
        assert section in out


def test_learning_section_reports_the_bank_simulator_against_its_budgets(
        tmp_path: Path) -> None:
    from nudge.bench.learning import LearningConfig

    config = cli.BenchConfig(sections=("learning",), out=tmp_path, write_reports=False,
                             learning=LearningConfig(decisions=600, obp_draws=500))
    result = cli.run(config)
    assert not result["errors"]
    sim = result["sections"]["learning"]["bank_sim"]
    assert set(sim["policies"]) == {"random", "rulebook", "nudge", "oracle"}
    assert all(p["decisions"] == 600 for p in sim["policies"].values())
    metrics = result["metrics"]
    assert metrics["learning.opt_outs_vs_rulebook"] == (
        sim["policies"]["nudge"]["opt_outs"] - sim["policies"]["rulebook"]["opt_outs"])
    statuses = {v["metric"]: v["status"] for v in result["budgets"]}
    assert statuses["learning.nudge_vs_oracle_last_fifth"] in ("met", "MISSED")
    titles = [t.title for t in report.tables(result)]
    assert any(t.startswith("Bank simulator") for t in titles)
