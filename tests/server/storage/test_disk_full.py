"""A real full disk (ENOSPC), not only an LMDB map that cannot grow (storage/test_store.py).

``nudge serve`` runs in a private mount namespace (``unshare -rm``) with its data folder on
a tmpfs of a few MB. The test reaches that filesystem through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event
from nudge.v1 import event_pb2

# In its own mount namespace: mount a tmpfs of $1 bytes on $0, run $2 (a shell command,
# e.g. one that fills the disk), then exec the rest.
MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$0" && eval "$2" && shift 2 && exec "$@"'
_SERVING = re.compile(rb"serving on [^ ]+:(\d+)")
PADDING = "x" * 200


def _mount_reason(tmp_path: Path) -> str | None:
    """Why a private tmpfs cannot be mounted here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", MOUNT, str(probe), "1m", "true",
                               "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -rm failed: {exc}"
    if done.returncode != 0:
        return f"cannot mount a tmpfs in a private namespace: {done.stderr.strip()}"
    return None


@pytest.fixture
def mountable(tmp_path: Path) -> None:
    reason = _mount_reason(tmp_path)
    if reason is not None:
        pytest.skip(reason)


class SmallDiskServer:
    """``nudge serve`` with its data folder on a tmpfs of ``size``."""

    def __init__(self, tmp_path: Path, size: str, setup: str = "true") -> None:
        self.mount = tmp_path / "disk"
        self.mount.mkdir()
        self.data_dir = self.mount / "data"
        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "-rm", "sh", "-c", MOUNT, str(self.mount), size, setup,
             sys.executable, "-m", "nudge.clients.cli", "serve", "--port", "0",
             "--data-dir", str(self.data_dir)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_for_port(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                pytest.fail(f"server exited early:\n{self.log_text()}")
            time.sleep(0.05)
        pytest.fail(f"server did not start:\n{self.log_text()}")

    def inside(self, name: str) -> Path:
        """A path on the small disk, as seen from outside the namespace."""
        return Path(f"/proc/{self.proc.pid}/root{self.mount}") / name

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"server did not stop on SIGTERM:\n{self.log_text()}")
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def small_disk(tmp_path: Path, mountable: None) -> Iterator[SmallDiskServer]:
    server = SmallDiskServer(tmp_path, "4m")
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def _batch(k: int) -> list[event_pb2.Event]:
    return [make_event(f"u{i % 10}", "loan_simulated", event_id=f"b{k}-{i}",
                       numbers={"amount": 100.0 + i}, strings={"note": PADDING})
            for i in range(100)]


def _counts(client: Client, users: list[str]) -> Counter[str]:
    return Counter({u: client.get_user(u).event_count for u in users})


def _fill(path: Path) -> None:
    """Take every byte left on the disk holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)


@pytest.mark.slow
def test_full_disk_refuses_writes_clearly_and_keeps_answering_reads(
    small_disk: SmallDiskServer,
) -> None:
    port = small_disk.wait_for_port()
    ballast = small_disk.inside("ballast")
    if not ballast.parent.is_dir():
        pytest.skip(f"cannot reach the namespace's disk through {ballast.parent}")
    ballast.write_bytes(b"\0" * (512 << 10))  # freed later, so writes can go on
    acked: Counter[str] = Counter()
    with Client(f"127.0.0.1:{port}", timeout=30, retries=0) as client:
        client.wait_until_serving()
        for k in range(1_000):
            batch = _batch(k)
            try:
                client.track(batch)
            except grpc.RpcError as exc:
                error = exc
                break
            acked.update(e.user_id for e in batch)
        else:
            pytest.fail("4 MB never filled up")
        assert acked, "the very first write failed: the disk is too small to test with"

        # A clear error: overload-like (the caller backs off), saying what is full and where.
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "disk is full" in error.details()
        assert str(small_disk.data_dir) in error.details()
        assert "Traceback" not in small_disk.log_text()

        # Nothing acknowledged is lost; reads keep answering; the server is up.
        users = sorted(acked)
        assert _counts(client, users) == acked
        assert client.health() == "SERVING"
        assert client.decide("u1").decision_id
        _fill(small_disk.inside("filler"))  # really nothing left now
        # LMDB may still reuse pages it freed earlier (already backed by the disk), so a
        # batch or two can still commit; what it acknowledges must then be kept.
        with pytest.raises(grpc.RpcError) as again:
            for k in range(1_000, 1_100):
                more = _batch(k)
                client.track(more)
                acked.update(e.user_id for e in more)
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _counts(client, users) == acked
        assert small_disk.proc.poll() is None

        # Space freed: the producer retries the refused batch with the same event_ids.
        small_disk.inside("filler").unlink()
        ballast.unlink()
        reply = client.track(batch)
        assert (reply.accepted, reply.duplicates) == (len(batch), 0)
        acked.update(e.user_id for e in batch)
        assert _counts(client, users) == acked
    assert small_disk.stop() == 0, small_disk.log_text()


@pytest.mark.slow
def test_starting_on_a_full_disk_is_a_clear_error(tmp_path: Path, mountable: None) -> None:
    """Not a hang, and not SIGBUS from LMDB's memory-mapped lock file."""
    server = SmallDiskServer(tmp_path, "1m", setup='cat /dev/zero > "$0/filler" 2>/dev/null; :')
    try:
        code = server.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        pytest.fail(f"server hung on a full disk:\n{server.log_text()}")
    server.stop()
    log = server.log_text()
    assert code == 2, f"exit status {code}:\n{log}"
    assert f"cannot open the store at {server.data_dir}" in log
    assert "no space left" in log.lower()
