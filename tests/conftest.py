"""Shared fixtures: a real server on a free port over a real LMDB store in a temp dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nudge.clients import Client
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[NudgeServer]:
    srv = create_server(Config(port=0, data_dir=data_dir, grace_seconds=2.0))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: NudgeServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", timeout=10.0) as c:
        yield c


class ServerProcess:
    """``nudge serve`` in a child process, for kill -9 and signal tests."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.start_offset = log_path.stat().st_size if log_path.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nudge.clients.cli", "serve", "--port", "0",
             "--data-dir", str(data_dir), *extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"serving on [^ ]+:(\d+)")
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self.start_offset)
                match = pattern.search(f.read())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start:\n{self.log_path.read_text()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class _Factory(ServerProcess):
        def __init__(self, data_dir: Path, *extra: str) -> None:
            super().__init__(data_dir, tmp_path / "server.log", *extra)
            started.append(self)

    yield _Factory
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
