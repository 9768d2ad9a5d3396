"""Customer history: a short journal of each customer's rule-relevant events, carried across merges.

Bytewax dataflows have no loops, so when identity merges two customers the
rules cannot ask upstream for the loser's past. Instead this operator, in
the same stage as identity, journals every rule-relevant event (views, cart
changes, purchases online and at a till, consent changes, confirmed
visits) under its customer, and when a `Merge` record passes it
re-files the loser's journal under the winner and attaches it to the merge
record as `history`: the rules, whichever shard holds the winner, replay it
into the winner's state and retire the loser (docs/design.md#bytewax-dataflows-have-no-loops). The
shape's ceiling is the identity stage: one shard, one core.

The journal holds rule facts, not raw events: of each event only the
fields a rule reads (type, products and quantities, event id, channel,
till and receipt number; no identifiers, no unknown fields). A fact is
kept `history_retention_s` (30 days) after its event time, or longer when a
rule's deadline may still depend on it (`[rules] browse_abandoned_after =
"40d"`: a view and the purchases after it are kept until that deadline
and the purchase grace have passed), so on a merge every pending deadline
and the facts it needs move to the winner whatever their age. A merge
carries at most the latest `history_max_events`.

Consent is a fact of the identifiers, not of the journal: the latest change
per channel (and purpose) of each customer is kept as long as identifiers
are (`[identity] retention`), merged into the winner's on a merge (the
latest change wins) and attached to the merge record as `consents`, so an
opt-out of any age is in force after any merge.

State (namespace "history"):
    h <customer id> NUL <seq: 8 bytes> -> [topic, ts_ms, fact]
    k <customer id>                    -> {channel: [status, ts_ms]}
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.operators.rules.registry import longest_delay_ms, rule_topics
from omnitrigger.records import IDENTITY_TOPIC, Event, Heartbeat, Item, Merge, Progress
from omnitrigger.state import ShardState
from omnitrigger.state.clock import ShardClock

#: Topics whose events a rule may need after a merge.
log = logging.getLogger("omnitrigger.history")


class History(StageOperator):
    name = "history"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        # Long enough for every deadline a fact can set or cancel, plus the grace and the clock's lateness.
        longest_deadline_s = longest_delay_ms(config) / 1000
        needed_s = longest_deadline_s + config.purchase_grace_s + config.rules_lateness_s + 3600
        self.journaled = rule_topics(config)
        self.retention_ms = int(max(config.history_retention_s, needed_s) * 1000)
        self.consent_retention_ms = int(config.identifier_retention_s * 1000)
        self.max_events = config.history_max_events
        self.clock = ShardClock(state, sweep_every_ms=3_600_000)

    def on_events(self, events: list[Item]) -> OperatorResult:
        out: list[Item] = []
        for event in events:
            kind = type(event)
            if kind is Progress:  # the end of the sequencer's hand-off (operators/handoff.py): no time of its own
                out.append(event)
                continue
            self.clock.advance(event.wall_ms if kind is Heartbeat else event.ts_ms)  # an idle source: its wall clock
            if kind is Merge:
                journal = self._move(event.loser, event.winner)
                consents = self._merge_consents(event.loser, event.winner)
                out.append(event._replace(history=journal, consents=consents))
                continue
            if kind is not Event:  # another control record
                out.append(event)
                continue
            if event.customer is not None and event.topic == "consent.changes":
                self._on_consent(event.customer, event.body["channel"], event.body["status"], event.ts_ms)
            if event.customer is not None and event.topic in self.journaled and \
                    (event.topic != IDENTITY_TOPIC or "new_types" in event.body):
                entry = _journal_entry(event)
                if entry is not None:
                    self.state.put(_entry_key(event.customer, event.seq), entry, event.ts_ms + self.retention_ms)
            out.append(event)
        self.clock.save()
        self.clock.sweep_if_due()
        return OperatorResult(out, [])

    def consents(self, customer: str) -> dict[str, list[Any]]:
        """The customer's latest consent change per channel and purpose: {channel: [status, ts_ms]}."""
        raw = self.state.get(b"k" + customer.encode(), self.clock.now_ms)
        return orjson.loads(raw) if raw else {}

    def _on_consent(self, customer: str, channel: str, status: str, ts_ms: int,
                    consents: dict[str, list[Any]] | None = None) -> None:
        consents = self.consents(customer) if consents is None else consents
        current = consents.get(channel)
        if current is None or current[1] <= ts_ms:
            consents[channel] = [status, ts_ms]
            latest = max(change[1] for change in consents.values())
            self.state.put(b"k" + customer.encode(), orjson.dumps(consents, option=orjson.OPT_SORT_KEYS),
                           latest + self.consent_retention_ms)

    def _merge_consents(self, loser: str, winner: str) -> dict[str, list[Any]]:
        """Move the loser's consents into the winner's (latest change per channel wins); returns the loser's."""
        lost = self.consents(loser)
        if lost:
            self.state.delete(b"k" + loser.encode())
            kept = self.consents(winner)
            for channel, (status, ts_ms) in sorted(lost.items()):
                self._on_consent(winner, channel, status, ts_ms, kept)
        return lost

    def journal(self, customer: str) -> list[list[Any]]:
        """The customer's live journal, oldest first: [seq, topic, ts_ms, body] each."""
        prefix = b"h" + customer.encode() + b"\x00"
        return [[int.from_bytes(key[-8:], "big"), *orjson.loads(value)]
                for key, value in self.state.scan(prefix, prefix + b"\xff" * 9, self.clock.now_ms)]

    def _move(self, loser: str, winner: str) -> list[list[Any]]:
        prefix = b"h" + loser.encode() + b"\x00"
        entries = self.state.scan(prefix, prefix + b"\xff" * 9, self.clock.now_ms)
        for key, _ in entries:
            self.state.delete(key)
        kept = entries[-self.max_events:]
        journal: list[list[Any]] = []
        for key, value in kept:
            seq = int.from_bytes(key[-8:], "big")
            topic, ts_ms, body = orjson.loads(value)
            self.state.put(_entry_key(winner, seq), value, ts_ms + self.retention_ms)
            journal.append([seq, topic, ts_ms, body])
        return journal


def rule_fact(topic: str, body: dict[str, Any]) -> dict[str, Any]:
    """What a rule reads of an event (operators/rules/host.py `_on_fact`): the journal keeps only this."""
    if topic == "web.events":
        fact = {key: body[key] for key in ("event_id", "type", "channel", "product_id") if key in body}
    elif topic == "pos.receipts":
        fact = {key: body[key] for key in ("terminal_id", "receipt_no", "type") if key in body}
    elif topic == "consent.changes":
        return {key: body[key] for key in ("event_id", "channel", "status") if key in body}
    elif topic == IDENTITY_TOPIC:  # journaled only for a welcome rule: the types, never the identifiers
        return {key: body[key] for key in ("new_types", "known_types", "source") if key in body}
    else:
        return body  # a visit confirmation: omnitrigger's own record
    if "items" in body:
        fact["items"] = [{"product_id": item["product_id"], "qty": item.get("qty")} for item in body["items"]]
    return fact


def _journal_entry(event: Event) -> bytes | None:
    """The journal value of `event` (its rule fact), or None (logged) when it cannot be written.

    The contract check keeps bodies far shallower than orjson's 254 levels
    ([contracts] max_depth), so this is a last line of defence: an event the
    journal cannot hold goes on without being journaled, rather than
    stopping the flow on every resume.
    """
    try:
        return orjson.dumps([event.topic, event.ts_ms, rule_fact(event.topic, event.body)])
    except orjson.JSONEncodeError as error:
        log.warning("event not journaled, it cannot be written as JSON",
                    extra={"fields": {"seq": event.seq, "topic": event.topic, "error": str(error)}})
        return None


def _entry_key(customer: str, seq: int) -> bytes:
    return b"h" + customer.encode() + b"\x00" + seq.to_bytes(8, "big")
