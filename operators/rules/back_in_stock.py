"""The "back_in_stock" kind: a product the customer looked at while it was out of stock is back.

    [rules.back_in_stock]
    kind = "back_in_stock"
    store = "online"        # whose stock: "online" (the web shop) or a store id
    within = "30d"          # a look this long before the product comes back still counts

Reads the optional input topic `inventory.levels` (schemas/inventory.levels.schema.json: the level of a
product in a store or online; the latest by event time wins). A view or an add to cart of a product
whose last known level in `store` is 0 or less makes the customer wait for it; when a level above 0
follows one of 0 or less, every customer waiting (and not having bought it since) gets a trigger at the
level's time, with the look and the level as evidence. A purchase of the product ends the wait. The
levels reach every rules shard (each keeps its own copy: the disk cost is stores x products x shards).
"""

from __future__ import annotations

from typing import Any

from omnitrigger.config import ConfigError, parse_duration_s
from omnitrigger.operators.rules.rule import Rule, RuleContext
from omnitrigger.records import INVENTORY_TOPIC


def _store(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise ConfigError(f"{name}: expected \"online\" or a store id, got {value!r}")
    return str(value)


class BackInStock(Rule):
    kind = "back_in_stock"
    broadcast_topics = frozenset({INVENTORY_TOPIC})
    settings = {"store": _store, "within": parse_duration_s}
    default_settings = {"store": "online", "within": 30 * 86_400.0}

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        super().__init__(name, code, settings)
        self.store = str(settings["store"])
        self.within_ms = int(settings["within"] * 1000)

    def on_web(self, ctx: RuleContext, customer: str, body: dict[str, Any], ts_ms: int) -> None:
        if body["type"] not in ("view_item", "add_to_cart"):
            return
        product = body["product_id"]
        level = ctx.stock(self.store, product)
        if level is None or level > 0 or ctx.bought_since(customer, product, ts_ms):
            return
        ctx.remember(self, customer, product, [ts_ms, body["event_id"]], ts_ms + self.within_ms)
        ctx.watch(self, product, customer, ts_ms + self.within_ms)

    def on_purchase(self, ctx: RuleContext, customer: str, products: list[Any], ts_ms: int, evidence: str,
                    channel: str | None) -> None:
        for product in products:
            ctx.forget(self, customer, product)

    def on_stock(self, ctx: RuleContext, store: str, product: Any, qty: float, previous: float | None,
                 ts_ms: int, evidence: str) -> None:
        if store != self.store or qty <= 0 or previous is None or previous > 0:
            return
        for customer in ctx.watchers(self, product):
            looked = ctx.recall(self, customer, product)
            if looked is None:  # merged away, bought meanwhile, or too long ago
                continue
            ctx.forget(self, customer, product)
            if looked[0] < ts_ms and not ctx.bought_since(customer, product, looked[0]):
                ctx.decide(self, customer, [product], ts_ms, None, [looked[1], evidence])
