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
