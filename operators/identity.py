"""Identity resolution: every event's identifiers resolve to one customer id, with merge protection.

A customer is a connected component of identifiers (docs/semantics.md, Identity).
Identifiers link when they appear together in one event: an
`identity.links` record, a login on a device, a receipt with a loyalty card
and a phone. Within an event the strongest identifier (auth_id, then
loyalty_id, email, phone, cookie_id, device_id) is the anchor, and each
other identifier is linked to it; the event belongs to the anchor's
customer.

Merge protection: a link that would give a customer more identifiers of a
type than `identifier_limits` allows (one auth_id, one loyalty_id), a
blocked value (empty, 0, -1, null, anonymous, all zeros, the configured
list), and every link of an `identity.links` record below
`min_link_confidence` are refused and written to the `refused_links`
stream with the reason; the identifiers themselves still resolve, apart.
A blank or null value (`"phone": ""`) is a blocked value too: the event is
processed without it, and `stats()` counts such values by type.

Customer ids are `cus_` + a hash of the identifier and input position that
first created the customer, so they are the same on every replay of the
same input. When two customers merge, the one first seen (the lower
position) keeps its id, every identifier of the other is re-pointed, and a
`Merge` record goes downstream (before the event that caused it) so
the history operator and the rules move the loser's past to the winner.

State (namespace "identity"), all in RocksDB through ShardState:
    i <type code> <value>  -> [customer id, last seen ms]   expires after identifier_retention_s unseen
    c <customer id>        -> {"first": seq, "ids": [[type, value], ...]}
Email and phone arrive already hashed (omnitrigger/pii.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import xxhash

from omnitrigger import metrics
from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.records import IDENTITIES, IDENTITY_TOPIC, REFUSED_LINKS, Emitted, Event, Item, Merge, with_customer
from omnitrigger.state import ShardState
from omnitrigger.state.cache import forget_oldest
from omnitrigger.state.clock import ShardClock, saved_clock

#: Identifier types, strongest first: the first one an event carries is its anchor.
IDENTIFIER_TYPES = ("auth_id", "loyalty_id", "email", "phone", "cookie_id", "device_id")
_TYPE_CODE = {"auth_id": b"a", "loyalty_id": b"l", "email": b"e", "phone": b"p", "cookie_id": b"k", "device_id": b"d"}
_CODE_TYPE = {code[0]: kind for kind, code in _TYPE_CODE.items()}
BLOCKED_VALUES = frozenset({"", "0", "-1", "null", "none", "nil", "undefined", "unknown", "anonymous", "!invalid",
                            "n/a", "na", "-", "?", "nan"})
_ALL_ZEROS = re.compile(r"^[0\W_]+$")  # 0000, 00000000-0000-0000-0000-000000000000 (a zeroed advertising id)
_REFRESH_MS = 86_400_000  # an identifier's last-seen time is rewritten at most once a day
_IGNORED = b"ignored"
#: Identifiers kept decoded in memory. Three per customer is typical (a device, a login, a card), so this holds
#: about 65,000 customers' worth; past it the oldest read go (state/cache.py), not all at once.
_ENTRIES_KEPT = 200_000
_NO_MERGES: list[Merge] = []  # shared by the one-identifier fast path: read, never changed
_NO_REFUSALS: list[dict[str, Any]] = []

Identifier = tuple[str, str]


class Identity(StageOperator):
    name = "identity"

    def __init__(self, state: ShardState, config: Any) -> None:
        super().__init__(state, config)
        self.limits = dict(config.identifier_limits)
        self.blocked = BLOCKED_VALUES | {value.strip().lower() for value in config.blocked_identifiers}
        self.min_confidence = config.min_link_confidence
        self._blocked_memo: set[str] = set()  # blocked values seen: the same few come again and again
        self._changed: dict[str, list[list[str]]] = {}  # customers whose identifiers this event changed
        self._new: dict[str, list[list[str]]] = {}  # identifiers this event showed for the first time, by customer
        saved = state.get_meta(_IGNORED)
        self.ignored: Counter[str] = Counter(orjson.loads(saved) if saved else {})  # blocked values by type
        self.retention_ms = int(config.identifier_retention_s * 1000)
        self.clock = ShardClock(state, sweep_every_ms=3_600_000)
        # Live only: every change of a customer's identifiers goes to the compacted identities topic.
        self.publish_updates = bool(config.wall_clock and config.kafka_identities_topic)
        self._merged_away: list[str] = []
        # identifier -> ((customer, last seen), expiry) as stored: most events are a known identifier seen again,
        # and this answers them without building its key, asking the state and decoding the entry. Every write of
        # an identifier goes through `_point`, which keeps it; a rollback clears it.
        self._entries: dict[Identifier, tuple[tuple[str, int], int]] = {}
        state.after_rollback(self._entries.clear)

    # -- the operator ---------------------------------------------------------

    def on_events(self, events: list[Item]) -> OperatorResult:
        out: list[Item] = []
        emitted: list[Emitted] = []
        for event in events:
            ids = event.body.get("ids") if type(event) is Event else None
            if type(ids) is not dict:  # a control record, or a receipt paid without a card or a phone: anonymous
                out.append(event)
                continue
            self.clock.advance(event.ts_ms)
            customer, merges, refusals = self._resolve(event, ids)
            out.extend(merges)
            if self.publish_updates and (self._changed or self._merged_away):
                emitted.extend(self._updates(event.seq))
            if self._changed:  # whom a trigger reaches: the rules keep each customer's identifiers
                new = self._new
                out.extend(Event(event.seq, IDENTITY_TOPIC, -1, -1, event.ts_ms,
                                 _first_seen(ids_now, new[changed], event) if changed in new else {"ids": ids_now},
                                 changed)
                           for changed, ids_now in sorted(self._changed.items()))
                self._changed, self._new = {}, {}
            out.append(with_customer(event, customer))
            for sub, refusal in enumerate(refusals):
                emitted.append(Emitted(REFUSED_LINKS, (event.seq, sub), refusal))
        self.clock.save()
        if self.ignored:
            self.state.put_meta(_IGNORED, orjson.dumps(self.ignored))
        self.clock.sweep_if_due()
        return OperatorResult(out, emitted)

    # -- resolution -------------------------------------------------------------

    def _resolve(self, event: Event, ids: dict[str, Any]) -> tuple[str | None, list[Merge], list[dict[str, Any]]]:
        if len(ids) == 1:  # most events (a ping, a page view) carry one identifier: nothing to link
            (kind, value), = ids.items()
            if kind in _TYPE_CODE and type(value) is str and not self.is_blocked(value):
                return self._customer_of((kind, value), event, {}), _NO_MERGES, _NO_REFUSALS
        refusals: list[dict[str, Any]] = []
        identifiers: list[Identifier] = []
        for kind in IDENTIFIER_TYPES:
            if kind not in ids:
                continue
            value = ids[kind]
            identifier = (kind, value if type(value) is str else "null" if value is None else str(value))
            if self.is_blocked(identifier[1]):  # blank, null or a placeholder: ignored, counted and reported
                self.ignored[kind] += 1
                metrics.IGNORED_IDENTIFIERS.labels(kind).inc()
                refusals.append(self._refusal("blocked_value", event, [identifier]))
            else:
                identifiers.append(identifier)
        if not identifiers:
            return None, [], refusals
        linking = True
        if event.topic == "identity.links":
            confidence = event.body.get("confidence", 1.0)
            if confidence < self.min_confidence:
                linking = False
                refusals.extend(self._refusal("low_confidence", event, [identifiers[0], other],
                                              confidence=confidence) for other in identifiers[1:])
        anchor = identifiers[0]
        if linking and len(identifiers) > 1 and self._all_new(identifiers):
            return self._new_customer(identifiers, event), _NO_MERGES, refusals
        # Customers created by this very event (merging them away is not news), with their records as saved:
        # the next identifier attaches to the record in hand, not to one read back and decoded. A merge never
        # changes one of them: its winner was seen first, so it is never this event's.
        fresh: dict[str, dict[str, Any]] = {}
        merges: list[Merge] = []
        anchor_customer = self._customer_of(anchor, event, fresh)
        for other in identifiers[1:]:
            if not linking:
                self._customer_of(other, event, fresh)
                continue
            entry = self._entry(other)
            other_customer = entry[0] if entry is not None else None
            if entry is not None and other_customer == anchor_customer:
                self._touch(other, other_customer, entry[1], event.ts_ms)
                continue
            if other_customer is None:
                record = fresh.get(anchor_customer) or self._record(anchor_customer)
                broken = self._broken_limit(record["ids"], [other], anchor_customer)
                if broken:
                    refusals.append(self._refusal(f"limit_{broken}", event, [anchor, other],
                                                  customers=[anchor_customer]))
                    self._customer_of(other, event, fresh)
                else:
                    self._attach(other, anchor_customer, record, event.ts_ms, fresh=anchor_customer in fresh)
                continue
            (winner, winner_record), (loser, loser_record) = self._order(anchor_customer, other_customer)
            broken = self._broken_limit(winner_record["ids"], self._live_ids(loser, loser_record), winner)
            if broken:
                refusals.append(self._refusal(f"limit_{broken}", event, [anchor, other],
                                              customers=[anchor_customer, other_customer]))
                continue
            self._merge(winner, winner_record, loser, loser_record, event.ts_ms)
            if loser not in fresh:
                if self.publish_updates:
                    self._merged_away.append(loser)
                merges.append(Merge(event.seq, event.ts_ms, winner, loser))
            anchor_customer = winner
        return anchor_customer, merges, refusals

    def _updates(self, seq: int) -> list[Emitted]:
        """The identities topic's records for this event: each changed customer with its live identifiers
        (the replay's `--identities` lines, grouped by customer), and a tombstone (identifiers None) for
        each customer merged away."""
        updates = [Emitted(IDENTITIES, (seq, 0), {"customer_id": loser, "identifiers": None})
                   for loser in sorted(self._merged_away)]
        self._merged_away = []
        for customer, ids_now in sorted(self._changed.items()):
            live = sorted(set(self._live_ids(customer, {"ids": ids_now})))
            updates.append(Emitted(IDENTITIES, (seq, 0), {
                "customer_id": customer, "identifiers": [{"type": kind, "value": value} for kind, value in live]}))
        return updates

    def stats(self) -> dict[str, int]:
        """Run totals for the summary: identifier values ignored as blank or blocked, by type."""
        return {f"ignored_{kind}": count for kind, count in self.ignored.items()}

    def is_blocked(self, value: str) -> bool:
        """Whether `value` is a placeholder, not an identifier: blank, a blocked value (any case, any spaces
        around it) or all zeros and punctuation. Only the blocked are memoised: they are the few that come
        again and again (a zeroed advertising id), and a memo of every value would hold every identifier."""
        if value in self._blocked_memo:
            return True
        lowered = value.strip().lower()
        first = lowered[:1]
        # A value that starts with a letter or a digit other than 0 cannot be all zeros: no regex for it.
        if lowered in self.blocked or (not (first.isalnum() and first != "0") and _ALL_ZEROS.match(lowered)):
            if len(self._blocked_memo) < 10_000:
                self._blocked_memo.add(value)
            return True
        return False

    def _entry(self, identifier: Identifier) -> tuple[str, int] | None:
        """(customer id, last seen ms) of a live identifier, or None."""
        known = self._entries.get(identifier)
        if known is None:
            stored = self.state.get_with_expiry(_identifier_key(identifier), self.clock.now_ms)
            if stored is None:
                return None
            known = self._remember(identifier, tuple(orjson.loads(stored[0])), stored[1])
        expires = known[1]
        return None if expires and expires <= self.clock.now_ms else known[0]

    def _lookup(self, identifier: Identifier) -> str | None:
        entry = self._entry(identifier)
        return entry[0] if entry is not None else None

    def _customer_of(self, identifier: Identifier, event: Event, fresh: dict[str, dict[str, Any]]) -> str:
        """The identifier's customer, created (first seen now, and put in `fresh` with its record) if the
        identifier is new."""
        entry = self._entry(identifier)
        if entry is not None:
            customer, last_seen = entry
            self._touch(identifier, customer, last_seen, event.ts_ms)
            return customer
        customer = _customer_id(identifier, event.seq)
        record = {"first": event.seq, "ids": []}
        self._attach(identifier, customer, record, event.ts_ms, fresh=True)
        fresh[customer] = record
        return customer

    def _all_new(self, identifiers: list[Identifier]) -> bool:
        """Whether no identifier of the event resolves yet (the anchor asked first: most events know it)."""
        for identifier in identifiers:
            if self._entry(identifier) is not None:
                return False
        return True

    def _new_customer(self, identifiers: list[Identifier], event: Event) -> str:
        """The customer of an event whose identifiers are all new (a first consent or sign-up: most of the records of
        traffic that brings new customers). The same customer, writes and identity change as the general path's
        (`_customer_of` the anchor, then `_attach` each other identifier), made at once: the record is encoded
        and put once, and no limit is checked, since an event holds one identifier a type and every limit is 1
        or more."""
        anchor, ts_ms = identifiers[0], event.ts_ms
        customer = _customer_id(anchor, event.seq)
        ids = [list(identifier) for identifier in identifiers]
        self._point(anchor, customer, ts_ms)  # the anchor's key, then the record's, then the others': the
        self._save(customer, {"first": event.seq, "ids": ids}, ts_ms, fresh=True)  # general path's order
        for other in identifiers[1:]:
            self._point(other, customer, ts_ms)
        self._changed[customer] = ids
        self._new[customer] = [list(identifier) for identifier in identifiers]
        return customer

    def _record(self, customer: str) -> dict[str, Any]:
        raw = self.state.get(b"c" + customer.encode(), self.clock.now_ms)
        return orjson.loads(raw) if raw is not None else {"first": -1, "ids": []}

    def _order(self, first: str, second: str) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
        """((winner, its record), (loser, its record)): the customer seen first keeps its id."""
        a, b = (first, self._record(first)), (second, self._record(second))
        return (a, b) if (a[1]["first"], first) <= (b[1]["first"], second) else (b, a)

    def _live_ids(self, customer: str, record: dict[str, Any]) -> list[Identifier]:
        """The record's identifiers that still point at `customer` (expired ones drop out)."""
        return [(kind, value) for kind, value in record["ids"] if self._lookup((kind, value)) == customer]

    def _broken_limit(self, have: list[list[str]] | list[Identifier], adding: list[Identifier],
                      customer: str) -> str | None:
        """The identifier type whose limit `adding` would break for `customer`, or None."""
        for kind, limit in self.limits.items():
            new = {value for other_kind, value in adding if other_kind == kind}
            if not new:
                continue
            current = {value for other_kind, value in have
                       if other_kind == kind and self._lookup((kind, value)) == customer}
            if len(current | new) > limit:
                return kind
        return None

    def _attach(self, identifier: Identifier, customer: str, record: dict[str, Any], ts_ms: int,
                fresh: bool = False) -> None:
        """`fresh`: the customer is this event's, so no record of it is stored but the one saved at `ts_ms` (`_save`
        need not read one's expiry)."""
        record["ids"].append(list(identifier))
        self._point(identifier, customer, ts_ms)
        self._save(customer, record, ts_ms, fresh)
        self._changed[customer] = record["ids"]
        self._new.setdefault(customer, []).append(list(identifier))

    def _touch(self, identifier: Identifier, customer: str, last_seen: int, ts_ms: int) -> None:
        """Renew an identifier's last-seen time (and its expiry), at most once a day."""
        if ts_ms - last_seen < _REFRESH_MS:
            return
        self._point(identifier, customer, ts_ms)
        self._save(customer, self._record(customer), ts_ms)

    def _point(self, identifier: Identifier, customer: str, ts_ms: int) -> None:
        """Point the identifier at `customer`, last seen at `ts_ms` (it expires `retention` after)."""
        expires = ts_ms + self.retention_ms
        self.state.put(_identifier_key(identifier), orjson.dumps([customer, ts_ms]), expires)
        self._remember(identifier, (customer, ts_ms), expires)

    def _remember(self, identifier: Identifier, entry: tuple[str, int], expires: int) -> tuple[tuple[str, int], int]:
        """Keep the identifier's stored entry decoded (at most `_ENTRIES_KEPT`: then the oldest quarter goes)."""
        if len(self._entries) >= _ENTRIES_KEPT:
            forget_oldest(self._entries, _ENTRIES_KEPT)
        known = self._entries[identifier] = (entry, expires)
        return known

    def _save(self, customer: str, record: dict[str, Any], ts_ms: int, fresh: bool = False) -> None:
        key = b"c" + customer.encode()
        # keep the later expiry: the customer lives as long as its freshest identifier
        expires = ts_ms + self.retention_ms
        if not fresh:
            expires = max(expires, self.state.expiry_of(key) or 0)
        self.state.put(key, orjson.dumps(record), expires)

    def _merge(self, winner: str, winner_record: dict[str, Any], loser: str, loser_record: dict[str, Any],
               ts_ms: int) -> None:
        for kind, value in loser_record["ids"]:
            entry = self._entry((kind, value))
            if entry is None or entry[0] != loser:
                continue
            self._point((kind, value), winner, entry[1])
            winner_record["ids"].append([kind, value])
        winner_record["ids"] = [list(identifier) for identifier in self._live_ids(winner, winner_record)]
        self.state.delete(b"c" + loser.encode())
        self._save(winner, winner_record, ts_ms)
        self._changed.pop(loser, None)
        self._changed[winner] = winner_record["ids"]
        moved = self._new.pop(loser, None)
        if moved:
            self._new.setdefault(winner, []).extend(moved)

    def _refusal(self, reason: str, event: Event, identifiers: list[Identifier], **extra: Any) -> dict[str, Any]:
        return {"reason": reason, "identifiers": [list(identifier) for identifier in identifiers],
                "topic": event.topic, "partition": event.partition, "offset": event.offset, "ts_ms": event.ts_ms,
                **extra}


def identities(state: ShardState) -> Iterator[dict[str, Any]]:
    """Every live identifier with its customer id, from a finished run's committed state (the replay's
    `--identities` output). Read lazily: ten million identifiers never sit in memory at once."""
    now_ms = saved_clock(state)
    for key, value in state.iter_committed(b"i", b"j", now_ms):
        yield {"type": _CODE_TYPE[key[1]], "value": key[2:].decode(), "customer_id": orjson.loads(value)[0]}


def _first_seen(ids_now: list[list[str]], new: list[list[str]], event: Event) -> dict[str, Any]:
    """An identity change that brought identifiers seen for the first time: their types, the types the
    customer had already, and the input record behind it (what a welcome rule reads; no values)."""
    if new == ids_now:  # a new customer (most changes): every identifier is new, none known
        known_types: list[str] = []
    else:
        fresh = {tuple(identifier) for identifier in new}
        known_types = sorted({kind for kind, value in ids_now if (kind, value) not in fresh})
    return {"ids": ids_now, "new_types": sorted({identifier[0] for identifier in new}), "known_types": known_types,
            "source": _source(event)}


def _source(event: Event) -> str:
    """The input record behind an identity change, as evidence: its event id, a receipt's till and number."""
    body = event.body
    if "event_id" in body:
        return str(body["event_id"])
    if "receipt_no" in body:
        return f"{body.get('terminal_id')}/{body['receipt_no']}"
    return f"{event.topic}:{event.partition}:{event.offset}"


def _customer_id(identifier: Identifier, seq: int) -> str:
    """A new customer's id: its first identifier and the input position that created it (the same on every replay)."""
    return "cus_" + xxhash.xxh3_128_hexdigest(f"{identifier[0]}\x1f{identifier[1]}\x1f{seq}".encode())[:24]


def _identifier_key(identifier: Identifier) -> bytes:
    return b"i" + _TYPE_CODE[identifier[0]] + identifier[1].encode()
