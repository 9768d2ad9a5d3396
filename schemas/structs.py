"""The input contracts as msgspec Structs: a yes from these means the JSON Schema says yes too.

`Contracts.vouch` (and so `check_json`) asks these before any dict is
walked, straight from the record's bytes (`msgspec.json.Decoder`: no Python
code per field), for less than half what the generated acceptor and the
depth check cost on a decoded body. The event body handed downstream is
still the dict orjson decodes, with its unknown fields and key order; the
Structs only answer "valid", and are dropped at once.

They are stricter than the schemas, never looser, and `Contracts` relies on
exactly that: anything they refuse goes the way every record went before
(depth check, acceptor, closure validator), which accepts it or names the
reason of its dead letter. Stricter on purpose:

* `TOPIC_TYPES` take no unknown fields (`forbid_unknown_fields`), in the
  body, `ids` or line items, so a record they accept nests no deeper than
  `MAX_DEPTH` levels and the depth check has nothing to find; a record with
  unknown fields is asked of `LENIENT_TOPIC_TYPES`, the same Structs that
  skip them, and then the depth check runs as before;
* the identifier types an `ids` object does not declare are taken only
  when they are identifiers too (a string of at most 256 characters, or
  null); geo.pings' `ids` are a Struct, whose strict form takes none;
* a field the schema calls an integer takes JSON integers, not `1.0`;
* an integer event time must fall in 2000..3000 as `parse_event_time`
  requires, so its value is the event time as it is.

Looser would be a bug: tests/test_decode_fast.py holds them to the closure
validator on the real-data mix and on mutated and fuzzed records, and to the
schema files field by field. Numbers that JSON can write but a float cannot
hold (1e400) never get here: orjson refuses them first. The Structs are
`gc=False`: no cycle can form in one, and untracked they decode a third faster.
"""

from typing import Annotated, Any, Literal, Union

from msgspec import UNSET, Meta, Struct, UnsetType

# Event time bounds, here for the Structs and imported by contracts.py for parse_event_time.
EARLIEST_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: earlier values are seconds or garbage, not events
LATEST_TS_MS = 32_503_680_000_000  # 3000-01-01: keeps datetime arithmetic in range
#: The deepest a record these accept can nest: body, items, line item.
MAX_DEPTH = 3

EventTime = Union[Annotated[int, Meta(ge=EARLIEST_TS_MS, lt=LATEST_TS_MS)], str]
Identifier = Union[Annotated[str, Meta(max_length=256)], None]
EventId = Annotated[str, Meta(min_length=1, max_length=256)]
Code = Union[Annotated[str, Meta(min_length=1, max_length=128)], int]  # product, store, till, receipt
Ids = Annotated[dict[str, Identifier], Meta(min_length=1)]


def _contract_types(strict: bool) -> dict[str, Any]:
    """The Struct (or tagged union of Structs) of each input topic; `strict`: unknown fields refused."""

    class LineItem(Struct, forbid_unknown_fields=strict, gc=False):
        product_id: Code
        qty: float
        price: float

    LineItems = Annotated[list[LineItem], Meta(min_length=1, max_length=1000)]

    class _WebEvent(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True, tag_field="type"):
        event_id: EventId
        ts: EventTime
        channel: Literal["web", "app"]
        ids: Ids
        product_id: Union[Code, UnsetType] = UNSET
        items: Union[LineItems, UnsetType] = UNSET
        order_id: Union[str, int, UnsetType] = UNSET
        session_id: Union[str, UnsetType] = UNSET

    class _ProductEvent(_WebEvent, kw_only=True):
        product_id: Code  # the schema's `if type is view_item, add_to_cart or remove_from_cart then product_id`

    class ViewItem(_ProductEvent, tag="view_item"):
        pass

    class AddToCart(_ProductEvent, tag="add_to_cart"):
        pass

    class RemoveFromCart(_ProductEvent, tag="remove_from_cart"):
        pass

    class BeginCheckout(_WebEvent, tag="begin_checkout"):
        pass

    class Purchase(_WebEvent, kw_only=True, tag="purchase"):
        items: LineItems  # `if type is purchase then items`

    class Receipt(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        terminal_id: Code
        receipt_no: Code
        ts: EventTime
        store_id: Code
        items: LineItems
        ids: Union[dict[str, Identifier], UnsetType] = UNSET
        total: Union[float, UnsetType] = UNSET
        type: Union[Literal["sale", "return"], UnsetType] = UNSET

    class GeoIds(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        device_id: Identifier
        cookie_id: Union[Identifier, UnsetType] = UNSET
        auth_id: Union[Identifier, UnsetType] = UNSET
        email: Union[Identifier, UnsetType] = UNSET
        phone: Union[Identifier, UnsetType] = UNSET
        loyalty_id: Union[Identifier, UnsetType] = UNSET

    class GeoPing(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        event_id: EventId
        ts: EventTime
        ids: GeoIds
        lat: Annotated[float, Meta(ge=-90, le=90)]
        lon: Annotated[float, Meta(ge=-180, le=180)]
        accuracy_m: Annotated[float, Meta(ge=0)]
        source: Literal["gps", "wifi", "cell"]
        consent_id: Union[str, UnsetType] = UNSET

    class IdentityLink(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        event_id: EventId
        ts: EventTime
        ids: Annotated[dict[str, Identifier], Meta(min_length=2)]
        source: Literal["login", "loyalty_card", "app_install", "crm"]
        confidence: Union[Annotated[float, Meta(ge=0, le=1)], UnsetType] = UNSET

    class ConsentChange(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        event_id: EventId
        ts: EventTime
        ids: Ids
        channel: Literal["push", "email", "sms", "location"]
        status: Literal["granted", "revoked"]

    class InventoryLevel(Struct, forbid_unknown_fields=strict, gc=False, kw_only=True):
        store_id: Code
        product_id: Code
        qty: float
        ts: EventTime
        event_id: Union[EventId, UnsetType] = UNSET

    return {
        "web.events": Union[ViewItem, AddToCart, RemoveFromCart, BeginCheckout, Purchase],  # tagged by `type`
        "pos.receipts": Receipt,
        "geo.pings": GeoPing,
        "identity.links": IdentityLink,
        "consent.changes": ConsentChange,
        "inventory.levels": InventoryLevel,
    }


#: Each input topic's Structs, with no unknown field anywhere: what they accept nests at most MAX_DEPTH levels.
TOPIC_TYPES = _contract_types(strict=True)
#: The same, unknown fields skipped unread (so they may nest any deep; the depth check still applies).
LENIENT_TOPIC_TYPES = _contract_types(strict=False)
