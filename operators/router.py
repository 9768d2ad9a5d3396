"""Routing from the sequencer to the rules shards, with the watermark each shard needs.

The rules run on `rule_shards` fixed shard keys, a customer on the shard of
a hash of its id. Each shard gets, in input order, the events of its
customers, each preceded by the global watermark if it moved since that
shard last heard of it, plus the latest watermark at the end of a batch:
always when the batch had events for it, and to a shard it had nothing else
for once the watermark has moved `IDLE_WATERMARK_STEP_MS` past what that
shard heard (or at the end of the input). A live batch holds a few
milliseconds of records, and a watermark alone cost each of the 16 shards
a delivery every batch; a deadline now fires at most that step later. A
shard fires its deadlines before exactly the same events whatever the batch
size or the number of workers, which is what keeps the triggers identical.
A merge goes to both customers' shards: the loser's retires its state, the
winner's absorbs its history (one copy, role "both", when they share a
shard).

Stock levels (`inventory.levels`, when a rule reads them) go to every
shard, in order like everything else: each shard keeps the levels its
customers' rules need. Events no rule reads (geo pings, identity links,
events with no customer) stop here. Nothing is stored: after a restart a shard may hear a watermark
twice, which changes nothing.
"""

from __future__ import annotations

import xxhash

from omnitrigger.operators.clock import watermark_event
from omnitrigger.records import IDENTITY_TOPIC, VISIT_CONFIRMED, Event, Item, Merge, Watermark

#: The topics the built-in rules read (a config's rules: operators/rules/registry.py `rule_topics`).
RULE_TOPICS = frozenset({"web.events", "pos.receipts", "consent.changes", VISIT_CONFIRMED})


#: How far the watermark moves before a shard that had no events in a batch hears it (event time).
IDLE_WATERMARK_STEP_MS = 100


def shard_of(customer: str, shards: int) -> int:
    return xxhash.xxh3_64_intdigest(customer.encode()) % shards


def shard_key(shard: int) -> str:
    return f"rules-{shard:04d}"


class ShardRouter:
    def __init__(self, shards: int, topics: frozenset[str] = RULE_TOPICS,
                 broadcast: frozenset[str] = frozenset()) -> None:
        """`topics`: what the rules read of a customer (`rule_topics(config)`); `broadcast`: what every shard
        reads, customer or not (stock levels: `broadcast_topics(config)`); the rest stops here."""
        self.shards = shards
        self.topics = topics
        self.broadcast = broadcast
        self.watermark_ms = 0
        self._told: dict[int, int] = {}  # shard -> the last watermark it was sent

    def route(self, events: list[Item], final: bool = False) -> dict[int, list[Item]]:
        """Each shard's items of `events`, watermarks included; `final`: the end of the input, when every shard
        hears the last watermark."""
        routed: dict[int, list[Item]] = {}
        last_seq = -1
        for event in events:
            last_seq = event.seq
            kind = type(event)
            if kind is Watermark:
                self.watermark_ms = max(self.watermark_ms, event.ts_ms)
            elif kind is Merge:
                winner_shard, loser_shard = shard_of(event.winner, self.shards), shard_of(event.loser, self.shards)
                if winner_shard == loser_shard:
                    self._send(routed, winner_shard, event._replace(role="both"))
                else:
                    self._send(routed, loser_shard, event._replace(role="retire"))
                    self._send(routed, winner_shard, event._replace(role="absorb"))
            elif kind is not Event:  # a control record no shard needs
                continue
            elif event.customer is not None and (event.topic in self.topics or event.topic == IDENTITY_TOPIC):
                self._send(routed, shard_of(event.customer, self.shards), event)
            elif event.topic in self.broadcast:
                for shard in range(self.shards):
                    self._send(routed, shard, event)
        if last_seq >= 0:
            watermark = self.watermark_ms
            idle_below = watermark if final else watermark - IDLE_WATERMARK_STEP_MS
            for shard in range(self.shards):
                told = self._told.get(shard, 0)
                if told < watermark and (shard in routed or told <= idle_below):
                    routed.setdefault(shard, []).append(watermark_event(last_seq, watermark))
                    self._told[shard] = watermark
        return routed

    def _send(self, routed: dict[int, list[Item]], shard: int, event: Item) -> None:
        batch = routed.setdefault(shard, [])
        if self._told.get(shard, 0) < self.watermark_ms:
            batch.append(watermark_event(event.seq, self.watermark_ms))
            self._told[shard] = self.watermark_ms
        batch.append(event)
