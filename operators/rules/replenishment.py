"""The "replenishment" kind: a consumable bought is due again after its repurchase interval.

    [rules.replenishment]
    kind = "replenishment"
    quiet_hours = true

with the interval per product or category from the catalogue given with `--catalog FILE`
(omnitrigger/io/catalog.py: `product_id,category,repurchase_days`). A purchase in any channel of a
product with an interval sets a reminder that many days later. Bought again before it is due: the
reminder is cancelled (`purchased`, in the suppressed stream) and a new one set from this purchase.
Bought again after it was due (while it waits out the purchase grace): it goes out as it stands and a
new one is set. A purchase older than the pending one's changes nothing. Products without an interval
are never reminded.
"""

from __future__ import annotations

from typing import Any

from omnitrigger.io.catalog import repurchase_days
from omnitrigger.config import _boolean
from omnitrigger.operators.rules.rule import Rule, RuleContext

_DAY_MS = 86_400_000


class Replenishment(Rule):
    kind = "replenishment"
    deferred = True
    settings = {"quiet_hours": _boolean}
    default_settings = {"quiet_hours": True}
    run_time_settings = ("catalog_file",)

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        super().__init__(name, code, settings)
        self.quiet_hours: bool = settings["quiet_hours"]
        catalog = settings.get("catalog_file")
        self.interval_ms = {product: int(days * _DAY_MS) for product, days in
                            (repurchase_days(catalog) if catalog else {}).items()}

    def delay_ms(self) -> int:
        return max(self.interval_ms.values(), default=0)

    def on_purchase(self, ctx: RuleContext, customer: str, products: list[Any], ts_ms: int, evidence: str,
                    channel: str | None) -> None:
        for product in products:
            interval = self.interval_ms.get(str(product))
            if interval is None:
                continue
            pending = ctx.pending(self, customer, product)
            if pending is not None and pending[1] > ts_ms:
                continue  # an older purchase, arriving late: the later one set the reminder
            if pending is not None and pending[0] <= ts_ms:
                ctx.fire(self, customer, product, pending)  # due already: it stands
            elif pending is not None:
                ctx.cancel(self, customer, product, ts_ms, "purchased", evidence, channel)
            ctx.schedule(self, customer, product, ts_ms, evidence, delay_ms=interval)
