"""The "store_visit_offer" kind (coded): at a confirmed store visit, an offer of what the customer viewed
online and did not buy.

At a visit confirmed at v: the products the customer viewed in [v - lookback, v) and did not buy after
that view, most recent first, at most `max_products`; nothing if none. In-store offers are exempt from
quiet hours (the customer is in the store now); `quiet_hours = true` suppresses an offer due inside
them (reason `quiet_hours`, in the store's own zone when the stores CSV names one) instead. The policy
asks for the customer's location consent (`[policy] require_location_consent`).

    [rules.store_visit_offer]
    quiet_hours = false
    lookback = "24h"
    max_products = 5
    min_stock = 0           # leave out products the store has fewer units of (inventory.levels); 0: off
"""

from __future__ import annotations

from typing import Any

from omnitrigger.records import INVENTORY_TOPIC, VISIT_CONFIRMED
from omnitrigger.config import ConfigError, _boolean, _positive_int, parse_duration_s
from omnitrigger.operators.rules.rule import Rule, RuleContext


def _units(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: expected a whole number of units, 0 or more, got {value!r}")
    return value


class StoreVisitOffer(Rule):
    kind = "store_visit_offer"
    settings = {"quiet_hours": _boolean, "lookback": parse_duration_s, "max_products": _positive_int,
                "min_stock": _units}
    default_settings = {"quiet_hours": False, "lookback": 86_400.0, "max_products": 5, "min_stock": 0}
    topics = frozenset({VISIT_CONFIRMED})
    uses_location = True

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        super().__init__(name, code, settings)
        self.quiet_hours: bool = settings["quiet_hours"]
        self.lookback_ms = int(settings["lookback"] * 1000)
        self.max_products: int = settings["max_products"]
        self.min_stock: int = settings["min_stock"]
        # Stock levels reach the rules shards only when an offer or a rule reads them.
        self.broadcast_topics = frozenset({INVENTORY_TOPIC}) if self.min_stock > 0 else frozenset()

    def on_visit(self, ctx: RuleContext, customer: str, visit: dict[str, Any], ts_ms: int) -> None:
        store = visit["store_id"]
        viewed = [(view_ts, str(product), product, event_id) for product, view_ts, event_id in ctx.views(customer)
                  if ts_ms - self.lookback_ms <= view_ts < ts_ms
                  and not ctx.bought_since(customer, product, view_ts) and self._in_stock(ctx, store, product)]
        if not viewed:
            return
        viewed.sort(reverse=True)
        chosen = viewed[:self.max_products]
        products = [product for _, _, product, _ in chosen]
        evidence = [visit["visit_id"]] + [event_id for *_, event_id in chosen]
        if self.quiet_hours and ctx.is_quiet(ts_ms, visit["store_id"]):  # in the store now or never
            ctx.suppress(self, customer, products, ts_ms, "quiet_hours", evidence, visit["store_id"])
            return
        ctx.decide(self, customer, products, ts_ms, visit["store_id"], evidence, subject=visit["visit_id"])

    def _in_stock(self, ctx: RuleContext, store: str, product: Any) -> bool:
        """With `min_stock`, a product the store has fewer units of is left out (an unknown level is not)."""
        if self.min_stock <= 0:
            return True
        level = ctx.stock(str(store), product)
        return level is None or level >= self.min_stock
