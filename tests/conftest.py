"""Shared fixtures: a real server on a free port over a real LMDB store in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.bench.server_process import ServerProcess
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


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class _Factory(ServerProcess):
        """``nudge serve`` in a child process, for kill -9 and signal tests."""

        def __init__(self, data_dir: Path, *extra: str) -> None:
            super().__init__(data_dir, tmp_path / "server.log", *extra)
            started.append(self)

    yield _Factory
    for proc in started:
        if proc.running:
            proc.kill()
