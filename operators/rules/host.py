"""The rules host: one operator per rules shard that keeps the customer's facts, the deadlines and the
timers, the policy and the outputs, and calls each configured rule (operators/rules/registry.py).

What the host keeps, so no rule does (namespace "rules", one per shard). A customer's facts are one
document (state/documents.py: read once, changed in place, written once per epoch), whose sections map a
subject (a product's JSON text) to an entry with its expiry last:
    V       {product: [view_ts, event id, expires]}           last view, kept the offer's lookback
    P       {product: [purchase ts, expires]}                 last purchase, kept 2 x lookback
    R       {product: [trigger id, rule, ts, expires]}        a trigger sent, kept retraction_window
    X       {product: [message id, rule, ts, arm, expires]}   the latest trigger (arm "treated") or holdout
                                                              suppression ("holdout"), kept conversion_window
    I       {"": [[[type, value], ...], 0]}                   its identifiers: a trigger's recipient
    <code>  {product: [due, set_ms, [evidence ids], 0]}       a rule's pending deadline
    M<code> {subject: [value, expires]}                       a rule's own memory (ctx.remember)
plus the policy's C, F and G sections (operators/policy.py). Keys of their own (state/keys.py):
    D <customer>             -> the customer's document
    S <store> 0 <product>    -> [qty, ts]                    the latest stock level (inventory.levels, when read)
    W <code> <product> 0 <customer> -> b""                   who waits for a product (ctx.watch), with an expiry
    T <due> <code> <len> <customer> <product>  -> b""        its timer (state/timers.py)

A purchase is a web purchase or a till receipt whose identifiers resolve to the customer, so buying in
any channel cancels; a line with a quantity of zero or less, or a receipt of `"type": "return"`, is a
return and cancels nothing. Deadlines fire when the event-time clock (operators/clock.py) passes them
plus `[rules] purchase_grace` (5 min), so a purchase made before a deadline that reaches us a few
minutes late still cancels it; a trigger's `ts` stays the deadline. Then the policy decides: trigger,
or suppressed with the reason. Cancellations are written to the suppressed stream too. A purchase made
before a trigger's time that arrives after the trigger went out (within `[rules] retraction_window`)
gives a record on the retractions stream (`purchased_before_due`). Live (`Config.wall_clock`), a trigger
decided more than `[policy] max_delay` after its time is suppressed as `stale`.

Every operation is ordered by event time rather than arrival (a purchase cancels only what was set
before it), so applying a merged customer's history after the winner's own events gives the same state
as if the events had always been one customer's. On a merge the host retires the loser's keys (every
rule's included) and replays its history through the rules. Output records sort by (event time of the
decision, hash of its id): the same input gives the same files whatever the batch size or worker count.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import xxhash

from omnitrigger import metrics
from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.operators.policy import Policy
from omnitrigger.operators.quiet_hours import QuietHours
from omnitrigger.operators.rules.registry import HOST_TOPICS, configured_rules
from omnitrigger.operators.rules.rule import Pending, Rule, iso, trigger_id
from omnitrigger.records import (
    CONVERSIONS, IDENTITY_TOPIC, INVENTORY_TOPIC, RETRACTIONS, SUPPRESSED, TRIGGERS, VISIT_CONFIRMED, Emitted, Event, Item, Merge,
    Watermark, is_returned_line,
)
from omnitrigger.state import ShardState
from omnitrigger.state.clock import ShardClock
from omnitrigger.state.documents import Documents, drop_entry, entry, set_entry
from omnitrigger.state.keys import end_of, owned_key
from omnitrigger.state.timers import TimerQueue
from omnitrigger.io.stores import store_zones

#: The identifiers a sender needs, by channel (email and phone are the keyed hashes; the CRM matches them).
RECIPIENT_TYPES = {"push": ("device_id", "auth_id"), "email": ("email", "auth_id", "loyalty_id"),
                   "sms": ("phone", "auth_id", "loyalty_id")}
_SWEEP_EVERY_MS = 6 * 3_600_000  # each sweep seeks RocksDB and walks the epoch's writes: not too often
_SWEEP_MARGIN_MS = 86_400_000  # a late visit is never a day behind the clock
# Sections of a customer's document (the policy's are C, F and G), and the keys beside the documents.
_VIEW, _PURCHASE, _SENT, _MESSAGED, _IDENTIFIERS, _MEMORY = "V", "P", "R", "X", "I", "M"
_CUSTOMERS, _STOCK, _WATCH = b"D", b"S", b"W"
_PENDING_COUNTS = b"pending"
#: Customer documents a shard keeps decoded in memory, as a share of `[state] cache_entries`.
_DOCUMENTS_PER_CACHE_ENTRY = 1 / 8


class Rules(StageOperator):
    """The rules host (see the module docstring); implements the `RuleContext` each rule acts through."""

    name = "rules"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        self.rules: list[Rule] = configured_rules(config)
        self.by_name = {rule.name: rule for rule in self.rules}
        self.by_code = {rule.code: rule for rule in self.rules if rule.code is not None}
        self.customers = Documents(state, _CUSTOMERS, int(config.state_cache_entries * _DOCUMENTS_PER_CACHE_ENTRY))
        self.policy = Policy(self.customers, config, frozenset(self.by_name))
        self._pending_section = {rule.code: pending_section(rule) for rule in self.rules if rule.code is not None}
        self._memory_section = {code: _MEMORY + name for code, name in self._pending_section.items()}
        lookbacks = [rule.options["lookback"] for rule in self.rules if "lookback" in rule.options]
        self.lookback_ms = int(max([config.offer_lookback_s, *lookbacks]) * 1000)
        self.grace_ms = int(config.purchase_grace_s * 1000)
        self.retraction_window_ms = int(config.retraction_window_s * 1000)
        self.quiet = QuietHours(config.quiet_hours, config.timezone)
        # An in-store rule's quiet hours are the store's local time (a stores CSV `timezone` column).
        zones = store_zones(config.stores_file) if config.stores_file and any(
            rule.uses_location for rule in self.rules) else {}
        self.store_quiet = {store: QuietHours(config.quiet_hours, zone) for store, zone in zones.items()}
        # Live only (a replay has no wall clock): a trigger more than max_delay past its time is stale.
        self.max_delay_ms = int(config.max_delay_s * 1000) if config.wall_clock else 0
        self.holdout = {rule.name: holdout_share(rule, config) for rule in self.rules}
        self.conversion_window_ms = int(config.conversion_window_s * 1000)
        # Live only: pending deadlines per rule for `omnitrigger_pending_deadlines` (counted, not scanned).
        self.count_pending = config.wall_clock
        saved = state.get_meta(_PENDING_COUNTS) if self.count_pending else None
        self.pending_counts: dict[str, int] = orjson.loads(saved) if saved else {}
        for name, count in self.pending_counts.items():
            metrics.PENDING_DEADLINES.labels(name).inc(count)
        self._counts_changed = False
        self.clock = ShardClock(state, _SWEEP_EVERY_MS, _SWEEP_MARGIN_MS, remember_sweep=True)
        self.replaying = False  # applying a merged customer's history: state only, no new outputs for the past
        self.timers = TimerQueue(state, config.rule_timers_in_memory)
        self._out: list[Emitted] = []

    @property
    def watermark_ms(self) -> int:
        return self.clock.now_ms

    # -- dispatch -------------------------------------------------------------------

    def on_events(self, events: list[Item]) -> OperatorResult:
        self._out = []
        for event in events:
            kind = type(event)
            if kind is not Event:
                if kind is Watermark:
                    self._advance(event.ts_ms)
                elif kind is Merge:
                    self._on_merge(event)
                continue
            topic = event.topic
            if topic == INVENTORY_TOPIC:
                self._on_stock(event)
            elif event.customer is None:
                continue
            elif topic in HOST_TOPICS:
                self._on_fact(topic, event.customer, event.body, event.ts_ms)
            elif topic == VISIT_CONFIRMED:
                for rule in self.rules:
                    rule.on_visit(self, event.customer, event.body, event.ts_ms)
            elif topic == IDENTITY_TOPIC:
                set_entry(self.customers.open(event.customer), _IDENTIFIERS, "", [event.body["ids"]])
                if "new_types" in event.body:
                    for rule in self.rules:
                        rule.on_identity(self, event.customer, event.body, event.ts_ms)
        self.clock.save()
        if self._counts_changed:
            self.state.put_meta(_PENDING_COUNTS, orjson.dumps(self.pending_counts))
            self._counts_changed = False
        out, self._out = self._out, []
        return OperatorResult(list(events), out)

    def _on_fact(self, topic: str, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        """A web event, a till receipt or a consent change of `customer`: live, or from a merged history."""
        if topic == "web.events":
            kind = body["type"]
            if kind == "purchase":
                self._on_purchase(customer, body["items"], ts_ms, body["event_id"], body.get("channel", "web"), None)
                return
            if kind == "view_item":
                self._on_view(customer, body["product_id"], ts_ms, body["event_id"])
            for rule in self.rules:
                rule.on_web(self, customer, body, ts_ms)
        elif topic == "pos.receipts":
            if body.get("type") != "return":
                self._on_purchase(customer, body["items"], ts_ms, f"{body['terminal_id']}/{body['receipt_no']}",
                                  "pos", str(body["store_id"]) if "store_id" in body else None)  # (the journal keeps none)
        else:
            self.policy.on_consent(customer, body["channel"], body["status"], ts_ms)

    # -- the facts --------------------------------------------------------------------

    def _on_view(self, customer: str, product: Any, ts_ms: int, event_id: str) -> None:
        subject = _subject(product)
        doc = self.customers.get(customer)
        last = entry(doc, _VIEW, subject)
        if last is None or last[0] <= ts_ms:
            set_entry(self.customers.open(customer), _VIEW, subject, [ts_ms, event_id], ts_ms + self.lookback_ms)

    def _on_purchase(self, customer: str, items: list[dict[str, Any]], ts_ms: int, evidence: str,
                     channel: str | None, store: str | None) -> None:
        """Lines bought (a quantity above zero; the rest are returns) cancel what they were set before them,
        and retract what already went out for them although they were bought before its time."""
        bought = list(dict.fromkeys(item["product_id"] for item in items if not is_returned_line(item)))
        doc = self.customers.open(customer) if bought else None
        for product in bought:
            subject = _subject(product)
            last = entry(doc, _PURCHASE, subject)
            if last is None or last[0] < ts_ms:
                set_entry(doc, _PURCHASE, subject, [ts_ms], ts_ms + 2 * self.lookback_ms)
        if not bought:
            return
        for rule in self.rules:
            rule.on_purchase(self, customer, bought, ts_ms, evidence, channel)
        if not self.replaying:
            self._retract(customer, bought, ts_ms, evidence, channel)
            self._convert(customer, items, ts_ms, evidence, channel, store)

    def _retract(self, customer: str, products: list[Any], ts_ms: int, evidence: str, channel: str | None) -> None:
        """One retraction per trigger sent for these products whose time is after this purchase."""
        by_trigger: dict[str, tuple[str, int, list[Any]]] = {}
        doc = self.customers.get(customer)
        for product in products:
            subject = _subject(product)
            sent = entry(doc, _SENT, subject, ts_ms)
            if sent is None:
                continue
            sent_id, rule, sent_ms, _ = sent
            if ts_ms < sent_ms:
                drop_entry(doc, _SENT, subject)
                self.customers.changed(customer)
                by_trigger.setdefault(sent_id, (rule, sent_ms, []))[2].append(product)
        for sent_id, (rule, sent_ms, bought) in sorted(by_trigger.items()):
            record = {"retraction_id": xxhash.xxh3_128_hexdigest(f"{sent_id}\x1f{evidence}".encode())[:32],
                      "trigger_id": sent_id, "rule": rule, "customer_id": customer, "products": bought,
                      "purchase_channel": channel, "purchase_ts": iso(ts_ms), "purchase_ts_ms": ts_ms,
                      "trigger_ts": iso(sent_ms), "trigger_ts_ms": sent_ms, "evidence": [evidence],
                      "reason": "purchased_before_due", "emitted_at": iso(ts_ms)}
            self._out.append(Emitted(RETRACTIONS, _sort_key(ts_ms, record["retraction_id"]), record))

    def _convert(self, customer: str, items: list[dict[str, Any]], ts_ms: int, evidence: str, channel: str | None,
                 store: str | None) -> None:
        """A purchase of a product a message (a trigger, or a holdout's suppression) named, within the conversion
        window after it: one conversion per bought product, credited to the latest such message, once."""
        amounts: dict[Any, float] = {}
        for item in items:
            if not is_returned_line(item):
                amounts[item["product_id"]] = amounts.get(item["product_id"], 0.0) + \
                    float(item.get("qty") or 0) * float(item.get("price") or 0)
        doc = self.customers.get(customer)
        for product, amount in amounts.items():
            subject = _subject(product)
            message = entry(doc, _MESSAGED, subject, ts_ms)
            if message is None:
                continue
            message_id, rule, message_ms, arm, _ = message
            if ts_ms < message_ms:
                continue  # bought before the message's time: a retraction, not a conversion
            drop_entry(doc, _MESSAGED, subject)
            self.customers.changed(customer)
            conversion_id = xxhash.xxh3_128_hexdigest(f"{message_id}\x1f{evidence}\x1f{product}".encode())[:32]
            record = {"conversion_id": conversion_id, "trigger_id": message_id, "rule": rule, "customer_id": customer,
                      "product": product, "arm": arm, "purchase_channel": channel,
                      "store_id": store if channel == "pos" else None, "amount": round(amount, 2),
                      "delay_s": round((ts_ms - message_ms) / 1000, 3), "message_ts": iso(message_ms),
                      "message_ts_ms": message_ms, "purchase_ts": iso(ts_ms), "ts_ms": ts_ms,
                      "evidence": [evidence], "emitted_at": iso(ts_ms)}
            self._out.append(Emitted(CONVERSIONS, _sort_key(ts_ms, conversion_id), record))

    def _remember_message(self, customer: str, products: list[Any], message_id: str, rule: str, ts_ms: int,
                          arm: str) -> None:
        """What a later purchase converts: the latest message of each product, for the conversion window."""
        doc = self.customers.open(customer)
        for product in products:
            subject = _subject(product)
            message = entry(doc, _MESSAGED, subject, ts_ms)
            if message is None or message[2] <= ts_ms:
                set_entry(doc, _MESSAGED, subject, [message_id, rule, ts_ms, arm], ts_ms + self.conversion_window_ms)

    def bought_since(self, customer: str, product: Any, ts_ms: int) -> bool:
        last = entry(self.customers.get(customer), _PURCHASE, _subject(product))
        return last is not None and last[0] >= ts_ms

    def views(self, customer: str) -> list[tuple[Any, int, str]]:
        """(product, view ts, event id) of the customer's last views still kept, in the order of the products' JSON."""
        doc = self.customers.get(customer)
        section = doc.get(_VIEW) if doc is not None else None
        return [(orjson.loads(subject), *section[subject][:2]) for subject in sorted(section)] if section else []

    def _on_stock(self, event: Event) -> None:
        """A stock level: kept per (store, product), the latest by event time winning; rules hear of changes."""
        body = event.body
        store, product, qty = str(body["store_id"]), body["product_id"], body["qty"]
        key = _stock_key(store, product)
        raw = self.state.get(key)
        previous = orjson.loads(raw) if raw is not None else None
        if previous is not None and previous[1] > event.ts_ms:
            return  # an older level, late: the newer one stands
        self.state.put(key, orjson.dumps([qty, event.ts_ms]))
        evidence = str(body.get("event_id") or f"stock:{store}:{product}:{event.ts_ms}")
        for rule in self.rules:
            rule.on_stock(self, store, product, qty, previous[0] if previous is not None else None, event.ts_ms,
                          evidence)

    def stock(self, store: str, product: Any) -> float | None:
        """Units of `product` in `store` ("online": the web shop) by the latest level, or None if never told."""
        raw = self.state.get(_stock_key(store, product))
        return orjson.loads(raw)[0] if raw is not None else None

    def watch(self, rule: Rule, product: Any, customer: str, expires_ms: int) -> None:
        """Note that `customer` waits for `product` (an index by product; retired customers drop out when read)."""
        self.state.put(_watch_key(rule, product, customer), b"", expires_ms)

    def watchers(self, rule: Rule, product: Any) -> list[str]:
        """The customers watching `product` for `rule`, each once; the index entries are removed."""
        start = _watch_key(rule, product, "")
        customers = []
        for key, _ in self.state.scan(start, end_of(start), self.watermark_ms):
            self.state.delete(key)
            customers.append(key[len(start):].decode())
        return customers

    def forget(self, rule: Rule, customer: str, subject: Any) -> None:
        if drop_entry(self.customers.get(customer), self._memory_section[rule.code], _subject(subject)):
            self.customers.changed(customer)

    def is_quiet(self, ts_ms: int, store: str | None = None) -> bool:
        return self.store_quiet.get(store, self.quiet).is_quiet(ts_ms) if store else self.quiet.is_quiet(ts_ms)

    # -- deadlines ----------------------------------------------------------------------

    def pending(self, rule: Rule, customer: str, product: Any) -> Pending | None:
        found = entry(self.customers.get(customer), self._pending_section[rule.code], _subject(product))
        return found[:-1] if found is not None else None

    def pending_of(self, rule: Rule, customer: str) -> list[tuple[Any, Pending]]:
        doc = self.customers.get(customer)
        section = doc.get(self._pending_section[rule.code]) if doc is not None else None
        return [(orjson.loads(subject), section[subject][:-1]) for subject in sorted(section)] if section else []

    def drop_pending(self, rule: Rule, customer: str, product: Any) -> None:
        """Remove a pending deadline that is there (it fired, was cancelled, or went along with another)."""
        drop_entry(self.customers.get(customer), self._pending_section[rule.code], _subject(product))
        self.customers.changed(customer)
        if self.count_pending:
            self._count(rule.name, -1)

    def _count(self, rule: str, delta: int) -> None:
        self.pending_counts[rule] = self.pending_counts.get(rule, 0) + delta
        metrics.PENDING_DEADLINES.labels(rule).inc(delta)
        self._counts_changed = True

    def remember(self, rule: Rule, customer: str, subject: Any, value: Any, expires_ms: int) -> None:
        """Keep `value` for the rule and customer until `expires_ms` (event time); retired with the customer."""
        set_entry(self.customers.open(customer), self._memory_section[rule.code], _subject(subject), [value], expires_ms)

    def recall(self, rule: Rule, customer: str, subject: Any) -> Any:
        """What `remember` kept, or None once it expired."""
        found = entry(self.customers.get(customer), self._memory_section[rule.code], _subject(subject),
                      self.watermark_ms)
        return found[0] if found is not None else None

    def schedule(self, rule: Rule, customer: str, product: Any, set_ms: int, event_id: str,
                 evidence: list[str] | None = None, delay_ms: int | None = None) -> None:
        due = set_ms + (rule.delay_ms() if delay_ms is None else delay_ms)
        deadline = self.quiet.defer(due) if getattr(rule, "quiet_hours", False) else due  # night waits for morning
        evidence = evidence or [event_id]
        if deadline + self.grace_ms <= self.watermark_ms:  # later than the lateness and the grace: too late to remind
            if not self.replaying:
                self.suppress(rule, customer, [product], deadline, "late_event", evidence, None)
            return
        doc = self.customers.open(customer)
        section, subject = self._pending_section[rule.code], _subject(product)
        if self.count_pending and entry(doc, section, subject) is None:
            self._count(rule.name, 1)
        set_entry(doc, section, subject, [deadline, set_ms, evidence])
        self.timers.schedule(deadline, rule.code, customer, orjson.dumps(product))

    def cancel(self, rule: Rule | str, customer: str, product: Any, ts_ms: int, reason: str, evidence: str,
               channel: str | None) -> None:
        """Cancel a pending deadline set at or before `ts_ms` and due after it (one due earlier stands)."""
        rule = self.by_name[rule] if isinstance(rule, str) else rule
        pending = self.pending(rule, customer, product)
        if pending is None or pending[1] > ts_ms or pending[0] <= ts_ms:
            return
        self.drop_pending(rule, customer, product)
        if self.replaying:
            return
        record = self._record(rule.name, customer, [product], ts_ms, None, pending[2] + [evidence], None)
        record["reason"] = reason
        if channel is not None:
            record["purchase_channel" if reason == "purchased" else "channel_of_event"] = channel
        self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"] + reason), record))

    def fire(self, rule: Rule, customer: str, product: Any, pending: Pending) -> None:
        """A pending deadline is due: it leaves the state (its timer, if any, is stale now) and the rule decides."""
        self.drop_pending(rule, customer, product)
        rule.on_due(self, customer, product, pending)

    def _advance(self, watermark_ms: int) -> None:
        if not self.clock.advance(watermark_ms):
            return
        # A deadline fires once the clock has passed it plus the grace.
        for timer in self.timers.pop_due(watermark_ms - self.grace_ms):
            rule = self.by_code.get(timer.kind)
            if rule is None:
                continue
            product = orjson.loads(timer.payload)
            pending = self.pending(rule, timer.owner, product)
            if pending is None or pending[0] != timer.due_ms:
                continue  # moved, cancelled, fired early, or retired by a merge
            self.fire(rule, timer.owner, product, pending)
        # Expired views, purchases and caps leave the disk too, once no decision can look at them any more:
        # every deadline up to the watermark has fired, and a late visit is never a day behind it.
        cutoff = self.clock.sweep_if_due()
        if cutoff is not None:
            self.customers.sweep(cutoff)

    # -- policy and output --------------------------------------------------------------------

    def decide(self, rule: Rule, customer: str, products: list[Any], ts_ms: int, store: str | None,
               evidence: list[str], subject: str | None = None) -> None:
        decision = self.policy.decide(rule.name, customer, products, ts_ms, needs_location=rule.uses_location)
        record = self._record(rule.name, customer, decision.products, ts_ms, store, evidence, decision.channel,
                              subject)
        reason = decision.reason
        delay_ms = wall_clock_ms() - ts_ms if reason is None and self.max_delay_ms else 0
        if delay_ms > self.max_delay_ms:
            reason = "stale"  # a backlog or an outage: a reminder this late reads as spam; not sent, it uses no cap
        if reason is None:
            # Both arms take the caps and can convert: the control group is exactly the trigger that would have
            # gone out, kept back (reason holdout), so the arms meet the same policy.
            arm = "holdout" if held_out(rule, customer, self.holdout[rule.name]) else "treated"
            self.policy.record_trigger(rule.name, customer, decision.products, ts_ms)
            self._remember_message(customer, decision.products, record["trigger_id"], rule.name, ts_ms, arm)
            if arm == "holdout":
                reason = "holdout"
        if reason is not None:
            record["reason"] = reason
            if reason == "stale":
                record["delay_s"] = round(delay_ms / 1000, 1)
            self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"]), record))
            return
        record["recipient"] = self._recipient(customer, decision.channel)
        doc = self.customers.open(customer)
        for product in decision.products:  # a purchase made before ts_ms that arrives later retracts it
            set_entry(doc, _SENT, _subject(product), [record["trigger_id"], rule.name, ts_ms],
                      ts_ms + self.retraction_window_ms)
        self._out.append(Emitted(TRIGGERS, _sort_key(ts_ms, record["trigger_id"]), record))

    def _recipient(self, customer: str, channel: str | None) -> dict[str, list[str]]:
        """Whom the sender addresses on `channel`: the customer's identifiers of the kinds it needs, now."""
        found = entry(self.customers.get(customer), _IDENTIFIERS, "")
        wanted = RECIPIENT_TYPES.get(channel or "", ())
        recipient: dict[str, list[str]] = {}
        for kind, value in (found[0] if found is not None else []):
            if kind in wanted:
                recipient.setdefault(kind, []).append(value)
        return {kind: sorted(values) for kind, values in sorted(recipient.items())}

    def suppress(self, rule: Rule, customer: str, products: list[Any], ts_ms: int, reason: str,
                 evidence: list[str], store: str | None) -> None:
        record = self._record(rule.name, customer, products, ts_ms, store, evidence, None)
        record["reason"] = reason
        self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"] + reason), record))

    def _record(self, rule: str, customer: str, products: list[Any], ts_ms: int, store: str | None,
                evidence: list[str], channel: str | None, subject: str | None = None) -> dict[str, Any]:
        """The output record. `emitted_at` is the event time it fired at; live mode's Kafka sink stamps the wall clock."""
        subject = subject if subject is not None else str(products[0])
        when = iso(ts_ms)
        return {"trigger_id": trigger_id(rule, customer, subject, ts_ms), "rule": rule, "customer_id": customer,
                "ts": when, "ts_ms": ts_ms, "channel": channel, "products": products, "store_id": store,
                "evidence": evidence, "emitted_at": when}

    # -- merges -----------------------------------------------------------------------------------

    def _on_merge(self, merge: Merge) -> None:
        """Retire the loser's state (its shard) and replay its history into the winner (the winner's shard)."""
        role, winner, loser = merge.role, merge.winner, merge.loser
        if role in ("retire", "both"):  # every fact of the loser's goes (its consents travel in the merge)
            doc = self.customers.get(loser)
            if doc is not None and self.count_pending:
                for code, section in self._pending_section.items():
                    if doc.get(section):
                        self._count(self.by_code[code].name, -len(doc[section]))
            self.customers.delete(loser)
        if role in ("absorb", "both"):
            # The loser's consents whatever their age (the sequencer keeps them as long as the identifiers).
            if merge.consents:
                self.policy.merge_consents(winner, merge.consents)
            self.replaying = True
            for _seq, topic, ts_ms, event_body in merge.history:
                # a past visit confirmation is not replayed: its offer was decided when it happened
                if topic in HOST_TOPICS:
                    self._on_fact(topic, winner, event_body, ts_ms)
                elif topic == IDENTITY_TOPIC:  # journaled for a welcome rule
                    for rule in self.rules:
                        rule.on_identity(self, winner, event_body, ts_ms)
            self.replaying = False


def customer_document(state: ShardState, customer: str) -> dict[str, Any] | None:
    """A customer's document as the shard last committed it, for readers of a run's state (`omnitrigger explain`)."""
    raw = state.get(_CUSTOMERS + customer.encode())
    return orjson.loads(raw) if raw is not None else None


def pending_section(rule: Rule) -> str:
    """The section of a customer's document that holds `rule`'s pending deadlines."""
    return chr(rule.code)


#: Product ids seen lately -> their section keys: a few thousand products come again and again.
_SUBJECTS: dict[Any, str] = {}
_SUBJECTS_KEPT = 100_000


def _subject(product: Any) -> str:
    """A product (or a rule memory's subject) as a section's key: its JSON text, so "1" and 1 stay apart."""
    if type(product) is str:  # an id (ints too would meet 1.0 and True in one dict key)
        known = _SUBJECTS.get(product)
        if known is None:
            if len(_SUBJECTS) >= _SUBJECTS_KEPT:
                _SUBJECTS.clear()  # a text's key never changes: starting afresh only costs the dumps again
            known = _SUBJECTS[product] = orjson.dumps(product).decode()
        return known
    return orjson.dumps(product).decode()


def _stock_key(store: str, product: Any) -> bytes:
    return owned_key(_STOCK, store, product)


def _watch_key(rule: Rule, product: Any, customer: str) -> bytes:
    return _WATCH + bytes((rule.code,)) + orjson.dumps(product) + b"\x00" + customer.encode()


def holdout_share(rule: Rule, config: Any) -> float:
    """The share of customers held out of `rule`: its table's `holdout`, else `[policy] holdout`."""
    return rule.options.get("holdout", config.holdout)


def held_out(rule: Rule, customer: str, share: float) -> bool:
    """Whether `customer` is in `rule`'s control group: a hash of the customer id and the rule's salt (its
    `holdout_salt`, by default its name) below `share`. The same on every run and restart; after a merge the
    winner's id, so the winner's assignment, holds."""
    if share <= 0:
        return False
    salt = rule.options.get("holdout_salt", rule.name)
    return xxhash.xxh3_64_intdigest(f"{salt}\x1f{customer}".encode()) < share * 18446744073709551616


def wall_clock_ms() -> int:
    """Now, by the wall clock: only live mode's stale check asks (`Config.wall_clock`)."""
    return int(time.time() * 1000)


def _sort_key(ts_ms: int, identity: str) -> tuple[int, int]:
    return ts_ms, xxhash.xxh3_64_intdigest(identity.encode())
