"""What flows between operators and stages: events, control records and emitted output records.

All are module-level NamedTuples: cheap to build, to compare and to pickle
between the processes of a Bytewax cluster. An operator's list holds events
and control records mixed, in input order; it dispatches on the record's
type (`type(item) is Merge`), and passes on what it does not handle.

Control records (`Watermark`, `Merge`, `Heartbeat`, `Progress`) tell operators how to
handle their state: the clock moved, two customers became one, an idle
source's wall clock. They are not events: no contract, no topic, not counted in
the run totals (operators/stage_chain.py). They live in memory and in Bytewax's
in-flight items only, never in a snapshot.

Two records operators make stay `Event`s with an internal topic
(`IDENTITY_TOPIC`, `VISIT_CONFIRMED`): they are facts of one customer, which
go every way an input event goes, by topic: routed to the customer's shard,
journaled by history (`[seq, topic, ts_ms, fact]`, replayed on a merge) and
declared in a rule's `topics`. A type of their own would need each of those
topic-keyed paths to take a type too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec


#: Whole seconds lately formatted -> their text up to the milliseconds: outputs come in bursts at one
#: moment (a batch of deadlines, a receipt's suppressions), so most calls find theirs.
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 100_000


def format_ms(ts_ms: int) -> str:
    """An event time in epoch ms as every output writes it: RFC 3339 UTC with milliseconds
    ("2017-11-25T02:16:24.123Z"). `time.gmtime` on whole seconds: half the cost of a datetime, and exact;
    a second's text is kept (a third of the cost again when it is)."""
    seconds, millis = divmod(ts_ms, 1000)
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()  # a second's text never changes: starting afresh only costs the strftime again
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
    return f"{text}{millis:03d}Z"


class Event(NamedTuple):
    """A record that passed its contract, with where it came from.

    `seq` is the record's position in the merged input order; every output
    record sorts by a key derived from it, which is what makes replay output
    byte-identical whatever the batch size or worker count.
    """

    seq: int
    topic: str
    partition: int
    offset: int
    ts_ms: int
    body: dict[str, Any]
    #: The customer the event's identifiers resolve to; set by the identity operator, None before it.
    customer: str | None = None


_new_tuple = tuple.__new__


def with_customer(event: Event, customer: str | None) -> Event:
    """`event` with its customer set: `event._replace(customer=...)` at a third of its cost (once per event)."""
    return _new_tuple(Event, (*event[:6], customer))


def with_seq(event: Event, seq: int) -> Event:
    """`event` at input position `seq` (the live merge numbers each record it hands out), as cheaply."""
    return _new_tuple(Event, (seq, *event[1:]))


class Heartbeat(NamedTuple):
    """A live source's note that it is idle at wall-clock time `wall_ms` (a control record).

    Carried in a source's micro-batch like a record: it lets the event-time
    clock advance without traffic, so a deadline at 03:00 fires at 03:00
    (minus nothing, since an idle source has nothing late left to deliver).
    A replay never makes one.
    """

    wall_ms: int
    #: Its place in the input order: the last record read before it (set by the stage; -1 from the source).
    seq: int = -1


class Watermark(NamedTuple):
    """The event-time clock moved to `ts_ms` (operators/clock.py): every deadline at or before it may fire."""

    seq: int
    ts_ms: int


class Progress(NamedTuple):
    """The stage before has handed on everything of the input up to `seq` (a control record between stages).

    The sequencer hands the history stage only what that stage reads (operators/handoff.py): without this
    mark, the history stage would not know where a batch, or the input, ended.
    """

    seq: int


class PartBatch(NamedTuple):
    """A batch of one part of a partitioned source, for the sequencer's merge (operators/input_merge.py).

    `records` are the part's next records in increasing order key, each as the reader stamped it
    (omnitrigger/io/recording.py `Stamped`); `frontier`: every key the part sends later is above it
    (`FINISHED`, state/ordering.py, once it has sent its last). `parts`: how many parts the source has, so
    the merge knows whom to wait for before it hears from them all.
    """

    part: int
    parts: int
    frontier: tuple
    records: list[tuple]


#: Which of a merge's customers a rules shard holds (operators/router.py): the loser's shard retires its
#: state, the winner's absorbs its history, one shard holding both does both.
MergeRole = Literal["retire", "absorb", "both"]


class Merge(NamedTuple):
    """Two customers became one (operators/identity.py): `loser`'s past moves to `winner`.

    Made before the event that caused it, with its seq and time; the history operator fills in the
    loser's journal and consents, the router the role each rules shard plays.
    """

    seq: int
    ts_ms: int
    winner: str
    loser: str
    #: The loser's journal, oldest first: [seq, topic, ts_ms, fact] each (operators/history.py).
    history: Sequence[list[Any]] = ()
    #: The loser's latest consent change per channel: {channel: [status, ts_ms]} (operators/history.py).
    consents: dict[str, list[Any]] | None = None
    role: MergeRole = "both"


#: What an operator takes and passes on: events and the control records among them.
class Ping(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A geo ping cut to what visits reads, as the history stage gets it from another process.

    The sequencer's hand-off (operators/handoff.py) sends a ping as these fields, not as an `Event` with
    its body: the receiving process builds no dicts, and msgspec decodes the fields straight into this
    type, untracked by the garbage collector (its fields are scalars). Visits reads a `Ping` as it reads a
    ping `Event`; after visits only the clock reads pings (operators/clock_marks.py), which drops them.
    The fields whose values a contract admits in more than one type keep the value the ping carried.
    """

    seq: int
    topic: str
    partition: int
    offset: int
    ts_ms: int
    device_id: Any  # null, blank or a string: visits judges it
    source: Any
    accuracy_m: Any
    lat: Any
    lon: Any
    customer: str | None


Item = Event | Watermark | Merge | Heartbeat | Progress | Ping


class Emitted(NamedTuple):
    """One record for a named output stream (events, dead_letters, duplicates, ...).

    `sort_key` orders the stream deterministically: `(seq, sub)` where `seq` is
    the input record that caused it and `sub` numbers several outputs of one input.
    """

    stream: str
    sort_key: tuple[int, int]
    record: dict[str, Any]


# Output stream names, shared by the flow, the sinks and the summary.
EVENTS = "events"
DEAD_LETTERS = "dead_letters"
DUPLICATES = "duplicates"
TRIGGERS = "triggers"
VISITS = "visits"
SUPPRESSED = "suppressed"
IDENTITIES = "identities"
REFUSED_LINKS = "refused_links"
RETRACTIONS = "retractions"
CONVERSIONS = "conversions"
STREAMS = (EVENTS, DEAD_LETTERS, DUPLICATES, TRIGGERS, VISITS, SUPPRESSED, IDENTITIES, REFUSED_LINKS, RETRACTIONS,
           CONVERSIONS)

# Topics of the events operators make for the operators after them (never read from Kafka; see above).
INTERNAL_TOPIC_PREFIX = "omnitrigger."
#: A customer's identifiers changed (new, attached, merged in): body {"ids": [[type, value], ...]}, for the
#: rules to know whom a trigger reaches (its `recipient`); when the event brought identifiers seen for the
#: first time, also "new_types" (their types), "known_types" (the types the customer had already) and "source"
#: (the input record's id).
IDENTITY_TOPIC = "omnitrigger.identity"
#: The stock of a product in a store or online (an input topic, broadcast to every rules shard).
INVENTORY_TOPIC = "inventory.levels"
#: A device's store visit was confirmed: body is the visit (operators/visits.py).
VISIT_CONFIRMED = "omnitrigger.visit_confirmed"


def is_returned_line(item: dict[str, Any]) -> bool:
    """A receipt or purchase line that is a return, not a sale: a quantity of zero or less."""
    qty = item.get("qty")
    return isinstance(qty, (int, float)) and qty <= 0


#: The topics `is_return` can say yes for.
RETURN_TOPICS = frozenset({"pos.receipts", "web.events"})


def is_return(topic: str, body: dict[str, Any]) -> bool:
    """A till receipt of type return, or a receipt or web purchase with a returned line (counted as returns)."""
    if topic == "pos.receipts":
        return body.get("type") == "return" or any(is_returned_line(item) for item in body["items"])
    return topic == "web.events" and body["type"] == "purchase" and any(is_returned_line(i) for i in body["items"])
