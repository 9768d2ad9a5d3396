"""What a rule is: a plain class the rules host (host.py) calls with a customer's facts, and the context
it acts through. A rule never touches keys, timers or output streams itself.

A rule may keep values of its own per customer (`ctx.remember`, `ctx.recall`, with an event-time
expiry). A rule of a deferred kind keeps, per (customer, product), one pending deadline `[due_ms, set_ms,
evidence]` (a `Pending`) under its one-byte state code; the host stores it, keeps its timer, moves it
on a merge and retires it with the customer. When the event-time clock passes the deadline (plus
`[rules] purchase_grace`) the host calls `on_due`. A rule decides through `ctx.decide`, which applies
the policy (operators/policy.py) and writes the trigger or the suppression with its reason.

The hooks, each called in event-time order of one customer (the host replays a merged customer's
history through the same hooks with `ctx.replaying` set, to rebuild state without new outputs):

    on_web(ctx, customer, body, ts_ms)            a web.events record (view_item, add_to_cart, ...)
    on_purchase(ctx, customer, products, ts_ms, evidence, channel)
                                                   products bought in any channel (web, app, pos);
                                                   returned lines are left out
    on_visit(ctx, customer, visit, ts_ms)          a confirmed store visit (operators/visits.py)
    on_stock(ctx, store, product, qty, previous, ts_ms, evidence)
                                                   a stock level (inventory.levels; store "online" for the web)
    on_identity(ctx, customer, change, ts_ms)      identifiers seen for the first time: change["new_types"],
                                                   change["known_types"], change["source"]
    on_due(ctx, customer, product, pending)        a pending deadline is due (already removed)
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

import xxhash

from omnitrigger.records import format_ms

#: A pending deadline: [due_ms, set_ms, [evidence ids]].
Pending = list[Any]
#: A setting's converter: (value from the TOML table, "rules.<name>.<key>" for messages) -> value.
Converter = Callable[[Any, str], Any]
#: At most this many evidence ids are kept on a pending deadline.
MAX_EVIDENCE = 10


#: An event time as a trigger writes it (the flow's one output time format).
iso = format_ms


def trigger_id(rule: str, customer: str, subject: str, ts_ms: int) -> str:
    """Deterministic: the same rule, customer, product (or visit) and time give the same id on every run."""
    return xxhash.xxh3_128_hexdigest(f"{rule}\x1f{customer}\x1f{subject}\x1f{ts_ms}".encode())[:32]


def choices(allowed: tuple[str, ...]) -> Converter:
    """A setting that is a non-empty list drawn from `allowed` (each once, in the table's order)."""
    def convert(value: Any, name: str) -> tuple[str, ...]:
        from omnitrigger.config import ConfigError

        if not isinstance(value, (list, tuple)) or not value or any(item not in allowed for item in value):
            raise ConfigError(f"{name}: expected a non-empty list drawn from {list(allowed)}, got {value!r}")
        return tuple(dict.fromkeys(value))
    return convert


def event_products(body: dict[str, Any]) -> list[Any]:
    """The products a web event is about: its `product_id`, or the lines of its `items` (a begin_checkout
    may carry the basket instead), each once, returned lines left out."""
    if "product_id" in body:
        return [body["product_id"]]
    return list(dict.fromkeys(item["product_id"] for item in body.get("items", ())
                              if not isinstance(item.get("qty"), (int, float)) or item["qty"] > 0))


class RuleContext(Protocol):
    """What the host gives a rule (operators/rules/host.py implements it)."""

    watermark_ms: int  # the event-time clock: every deadline up to it (minus the grace) has fired
    replaying: bool  # applying a merged customer's history: rebuild state, emit nothing new for the past

    def pending(self, rule: "Rule", customer: str, product: Any) -> Pending | None: ...
    def pending_of(self, rule: "Rule", customer: str) -> list[tuple[Any, Pending]]: ...
    def drop_pending(self, rule: "Rule", customer: str, product: Any) -> None: ...
    def remember(self, rule: "Rule", customer: str, subject: Any, value: Any, expires_ms: int) -> None: ...
    def forget(self, rule: "Rule", customer: str, subject: Any) -> None: ...
    def stock(self, store: str, product: Any) -> float | None: ...
    def watch(self, rule: "Rule", product: Any, customer: str, expires_ms: int) -> None: ...
    def watchers(self, rule: "Rule", product: Any) -> list[str]: ...
    def recall(self, rule: "Rule", customer: str, subject: Any) -> Any: ...
    def schedule(self, rule: "Rule", customer: str, product: Any, set_ms: int, event_id: str,
                 evidence: list[str] | None = None, delay_ms: int | None = None) -> None: ...
    def cancel(self, rule: "Rule | str", customer: str, product: Any, ts_ms: int, reason: str, evidence: str,
               channel: str | None) -> None: ...
    def fire(self, rule: "Rule", customer: str, product: Any, pending: Pending) -> None: ...
    def bought_since(self, customer: str, product: Any, ts_ms: int) -> bool: ...
    def views(self, customer: str) -> list[tuple[Any, int, str]]: ...
    def decide(self, rule: "Rule", customer: str, products: list[Any], ts_ms: int, store: str | None,
               evidence: list[str], subject: str | None = None) -> None: ...
    def suppress(self, rule: "Rule", customer: str, products: list[Any], ts_ms: int, reason: str,
                 evidence: list[str], store: str | None) -> None: ...
    def is_quiet(self, ts_ms: int, store: str | None = None) -> bool: ...


class Rule:
    """One configured rule: its name, its kind's behaviour and its settings (from `[rules.<name>]`)."""

    #: The kind's name, as `kind = "..."` in a `[rules.<name>]` table.
    kind: ClassVar[str] = ""
    #: The settings a table may give, with their converters; `defaults` fills the rest.
    settings: ClassVar[dict[str, Converter]] = {}
    #: Whether the kind keeps pending deadlines. Every rule a table declares has a state code (its keys'
    #: prefix: deadlines, timers, memory); the built-in offer, which keeps nothing, has none.
    deferred: ClassVar[bool] = False
    #: Topics the kind reads besides the host's facts (web events, receipts, consents): routed to the
    #: rules shards (operators/router.py) and journaled across merges (operators/history.py).
    topics: ClassVar[frozenset[str]] = frozenset()
    #: Topics every rules shard must see whatever their customer (stock levels): `on_stock` gets them.
    broadcast_topics: ClassVar[frozenset[str]] = frozenset()
    #: Whether its triggers use where the customer is (then the policy asks for location consent).
    uses_location: ClassVar[bool] = False
    #: Defaults of its settings in a table that declares a rule of this kind (None: the table must give it).
    default_settings: ClassVar[dict[str, Any]] = {}
    #: Config fields handed to it as settings (given on the command line, not in its table).
    run_time_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        self.name = name
        self.code = code  # the byte its pending deadlines and timers are stored under (deferred kinds)
        self.options = settings

    @classmethod
    def defaults(cls, name: str, config: Any) -> dict[str, Any]:
        """Every setting's value when the table does not give it (built-in rules read older config keys)."""
        return {}

    def delay_ms(self) -> int:
        """A deferred kind: how long after its start a deadline is due (for the history's retention)."""
        return 0

    def on_web(self, ctx: RuleContext, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        pass

    def on_purchase(self, ctx: RuleContext, customer: str, products: list[Any], ts_ms: int, evidence: str,
                    channel: str | None) -> None:
        pass

    def on_visit(self, ctx: RuleContext, customer: str, visit: dict[str, Any], ts_ms: int) -> None:
        pass

    def on_stock(self, ctx: RuleContext, store: str, product: Any, qty: float, previous: float | None,
                 ts_ms: int, evidence: str) -> None:
        """A stock level changed (only for kinds whose `broadcast_topics` has INVENTORY_TOPIC); `previous` is
        the level before (None: not known)."""

    def on_identity(self, ctx: RuleContext, customer: str, change: dict[str, Any], ts_ms: int) -> None:
        """Identifiers seen for the first time (only for kinds whose `topics` has IDENTITY_TOPIC)."""

    def on_due(self, ctx: RuleContext, customer: str, product: Any, pending: Pending) -> None:
        ctx.decide(self, customer, [product], pending[0], None, pending[2])

    def describe(self) -> dict[str, Any]:
        """Its kind, state code and settings, as `omnitrigger rules` lists them."""
        return {"rule": self.name, "kind": self.kind, "state_code": chr(self.code) if self.code is not None else None,
                **{key: sorted(value) if isinstance(value, frozenset) else list(value) if isinstance(value, tuple)
                   else value for key, value in sorted(self.options.items())}}
