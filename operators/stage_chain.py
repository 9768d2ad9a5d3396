"""A stage: operators run in order over one shard's events, with exactly-once run counters.

The chain is what one Bytewax stateful step runs for one shard key. Dead
letters pass through untouched; events go through each operator in turn;
what survives the last operator becomes the `events` stream if asked for.
The counters (records read per topic, dead letters by reason, duplicates)
live in the shard's state, so they roll back and resume with it and a
resumed replay reports the same totals as an uninterrupted one.

A chain after the first (`LaterChain`, the history stage's) takes what the
stage before it handed on (operators/handoff.py) and counts no records: the
records read, dead letters and duplicates are the first stage's. Its
operators' own run totals (visits: late pings, ...) go in a stats record of
its own, `"stage": "history"`, sorted right after the first stage's at each
end of input; `merge_run_totals` puts them together.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Protocol

import orjson

from omnitrigger.operators.base import OperatorResult, StageOperator
from omnitrigger.records import (
    DEAD_LETTERS, DUPLICATES, EVENTS, INTERNAL_TOPIC_PREFIX, RETURN_TOPICS, Emitted, Event, Heartbeat, Item, Progress,
    is_return,
)
from omnitrigger.state import ShardState

STATS = "stats"
_COUNTERS = b"counters"
#: The field that names the stage of a stats record after the first stage's (the first stage's has none).
STAGE_FIELD = "stage"


def operator_stats(operators: list[ChainOperator]) -> dict[str, dict[str, int]]:
    """The run totals of the operators that keep some (visits: late pings, ...), by operator name."""
    return {operator.name: dict(sorted(operator.stats().items()))
            for operator in operators if hasattr(operator, "stats")}


def merge_run_totals(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The run totals from a stats stream in sort order: the latest record of each stage, put together."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record.get(STAGE_FIELD, "")] = record
    merged: dict[str, Any] = {}
    for stage in sorted(latest):
        merged.update((name, value) for name, value in latest[stage].items() if name != STAGE_FIELD)
    return merged


class ChainOperator(Protocol):
    """What a chain runs: a StageOperator, or a stateless step such as operators/clock_marks.py's."""

    name: str

    def on_events(self, events: list[Item]) -> OperatorResult: ...

    def on_eof(self, end_seq: int) -> OperatorResult: ...


class StageChain:
    def __init__(self, operators: list[StageOperator], counter_state: ShardState, emit_events: bool) -> None:
        self.operators = operators
        self.counter_state = counter_state
        self.emit_events = emit_events
        raw = counter_state.get_meta(_COUNTERS)
        saved = orjson.loads(raw) if raw else {}
        self.counters: dict[str, Counter] = {name: Counter(saved.get(name, {}))
                                             for name in ("read", "dead_letters", "duplicates", "events", "returns")}
        self.last_seq = saved.get("last_seq", -1)

    def on_batches(self, batches: Iterable[list[Event | Emitted | Heartbeat]]) -> tuple[list[Emitted], list[Item]]:
        """Run one delivery of micro-batches: (records for the output streams, events for the next stage)."""
        out: list[Emitted] = []
        events: list[Item] = []
        read = self.counters["read"]
        for batch in batches:
            for item in batch:
                kind = type(item)
                if kind is Event:
                    events.append(item)
                    self.last_seq = item.seq
                elif kind is Heartbeat:
                    events.append(item._replace(seq=self.last_seq))
                else:
                    out.append(item)
                    if item.stream == DEAD_LETTERS:
                        read[item.record["topic"]] += 1
                        self.counters["dead_letters"][item.record["reason"]] += 1
                        self.last_seq = item.sort_key[0]
        # Counted from lists of topics (Counter.update counts a list in C): once per record, so it adds up.
        read.update([event.topic for event in events if type(event) is Event])
        operators_out, events = through(self.operators, events)
        out.extend(operators_out)
        for emitted in out:
            if emitted.stream == DUPLICATES:
                self.counters["duplicates"][emitted.record["topic"]] += 1
        external = [event for event in events
                    if type(event) is Event and not event.topic.startswith(INTERNAL_TOPIC_PREFIX)]
        self.counters["events"].update([event.topic for event in external])
        self.counters["returns"].update([event.topic for event in external
                                         if event.topic in RETURN_TOPICS and is_return(event.topic, event.body)])
        if self.emit_events:
            out.extend(Emitted(EVENTS, (e.seq, 0), {"topic": e.topic, "partition": e.partition, "offset": e.offset,
                                                   "ts_ms": e.ts_ms, "customer_id": e.customer, "event": e.body})
                       for e in external)
        self._save_counters()
        return out, events

    def on_eof(self) -> tuple[list[Emitted], list[Item]]:
        """End of input: each operator's end-of-input output (passed through the operators after it), then stats."""
        out, carried = end_of_input(self.operators, self.last_seq + 1)
        self._save_counters()
        out.append(self.stats_record())
        return out, carried

    def _save_counters(self) -> None:
        document: dict[str, Any] = {name: dict(counter) for name, counter in self.counters.items()}
        document["last_seq"] = self.last_seq
        self.counter_state.put_meta(_COUNTERS, orjson.dumps(document))

    def stats_record(self) -> Emitted:
        """The run totals so far, sorted after every record they count."""
        document: dict[str, Any] = {name: dict(sorted(counter.items())) for name, counter in self.counters.items()}
        document.update(operator_stats(self.operators))  # operators with run totals of their own (identity)
        return Emitted(STATS, (self.last_seq + 1, 0), document)


class LaterChain:
    """The operators of a stage after the first, over what the stage before handed on, in order.

    `last_seq` follows the `Progress` marks that end each hand-off (it is the first stage's), so the
    end-of-input records sort where they would in one stage.
    """

    def __init__(self, operators: list[ChainOperator], stage: str = "history") -> None:
        self.operators = operators
        self.stage = stage
        self.last_seq = -1

    def on_batches(self, batches: Iterable[list[Item]]) -> tuple[list[Emitted], list[Item]]:
        events: list[Item] = [item for batch in batches for item in batch]
        for item in reversed(events):
            if type(item) is Progress:
                self.last_seq = max(self.last_seq, item.seq)
                break
        return through(self.operators, events)

    def on_eof(self) -> tuple[list[Emitted], list[Item]]:
        """Each operator's end-of-input output, then its operators' run totals, if they keep any."""
        out, carried = end_of_input(self.operators, self.last_seq + 1)
        stats = operator_stats(self.operators)
        if stats:
            out.append(Emitted(STATS, (self.last_seq + 1, 1), {STAGE_FIELD: self.stage, **stats}))
        return out, carried


def through(operators: list[ChainOperator], events: list[Item]) -> tuple[list[Emitted], list[Item]]:
    """`events` through each operator in turn: what they all emitted, and what the last passed on."""
    out: list[Emitted] = []
    for operator in operators:
        result = operator.on_events(events)
        events = result.events
        out.extend(result.emitted)
    return out, events


def end_of_input(operators: list[ChainOperator], end_seq: int) -> tuple[list[Emitted], list[Item]]:
    """Each operator's end-of-input output, passed through the operators after it: (emitted, passed on)."""
    out: list[Emitted] = []
    carried: list[Item] = []
    for operator in operators:
        if carried:
            result = operator.on_events(carried)
            carried = list(result.events)
            out.extend(result.emitted)
        result = operator.on_eof(end_seq)
        carried.extend(result.events)
        out.extend(result.emitted)
    return out, carried
