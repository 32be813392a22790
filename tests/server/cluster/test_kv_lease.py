"""The lease every partition and the learner are held by, against a real NATS server
(one, JetStream on, in a temp folder): taken once, renewed by its holder only, lost when
its TTL runs out, released only by its holder."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig

from nudge.server.cluster.kv_lease import KvLease

pytestmark = [pytest.mark.timeout(120)]
TTL = 1.0


async def _bucket(url: str) -> tuple[object, object]:
    nc = await nats.connect(url)
    kv = await nc.jetstream().create_key_value(
        KeyValueConfig(bucket="leases", ttl=TTL, history=1))
    return nc, kv


def test_one_holder_at_a_time_and_a_lapsed_lease_is_lost(nats_url: str) -> None:
    async def scenario() -> None:
        nc, kv = await _bucket(nats_url)
        try:
            a, b = KvLease(kv, "part.3", "node-a"), KvLease(kv, "part.3", "node-b")
            assert await a.take() and a.held
            assert not await b.take() and not b.held  # held: refused
            for _ in range(3):  # renewed within the TTL: kept past it
                await asyncio.sleep(TTL / 2)
                assert await a.renew()
            assert not await b.take()
            # a stops renewing (a dead node): the key expires and b takes it.
            deadline = time.monotonic() + 15
            while not await b.take():
                assert time.monotonic() < deadline, "the lease never lapsed"
                await asyncio.sleep(0.2)
            assert not await a.keep()  # lapsed, and b holds it now: lost
            assert not await a.renew() and not a.held  # a must stop acting on it
            await a.release()  # not held: b's lease is untouched
            assert await b.renew()
            entry = await kv.get("part.3")
            assert entry.value == b"node-b"
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_release_frees_the_key_at_once_but_only_for_its_holder(nats_url: str) -> None:
    async def scenario() -> None:
        nc, kv = await _bucket(nats_url)
        try:
            a, b = KvLease(kv, "learner", "node-a"), KvLease(kv, "learner", "node-b")
            assert await a.take()
            stale = KvLease(kv, "learner", "node-a")
            stale.revision = a.revision
            assert await a.renew()  # the stale copy's revision is now behind
            await stale.release()  # a compare-and-set on an old revision: refused, logged
            assert not await b.take()
            await a.release()  # the holder: deleted, takeable before any TTL
            assert not a.held
            assert await b.take()
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_lapsed_lease_no_one_took_is_kept_by_its_holder(nats_url: str) -> None:
    """What a JetStream leader election does: no renewal for longer than the TTL, then
    every key expired. The holder takes its own key back at once (``keep``), the others
    cannot take it meanwhile."""

    async def scenario() -> None:
        nc, kv = await _bucket(nats_url)
        try:
            a, b = KvLease(kv, "part.5", "node-a"), KvLease(kv, "part.5", "node-b")
            assert await a.take()
            deadline = time.monotonic() + 15
            while True:  # until the key has expired (a renewal on its revision fails)
                await asyncio.sleep(0.3)
                try:
                    await kv.get("part.5")
                except nats.js.errors.KeyNotFoundError:
                    break
                assert time.monotonic() < deadline, "the lease never lapsed"
            assert await a.keep() and a.held
            assert not await b.take()
            assert (await kv.get("part.5")).value == b"node-a"
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_renewal_stored_but_unanswered_is_not_a_loss(nats_url: str) -> None:
    """On a loaded host a renewal can time out in the client after the server stored it:
    the key is then ours at a revision the lease does not know. The next renewal must
    keep the lease, not give it up (and must still fail if the key is someone else's)."""

    async def scenario() -> None:
        nc, kv = await _bucket(nats_url)
        try:
            a = KvLease(kv, "part.7", "node-a")
            assert await a.take()
            stored = await kv.update("part.7", b"node-a", last=a.revision)  # answer "lost"
            assert stored != a.revision
            assert await a.renew() and a.held
            assert a.revision > stored
            # Someone else's value at a newer revision is a loss.
            await kv.update("part.7", b"node-b", last=a.revision)
            assert not await a.renew() and not a.held
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_released_lease_is_not_kept_until_taken_again(nats_url: str) -> None:
    """A hand-over releases the key for the next holder; a renewal round that still holds
    the lease object must not take it back. (The learner reuses one object: taking it
    again makes it keepable again.)"""

    async def scenario() -> None:
        nc, kv = await _bucket(nats_url)
        try:
            a, b = KvLease(kv, "part.9", "node-a"), KvLease(kv, "part.9", "node-b")
            assert await a.take()
            await a.release()
            assert not await a.keep()  # not re-created behind the next holder's back
            assert await b.take()
            await b.release()
            assert await a.take() and await a.keep()
        finally:
            await nc.close()

    asyncio.run(scenario())
