"""The "abandonment" kind: a start event sets a deadline, cancelling events remove it, at the deadline it fires.

    [rules.cart_abandoned]
    kind = "abandonment"
    starts_on = ["add_to_cart"]                   # web.events types that start (or restart) it
    cancelled_by = ["purchase", "remove_from_cart"]   # "purchase": bought in any channel, tills included
    after = "60m"
    restart = "move"        # a later start moves the deadline; "keep_first": the first one stands
    group_window = "10m"    # deadlines due this soon after the one firing go with it as one message ("0": off)
    replaces = ["browse_abandoned"]   # a start cancels these rules' pending deadlines of the product
    replace_reason = "moved_to_cart"
    quiet_hours = true      # a deadline inside [policy] quiet_hours moves to their end

Exactly as docs/semantics.md defines cart and browse abandonment: a start is ignored when the product
was bought at or after it; with "move", a start older than the pending one does not move it back, and a
start after a deadline that is due (waiting out the purchase grace) fires that deadline as it stands and
sets a new one, carrying its evidence (at most 10 ids). A cancelling event cancels a deadline set at or
before it and due after it; the cancellation goes to the suppressed stream with the reason (`purchased`,
`removed_from_cart`, or the event type). One deadline per (customer, product).
"""

from __future__ import annotations

from typing import Any

import orjson

from omnitrigger.config import ConfigError, _boolean, parse_duration_s
from omnitrigger.operators.rules.rule import MAX_EVIDENCE, Pending, Rule, RuleContext, choices, event_products

#: The suppressed stream's reason for a cancelling event type.
CANCEL_REASONS = {"purchase": "purchased", "remove_from_cart": "removed_from_cart"}
START_TYPES = ("view_item", "add_to_cart", "begin_checkout", "remove_from_cart")


def _restart(value: Any, name: str) -> str:
    if value not in ("move", "keep_first"):
        raise ConfigError(f"{name}: expected \"move\" or \"keep_first\", got {value!r}")
    return value


def _rule_names(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name}: expected a list of rule names, got {list(value) if isinstance(value, tuple) else value!r}")
    return tuple(value)


def _reason(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.replace("_", "").isalnum():
        raise ConfigError(f"{name}: expected a reason code such as \"moved_to_cart\", got {value!r}")
    return value


class Abandonment(Rule):
    kind = "abandonment"
    deferred = True
    settings = {"starts_on": choices(START_TYPES), "cancelled_by": choices(("purchase",) + START_TYPES),
                "after": parse_duration_s, "restart": _restart, "group_window": parse_duration_s,
                "replaces": _rule_names, "replace_reason": _reason, "quiet_hours": _boolean}
    default_settings = {"starts_on": None, "cancelled_by": ("purchase",), "after": None, "restart": "move",
                        "group_window": 0.0, "replaces": (), "replace_reason": "", "quiet_hours": True}

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        super().__init__(name, code, settings)
        self.starts_on = frozenset(settings["starts_on"])
        self.cancelled_by_purchase = "purchase" in settings["cancelled_by"]
        self.cancel_types = frozenset(settings["cancelled_by"]) - {"purchase"}
        self.after_ms = int(settings["after"] * 1000)
        self.keep_first = settings["restart"] == "keep_first"
        self.group_window_ms = int(settings["group_window"] * 1000)
        self.replaces: tuple[str, ...] = tuple(settings["replaces"])
        self.replace_reason: str = settings["replace_reason"] or f"moved_to_{name}"
        self.quiet_hours: bool = settings["quiet_hours"]

    def delay_ms(self) -> int:
        return self.after_ms

    def on_web(self, ctx: RuleContext, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        kind = body["type"]
        if kind in self.starts_on:
            for product in event_products(body):
                self._start(ctx, customer, product, ts_ms, body["event_id"])
        elif kind in self.cancel_types:
            for product in event_products(body):
                ctx.cancel(self, customer, product, ts_ms, CANCEL_REASONS.get(kind, kind), body["event_id"],
                           body.get("channel"))

    def on_purchase(self, ctx: RuleContext, customer: str, products: list[Any], ts_ms: int, evidence: str,
                    channel: str | None) -> None:
        if self.cancelled_by_purchase:
            for product in products:
                ctx.cancel(self, customer, product, ts_ms, "purchased", evidence, channel)

    def _start(self, ctx: RuleContext, customer: str, product: Any, ts_ms: int, event_id: str) -> None:
        pending = ctx.pending(self, customer, product)
        if self.keep_first:
            if pending is not None or ctx.bought_since(customer, product, ts_ms):
                return
            ctx.schedule(self, customer, product, ts_ms, event_id)
        else:
            if ctx.bought_since(customer, product, ts_ms):
                return
            if pending is not None and pending[1] > ts_ms:
                return  # a late start older than the pending one does not move it back
            if pending is not None and pending[0] <= ts_ms:  # due already, waiting out the grace: it stands
                ctx.fire(self, customer, product, pending)
                pending = None
            evidence = (pending[2] if pending is not None else [])[-(MAX_EVIDENCE - 1):] + [event_id]
            ctx.schedule(self, customer, product, ts_ms, event_id, evidence)
        for other in self.replaces:  # one intent, one message: this reminder replaces the other rule's
            ctx.cancel(other, customer, product, ts_ms, self.replace_reason, event_id, None)

    def on_due(self, ctx: RuleContext, customer: str, product: Any, pending: Pending) -> None:
        """The customer's other deadlines of this rule due within `group_window` after this one go along:
        one message for a cart filled in a few minutes, its products most recent first."""
        group = [(pending[1], product, pending[2])]
        if self.group_window_ms > 0:
            for other, (deadline, set_ms, evidence) in ctx.pending_of(self, customer):
                if pending[0] <= deadline <= pending[0] + self.group_window_ms:
                    ctx.drop_pending(self, customer, other)
                    group.append((set_ms, other, evidence))
            group.sort(key=lambda item: (-item[0], orjson.dumps(item[1])))
        ctx.decide(self, customer, [item[1] for item in group], pending[0], None,
                   [event_id for *_, ids in group for event_id in ids])
