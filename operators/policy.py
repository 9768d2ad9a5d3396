"""Policy at fire time (docs/semantics.md, Rules and policy), in order: the rule's kill switch, location consent (in-store
offers), channel consent, frequency caps.

A plain helper of the rules operator, keeping its sections of the customer's document (state/documents.py;
the host keeps the rest):
    C  {channel: [status, ts_ms, 0]}        the latest consent change per channel (and per purpose: "location")
    F  {"": [[ts_ms, ...], expires]}        trigger times in the customer cap window
    G  {"[rule, product]": [ts_ms, expires]}  the last trigger of this rule and product
                                            (rule "*": of any rule, [policy] cross_rule_product_cap)

The kill switch is `[rules] disabled` in the config plus, when
`[policy] control_file` is set, that JSON file's `disabled_rules`, re-read
whenever it changes (checked at most once a second), so on-call can stop a
misbehaving rule without a restart (`ControlFile`: every change logged,
a file naming an unknown rule refused).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from omnitrigger import metrics
from omnitrigger.state.documents import Document, Documents, entry, set_entry

CONTROL_CHECK_INTERVAL_S = 1.0
log = logging.getLogger("omnitrigger.policy")
#: A consent purpose, not a message channel: processing where the customer is.
LOCATION = "location"
#: The policy's sections of a customer's document.
CONSENTS, FIRES, PRODUCT_CAPS = "C", "F", "G"
_NONE = [None]


class Decision(NamedTuple):
    channel: str | None  # the channel to use, when allowed
    products: list[Any]  # the products that may go out (caps drop some from an offer)
    reason: str | None  # why not, when suppressed


class Policy:
    def __init__(self, customers: Documents, config: Any, rules: frozenset[str]) -> None:
        """`customers`: the rules shard's customer documents; `rules`: every rule name there is (a control file
        naming another is refused)."""
        self.customers = customers
        self.channels = config.channels
        self.max_per_customer = config.max_triggers_per_customer
        self.customer_window_ms = int(config.customer_cap_window_s * 1000)
        self.product_window_ms = int(config.product_cap_window_s * 1000)
        # One message per (customer, product) across all rules: the cap's key leaves the rule out.
        self.cap_rule = (lambda rule: "*") if config.cross_rule_product_cap else (lambda rule: rule)
        self.config_disabled = frozenset(config.disabled_rules)
        self.require_location_consent = config.require_location_consent
        self._control_reader = ControlFile.at(config.control_file, rules) if config.control_file else None
        for rule in sorted(rules):
            metrics.RULE_DISABLED.labels(rule).set(1 if self.is_disabled(rule) else 0)

    # -- consent ------------------------------------------------------------------

    def on_consent(self, customer: str, channel: str, status: str, ts_ms: int) -> None:
        """Record a consent change; the latest by event time wins, so a late older change cannot undo a newer one."""
        current = entry(self.customers.get(customer), CONSENTS, channel)
        if current is None or current[1] <= ts_ms:
            set_entry(self.customers.open(customer), CONSENTS, channel, [status, ts_ms])

    def merge_consents(self, winner: str, loser_consents: dict[str, list[Any]]) -> None:
        for channel, (status, ts_ms) in sorted(loser_consents.items()):
            self.on_consent(winner, channel, status, ts_ms)

    # -- the decision ---------------------------------------------------------------

    def decide(self, rule: str, customer: str, products: list[Any], ts_ms: int,
               needs_location: bool = False) -> Decision:
        """`needs_location`: the rule's triggers use where the customer is (an in-store offer)."""
        if self.is_disabled(rule):
            return Decision(None, products, "rule_disabled")
        doc = self.customers.get(customer)
        consents = (doc.get(CONSENTS) if doc is not None else None) or {}
        if needs_location and self.require_location_consent and \
                consents.get(LOCATION, _NONE)[0] != "granted":  # the offer uses where the customer is
            return Decision(None, products, "no_location_consent")
        for channel in self.channels:  # the first channel granted (a loop: a generator costs more, once a decision)
            if consents.get(channel, _NONE)[0] == "granted":
                break
        else:
            revoked = any(consents.get(c, _NONE)[0] == "revoked" for c in self.channels)
            return Decision(None, products, "consent_revoked" if revoked else "no_consent")
        since = ts_ms - self.customer_window_ms
        recent = [t for t in self._fires(doc) if since < t <= ts_ms]
        if len(recent) >= self.max_per_customer:
            return Decision(channel, products, "customer_cap")
        allowed = [p for p in products if not self._product_capped(doc, rule, p, ts_ms)]
        if products and not allowed:  # (a message about no product, a welcome, has no product cap)
            return Decision(channel, products, "product_cap")
        return Decision(channel, allowed, None)

    def record_trigger(self, rule: str, customer: str, products: list[Any], ts_ms: int) -> None:
        # Triggers are not always recorded in time order (an offer fires at its visit, before a deadline
        # that is earlier but still within the lateness), so windows and expiries follow the latest one.
        doc = self.customers.open(customer)
        fires = self._fires(doc) + [ts_ms]
        latest = max(fires)
        fires = sorted(t for t in fires if t > latest - self.customer_window_ms)
        set_entry(doc, FIRES, "", [fires], latest + self.customer_window_ms)
        for product in products:
            subject = _product_subject(self.cap_rule(rule), product)
            previous = entry(doc, PRODUCT_CAPS, subject)
            last = max(ts_ms, previous[0] if previous is not None else ts_ms)
            set_entry(doc, PRODUCT_CAPS, subject, [last], last + self.product_window_ms)

    def is_disabled(self, rule: str) -> bool:
        return rule in self.config_disabled or rule in self._control()

    # -- internals --------------------------------------------------------------------

    def _fires(self, doc: Document | None) -> list[int]:
        """The customer's trigger times as kept, not a copy: callers read it or build a new list from it."""
        found = entry(doc, FIRES, "")
        return found[0] if found is not None else []

    def _product_capped(self, doc: Document | None, rule: str, product: Any, ts_ms: int) -> bool:
        found = entry(doc, PRODUCT_CAPS, _product_subject(self.cap_rule(rule), product))
        return found is not None and ts_ms - self.product_window_ms < found[0] <= ts_ms

    def _control(self) -> frozenset[str]:
        return self._control_reader.disabled() if self._control_reader is not None else frozenset()


class ControlFile:
    """The kill switch's control file, `{"disabled_rules": [...]}`, shared by every rules shard of a process.

    Re-read at most once a second when its modification time changes. A
    change is logged once with what changed; a file that is not JSON, not
    that shape, or names a rule that does not exist is refused with one
    error line and the last good setting stays (a typo must not silently
    switch nothing off). `current()` says which rules it switches off now.
    """

    _by_path: dict[str, "ControlFile"] = {}

    @classmethod
    def at(cls, path: str, rules: frozenset[str]) -> "ControlFile":
        if path not in cls._by_path:
            cls._by_path[path] = cls(Path(path), rules)
        return cls._by_path[path]

    def __init__(self, path: Path, rules: frozenset[str]) -> None:
        self.path = path
        self.rules = rules
        self._disabled: frozenset[str] = frozenset()
        self._mtime: float | None = None
        self._checked = -CONTROL_CHECK_INTERVAL_S
        self._missing_reported = False

    def disabled(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._checked >= CONTROL_CHECK_INTERVAL_S:
            self._checked = now
            self._reload()
        return self._disabled

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as error:
            if not self._missing_reported:
                log.error("kill-switch control file unreadable; keeping the last setting",
                          extra={"fields": {"path": str(self.path), "error": error.strerror,
                                 "disabled_rules": sorted(self._disabled)}})
                self._missing_reported = True
            return
        self._missing_reported = False
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            document = orjson.loads(self.path.read_bytes())
            names = document["disabled_rules"]
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise TypeError("disabled_rules is not a list of rule names")
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as error:
            log.error("kill-switch control file refused: expected {\"disabled_rules\": [rule names]}; keeping the "
                      "last setting", extra={"fields": {"path": str(self.path), "error": str(error)[:200],
                                             "disabled_rules": sorted(self._disabled)}})
            return
        unknown = sorted(set(names) - self.rules)
        if unknown:
            log.error("kill-switch control file refused: unknown rule names; keeping the last setting",
                      extra={"fields": {"path": str(self.path), "unknown": unknown, "rules": sorted(self.rules),
                             "disabled_rules": sorted(self._disabled)}})
            return
        disabled = frozenset(names)
        if disabled != self._disabled:
            for rule in sorted(self.rules):
                if rule in disabled or rule in self._disabled:
                    metrics.RULE_DISABLED.labels(rule).set(1 if rule in disabled else 0)
            log.warning("kill switch changed", extra={"fields": {
                "path": str(self.path), "disabled_rules": sorted(disabled),
                "switched_off": sorted(disabled - self._disabled), "switched_on": sorted(self._disabled - disabled)}})
        self._disabled = disabled


def consents_of(doc: Document | None) -> dict[str, list[Any]]:
    """A customer document's consents as {channel: [status, ts_ms]}: the latest change per channel."""
    section = doc.get(CONSENTS) if doc is not None else None
    return {channel: value[:2] for channel, value in section.items()} if section else {}


def _product_subject(rule: str, product: Any) -> str:
    return orjson.dumps([rule, str(product)]).decode()
