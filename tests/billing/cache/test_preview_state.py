"""The customers due for a preview refresh (``billing.cache.preview_state``), on a real Redis: marks
coalesce, a taken customer is leased, and an event marking it during its refresh keeps it due."""

from __future__ import annotations

import asyncio

from billing.cache.store import RedisStore


async def _mark(store: RedisStore, *ids: str, now_ms: int) -> None:
    pipe = store.pipeline(transaction=False)
    store.previews.queue_mark(pipe, ids, now_ms=now_ms)
    await pipe.execute()


async def test_marks_coalesce_and_a_refresh_done_forgets_the_customer(store: RedisStore) -> None:
    state = store.previews
    await _mark(store, "cus_A", "cus_B", now_ms=1_000)
    await _mark(store, "cus_A", now_ms=2_000)  # a second event: still one entry, due since the first
    assert await state.due_count() == 2 and await state.when("cus_A") == 1_000
    taken = await state.take(5_000, 1, lease_ms=10_000)
    assert taken == [("cus_A", 15_000)]
    assert await state.take(5_000, 10, lease_ms=10_000) == [("cus_B", 15_000)]  # A is leased
    assert await state.finish("cus_A", 15_000)
    assert await state.when("cus_A") is None


async def test_an_event_during_a_refresh_keeps_the_customer_due(store: RedisStore) -> None:
    state = store.previews
    await _mark(store, "cus_A", now_ms=1_000)
    [(_, lease)] = await state.take(1_000, 10, lease_ms=10_000)
    await _mark(store, "cus_A", now_ms=3_000)  # saved while its preview was being fetched
    assert not await state.finish("cus_A", lease)
    assert not await state.retry_at("cus_A", lease, 60_000)
    assert await state.when("cus_A") == 3_000  # due at once, not after the lease nor a backoff


async def test_a_failed_refresh_backs_off_then_gives_up(store: RedisStore) -> None:
    state = store.previews
    await _mark(store, "cus_A", now_ms=1_000)
    [(_, lease)] = await state.take(1_000, 10, lease_ms=10_000)
    assert await state.failed("cus_A") == 1
    assert await state.retry_at("cus_A", lease, 6_000)  # sooner than the lease would have it
    assert await state.take(5_000, 10, lease_ms=10_000) == []
    [(_, lease)] = await state.take(6_000, 10, lease_ms=10_000)
    assert await state.failed("cus_A") == 2
    await state.give_up("cus_A")
    assert await state.when("cus_A") is None and await state.failed("cus_A") == 1  # counted afresh


async def test_refreshes_finishing_together_each_forget_their_customer(store: RedisStore) -> None:
    # Concurrent slots of a refresher finish at once: the watch on the set sees the others' writes,
    # which are not marks of this customer (each was left leased, then fetched again).
    state = store.previews
    ids = [f"cus_{n}" for n in range(40)]
    await _mark(store, *ids, now_ms=1_000)
    taken = await state.take(1_000, 100, lease_ms=10_000)
    assert len(taken) == 40
    done = await asyncio.gather(*(state.finish(c, lease) for c, lease in taken))
    assert all(done) and await state.due_count() == 0
    await _mark(store, *ids, now_ms=1_000)
    taken = await state.take(1_000, 100, lease_ms=10_000)
    retried = await asyncio.gather(*(state.retry_at(c, lease, 60_000) for c, lease in taken))
    assert all(retried) and {await state.when(c) for c in ids} == {60_000}
