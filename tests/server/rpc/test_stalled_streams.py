"""A client that stops taking part in a long-lived stream cannot keep its slot: a stream
waiting on its client past ``stream_idle_seconds`` is cancelled (what it sent stands), a
slow but active one is not, and a client machine that vanishes without closing its
connection is dropped by keepalive. Real servers; the vanished machine is a TCP proxy
that stops relaying without closing anything."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config, ConfigError, load_config
from nudge.server.rpc.stalled_streams import StalledStreams
from nudge.v1 import decision_service_pb2 as pb


def _serve(tmp_path: Path, **settings: object) -> NudgeServer:
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", max_track_streams=1,
                               **settings))  # type: ignore[arg-type]
    srv.start()
    return srv


def _messages(n: int, stop: threading.Event, run: str) -> Iterator[pb.TrackStreamRequest]:
    """``n`` one-event messages, then nothing until ``stop`` (a client gone quiet)."""
    for i in range(n):
        yield pb.TrackStreamRequest(events=[make_event(f"{run}-{i}", "app_opened",
                                                       event_id=f"{run}-{i}")])
    stop.wait(30)


def _stream_in_background(client: Client, messages: Iterator[pb.TrackStreamRequest]
                          ) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(client.decisions.TrackStream(messages, timeout=60))
        except grpc.RpcError as exc:
            outcome.append(exc.code())

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def _stored(client: Client, user_id: str) -> bool:
    try:
        client.get_user(user_id)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_stream_waiting_on_its_client_is_cancelled_and_frees_its_slot(
        tmp_path: Path) -> None:
    srv = _serve(tmp_path, stream_idle_seconds=1.0)
    stop = threading.Event()
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            thread, outcome = _stream_in_background(client, _messages(2, stop, "quiet"))
            assert _wait_for(lambda: _stored(client, "quiet-1"), 10)
            # The one slot is held: another stream is turned away while the first waits.
            with pytest.raises(grpc.RpcError) as err:
                client.track_stream([[make_event("x", "app_opened")]])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            thread.join(10)
            assert outcome == [grpc.StatusCode.CANCELLED]
            assert srv.stalled is not None and srv.stalled.cancelled == 1
            # What it sent stands, and the slot is free again.
            assert _stored(client, "quiet-0")
            reply = client.track_stream([[make_event("after", "app_opened")]])
            assert reply.accepted == 1
    finally:
        stop.set()
        srv.stop()


def test_a_slow_but_active_stream_is_not_cancelled(tmp_path: Path) -> None:
    srv = _serve(tmp_path, stream_idle_seconds=1.0)
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:

            def slow() -> Iterator[list]:
                for i in range(8):  # 2.4 s in all, never 1 s without a message
                    time.sleep(0.3)
                    yield [make_event(f"slow-{i}", "app_opened", event_id=f"slow-{i}")]

            assert client.track_stream(slow(), timeout=30).accepted == 8
            assert srv.stalled is not None and srv.stalled.cancelled == 0
    finally:
        srv.stop()


class _Context:
    """The two things the watch uses of a grpc server context."""

    def __init__(self) -> None:
        self.cancelled = False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def cancel(self) -> None:
        self.cancelled = True


def test_only_time_spent_waiting_on_the_client_counts() -> None:
    now = [0.0]
    watch = StalledStreams(5.0, clock=lambda: now[0])
    handler = grpc.stream_stream_rpc_method_handler(
        lambda requests, context: (r * 2 for r in requests))
    behaviour = watch.wrap(handler, "/nudge.v1.DecisionService/DecideBatch").stream_stream
    context = _Context()
    replies = behaviour(iter([1, 2]), context)
    assert next(replies) == 2  # a reply handed to grpc: now waiting for the client to take it
    now[0] = 4.9
    assert watch.check() == 0 and not context.cancelled
    now[0] = 5.0
    assert watch.check() == 1 and context.cancelled
    # The handler's own work between reading a request and yielding is never counted.
    busy = StalledStreams(5.0, clock=lambda: now[0])

    def track(requests: Iterator[int], context: object) -> int:
        total = 0
        for r in requests:
            total += r
            now[0] += 100.0  # the server working on it (e.g. committing) before reading on
            busy.check()
        return total

    context = _Context()
    work = grpc.stream_unary_rpc_method_handler(track)
    assert busy.wrap(work, "/x/TrackStream").stream_unary(iter([1, 2]), context) == 3
    assert not context.cancelled and busy.cancelled == 0


class _FreezingProxy:
    """Relays TCP between a client and the server until ``freeze()``; then it neither
    relays nor closes anything, as a machine that lost power would."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        self._target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.frozen.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():
                return  # swallowed: the machine is gone
            dst.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_vanished_client_machine_releases_its_stream_by_keepalive(tmp_path: Path) -> None:
    # Idle cancelling off: only keepalive can free the slot.
    srv = _serve(tmp_path, stream_idle_seconds=0.0, keepalive_seconds=1.0,
                 keepalive_timeout_seconds=1.0)
    proxy = _FreezingProxy(srv.port)
    stop = threading.Event()
    try:
        with Client(f"127.0.0.1:{proxy.port}") as far, \
                Client(f"127.0.0.1:{srv.port}") as near:
            _stream_in_background(far, _messages(1, stop, "far"))
            assert _wait_for(lambda: _stored(near, "far-0"), 10)
            with pytest.raises(grpc.RpcError) as err:
                near.track_stream([[make_event("x", "app_opened")]])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            proxy.freeze()

            def slot_free() -> bool:
                try:
                    return near.track_stream([[make_event("near", "app_opened")]]).accepted == 1
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return False

            assert _wait_for(slot_free, 20)
    finally:
        stop.set()
        proxy.close()
        srv.stop()


@pytest.mark.parametrize(("name", "raw"), [("STREAM_IDLE_SECONDS", "-1"),
                                           ("KEEPALIVE_SECONDS", "0.5"),
                                           ("KEEPALIVE_TIMEOUT_SECONDS", "0")])
def test_bad_settings_are_refused_naming_them(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name.lower()):
        load_config(environ={f"NUDGE_{name}": raw})
