"""The rule registry: the kinds there are, the built-in rules, and the rules a config declares.

A rule is a `[rules.<name>]` table: `kind = "..."` and the kind's settings. The three built-in
rules are such entries with their defaults (a table of the same name overrides single settings):

    cart_abandoned      kind "abandonment", state code A
    browse_abandoned    kind "abandonment", state code B
    store_visit_offer   kind "store_visit_offer"

Everything that used to be a hand-kept table is derived from `configured_rules(config)`: the rule
names the kill switch accepts, the state codes (part of the state folder's layout, `rule_layout`),
the topics routed to the rules shards and journaled across merges (`rule_topics`), and how long the
journal must keep a customer's facts (`longest_delay_ms`). `register_kind` adds a kind (a user
module named in `plugins` calls it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from omnitrigger.config import ConfigError, _holdout_share
from omnitrigger.operators.rules.abandonment import Abandonment
from omnitrigger.operators.rules.back_in_stock import BackInStock
from omnitrigger.operators.rules.replenishment import Replenishment
from omnitrigger.operators.rules.rule import Rule
from omnitrigger.operators.rules.store_visit_offer import StoreVisitOffer
from omnitrigger.operators.rules.welcome import Welcome

#: Topics whose records every rule sees through the host (facts it keeps, and consent for the policy).
HOST_TOPICS = frozenset({"web.events", "pos.receipts", "consent.changes"})
#: Key prefixes the host and the policy use in the rules namespace: no rule may take one as its code.
RESERVED_CODES = frozenset(b"CFGIMPRSTVWX")

KINDS: dict[str, type[Rule]] = {}


class RuleConfigError(ValueError):
    """A `[rules.<name>]` table that cannot be a rule; the message names the setting."""


def register_kind(kind: type[Rule]) -> type[Rule]:
    """Make a rule kind available to `[rules.<name>] kind = "<kind.kind>"` tables."""
    KINDS[kind.kind] = kind
    return kind


for _kind in (Abandonment, StoreVisitOffer, Welcome, Replenishment, BackInStock):
    register_kind(_kind)


@dataclass(frozen=True)
class BuiltIn:
    kind: str
    code: int | None

    def defaults(self, name: str, config: Any) -> dict[str, Any]:
        if name == "cart_abandoned":
            return {"starts_on": ("add_to_cart",), "cancelled_by": ("purchase", "remove_from_cart"),
                    "after": config.cart_abandoned_after_s, "restart": "move",
                    "group_window": config.cart_group_window_s,
                    "replaces": ("browse_abandoned",) if config.add_cancels_browse else (),
                    "replace_reason": "moved_to_cart", "quiet_hours": True}
        if name == "browse_abandoned":
            return {"starts_on": ("view_item",), "cancelled_by": ("purchase",),
                    "after": config.browse_abandoned_after_s, "restart": "keep_first", "group_window": 0.0,
                    "replaces": (), "replace_reason": "", "quiet_hours": True}
        return {"quiet_hours": config.offer_quiet_hours, "lookback": config.offer_lookback_s,
                "max_products": config.offer_max_products, "min_stock": 0}


#: The built-in rules, in the order the host calls them (a cart deadline fires before a browse one due
#: at the same millisecond: their state codes order the timers).
BUILT_IN: dict[str, BuiltIn] = {
    "cart_abandoned": BuiltIn("abandonment", ord("A")),
    "browse_abandoned": BuiltIn("abandonment", ord("B")),
    "store_visit_offer": BuiltIn("store_visit_offer", None),
}
BUILT_IN_RULES = tuple(BUILT_IN)


def kind_defaults(kind: str) -> dict[str, Any]:
    """Defaults of a kind's settings in a table that declares a new rule (None: the table must give it)."""
    return dict(KINDS[kind].default_settings)


def configured_rules(config: Any) -> list[Rule]:
    """Every rule of `config`: the built-ins (their tables override single settings), then the rules its
    `[rules.<name>]` tables declare, in name order. Raises RuleConfigError for a table that cannot be one."""
    load_plugins(config.plugins, config.plugin_dirs)
    run_time = tuple((name, getattr(config, name)) for name in sorted(
        {name for kind in KINDS.values() for name in kind.run_time_settings}))
    return list(_configured(config.rule_tables, _built_in_inputs(config), run_time))


def load_plugins(modules: tuple[str, ...], folders: tuple[str, ...] = ()) -> None:
    """Import the config's `plugins` (each registers its kinds with `register_kind`), looking in `folders`
    (the config file's) first; a module that cannot be imported is a RuleConfigError naming it."""
    import importlib
    import sys

    for folder in folders:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for module in modules:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception as error:  # a user's module: any error is theirs to see, in one line
            raise RuleConfigError(f"plugins: cannot import {module!r} ({type(error).__name__}: {error}); it must be "
                                  f"a Python module beside the config file or on PYTHONPATH") from None


def _built_in_inputs(config: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    return tuple((name, tuple(sorted(spec.defaults(name, config).items()))) for name, spec in BUILT_IN.items())


@functools.lru_cache(maxsize=64)
def _configured(tables: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...],
                built_in: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...],
                run_time: tuple[tuple[str, Any], ...]) -> tuple[Rule, ...]:
    given = {name: dict(settings) for name, settings in tables}
    run_time_values = dict(run_time)
    rules: list[Rule] = []
    used_codes: set[int] = set()
    for name, defaults in built_in:
        spec = BUILT_IN[name]
        table = given.pop(name, {})
        kind = table.pop("kind", spec.kind)
        if kind != spec.kind:
            raise RuleConfigError(f"rules.{name}.kind: {name} is a built-in rule of kind {spec.kind!r}, not {kind!r}")
        table.pop("state_code", None)
        settings = {**dict(defaults), **_checked(name, kind, table)}
        rules.append(KINDS[kind](name, spec.code, settings))
        if spec.code is not None:
            used_codes.add(spec.code)
    used_codes.add(ord("O"))  # kept free for the offer
    for name in sorted(given):
        table = given[name]
        kind = table.pop("kind", None)
        if kind not in KINDS:
            raise RuleConfigError(f"rules.{name}.kind: expected one of {sorted(KINDS)}, got {kind!r}")
        code = table.pop("state_code", None)
        settings = {**kind_defaults(kind), **_checked(name, kind, table)}
        settings.update({key: run_time_values.get(key) for key in KINDS[kind].run_time_settings})
        missing = sorted(key for key, value in settings.items() if value is None
                         and key not in KINDS[kind].run_time_settings)
        if missing:
            raise RuleConfigError(f"rules.{name}: a rule of kind {kind!r} needs {', '.join(missing)}")
        code = _state_code(name, code, used_codes)
        used_codes.add(code)
        rules.append(KINDS[kind](name, code, settings))
    names = {rule.name for rule in rules}
    for rule in rules:
        for other in getattr(rule, "replaces", ()):
            if other not in names or other == rule.name:
                raise RuleConfigError(f"rules.{rule.name}.replaces: {other!r} is not another rule "
                                      f"(rules: {', '.join(sorted(names))})")
    return tuple(rules)


def _checked(name: str, kind: str, table: dict[str, Any]) -> dict[str, Any]:
    """The table's settings, converted; an unknown setting or a bad value is one line naming it."""
    allowed = {**KINDS[kind].settings, **COMMON_SETTINGS}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            raise RuleConfigError(f"rules.{name}: unknown setting {key!r} for a rule of kind {kind!r} "
                                  f"(known: kind, state_code, {', '.join(sorted(allowed))})")
        try:
            out[key] = allowed[key](value, f"rules.{name}.{key}")
        except ConfigError as error:
            raise RuleConfigError(str(error)) from None
    return out


def _salt(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


#: Settings every rule's table may give: its control group.
COMMON_SETTINGS = {"holdout": _holdout_share, "holdout_salt": _salt}


def _state_code(name: str, given: Any, used: set[int]) -> int:
    if given is not None:
        if not isinstance(given, str) or len(given) != 1 or not given.isalpha() or not given.isascii():
            raise RuleConfigError(f"rules.{name}.state_code: expected one letter, got {given!r}")
        code = ord(given)
        if code in RESERVED_CODES or code in used:
            raise RuleConfigError(f"rules.{name}.state_code: {given!r} is taken (reserved: "
                                  f"{''.join(sorted(chr(c) for c in RESERVED_CODES | used))})")
        return code
    for code in range(ord("a"), ord("z") + 1):  # rules without one get the first free lowercase letter
        if code not in used:
            return code
    raise RuleConfigError(f"rules.{name}: no state code left; give it a state_code")


def rule_names(config: Any) -> tuple[str, ...]:
    return tuple(rule.name for rule in configured_rules(config))


def rule_topics(config: Any) -> frozenset[str]:
    """What the router sends to the rules shards and the history journals: the host's topics and the
    internal topics the rules read."""
    topics = set(HOST_TOPICS)
    for rule in configured_rules(config):
        topics |= rule.topics
    return frozenset(topics)


def broadcast_topics(config: Any) -> frozenset[str]:
    """Topics every rules shard reads whatever the customer (stock levels), when a rule needs them."""
    return frozenset(topic for rule in configured_rules(config) for topic in rule.broadcast_topics)


def longest_delay_ms(config: Any) -> int:
    return max((rule.delay_ms() for rule in configured_rules(config)), default=0)


def rule_layout(config: Any) -> list[str]:
    """The rule set as the state folder's layout records it: "name:kind:code" (a folder made with another
    rule set or other codes is refused)."""
    return [f"{rule.name}:{rule.kind}:{chr(rule.code) if rule.code is not None else '-'}"
            for rule in configured_rules(config)]
