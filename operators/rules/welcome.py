"""The "welcome" kind: a message after a customer's first identification with an account or a loyalty card.

    [rules.welcome]
    kind = "welcome"
    identifiers = ["auth_id", "loyalty_id"]   # the identifications that count
    after = "10m"          # a consent given with the sign-up has time to arrive
    quiet_hours = true

When an event shows an identifier of those types for the first time (identity's `new_types`) and the
customer had none of those types before (`known_types`), a deadline is set `after` later; at the
deadline the policy decides, as for any trigger (consent, caps, the kill switch). One welcome per
customer: a second card or a merge of two identified customers welcomes nobody. An identifier
forgotten after `[identity] retention` unseen and seen again counts as new. The identity change is
journaled (its types only), so a welcome pending when the customer merges moves to the winner.
"""

from __future__ import annotations

from typing import Any

from omnitrigger.config import _boolean, parse_duration_s
from omnitrigger.operators.identity import IDENTIFIER_TYPES
from omnitrigger.operators.rules.rule import Pending, Rule, RuleContext, choices
from omnitrigger.records import IDENTITY_TOPIC

#: A welcome's one pending deadline per customer is kept under this subject.
SUBJECT = "welcome"


class Welcome(Rule):
    kind = "welcome"
    deferred = True
    topics = frozenset({IDENTITY_TOPIC})
    settings = {"identifiers": choices(IDENTIFIER_TYPES), "after": parse_duration_s, "quiet_hours": _boolean}
    default_settings = {"identifiers": ("auth_id", "loyalty_id"), "after": 600.0, "quiet_hours": True}

    def __init__(self, name: str, code: int | None, settings: dict[str, Any]) -> None:
        super().__init__(name, code, settings)
        self.identifiers = frozenset(settings["identifiers"])
        self.after_ms = int(settings["after"] * 1000)
        self.quiet_hours: bool = settings["quiet_hours"]

    def delay_ms(self) -> int:
        return self.after_ms

    def on_identity(self, ctx: RuleContext, customer: str, change: dict[str, Any], ts_ms: int) -> None:
        if not self.identifiers.intersection(change["new_types"]) or self.identifiers.intersection(change["known_types"]):
            return
        if ctx.pending(self, customer, SUBJECT) is None:
            ctx.schedule(self, customer, SUBJECT, ts_ms, change["source"])

    def on_due(self, ctx: RuleContext, customer: str, product: Any, pending: Pending) -> None:
        ctx.decide(self, customer, [], pending[0], None, pending[2], subject=SUBJECT)
