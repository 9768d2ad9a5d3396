"""Store visits: a device that stayed inside a store's radius, not one that drove past.

The definition (docs/semantics.md, Store visits), per device, over the pings kept:
  * kept: `geo.pings` with `accuracy_m` <= `max_accuracy_m` (100) from a source not in
    `excluded_sources` (`cell`); the others are counted and ignored, they neither continue nor end a visit;
  * inside store S: great-circle distance to S <= S's radius (operators/store_index.py);
  * a visit to S starts at the first kept ping inside S, continues while every kept ping of the device
    is inside S with gaps <= `visit_max_gap_s` (5 min), and ends at the first kept ping outside S or
    after a longer gap; its dwell is last ping inside - first ping inside;
  * it is confirmed at the first ping where dwell > `visit_min_dwell_s` (2 min). Only confirmed visits
    are output. Overlapping stores are independent: one candidate visit per (device, store) in range.

Location consent. Where the customer is, is the most sensitive thing the flow handles: with
`[policy] require_location_consent` (the default) a visit is written to the visits stream only if
the customer had granted the `location` purpose (consent.changes, latest change wins, merged with
the customer) when it was confirmed; the others are counted (`visits_without_location_consent`).
The VISIT_CONFIRMED event still goes on, so the offer is suppressed with a reason the rules give.

Outputs. Every event goes on unchanged. When a ping confirms a visit, an event of topic
`VISIT_CONFIRMED` follows that ping at once (same seq, ts_ms = confirmation time, the ping's
customer, body = the visit so far), so a rule can act on the arrival of the confirming ping. When
a confirmed visit ends, a record goes to the `visits` stream (schemas/visit.schema.json), sorted
by the ping that ended it: the device's next ping (`ended_by` "exit" or "gap") or, when the device
goes quiet, the first ping of any device that moves the watermark past the gap ("timeout").

Time and lateness. The event-time clock is the latest `ts` of any geo.pings event; the watermark
is clock - `allowed_lateness_s`. A ping older than the watermark is late: counted (`late_pings`)
and dropped. A ping at or after the watermark but older than its device's latest kept ping is
"reordered" (counted too) and applied as far as it cannot rewrite what was already decided:
  * inside S, during an open visit to S (ts >= its start): counts as one of its pings;
  * inside S, before an open visit's start, after the ping that preceded that start and within the
    gap of it: becomes the visit's new start (dwell grows; if that confirms the visit, it is
    confirmed at the device's latest ping, at this arrival);
  * otherwise it has no effect: a late ping never opens, ends, reopens or merges visits.
In order, the output equals the offline computation of the definition (tests/test_visits.py checks
it on the GeoLife traces). A device whose latest kept ping is behind the watermark by more than the
gap can no longer continue a visit on time; its open visits end then ("timeout") and its record is
deleted, which is what bounds the state: a device is remembered only while it pings.

State (namespace "visits"):
    d <device_id> -> [latest kept ping ts, [[store_id, visit_id, start, last, pings, confirmed_at,
                      prev, customer(, location_ok)], ...]]   (open visits, by store_id; prev = the
                      device's kept ping before the start, or null; location_ok set at confirmation)
    L <customer>  -> [status, ts]   the latest location consent change, kept identifier_retention
    meta clock, counts
The timer queue is an in-memory heap rebuilt from the device records at start (a cache, never the
truth): each device with a record has one entry whose due time is at most its real one.
"""

from __future__ import annotations

import heapq
from typing import Any

import orjson
import xxhash

from omnitrigger import metrics
from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.operators.store_index import StoreIndex, store_index_for
from omnitrigger.records import VISIT_CONFIRMED, VISITS, Emitted, Event, Item, Merge, Ping, format_ms
from omnitrigger.state import ShardState
from omnitrigger.state.clock import ShardClock
from omnitrigger.state.documents import DecodedValues

GEO_PINGS = "geo.pings"

_COUNTS = b"counts"
_DEVICE = b"d"
_DEVICE_END = b"e"
_LOCATION = b"L"  # L <customer> -> [status, ts_ms]: the latest location consent change
COUNTERS = ("late_pings", "reordered_pings", "inaccurate_pings", "excluded_source_pings", "visits_confirmed",
            "visits_ended", "no_device_pings", "visits_without_location_consent")

# Fields of an open visit, in its state list.
STORE, VISIT_ID, START, LAST, PINGS, CONFIRMED_AT, PREV, CUSTOMER = range(8)
LOCATION_OK = 8  # set at confirmation: did the customer allow location processing (absent: not confirmed yet)


def visit_id(device_id: str, store_id: str, start_ms: int) -> str:
    """Deterministic: the device, the store and the time of the ping that opened the visit."""
    return xxhash.xxh3_128_hexdigest(f"{device_id}\x1f{store_id}\x1f{start_ms}".encode())


class Visits(StageOperator):
    name = "visits"

    def __init__(self, state: ShardState, config: Any, index: StoreIndex | None = None) -> None:
        super().__init__(state, config)
        if index is None:
            if not config.stores_file:
                raise ValueError("the visits operator needs the stores file (config.stores_file)")
            index = store_index_for(config.stores_file)
        self.index = index
        self.max_accuracy_m = config.max_accuracy_m
        self.excluded_sources = frozenset(config.excluded_sources)
        self.gap_ms = round(config.visit_max_gap_s * 1000)
        self.min_dwell_ms = round(config.visit_min_dwell_s * 1000)
        self.lateness_ms = round(config.allowed_lateness_s * 1000)
        self.require_location_consent = config.require_location_consent
        self.consent_retention_ms = int(config.identifier_retention_s * 1000)
        self.clock = ShardClock(state)
        # Device records, decoded once and written once per commit (a device pings every few seconds).
        self.devices = DecodedValues(state, _DEVICE, config.state_cache_entries // 2)
        counts = state.get_meta(_COUNTS)
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0) | (orjson.loads(counts) if counts else {})
        # (due, device key): due = latest kept ping + gap; fires once the watermark passes it.
        self._timers = [(orjson.loads(value)[0] + self.gap_ms, key)
                        for key, value in state.scan(_DEVICE, _DEVICE_END)]
        heapq.heapify(self._timers)

    # -- events -------------------------------------------------------------

    def on_events(self, events: list[Item]) -> OperatorResult:
        out: list[Item] = []
        emitted: list[Emitted] = []
        counts = self.counts
        for event in events:
            out.append(event)
            kind = type(event)
            if kind is Ping:  # a ping as the hand-off from another process cuts it
                device, source, accuracy_m, lat, lon = (event.device_id, event.source, event.accuracy_m,
                                                        event.lat, event.lon)
            elif kind is not Event:  # a control record
                if kind is Merge:
                    self._on_merge(event.winner, event.loser)
                continue
            elif event.topic != GEO_PINGS:
                if event.topic == "consent.changes" and event.customer is not None \
                        and event.body["channel"] == "location":
                    self._on_location_consent(event.customer, event.body["status"], event.ts_ms)
                continue
            else:
                body = event.body
                device, source, accuracy_m, lat, lon = (body["ids"].get("device_id"), body["source"],
                                                        body["accuracy_m"], body["lat"], body["lon"])
            first = len(emitted)
            ts = event.ts_ms
            if self.clock.advance(ts):
                if self._timers and self._timers[0][0] < ts - self.lateness_ms:
                    self._fire_timers(ts - self.lateness_ms, event.seq, emitted, first)
            if type(device) is not str or not device.strip():  # blank or null: no device to follow
                counts["no_device_pings"] += 1
            elif source in self.excluded_sources:
                counts["excluded_source_pings"] += 1
            elif accuracy_m > self.max_accuracy_m:
                counts["inaccurate_pings"] += 1
            elif ts < self.clock.now_ms - self.lateness_ms:
                counts["late_pings"] += 1
                metrics.LATE_PINGS.inc()  # live's omnitrigger_late_pings_total (a replay has the run total)
            else:
                self._on_ping(event, device, lat, lon, out, emitted, first)
        self.clock.save()
        self.state.put_meta(_COUNTS, orjson.dumps(counts))
        return OperatorResult(out, emitted)

    def on_eof(self, end_seq: int) -> OperatorResult:
        """End of the recording: confirmed visits still open, with `end` null and `ended_by` "open".

        State is left as it is (the visits stay open), so this is for the true end of the input.
        """
        emitted: list[Emitted] = []
        self.devices.flush()
        for key, value in self.state.scan(_DEVICE, _DEVICE_END):
            device = key[1:].decode()
            for visit in orjson.loads(value)[1]:
                if visit[CONFIRMED_AT] is not None and not _location_allowed(visit):
                    self.counts["visits_without_location_consent"] += 1
                elif visit[CONFIRMED_AT] is not None:
                    emitted.append(Emitted(VISITS, (end_seq, len(emitted)), _visit_record(device, visit, None, "open")))
        return OperatorResult([], emitted)

    def stats(self) -> dict[str, int]:
        """Run totals (they roll back and resume with the state): late_pings, reordered_pings, ..."""
        return dict(self.counts)

    # -- one kept, on-time ping ------------------------------------------------

    def _on_ping(self, event: Event | Ping, device: str, lat: float, lon: float, out: list[Event],
                 emitted: list[Emitted], first: int) -> None:
        ts = event.ts_ms
        near = self.index.stores_near(lat, lon)
        record = self.devices.get(device)
        if record is None:
            latest, visits = None, []
            heapq.heappush(self._timers, (ts + self.gap_ms, _DEVICE + device.encode()))
        else:
            latest, visits = record
        if latest is not None and ts < latest:
            self.counts["reordered_pings"] += 1
            if near and visits and self._apply_reordered(event, device, visits, near, latest, out):
                self.devices.changed(device)
            return
        inside = {store_id for store_id, _ in near}
        gap = latest is not None and ts - latest > self.gap_ms
        kept: list[list[Any]] = []
        for visit in visits:
            if gap or visit[STORE] not in inside:
                self._end(device, visit, "gap" if gap else "exit", event.seq, emitted, first)
                continue
            visit[LAST] = ts
            visit[PINGS] += 1
            if event.customer is not None:
                visit[CUSTOMER] = event.customer
            if visit[CONFIRMED_AT] is None and ts - visit[START] > self.min_dwell_ms:
                self._confirm(device, visit, ts, event, out)
            kept.append(visit)
        if len(kept) < len(inside):
            open_stores = {visit[STORE] for visit in kept}
            for store_id, _ in near:
                if store_id not in open_stores:
                    kept.append([store_id, visit_id(device, store_id, ts), ts, ts, 1, None, latest, event.customer])
            kept.sort(key=lambda visit: visit[STORE])
        self.devices.put(device, [ts, kept])

    def _apply_reordered(self, event: Event | Ping, device: str, visits: list[list[Any]], near: list[tuple[str, float]],
                         latest: int, out: list[Event]) -> bool:
        inside = {store_id for store_id, _ in near}
        ts = event.ts_ms
        changed = False
        for visit in visits:
            if visit[STORE] not in inside:
                continue
            if ts >= visit[START]:
                visit[PINGS] += 1
            elif (visit[PREV] is None or ts > visit[PREV]) and visit[START] - ts <= self.gap_ms:
                visit[START] = ts
                visit[PINGS] += 1
                if visit[CONFIRMED_AT] is None:  # not published yet: the id follows the start, as in order
                    visit[VISIT_ID] = visit_id(device, visit[STORE], ts)
                if visit[CONFIRMED_AT] is None and visit[LAST] - ts > self.min_dwell_ms:
                    self._confirm(device, visit, latest, event, out)
            else:
                continue
            if visit[CUSTOMER] is None and event.customer is not None:
                visit[CUSTOMER] = event.customer
            changed = True
        return changed

    def _confirm(self, device: str, visit: list[Any], at_ms: int, event: Event | Ping, out: list[Event]) -> None:
        visit[CONFIRMED_AT] = at_ms
        self.counts["visits_confirmed"] += 1
        customer = event.customer if event.customer is not None else visit[CUSTOMER]
        del visit[LOCATION_OK:]
        visit.append(self._location_ok(customer))
        body = {"visit_id": visit[VISIT_ID], "device_id": device, "customer_id": customer,
                "store_id": visit[STORE], "start": format_ms(visit[START]), "confirmed_at": format_ms(at_ms),
                "dwell_s": (visit[LAST] - visit[START]) / 1000, "pings": visit[PINGS]}
        out.append(Event(event.seq, VISIT_CONFIRMED, event.partition, event.offset, at_ms, body, customer))

    def _end(self, device: str, visit: list[Any], reason: str, seq: int, emitted: list[Emitted], first: int) -> None:
        if visit[CONFIRMED_AT] is None:
            return
        self.counts["visits_ended"] += 1
        if not _location_allowed(visit):
            self.counts["visits_without_location_consent"] += 1
            return
        emitted.append(Emitted(VISITS, (seq, len(emitted) - first), _visit_record(device, visit, visit[LAST], reason)))

    # -- location consent ---------------------------------------------------------------

    def _location_ok(self, customer: str | None) -> bool:
        """Whether a visit of `customer` may be written: location consent granted (latest change wins)."""
        if not self.require_location_consent:
            return True
        raw = self.state.get(_LOCATION + customer.encode(), self.clock.now_ms) if customer is not None else None
        return raw is not None and orjson.loads(raw)[0] == "granted"

    def _on_location_consent(self, customer: str, status: str, ts_ms: int) -> None:
        key = _LOCATION + customer.encode()
        raw = self.state.get(key)
        if raw is None or orjson.loads(raw)[1] <= ts_ms:
            self.state.put(key, orjson.dumps([status, ts_ms]), ts_ms + self.consent_retention_ms)

    def _on_merge(self, winner: str, loser: str) -> None:
        """The loser's location consent joins the winner's, whatever its age: the latest change wins."""
        raw = self.state.get(_LOCATION + loser.encode())
        if raw is not None:
            self.state.delete(_LOCATION + loser.encode())
            status, ts_ms = orjson.loads(raw)
            self._on_location_consent(winner, status, ts_ms)

    def _fire_timers(self, watermark: int, seq: int, emitted: list[Emitted], first: int) -> None:
        """End the open visits of every device whose latest ping + gap is before the watermark, and forget it."""
        due: list[tuple[int, bytes, list[Any]]] = []
        timers = self._timers
        while timers and timers[0][0] < watermark:
            _, key = heapq.heappop(timers)
            record = self.devices.get(key[1:].decode())
            if record is None:
                continue
            real_due = record[0] + self.gap_ms
            if real_due < watermark:
                due.append((real_due, key, record[1]))
            else:
                heapq.heappush(timers, (real_due, key))
        due.sort(key=lambda item: (item[0], item[1]))
        for _, key, visits in due:
            device = key[1:].decode()
            for visit in visits:
                self._end(device, visit, "timeout", seq, emitted, first)
            self.devices.delete(device)


def _location_allowed(visit: list[Any]) -> bool:
    """A confirmed visit may be written unless its customer had not allowed location processing then
    (a visit confirmed by a state folder of an older format has no flag: written, as it was)."""
    return len(visit) <= LOCATION_OK or bool(visit[LOCATION_OK])


def _visit_record(device: str, visit: list[Any], end_ms: int | None, ended_by: str) -> dict[str, Any]:
    return {"visit_id": visit[VISIT_ID], "device_id": device, "customer_id": visit[CUSTOMER],
            "store_id": visit[STORE], "start": format_ms(visit[START]),
            "confirmed_at": format_ms(visit[CONFIRMED_AT]), "end": format_ms(end_ms) if end_ms is not None else None,
            "dwell_s": (visit[LAST] - visit[START]) / 1000, "pings": visit[PINGS], "ended_by": ended_by}
