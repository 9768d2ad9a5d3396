"""The two things that flow between stages: events and emitted output records.

Both are NamedTuples: cheap to build, to compare and to pickle between the
processes of a Bytewax cluster.
"""

from __future__ import annotations

from typing import Any, NamedTuple


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


class Heartbeat(NamedTuple):
    """A live source's note that it is idle at wall-clock time `wall_ms`.

    Carried in a source's micro-batch like a record: it lets the event-time
    clock advance without traffic, so a deadline at 03:00 fires at 03:00
    (minus nothing, since an idle source has nothing late left to deliver).
    A replay never makes one.
    """

    wall_ms: int


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
STREAMS = (EVENTS, DEAD_LETTERS, DUPLICATES, TRIGGERS, VISITS, SUPPRESSED, IDENTITIES, REFUSED_LINKS, RETRACTIONS)

# Topics of the events operators make for the operators after them (never read from Kafka).
INTERNAL_TOPIC_PREFIX = "omnitrigger."
#: Two customers became one: body {"winner", "loser"}, and after the history operator "history".
MERGE_TOPIC = "omnitrigger.merge"
#: The event-time clock moved: ts_ms is the new watermark (operators/clock.py).
WATERMARK_TOPIC = "omnitrigger.watermark"
#: An idle live source's wall clock, as an event for the clock operator: ts_ms is the wall-clock time.
HEARTBEAT_TOPIC = "omnitrigger.heartbeat"
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


def is_return(topic: str, body: dict[str, Any]) -> bool:
    """A till receipt of type return, or a receipt or web purchase with a returned line (counted as returns)."""
    if topic == "pos.receipts":
        return body.get("type") == "return" or any(is_returned_line(item) for item in body["items"])
    return topic == "web.events" and body["type"] == "purchase" and any(is_returned_line(i) for i in body["items"])
