"""The serving process's GIL switch interval: set from the config, validated, logged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nudge.bench.server_process import ServerProcess
from nudge.server.config import ConfigError, load_config


def _interval_after(milliseconds: float) -> float:
    code = ("import sys; from nudge.server.gil_tuning import set_switch_interval; "
            f"set_switch_interval({milliseconds!r}); print(sys.getswitchinterval())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return float(out)


def test_a_positive_interval_is_set_and_zero_leaves_the_interpreters_own() -> None:
    assert _interval_after(0.5) == pytest.approx(0.0005)
    assert _interval_after(0.0) == pytest.approx(0.005)  # CPython's default


@pytest.mark.parametrize("raw", ["-1", "101", "fast"])
def test_an_interval_out_of_range_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="gil_switch_interval_ms"):
        load_config(environ={"NUDGE_GIL_SWITCH_INTERVAL_MS": raw})


def test_the_server_serves_with_the_configured_interval(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                         env={"NUDGE_GIL_SWITCH_INTERVAL_MS": "0.75"})
    try:
        proc.terminate()
    finally:
        if proc.running:
            proc.kill()
    assert "GIL switch interval 0.75 ms" in (tmp_path / "server.log").read_text()
