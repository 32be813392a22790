"""kill -9 in a loop (a short version; `nudge bench faults` runs 100 rounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nudge.bench import cli, faults


@pytest.mark.slow
def test_kill_loop_loses_doubles_and_resends_nothing(tmp_path: Path) -> None:
    # Five rounds (about 20 s): the fourth outlives the learner's persist interval.
    report = faults.run(5, tmp_path / "data", tmp_path / "server.log", seed=3)
    assert report.problems == []
    assert report.rounds == 5
    # Every kind of work was under way when the kills landed.
    assert report.events_acknowledged > 0 and report.decisions > 0
    assert report.outcomes_acknowledged > 0 and report.goals_acknowledged > 0
    assert report.deliveries_acknowledged > 0 and report.redeliveries > 0
    # The learner stored its position mid-life at least once, so a restart resumed from it.
    assert report.learner_persists >= 1
    assert report.outcomes_learned > 0


def test_nudge_bench_runs_the_long_version() -> None:
    args = cli._parser().parse_args(["faults", "--rounds", "7", "--seed", "2"])
    assert (args.section, args.rounds, args.seed) == ("faults", 7, 2)
