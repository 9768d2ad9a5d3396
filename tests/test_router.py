"""The router's watermarks: before each event of a shard, and at a batch's end to the shards that need it.

A shard that had no event in a batch hears the watermark only once it has moved IDLE_WATERMARK_STEP_MS past
what that shard last heard, and every shard hears the last one at the end of the input; the replay's
outputs do not depend on it (the golden digests and the conformance suite's batch sizes).
"""

from __future__ import annotations

from omnitrigger.operators.router import IDLE_WATERMARK_STEP_MS, ShardRouter, shard_of
from omnitrigger.records import Event, Watermark

SHARDS = 4


def customer_on(shard: int) -> str:
    return next(f"cus_{n}" for n in range(1000) if shard_of(f"cus_{n}", SHARDS) == shard)


def view(seq: int, ts_ms: int, customer: str) -> Event:
    return Event(seq, "web.events", 0, seq, ts_ms, {"type": "view_item", "product_id": "P1"}, customer)


def watermarks(routed: dict[int, list], shard: int) -> list[int]:
    return [item.ts_ms for item in routed.get(shard, []) if type(item) is Watermark]


def test_a_shard_without_events_in_a_batch_hears_the_watermark_once_it_moved_a_step() -> None:
    router = ShardRouter(SHARDS)
    busy, idle = 0, 1
    first = router.route([Watermark(0, 1_000), view(0, 1_000, customer_on(busy))])
    assert watermarks(first, busy) == [1_000] and watermarks(first, idle) == [1_000]  # never told before
    step = IDLE_WATERMARK_STEP_MS
    small = router.route([Watermark(1, 1_000 + step - 1), view(1, 1_000 + step - 1, customer_on(busy))])
    assert watermarks(small, busy) == [1_000 + step - 1]  # before its event
    assert idle not in small  # moved less than a step: no delivery of a watermark alone
    enough = router.route([Watermark(2, 1_000 + step), view(2, 1_000 + step, customer_on(busy))])
    assert watermarks(enough, idle) == [1_000 + step]


def test_a_shard_with_an_event_hears_the_batch_end_watermark_whatever_the_step() -> None:
    router = ShardRouter(SHARDS)
    shard = 2
    router.route([Watermark(0, 1_000), view(0, 1_000, customer_on(shard))])
    routed = router.route([view(1, 1_000, customer_on(shard)), Watermark(2, 1_010)])
    assert routed[shard][0].seq == 1 and watermarks(routed, shard) == [1_010]


def test_the_end_of_the_input_tells_every_shard_the_last_watermark() -> None:
    router = ShardRouter(SHARDS)
    router.route([Watermark(0, 1_000), view(0, 1_000, customer_on(0))])
    routed = router.route([Watermark(1, 1_001)], final=True)
    assert all(watermarks(routed, shard) == [1_001] for shard in range(SHARDS))
