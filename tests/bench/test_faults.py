"""kill -9 in a loop (a short version; `python -m nudge.bench.faults` runs 100 rounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nudge.bench import faults


@pytest.mark.slow
def test_kill_loop_loses_and_doubles_nothing(tmp_path: Path) -> None:
    report = faults.run(5, tmp_path / "data", tmp_path / "server.log", seed=3)
    assert report.rounds == 5
    assert report.events_acknowledged > 0 and report.decisions > 0
    assert report.problems == []
