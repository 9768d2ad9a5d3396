"""The trigger rules: cart and browse abandonment, in-store offers, with cross-channel suppression.

Exactly as DESIGN.md section 3 defines them:
  cart_abandoned     add_to_cart(C, P) at t sets a deadline t + 60 min; a later add of P moves it;
                     a purchase of P or remove_from_cart(P) cancels it; at the deadline it fires,
                     with C's other cart deadlines due within `cart_group_window` (10 min) of it;
                     the add cancels a pending browse reminder of P (`moved_to_cart`).
  browse_abandoned   the first view_item(C, P) with none pending sets a deadline t + 24 h;
                     a purchase of P cancels it; at the deadline it fires.
  store_visit_offer  at a confirmed visit of C to store S at v: the products C viewed in
                     [v - 24 h, v) and did not buy after that view, most recent first, at most 5.
A purchase is a web purchase or a till receipt whose identifiers resolve to C, so buying in any
channel cancels; a line with a quantity of zero or less, or a receipt of `"type": "return"`, is a
return and cancels nothing. Deadlines fire when the event-time clock (operators/clock.py) passes
them plus `[rules] purchase_grace` (5 min), so a purchase made before a deadline that reaches us a
few minutes late (POS change-data-capture lags) still cancels it; a trigger's `ts` stays the
deadline. Then the policy (operators/policy.py) decides: trigger, or suppressed with the reason.
Cancellations are written to the suppressed stream too (reasons `purchased`, `removed_from_cart`),
so a marketer can see why a reminder never went. A purchase made before a trigger's time that
arrives after the trigger went out (within `[rules] retraction_window`, a day) gives a record on
the retractions stream (`purchased_before_due`), so a sender can still cancel a queued message.

One instance per rules shard; customers are spread over shards by a hash of their id. Every
operation is ordered by event time rather than arrival (a purchase cancels only what was set
before it), so applying a merged customer's history after the winner's own events gives the
same state as if the events had always been one customer's.

Output records sort by (event time of the decision, hash of its id): the same input gives the
same files whatever the batch size or worker count.

State (namespace "rules", one per shard):
    A <customer> <product> -> [deadline, add_ts, [evidence ids]]      pending cart_abandoned
    B <customer> <product> -> [deadline, view_ts, [evidence ids]]     pending browse_abandoned
    V <customer> <product> -> [view_ts, event id]                     last view, kept offer_lookback
    P <customer> <product> -> purchase ts                             last purchase, kept 2 x lookback
    R <customer> <product> -> [trigger id, rule, ts]                  a trigger sent, kept retraction_window
    I <customer>           -> [[type, value], ...]                    its identifiers: a trigger's recipient
    T <due: 8 bytes> <kind> <customer> <product> -> b""               timers (stale ones are ignored)
plus the policy's C, F and G keys.

Timers are ordered by their keys (due time first). In memory a shard keeps only the earliest ones, at
most `[rules] timers_in_memory`, in a heap: every timer key below `_horizon` is in the heap, every
later one only in the state. When the heap has fired everything below the horizon and the watermark
is past it, the next timers are read from the state in key order; when schedules push the heap
over its bound, its later half goes back to being state only. So deadlines fire in the same order
as with every timer in memory, and memory does not grow with the number of pending deadlines.
"""

from __future__ import annotations

import heapq
import time
from datetime import datetime, timezone
from typing import Any

import orjson
import xxhash

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.operators.policy import Policy
from omnitrigger.operators.quiet_hours import QuietHours
from omnitrigger.records import (
    IDENTITY_TOPIC, MERGE_TOPIC, RETRACTIONS, SUPPRESSED, TRIGGERS, VISIT_CONFIRMED, WATERMARK_TOPIC, Emitted, Event, is_returned_line,
)
from omnitrigger.state import ShardState
from omnitrigger.stores import store_zones

CART = "cart_abandoned"
BROWSE = "browse_abandoned"
OFFER = "store_visit_offer"
RULES = (CART, BROWSE, OFFER)
_PENDING_PREFIX = {CART: b"A", BROWSE: b"B"}
_KIND = {b"A"[0]: CART, b"B"[0]: BROWSE}
_CUSTOMER_ID_LENGTH = 28  # "cus_" + 24 hex digits (operators/identity.py)
_MAX_EVIDENCE = 10
#: The identifiers a sender needs, by channel (email and phone are the keyed hashes; the CRM matches them).
RECIPIENT_TYPES = {"push": ("device_id", "auth_id"), "email": ("email", "auth_id", "loyalty_id"),
                   "sms": ("phone", "auth_id", "loyalty_id")}
_CLOCK = b"clock"
_FACT_TOPICS = frozenset({"web.events", "pos.receipts", "consent.changes"})  # what a rule remembers of a customer
_SWEPT = b"swept"
_SWEEP_EVERY_MS = 6 * 3_600_000  # each sweep seeks RocksDB and walks the epoch's writes: not too often
_SWEEP_MARGIN_MS = 86_400_000


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def trigger_id(rule: str, customer: str, subject: str, ts_ms: int) -> str:
    """Deterministic: the same rule, customer, product (or visit) and time give the same id on every run."""
    return xxhash.xxh3_128_hexdigest(f"{rule}\x1f{customer}\x1f{subject}\x1f{ts_ms}".encode())[:32]


class Rules(StageOperator):
    name = "rules"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        self.policy = Policy(state, config, frozenset(RULES))
        self.delays_ms = {CART: int(config.cart_abandoned_after_s * 1000),
                          BROWSE: int(config.browse_abandoned_after_s * 1000)}
        self.lookback_ms = int(config.offer_lookback_s * 1000)
        self.grace_ms = int(config.purchase_grace_s * 1000)
        self.retraction_window_ms = int(config.retraction_window_s * 1000)
        self.cart_group_ms = int(config.cart_group_window_s * 1000)
        self.add_cancels_browse = config.add_cancels_browse
        self.quiet = QuietHours(config.quiet_hours, config.timezone)
        self.offer_quiet_hours = config.offer_quiet_hours
        # An in-store rule's quiet hours are the store's local time (a stores CSV `timezone` column).
        zones = store_zones(config.stores_file) if config.offer_quiet_hours and config.stores_file else {}
        self.store_quiet = {store: QuietHours(config.quiet_hours, zone) for store, zone in zones.items()}
        self.max_products = config.offer_max_products
        # Live only (a replay has no wall clock): a trigger more than max_delay past its time is stale.
        self.max_delay_ms = int(config.max_delay_s * 1000) if config.wall_clock else 0
        clock = state.get_meta(_CLOCK)
        self.watermark_ms = int(clock) if clock else 0
        swept = state.get_meta(_SWEPT)
        self._swept_at_ms = int(swept) if swept else 0
        self._out: list[Emitted] = []
        self._replaying = False  # applying a merged customer's history: state only, no new outputs for the past
        # Timers live in state (T keys); the earliest, for speed, also in a bounded heap, rebuilt from them
        # whenever the shard is built: it holds every timer key below `_horizon` (None: every timer).
        self.timers_in_memory = config.rule_timers_in_memory
        self._timers: list[bytes] = []
        self._horizon: bytes | None = b"T"
        self._load_timers()

    # -- dispatch -------------------------------------------------------------------

    def on_events(self, events: list[Event]) -> OperatorResult:
        self._out = []
        for event in events:
            topic = event.topic
            if topic == WATERMARK_TOPIC:
                self._advance(event.ts_ms)
            elif event.customer is None:
                continue
            elif topic in _FACT_TOPICS:
                self._on_fact(topic, event.customer, event.body, event.ts_ms)
            elif topic == VISIT_CONFIRMED:
                self._on_visit(event.customer, event.body, event.ts_ms)
            elif topic == MERGE_TOPIC:
                self._on_merge(event.body)
            elif topic == IDENTITY_TOPIC:
                self.state.put(b"I" + event.customer.encode(), orjson.dumps(event.body["ids"]))
        self.state.put_meta(_CLOCK, b"%d" % self.watermark_ms)
        out, self._out = self._out, []
        return OperatorResult(list(events), out)

    def _on_fact(self, topic: str, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        """A web event, a till receipt or a consent change of `customer`: live, or from a merged history."""
        if topic == "web.events":
            self._on_web(customer, body, ts_ms)
        elif topic == "pos.receipts":
            if body.get("type") != "return":
                self._on_purchase(customer, body["items"], ts_ms, _receipt_id(body), "pos")
        else:
            self.policy.on_consent(customer, body["channel"], body["status"], ts_ms)

    def _on_web(self, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        kind = body["type"]
        if kind == "view_item":
            self._on_view(customer, body["product_id"], ts_ms, body["event_id"])
        elif kind == "add_to_cart":
            self._on_add(customer, body["product_id"], ts_ms, body["event_id"])
        elif kind == "remove_from_cart":
            self._cancel(CART, customer, body["product_id"], ts_ms, "removed_from_cart", body["event_id"],
                         body.get("channel"))
        elif kind == "purchase":
            self._on_purchase(customer, body["items"], ts_ms, body["event_id"], body.get("channel", "web"))

    # -- the facts --------------------------------------------------------------------

    def _on_view(self, customer: str, product: Any, ts_ms: int, event_id: str) -> None:
        key = _key(b"V", customer, product)
        last = self.state.get(key)
        if last is None or orjson.loads(last)[0] <= ts_ms:
            self.state.put(key, orjson.dumps([ts_ms, event_id]), ts_ms + self.lookback_ms)
        pending_key = _key(b"B", customer, product)
        if self.state.get(pending_key) is None and not self._bought_since(customer, product, ts_ms):
            self._schedule(BROWSE, customer, product, ts_ms, event_id)

    def _on_add(self, customer: str, product: Any, ts_ms: int, event_id: str) -> None:
        if self._bought_since(customer, product, ts_ms):
            return
        pending = self._pending(CART, customer, product)
        if pending is not None and pending[1] > ts_ms:
            return  # a late add older than the pending one does not move it back
        if pending is not None and pending[0] <= ts_ms:  # due already, waiting out the grace: it stands
            self._fire(CART, customer, product, pending)
            pending = None
        evidence = (pending[2] if pending is not None else [])[-(_MAX_EVIDENCE - 1):] + [event_id]
        self._schedule(CART, customer, product, ts_ms, event_id, evidence)
        if self.add_cancels_browse:  # one intent, one message: the cart reminder replaces the browse one
            self._cancel(BROWSE, customer, product, ts_ms, "moved_to_cart", event_id, None)

    def _on_purchase(self, customer: str, items: list[dict[str, Any]], ts_ms: int, evidence: str,
                     channel: str | None) -> None:
        """Lines bought (a quantity above zero; the rest are returns) cancel what they were set before them,
        and retract what already went out for them although they were bought before its time."""
        bought = list(dict.fromkeys(item["product_id"] for item in items if not is_returned_line(item)))
        for product in bought:
            key = _key(b"P", customer, product)
            last = self.state.get(key)
            if last is None or int(last) < ts_ms:
                self.state.put(key, b"%d" % ts_ms, ts_ms + 2 * self.lookback_ms)
            for rule in (CART, BROWSE):
                self._cancel(rule, customer, product, ts_ms, "purchased", evidence, channel)
        if bought and not self._replaying:
            self._retract(customer, bought, ts_ms, evidence, channel)

    def _retract(self, customer: str, products: list[Any], ts_ms: int, evidence: str, channel: str | None) -> None:
        """One retraction per trigger sent for these products whose time is after this purchase."""
        by_trigger: dict[str, tuple[str, int, list[Any]]] = {}
        for product in products:
            key = _key(b"R", customer, product)
            raw = self.state.get(key, ts_ms)
            if raw is None:
                continue
            sent_id, rule, sent_ms = orjson.loads(raw)
            if ts_ms < sent_ms:
                self.state.delete(key)
                by_trigger.setdefault(sent_id, (rule, sent_ms, []))[2].append(product)
        for sent_id, (rule, sent_ms, bought) in sorted(by_trigger.items()):
            record = {"retraction_id": xxhash.xxh3_128_hexdigest(f"{sent_id}\x1f{evidence}".encode())[:32],
                      "trigger_id": sent_id, "rule": rule, "customer_id": customer, "products": bought,
                      "purchase_channel": channel, "purchase_ts": iso(ts_ms), "purchase_ts_ms": ts_ms,
                      "trigger_ts": iso(sent_ms), "trigger_ts_ms": sent_ms, "evidence": [evidence],
                      "reason": "purchased_before_due", "emitted_at": iso(ts_ms)}
            self._out.append(Emitted(RETRACTIONS, _sort_key(ts_ms, record["retraction_id"]), record))

    def _bought_since(self, customer: str, product: Any, ts_ms: int) -> bool:
        last = self.state.get(_key(b"P", customer, product))
        return last is not None and int(last) >= ts_ms

    # -- deadlines ----------------------------------------------------------------------

    def _pending(self, rule: str, customer: str, product: Any) -> list[Any] | None:
        raw = self.state.get(_key(_PENDING_PREFIX[rule], customer, product))
        return orjson.loads(raw) if raw is not None else None

    def _schedule(self, rule: str, customer: str, product: Any, set_ms: int, event_id: str,
                  evidence: list[str] | None = None) -> None:
        deadline = self.quiet.defer(set_ms + self.delays_ms[rule])  # a reminder due at night waits for the morning
        evidence = evidence or [event_id]
        if deadline + self.grace_ms <= self.watermark_ms:  # later than the lateness and the grace: too late to remind
            if not self._replaying:
                self._suppress(rule, customer, [product], deadline, "late_event", evidence, None)
            return
        self.state.put(_key(_PENDING_PREFIX[rule], customer, product), orjson.dumps([deadline, set_ms, evidence]))
        timer = _timer_key(deadline, rule, customer, product)
        self.state.put(timer, b"")
        if self._horizon is None or timer < self._horizon:
            heapq.heappush(self._timers, timer)
            if len(self._timers) > self.timers_in_memory:
                self._shed_timers()

    def _cancel(self, rule: str, customer: str, product: Any, ts_ms: int, reason: str, evidence: str,
                channel: str | None) -> None:
        """Cancel a pending deadline set at or before `ts_ms` and due after it (one due earlier stands)."""
        pending = self._pending(rule, customer, product)
        if pending is None or pending[1] > ts_ms or pending[0] <= ts_ms:
            return
        self.state.delete(_key(_PENDING_PREFIX[rule], customer, product))
        if self._replaying:
            return
        record = self._record(rule, customer, [product], ts_ms, None, pending[2] + [evidence], None)
        record["reason"] = reason
        if channel is not None:
            record["purchase_channel" if reason == "purchased" else "channel_of_event"] = channel
        self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"] + reason), record))

    def _advance(self, watermark_ms: int) -> None:
        if watermark_ms <= self.watermark_ms:
            return
        self.watermark_ms = watermark_ms
        due_ms = watermark_ms - self.grace_ms  # a deadline fires once the clock has passed it plus the grace
        limit = b"T" + max(0, due_ms + 1).to_bytes(8, "big")
        while self._timers and self._timers[0] < limit or self._load_timers(limit):
            timer_key = heapq.heappop(self._timers)
            self.state.delete(timer_key)
            deadline = int.from_bytes(timer_key[1:9], "big")
            rule = _KIND[timer_key[9]]
            customer = timer_key[10:10 + _CUSTOMER_ID_LENGTH].decode()
            product = orjson.loads(timer_key[10 + _CUSTOMER_ID_LENGTH:])
            pending = self._pending(rule, customer, product)
            if pending is None or pending[0] != deadline:
                continue  # moved, cancelled, fired early, or retired by a merge
            self._fire(rule, customer, product, pending)
        # Expired views, purchases and caps leave the disk too, once no decision can look at them any more:
        # every deadline up to the watermark has fired, and a late visit is never a day behind it.
        if watermark_ms - self._swept_at_ms >= _SWEEP_EVERY_MS:
            self.state.sweep(watermark_ms - _SWEEP_MARGIN_MS)
            self._swept_at_ms = watermark_ms
            self.state.put_meta(_SWEPT, b"%d" % watermark_ms)

    def _fire(self, rule: str, customer: str, product: Any, pending: list[Any]) -> None:
        """A pending deadline is due: the policy decides, at the deadline's time (its timer, if any, is stale now).

        A cart deadline takes the customer's other cart deadlines due within `[rules] cart_group_window`
        after it along: one reminder for a cart filled in a few minutes, its products most recent first.
        """
        self.state.delete(_key(_PENDING_PREFIX[rule], customer, product))
        group = [(pending[1], product, pending[2])]
        if rule == CART and self.cart_group_ms > 0:
            prefix = b"A" + customer.encode()
            for key, value in self.state.scan(prefix, prefix + b"\xff"):
                deadline, set_ms, evidence = orjson.loads(value)
                if pending[0] <= deadline <= pending[0] + self.cart_group_ms:
                    self.state.delete(key)
                    group.append((set_ms, orjson.loads(key[len(prefix):]), evidence))
            group.sort(key=lambda item: (-item[0], orjson.dumps(item[1])))
        products = [item[1] for item in group]
        evidence = [event_id for *_, ids in group for event_id in ids]
        self._decide(rule, customer, products, pending[0], None, evidence)

    def _load_timers(self, limit: bytes = b"U") -> bool:
        """With the heap empty and timers below `limit` left in the state only, read the next ones into it."""
        if self._timers or self._horizon is None or self._horizon >= limit:
            return False
        batch = max(1, self.timers_in_memory // 2)
        loaded = [key for key, _ in self.state.scan(self._horizon, b"U", limit=batch)]
        self._timers = loaded  # in key order: a heap
        self._horizon = loaded[-1] + b"\x00" if len(loaded) == batch else None
        return bool(loaded) and loaded[0] < limit

    def _shed_timers(self) -> None:
        """Keep the earliest half of the heap; the rest stay in the state, read again when due."""
        ordered = sorted(self._timers)
        keep = max(1, self.timers_in_memory // 2)
        self._horizon = ordered[keep]
        self._timers = [key for key in ordered[:keep] if key < self._horizon]

    # -- in-store offer -------------------------------------------------------------------

    def _on_visit(self, customer: str, visit: dict[str, Any], ts_ms: int) -> None:
        prefix = b"V" + customer.encode()
        viewed = []
        for key, value in self.state.scan(prefix, prefix + b"\xff"):
            view_ts, event_id = orjson.loads(value)
            product = orjson.loads(key[len(prefix):])
            if ts_ms - self.lookback_ms <= view_ts < ts_ms and not self._bought_since(customer, product, view_ts):
                viewed.append((view_ts, str(product), product, event_id))
        if not viewed:
            return
        viewed.sort(reverse=True)
        chosen = viewed[:self.max_products]
        evidence = [visit["visit_id"]] + [event_id for *_, event_id in chosen]
        quiet = self.store_quiet.get(visit["store_id"], self.quiet)
        if self.offer_quiet_hours and quiet.is_quiet(ts_ms):  # the customer is in the store now or never
            self._suppress(OFFER, customer, [p for _, _, p, _ in chosen], ts_ms, "quiet_hours", evidence,
                           visit["store_id"])
            return
        self._decide(OFFER, customer, [product for _, _, product, _ in chosen], ts_ms, visit["store_id"], evidence,
                     subject=visit["visit_id"])

    # -- policy and output --------------------------------------------------------------------

    def _decide(self, rule: str, customer: str, products: list[Any], ts_ms: int, store: str | None,
                evidence: list[str], subject: str | None = None) -> None:
        decision = self.policy.decide(rule, customer, products, ts_ms)
        record = self._record(rule, customer, decision.products, ts_ms, store, evidence, decision.channel,
                              subject)
        if decision.reason is not None:
            record["reason"] = decision.reason
            self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"]), record))
            return
        delay_ms = wall_clock_ms() - ts_ms if self.max_delay_ms else 0
        if delay_ms > self.max_delay_ms:
            # A backlog or an outage: a reminder this late reads as spam. Not sent, so it uses no cap.
            record["reason"] = "stale"
            record["delay_s"] = round(delay_ms / 1000, 1)
            self._out.append(Emitted(SUPPRESSED, _sort_key(ts_ms, record["trigger_id"]), record))
            return
        record["recipient"] = self._recipient(customer, decision.channel)
        self.policy.record_trigger(rule, customer, decision.products, ts_ms)
        for product in decision.products:  # a purchase made before ts_ms that arrives later retracts it
            self.state.put(_key(b"R", customer, product), orjson.dumps([record["trigger_id"], rule, ts_ms]),
                           ts_ms + self.retraction_window_ms)
        self._out.append(Emitted(TRIGGERS, _sort_key(ts_ms, record["trigger_id"]), record))

    def _recipient(self, customer: str, channel: str | None) -> dict[str, list[str]]:
        """Whom the sender addresses on `channel`: the customer's identifiers of the kinds it needs, now."""
        raw = self.state.get(b"I" + customer.encode())
        wanted = RECIPIENT_TYPES.get(channel or "", ())
        recipient: dict[str, list[str]] = {}
        for kind, value in (orjson.loads(raw) if raw else []):
            if kind in wanted:
                recipient.setdefault(kind, []).append(value)
        return {kind: sorted(values) for kind, values in sorted(recipient.items())}

    def _suppress(self, rule: str, customer: str, products: list[Any], ts_ms: int, reason: str,
                  evidence: list[str], store: str | None) -> None:
        record = self._record(rule, customer, products, ts_ms, store, evidence, None)
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

    def _on_merge(self, body: dict[str, Any]) -> None:
        """Retire the loser's state (its shard) and replay its history into the winner (the winner's shard)."""
        role = body.get("role", "both")
        winner, loser = body["winner"], body["loser"]
        if role in ("retire", "both"):
            key = loser.encode()
            self.state.delete(b"I" + key)
            for prefix in (b"A", b"B", b"V", b"P", b"R"):
                for state_key, _ in self.state.scan(prefix + key, prefix + key + b"\xff"):
                    self.state.delete(state_key)
            self.policy.retire(loser)
        if role in ("absorb", "both"):
            # The loser's consents whatever their age (the sequencer keeps them as long as the identifiers).
            self.policy.merge_consents(winner, body.get("consents", {}))
            self._replaying = True
            for _seq, topic, ts_ms, event_body in body.get("history", []):
                # a past visit confirmation is not replayed: its offer was decided when it happened
                if topic in _FACT_TOPICS:
                    self._on_fact(topic, winner, event_body, ts_ms)
            self._replaying = False


def wall_clock_ms() -> int:
    """Now, by the wall clock: only live mode's stale check asks (`Config.wall_clock`)."""
    return int(time.time() * 1000)


def _key(prefix: bytes, customer: str, product: Any) -> bytes:
    return prefix + customer.encode() + orjson.dumps(product)


def _timer_key(deadline: int, rule: str, customer: str, product: Any) -> bytes:
    return b"T" + deadline.to_bytes(8, "big") + _PENDING_PREFIX[rule] + customer.encode() + orjson.dumps(product)


def _receipt_id(body: dict[str, Any]) -> str:
    return f"{body['terminal_id']}/{body['receipt_no']}"


def _sort_key(ts_ms: int, identity: str) -> tuple[int, int]:
    return ts_ms, xxhash.xxh3_64_intdigest(identity.encode())
