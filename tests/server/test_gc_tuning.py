"""A serving process collects rarely and has frozen what startup made (in a child process:
freezing pytest's own objects would outlive the test)."""

from __future__ import annotations

import subprocess
import sys

from nudge.server.gc_tuning import GC_THRESHOLDS


def test_tune_for_serving_freezes_and_raises_the_thresholds() -> None:
    code = ("import gc; from nudge.server.gc_tuning import tune_for_serving; "
            "tune_for_serving(); print(gc.get_threshold(), gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(")")
    assert out[0] + ")" == str(GC_THRESHOLDS)
    assert out[1].strip() == "True"
