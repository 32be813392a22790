"""``nudge serve`` in a child process, so a benchmark's client never shares the server's GIL
(and tests can kill it with SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

_SERVING = re.compile(rb"serving on [^ ]+:(\d+)")
_METRICS = re.compile(rb"metrics on (http://[^ ]+/metrics)")


class ServerProcess:
    def __init__(self, data_dir: Path, log_path: Path, *extra: str, timeout: float = 180.0,
                 env: Mapping[str, str] | None = None):
        self.log_path = log_path
        self.start_offset = log_path.stat().st_size if log_path.exists() else 0
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nudge.clients.cli", "serve", "--port", "0",
             "--data-dir", str(data_dir), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.port = self._wait_for_port(timeout)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self.start_offset)
                match = _SERVING.search(f.read())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"server did not start:\n{self.log_path.read_text()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """Where the server serves /metrics (None: started without ``--metrics-port``)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.start_offset)
            match = _METRICS.search(f.read())
        return match.group(1).decode() if match else None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no close — a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code
