"""Startup: seconds from process start to health SERVING, with a cold and a warm Numba cache.

SERVING means every kernel is compiled (or loaded from cache) and called once, so this is
what a rolling deploy or a crash restart waits for. "Cold" points ``NUMBA_CACHE_DIR`` at an
empty directory, as a fresh container would see; "warm" starts again over the same
directory, as a restart on the same host would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nudge.clients import Client


@dataclass(frozen=True)
class StartupConfig:
    cold: bool = True
    warm_runs: int = 2  # the best of these is reported (the first may still be paging in)
    timeout: float = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_to_serving(cache_dir: Path | None, data_dir: Path, timeout: float = 240.0) -> float:
    """Start ``nudge serve`` and poll health every 10 ms; always stops the server.

    ``cache_dir`` None keeps Numba's own cache location (next to the kernels' sources).
    """
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge.clients.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        with Client(f"127.0.0.1:{port}", timeout=1.0, retries=0) as client:
            while True:
                try:
                    if client.health(timeout=0.5) == "SERVING":
                        return time.perf_counter() - t0
                except Exception:  # not listening yet, or NOT_SERVING while warming
                    pass
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{err[-2000:]}")
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"server not SERVING after {timeout:.0f} s")
                time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def run(config: StartupConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Cold then warm starts over one private Numba cache; without ``config.cold``, warm
    starts over the cache this host already has."""
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache: Path | None = None
        if config.cold:
            cache = Path(tmp) / "numba-cache"
            cache.mkdir()
            progress("startup: cold Numba cache (compiles every kernel)")
            result["cold_s"] = time_to_serving(cache, Path(tmp) / "cold", config.timeout)
        warm = []
        for k in range(config.warm_runs):
            progress(f"startup: warm Numba cache ({k + 1}/{config.warm_runs})")
            warm.append(time_to_serving(cache, Path(tmp) / f"warm{k}", config.timeout))
        result["warm_s"] = min(warm)
        result["warm_runs_s"] = warm
    metrics = {"startup.warm_s": result["warm_s"]}
    if "cold_s" in result:
        metrics["startup.cold_s"] = result["cold_s"]
    result["metrics"] = metrics
    return result
