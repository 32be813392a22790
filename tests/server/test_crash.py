"""kill -9 in the middle of ingestion: every acknowledged event survives, exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nudge.bench import faults
from nudge.clients import Client, make_event
from nudge.v1 import event_pb2

USERS = 10
T0 = 1_795_482_000.0


def batches(prefix: str, n_batches: int, size: int) -> list[list[event_pb2.Event]]:
    return [
        [
            make_event(f"u{(b * size + i) % USERS}", "transaction", time=T0 + b,
                       event_id=f"{prefix}-{b}-{i}", numbers={"amount": 10.0})
            for i in range(size)
        ]
        for b in range(n_batches)
    ]


def expected_counts(all_batches: list[list[event_pb2.Event]]) -> Counter[str]:
    return Counter(e.user_id for batch in all_batches for e in batch)


def stored_counts(client: Client) -> Counter[str]:
    return faults.stored_counts(client, [f"u{u}" for u in range(USERS)])


def killing(
    stream: list[list[event_pb2.Event]], proc, kill_after: int
) -> Iterator[list[event_pb2.Event]]:
    """Yield the stream's batches, SIGKILLing the server before batch ``kill_after``."""
    for i, batch in enumerate(stream):
        if i == kill_after:
            proc.kill()
        yield batch


@pytest.mark.slow
def test_sigkill_mid_track_stream_loses_and_doubles_nothing(
    server_process, data_dir: Path
) -> None:
    acked: list[list[event_pb2.Event]] = []
    everything: list[list[event_pb2.Event]] = []
    for round_ in range(3):
        proc = server_process(data_dir)
        with Client(proc.target, timeout=30) as client:
            client.wait_until_serving()
            # After a restart, all acknowledged events are there exactly once.
            assert stored_counts(client) - expected_counts(everything) == Counter()
            assert stored_counts(client) >= expected_counts(acked)

            unary = batches(f"r{round_}-unary", 5, 50)
            for batch in unary:
                reply = client.track(batch)
                assert reply.accepted + reply.duplicates == len(batch)
                acked.append(batch)
            everything += unary

            stream = batches(f"r{round_}-stream", 40, 500)
            everything += stream

            with pytest.raises(grpc.RpcError) as err:
                client.track_stream(killing(stream, proc, kill_after=10 + 7 * round_))
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    proc = server_process(data_dir)
    with Client(proc.target, timeout=60) as client:
        client.wait_until_serving()
        assert stored_counts(client) >= expected_counts(acked)
        # The producer replays everything it was not sure of; replays count once.
        reply = client.track_stream(everything)
        assert reply.accepted + reply.duplicates == sum(len(b) for b in everything)
        assert stored_counts(client) == expected_counts(everything)
    assert proc.terminate() == 0
