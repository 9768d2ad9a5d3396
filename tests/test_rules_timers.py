"""The rules' bounded timer queue: the same decisions, in the same order, whatever `[rules] timers_in_memory`.

A seeded mix of views, adds, removes, purchases, consents and watermarks for a few hundred customers
runs through one rules shard on RocksDB, committing every batch and rebuilding the operator from
the state now and then (a restart), with the queue bound at 1, 2, 7 and 50 timers: every run must
emit exactly what a run with every timer in memory emits, and never hold more than the bound.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from omnitrigger.config import Config
from omnitrigger.operators import Rules
from omnitrigger.operators.clock import watermark_event
from omnitrigger.records import Event
from omnitrigger.state import RocksDBStore, ShardState
from omnitrigger.state.timers import TimerQueue, decode_timer

MINUTE = 60_000
T0 = 1_764_000_000_000
CONFIG = Config(cart_abandoned_after_s=600, browse_abandoned_after_s=1800, rules_lateness_s=0)


def workload(seed: int = 11, batches: int = 120) -> list[list[Event]]:
    rng = random.Random(seed)
    out: list[list[Event]] = []
    seq, ts = 0, T0
    for _ in range(batches):
        batch: list[Event] = []
        for _ in range(rng.randrange(1, 25)):
            seq += 1
            ts += rng.randrange(0, 20_000)
            customer = f"cus_{rng.randrange(300):024d}"
            product = str(rng.randrange(12))
            roll = rng.random()
            base = {"event_id": f"e{seq}", "ts": ts, "channel": "web"}
            if roll < 0.35:
                body: dict[str, Any] = {**base, "type": "view_item", "product_id": product}
            elif roll < 0.65:
                body = {**base, "type": "add_to_cart", "product_id": product}
            elif roll < 0.75:
                body = {**base, "type": "remove_from_cart", "product_id": product}
            elif roll < 0.88:
                body = {**base, "type": "purchase", "items": [{"product_id": product, "qty": 1, "price": 1.0}]}
            else:
                topic_body = {**base, "channel": rng.choice(("push", "email")), "status": "granted"}
                batch.append(Event(seq, "consent.changes", 0, seq, ts, topic_body, customer))
                continue
            # events up to a few minutes late, as the lateness lets through
            late = ts - rng.randrange(0, 4 * MINUTE) if rng.random() < 0.2 else ts
            batch.append(Event(seq, "web.events", 0, seq, late, {**body, "ts": late}, customer))
        if rng.random() < 0.7:
            batch.append(watermark_event(seq, ts - rng.randrange(0, 5 * MINUTE)))
        out.append(batch)
    out.append([watermark_event(seq + 1, ts + 3_600_000)])  # everything left fires
    return out


def run(path: Path, timers_in_memory: int | None) -> tuple[list[Any], int]:
    config = CONFIG if timers_in_memory is None else CONFIG.with_overrides(rule_timers_in_memory=timers_in_memory)
    store = RocksDBStore(path)
    emitted: list[Any] = []
    most = 0
    rules = Rules(ShardState(store, Rules.name, 0), config)
    for n, batch in enumerate(workload()):
        emitted += rules.on_events(batch).emitted
        most = max(most, rules.timers.in_memory_now())
        rules.state.commit()
        if n % 17 == 16:  # a restart: the queue is rebuilt from the state
            rules = Rules(ShardState(store, Rules.name, 0), config)
    store.close()
    return emitted, most


@pytest.fixture(scope="module")
def unbounded(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    emitted, _ = run(tmp_path_factory.mktemp("unbounded") / "db", 10**9)
    assert len(emitted) > 200  # the mix fires, cancels and suppresses plenty
    return emitted


@pytest.mark.parametrize("bound", [1, 2, 7, 50])
def test_a_bounded_timer_queue_decides_exactly_as_an_unbounded_one(tmp_path: Path, unbounded: list[Any],
                                                                   bound: int) -> None:
    emitted, most = run(tmp_path / "db", bound)
    assert emitted == unbounded
    assert most <= bound


def test_the_default_bound_decides_the_same(tmp_path: Path, unbounded: list[Any]) -> None:
    emitted, _ = run(tmp_path / "db", None)
    assert emitted == unbounded


def _timers_in(state: ShardState) -> list[str]:
    """The owners of the timers the store holds (committed), in key order."""
    return [decode_timer(key).owner for key, _ in state.iter_committed(b"T", b"U")]


def test_a_timer_reaches_the_state_at_a_commit_only_if_it_has_not_fired(tmp_path: Path) -> None:
    """A timer set and fired within one epoch costs the state nothing; one still waiting at a commit is in it,
    so a restart from that commit fires it."""
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, Rules.name, 0)
    queue = TimerQueue(state, in_memory=100)
    queue.schedule(T0 + 1_000, ord("A"), "cus_a", b'"p1"')
    queue.schedule(T0 + 2_000, ord("A"), "cus_b", b'"p2"')
    assert [timer.owner for timer in queue.pop_due(T0 + 1_500)] == ["cus_a"]
    assert state.pending_changes() == 1  # cus_b's, held for the commit; cus_a's never written
    state.commit()
    assert _timers_in(state) == ["cus_b"]
    restarted = TimerQueue(ShardState(store, Rules.name, 0), in_memory=100)
    assert [timer.owner for timer in restarted.pop_due(T0 + 2_500)] == ["cus_b"]
    store.close()


def test_timers_shed_from_a_full_heap_are_written_at_once_and_fire_in_order(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    state = ShardState(store, Rules.name, 0)
    queue = TimerQueue(state, in_memory=2)
    for n in (5, 1, 4, 2, 3, 3):  # out of order, one set twice
        queue.schedule(T0 + n * 1_000, ord("A"), f"cus_{n}", b'"p"')
    assert queue.in_memory_now() <= 2
    shed = [decode_timer(key).owner for key, _ in state.scan(b"T", b"U")]
    assert shed and "cus_1" not in shed  # the later ones, in the state's pending writes already
    state.commit()  # and the ones still in the heap now
    everyone = ["cus_1", "cus_2", "cus_3", "cus_4", "cus_5"]  # in due order; the timer set twice is one key
    restarted = TimerQueue(ShardState(store, Rules.name, 0), in_memory=2)
    assert [timer.owner for timer in restarted.pop_due(T0 + 9_000)] == everyone
    assert [timer.owner for timer in queue.pop_due(T0 + 9_000)] == everyone  # as when each timer was written when set
    store.close()
