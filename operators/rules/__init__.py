"""The trigger rules: a host operator (host.py) and one file a rule kind, registered in registry.py.

    rule.py                 what a rule is: the hooks the host calls and the context it acts through
    registry.py             the kinds, the built-in rules, the rules a config declares ([rules.<name>])
    host.py                 the operator: facts, deadlines, timers, policy, outputs, merges
    abandonment.py          kind "abandonment": cart_abandoned, browse_abandoned, and tables like them
    store_visit_offer.py    kind "store_visit_offer": an offer while the customer is in a store

docs/operators.md shows how to add a rule: a `[rules.<name>]` table for a new abandonment journey,
or a file with a `Rule` subclass for a new kind.
"""

from omnitrigger.operators.rules.host import RECIPIENT_TYPES, Rules
from omnitrigger.operators.rules.registry import (
    BUILT_IN_RULES, KINDS, RuleConfigError, broadcast_topics, configured_rules, register_kind, rule_layout, rule_names,
    rule_topics,
)
from omnitrigger.operators.rules.rule import Rule, RuleContext, iso, trigger_id

#: The built-in rules' names (a config may declare more: `rule_names(config)`).
RULES = BUILT_IN_RULES
CART, BROWSE, OFFER = BUILT_IN_RULES

__all__ = ["BROWSE", "BUILT_IN_RULES", "CART", "KINDS", "OFFER", "RECIPIENT_TYPES", "RULES", "Rule", "RuleConfigError",
           "RuleContext", "Rules", "broadcast_topics", "configured_rules", "iso", "register_kind", "rule_layout", "rule_names",
           "rule_topics", "trigger_id"]
