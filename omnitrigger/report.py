"""`omnitrigger report DIR --html FILE`: what the triggers did, as one self-contained HTML page a marketer reads.

DIR is a replay's output folder (triggers.jsonl, suppressed.jsonl, visits.jsonl, identities.jsonl,
refused_links.jsonl, retractions.jsonl, events.jsonl, conversions.jsonl, dead_letter(s).jsonl,
duplicates.jsonl: the names `omnitrigger demo` and the tests write) or a folder written from the live
output topics (`<topic>.jsonl`, e.g. omnitrigger.triggers.jsonl, any topic prefix before it, each line a
kcat -J envelope whose payload is the record; records redelivered by Kafka are counted once, by their id).

The numbers are computed by plain functions over the records (`compute_report` and the functions it calls,
each returning a dict), apart from the rendering (`render_html`), so tests and tools can check them; the
page also carries them as JSON (`<script id="report-numbers">`).

Definitions:
- a day is a UTC calendar day of the record's `ts_ms`;
- conversion rate of an arm of a rule = customers of the arm who converted / customers of the arm; the
  treated arm is the customers the rule sent a trigger to (triggers.jsonl), the held-out arm those with a
  suppression of reason `holdout`; a customer converted when a conversion (conversions.jsonl) names one
  of their messages of that rule by `trigger_id`. Without conversions.jsonl the conversion panels say
  "no conversions recorded";
- 95 % intervals: each arm's rate has a Wilson score interval; the absolute uplift (treated rate minus
  held-out rate) has Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two
  Wilson intervals; it stays inside [-1, 1] and behaves with zero counts, where the Wald interval does not;
- match rate = receipts (events.jsonl, topic pos.receipts) whose customer_id is not null / receipts;
- ROPO (research online, purchase offline): a customer who viewed a product online (web.events view_item)
  and bought that product at a till (pos.receipts, a line of positive quantity, not a return receipt)
  at or after the view and within the conversion window (default 7 days); the ROPO rate is those
  customers / the customers who viewed a product online. Customers are the `customer_id` the events
  carry when they happened.

Plotting library: plotly (plotly.py builds each figure as JSON for plotly.js, whose whole bundle the wheel
ships, so it is inlined once and the page opens with no network access; interactive hover for exact values).
"""

from __future__ import annotations

import html
import math
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054

DEFAULT_CONVERSION_WINDOW_S = 7 * 86_400.0

INTERVAL_METHOD = ("Wilson score interval for each arm's rate; Newcombe's hybrid score interval (Newcombe 1998, "
                   "method 10) for the absolute uplift")

#: Output stream -> the file names a replay, the demo or a person gives it (without .jsonl).
FILE_NAMES: dict[str, tuple[str, ...]] = {
    "triggers": ("triggers", "trigger", "out"),
    "suppressed": ("suppressed",),
    "visits": ("visits",),
    "identities": ("identities",),
    "refused_links": ("refused_links",),
    "retractions": ("retractions",),
    "events": ("events",),
    "conversions": ("conversions",),
    "dead_letters": ("dead_letters", "dead_letter"),
    "duplicates": ("duplicates",),
}
#: Streams published to a Kafka topic (`[kafka] <stream>_topic`, default omnitrigger.<stream>), so a folder
#: recorded from the live topics names them `<prefix>omnitrigger.<stream>.jsonl`. The events stream is
#: never published (and web.events.jsonl is an input topic, not it).
TOPIC_STREAMS = ("triggers", "suppressed", "visits", "identities", "refused_links", "retractions", "conversions",
                 "dead_letters", "duplicates")
#: How Kafka redeliveries of one record are recognised in a folder recorded from the topics.
RECORD_IDS: dict[str, tuple[str, ...]] = {
    "triggers": ("trigger_id",), "suppressed": ("trigger_id", "reason"), "visits": ("visit_id",),
    "retractions": ("trigger_id",), "conversions": ("conversion_id",),
}

ONLINE_CHANNELS = ("web", "app")
IN_STORE_CHANNELS = ("pos",)
PURCHASE_CHANNELS = ONLINE_CHANNELS + IN_STORE_CHANNELS
ARMS = ("treated", "holdout")


class ReportError(Exception):
    """The folder cannot be reported on; the message is one line for the user."""


@dataclass
class Outputs:
    """The records of one output folder, by stream; `files`: the file each stream was read from."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def has(self, stream: str) -> bool:
        return stream in self.files

    def get(self, stream: str) -> list[dict[str, Any]]:
        return self.records.get(stream, [])


# -- reading a folder ---------------------------------------------------------------------------


def _normal(name: str) -> str:
    return name.lower().replace("-", "_")


def find_output_files(folder: Path) -> dict[str, Path]:
    """Stream -> file in `folder`: `<name>.jsonl` first, else one `<prefix>.<stream>.jsonl` topic file."""
    exact: dict[str, list[Path]] = defaultdict(list)
    topics: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not path.name.lower().endswith(".jsonl"):
            continue
        stem = _normal(path.name[: -len(".jsonl")])
        for stream, names in FILE_NAMES.items():
            if stem in names:
                exact[stream].append(path)
            elif stream in TOPIC_STREAMS and "." in stem and stem.rsplit(".", 1)[1] in names:
                topics[stream].append(path)
    found: dict[str, Path] = {}
    for stream in FILE_NAMES:
        candidates = exact.get(stream) or topics.get(stream) or []
        if len(candidates) > 1:
            raise ReportError(f"{folder}: more than one file for the {stream} stream "
                              f"({', '.join(path.name for path in candidates)}); keep one")
        if candidates:
            found[stream] = candidates[0]
    return found


def _is_envelope(document: Any) -> bool:
    return type(document) is dict and "payload" in document and "topic" in document and "offset" in document


def read_stream(path: Path, stream: str) -> list[dict[str, Any]]:
    """The records of one file: bare JSON lines, or kcat -J envelopes (payload: the record as JSON text).

    From envelopes, a record redelivered under the same id is kept once; on the compacted identities topic
    a later value of a key replaces the earlier one and an empty payload (a tombstone) removes it.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror or error}") from None
    found: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    latest: dict[Any, dict[str, Any] | None] = {}
    enveloped = False
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            document = orjson.loads(line)
            if _is_envelope(document):
                enveloped = True
                payload = document["payload"]
                if stream == "identities":
                    key = document.get("key")
                    latest.pop(key, None)
                    latest[key] = orjson.loads(payload) if payload not in (None, "") else None
                    continue
                if payload in (None, ""):
                    continue
                document = orjson.loads(payload) if isinstance(payload, str) else payload
        except orjson.JSONDecodeError as error:
            raise ReportError(f"{path} line {number}: not JSON ({error})") from None
        if type(document) is not dict:
            raise ReportError(f"{path} line {number}: expected a JSON object, got {type(document).__name__}")
        if enveloped and stream in RECORD_IDS:
            identity = tuple(document.get(name) for name in RECORD_IDS[stream])
            if identity in seen:
                continue
            seen.add(identity)
        found.append(document)
    if latest:
        found += [record for record in latest.values() if record is not None]
    return found


def load_outputs(folder: Path) -> Outputs:
    """Every output stream found in `folder`; a missing folder, or one with no output file, is a ReportError."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"output folder not found: {folder}")
    if not folder.is_dir():
        raise ReportError(f"not a folder: {folder}")
    files = find_output_files(folder)
    if not files:
        raise ReportError(f"no output files in {folder} (expected triggers.jsonl, suppressed.jsonl, visits.jsonl, "
                          "events.jsonl, conversions.jsonl ... as a replay writes them, or omnitrigger.<stream>.jsonl "
                          "recorded from the live output topics)")
    outputs = Outputs(folder=folder, files=files)
    for stream, path in files.items():
        outputs.records[stream] = read_stream(path, stream)
    return outputs


# -- the numbers ----------------------------------------------------------------------------------


def day_of(ts_ms: Any) -> str:
    """The UTC calendar day (YYYY-MM-DD) of an epoch-milliseconds time."""
    return datetime.fromtimestamp(int(ts_ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _ts_ms(record: dict[str, Any]) -> int:
    value = record.get("ts_ms")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = record.get("ts")
    if isinstance(text, str):
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    raise ReportError(f"a record has neither ts_ms nor an RFC 3339 ts: {orjson.dumps(record).decode()[:200]}")


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None for no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(successes_1: int, trials_1: int, successes_2: int, trials_2: int,
                      z: float = Z95) -> tuple[float, float, float] | None:
    """(p1 - p2, lower, upper): Newcombe's hybrid score interval of a difference of proportions; None
    when either arm has no trials."""
    first, second = wilson_interval(successes_1, trials_1, z), wilson_interval(successes_2, trials_2, z)
    if first is None or second is None:
        return None
    p1, p2 = successes_1 / trials_1, successes_2 / trials_2
    (l1, u1), (l2, u2) = first, second
    difference = p1 - p2
    return (difference, difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _rule_order(counts: Counter) -> list[str]:
    return sorted(counts, key=lambda rule: (-counts[rule], str(rule)))


def activity_per_rule_per_day(triggers: list[dict[str, Any]], suppressed: list[dict[str, Any]]) -> dict[str, Any]:
    """Triggers sent and suppressed, per rule and UTC day."""
    sent: dict[str, Counter] = defaultdict(Counter)
    held: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    days: set[str] = set()
    for records, into in ((triggers, sent), (suppressed, held)):
        for record in records:
            rule, day = str(record.get("rule")), day_of(_ts_ms(record))
            into[rule][day] += 1
            totals[rule] += 1
            days.add(day)
    rules = _rule_order(totals)
    return {"days": sorted(days), "rules": rules,
            "triggers": {rule: dict(sorted(sent[rule].items())) for rule in rules if sent[rule]},
            "suppressed": {rule: dict(sorted(held[rule].items())) for rule in rules if held[rule]},
            "totals": {rule: {"triggers": sum(sent[rule].values()), "suppressed": sum(held[rule].values())}
                       for rule in rules}}


def suppression_reasons(suppressed: list[dict[str, Any]]) -> dict[str, Any]:
    """Suppressions per reason (most frequent first), each split by rule."""
    by_reason: dict[str, Counter] = defaultdict(Counter)
    for record in suppressed:
        by_reason[str(record.get("reason"))][str(record.get("rule"))] += 1
    order = sorted(by_reason, key=lambda reason: (-sum(by_reason[reason].values()), reason))
    return {"total": len(suppressed),
            "reasons": {reason: {"total": sum(by_reason[reason].values()),
                                 "by_rule": dict(sorted(by_reason[reason].items()))} for reason in order}}


def _arm_rate(customers: set[str], converted: set[str]) -> dict[str, Any]:
    interval = wilson_interval(len(converted), len(customers))
    return {"customers": len(customers), "converted": len(converted),
            "rate": len(converted) / len(customers) if customers else None,
            "ci_low": interval[0] if interval else None, "ci_high": interval[1] if interval else None}


def conversion_rates(triggers: list[dict[str, Any]], suppressed: list[dict[str, Any]],
                     conversions: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Per rule: each arm's customers, converted customers, rate with its Wilson interval; the absolute
    uplift with Newcombe's interval. `conversions` None: none recorded (no conversions file)."""
    messages: dict[str, tuple[str, str, str]] = {}  # trigger_id -> (rule, arm, customer)
    arms: dict[str, dict[str, set[str]]] = defaultdict(lambda: {arm: set() for arm in ARMS})
    for arm, records in (("treated", triggers), ("holdout", [s for s in suppressed if s.get("reason") == "holdout"])):
        for record in records:
            rule, customer = str(record.get("rule")), str(record.get("customer_id"))
            arms[rule][arm].add(customer)
            messages[str(record.get("trigger_id"))] = (rule, arm, customer)
    converted: dict[str, dict[str, set[str]]] = defaultdict(lambda: {arm: set() for arm in ARMS})
    unmatched = 0
    for conversion in conversions or ():
        message = messages.get(str(conversion.get("trigger_id")))
        if message is None:
            unmatched += 1
            continue
        rule, arm, customer = message
        converted[rule][arm].add(customer)
    sizes = Counter({rule: len(groups["treated"]) + len(groups["holdout"]) for rule, groups in arms.items()})
    rules: dict[str, Any] = {}
    for rule in _rule_order(sizes):
        treated = _arm_rate(arms[rule]["treated"], converted[rule]["treated"])
        holdout = _arm_rate(arms[rule]["holdout"], converted[rule]["holdout"])
        uplift = newcombe_interval(treated["converted"], treated["customers"],
                                   holdout["converted"], holdout["customers"])
        rules[rule] = {"treated": treated, "holdout": holdout,
                       "uplift": uplift[0] if uplift else None,
                       "uplift_ci_low": uplift[1] if uplift else None,
                       "uplift_ci_high": uplift[2] if uplift else None}
    return {"recorded": conversions is not None, "conversions": len(conversions or ()),
            "unmatched_conversions": unmatched, "method": INTERVAL_METHOD, "rules": rules}


def conversions_by_channel(conversions: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Conversions and their amounts per arm and purchase channel, online (web, app) and in store (pos);
    the treated arm's per rule."""
    counts: dict[str, Counter] = {arm: Counter() for arm in ARMS}
    amounts: dict[str, Counter] = {arm: Counter() for arm in ARMS}
    by_rule: dict[str, Counter] = defaultdict(Counter)
    for conversion in conversions or ():
        arm = str(conversion.get("arm"))
        channel = str(conversion.get("purchase_channel"))
        counts.setdefault(arm, Counter())[channel] += 1
        amount = conversion.get("amount")
        amounts.setdefault(arm, Counter())[channel] += amount if isinstance(amount, (int, float)) else 0
        if arm == "treated":
            by_rule[str(conversion.get("rule"))][channel] += 1

    def split(counter: Counter) -> dict[str, Any]:
        return {"online": sum(v for k, v in counter.items() if k in ONLINE_CHANNELS),
                "in_store": sum(v for k, v in counter.items() if k in IN_STORE_CHANNELS),
                "channels": {channel: counter.get(channel, 0) for channel in
                             list(PURCHASE_CHANNELS) + sorted(set(counter) - set(PURCHASE_CHANNELS))}}

    return {"recorded": conversions is not None, "conversions": len(conversions or ()),
            "arms": {arm: {**split(counts[arm]), "amount": round(sum(amounts[arm].values()), 2)} for arm in counts},
            "treated_by_rule": {rule: split(by_rule[rule]) for rule in _rule_order(Counter(
                {rule: sum(counter.values()) for rule, counter in by_rule.items()}))}}


def visits_per_store(visits: list[dict[str, Any]]) -> dict[str, Any]:
    """Confirmed visits per store, with distinct known customers and the median dwell."""
    per_store: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for visit in visits:
        per_store[str(visit.get("store_id"))].append(visit)
    order = sorted(per_store, key=lambda store: (-len(per_store[store]), store))
    stores = {}
    for store in order:
        dwell = [float(v["dwell_s"]) for v in per_store[store] if isinstance(v.get("dwell_s"), (int, float))]
        stores[store] = {"visits": len(per_store[store]),
                         "customers": len({v["customer_id"] for v in per_store[store] if v.get("customer_id")}),
                         "median_dwell_s": statistics.median(dwell) if dwell else None}
    return {"visits": len(visits), "stores": stores}


def _receipts(events: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    return (event for event in events if event.get("topic") == "pos.receipts")


def match_rate(events: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The share of till receipts whose identifiers resolved to a customer; per UTC day and per store."""
    by_day: dict[str, Counter] = defaultdict(Counter)
    by_store: dict[str, Counter] = defaultdict(Counter)
    receipts = matched = 0
    for event in _receipts(events or ()):
        known = event.get("customer_id") is not None
        body = event.get("event") or {}
        receipts += 1
        matched += known
        for into, key in ((by_day, day_of(_ts_ms(event))), (by_store, str(body.get("store_id")))):
            into[key]["receipts"] += 1
            into[key]["matched"] += known

    def rows(table: dict[str, Counter]) -> dict[str, Any]:
        return {key: {"receipts": c["receipts"], "matched": c["matched"], "rate": c["matched"] / c["receipts"]}
                for key, c in sorted(table.items())}

    return {"recorded": events is not None, "receipts": receipts, "matched": matched,
            "rate": matched / receipts if receipts else None, "by_day": rows(by_day), "by_store": rows(by_store)}


def ropo(events: list[dict[str, Any]] | None, window_s: float = DEFAULT_CONVERSION_WINDOW_S) -> dict[str, Any]:
    """Research online, purchase offline: customers who viewed a product online and bought it at a till
    within `window_s` after a view (see the module docstring)."""
    views: dict[tuple[str, str], list[int]] = defaultdict(list)
    till: list[tuple[str, str, int]] = []
    in_store_buyers: set[str] = set()
    for event in events or ():
        customer = event.get("customer_id")
        if customer is None:
            continue
        body = event.get("event") or {}
        if event.get("topic") == "web.events" and body.get("type") == "view_item" and body.get("product_id") is not None:
            views[(customer, str(body["product_id"]))].append(_ts_ms(event))
        elif event.get("topic") == "pos.receipts" and body.get("type", "sale") != "return":
            for item in body.get("items") or ():
                qty = item.get("qty", 1)
                if item.get("product_id") is not None and isinstance(qty, (int, float)) and qty > 0:
                    till.append((customer, str(item["product_id"]), _ts_ms(event)))
                    in_store_buyers.add(customer)
    window_ms = window_s * 1000
    viewers = {customer for customer, _ in views}
    pairs: dict[tuple[str, str], float] = {}  # (customer, product) -> shortest delay from a view, hours
    for customer, product, ts in till:
        delays = [ts - view for view in views.get((customer, product), ()) if 0 <= ts - view <= window_ms]
        if delays:
            delay_h = min(delays) / 3_600_000
            pairs[(customer, product)] = min(delay_h, pairs.get((customer, product), delay_h))
    ropo_customers = {customer for customer, _ in pairs}
    return {"recorded": events is not None, "window_s": window_s, "viewers": len(viewers),
            "viewers_buying_in_store": len(viewers & in_store_buyers), "ropo_customers": len(ropo_customers),
            "rate": len(ropo_customers) / len(viewers) if viewers else None, "products": len(pairs),
            "median_delay_h": statistics.median(pairs.values()) if pairs else None}


def summary(outputs: Outputs) -> dict[str, Any]:
    """The headline counts."""
    triggers, suppressed = outputs.get("triggers"), outputs.get("suppressed")
    identities = outputs.get("identities")
    return {"triggers": len(triggers), "customers_reached": len({t.get("customer_id") for t in triggers}),
            "suppressed": len(suppressed), "holdout": sum(s.get("reason") == "holdout" for s in suppressed),
            "visits": len(outputs.get("visits")), "retractions": len(outputs.get("retractions")),
            "dead_letters": len(outputs.get("dead_letters")), "conversions": len(outputs.get("conversions")),
            "known_customers": len({i.get("customer_id") for i in identities}) if outputs.has("identities") else None}


def compute_report(outputs: Outputs, window_s: float = DEFAULT_CONVERSION_WINDOW_S) -> dict[str, Any]:
    """Every number the report shows, as plain data."""
    conversions = outputs.get("conversions") if outputs.has("conversions") else None
    events = outputs.get("events") if outputs.has("events") else None
    triggers, suppressed = outputs.get("triggers"), outputs.get("suppressed")
    return {"folder": str(outputs.folder), "files": {stream: path.name for stream, path in outputs.files.items()},
            "conversion_window_s": window_s, "summary": summary(outputs),
            "activity": activity_per_rule_per_day(triggers, suppressed),
            "suppression_reasons": suppression_reasons(suppressed),
            "conversion_rates": conversion_rates(triggers, suppressed, conversions),
            "conversions_by_channel": conversions_by_channel(conversions),
            "visits": visits_per_store(outputs.get("visits")),
            "match_rate": match_rate(events), "ropo": ropo(events, window_s)}


# -- the page -------------------------------------------------------------------------------------

#: A rule's colour is the same on every plot.
_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
            "#bab0ac")
_ARM_COLOURS = {"treated": "#4c78a8", "holdout": "#bab0ac"}
_CHANNEL_COLOURS = {"web": "#4c78a8", "app": "#72b7b2", "pos": "#f58518"}
_CHANNEL_NAMES = {"web": "online: web", "app": "online: app", "pos": "in store (till)"}


@dataclass
class Panel:
    key: str
    title: str
    lede: str
    figure: Any = None  # a plotly Figure, or None with `empty` saying why
    empty: str | None = None
    table: list[list[str]] | None = None  # header row, then rows
    wide: bool = False


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _pp(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} pp"


def _layout(figure: Any, height: int = 380, **extra: Any) -> Any:
    figure.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 30, "b": 50},
                         legend={"orientation": "h", "y": -0.18}, font={"family": "system-ui, sans-serif", "size": 13},
                         **extra)
    return figure


def _colours(rules: Iterable[str]) -> dict[str, str]:
    return {rule: _PALETTE[n % len(_PALETTE)] for n, rule in enumerate(rules)}


def _activity_panel(numbers: dict[str, Any], colours: dict[str, str]) -> Panel:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    activity = numbers["activity"]
    panel = Panel("activity", "Triggers sent and suppressed, per rule per day",
                  "Each bar is one UTC day; colours are rules. Top: messages that went out. Bottom: messages held "
                  "back by a policy (consent, caps, a purchase, a holdout...).", wide=True)
    if not activity["days"]:
        panel.empty = "no triggers or suppressions recorded"
        return panel
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                           subplot_titles=("sent", "suppressed"))
    for row, kind in ((1, "triggers"), (2, "suppressed")):
        for rule in activity["rules"]:
            per_day = activity[kind].get(rule)
            if per_day:
                figure.add_trace(go.Bar(x=list(per_day), y=list(per_day.values()), name=rule, legendgroup=rule,
                                        showlegend=row == 1 or rule not in activity["triggers"],
                                        marker_color=colours[rule],
                                        hovertemplate=f"{html.escape(rule)}<br>%{{x}}: %{{y}} {kind}<extra></extra>"),
                                 row=row, col=1)
    figure.update_layout(barmode="stack")
    figure.update_xaxes(type="category", categoryorder="category ascending")
    panel.figure = _layout(figure, height=460)
    panel.table = [["rule", "sent", "suppressed"]] + [
        [rule, f"{t['triggers']:,}", f"{t['suppressed']:,}"] for rule, t in activity["totals"].items()]
    return panel


def _reasons_panel(numbers: dict[str, Any], colours: dict[str, str]) -> Panel:
    import plotly.graph_objects as go

    reasons = numbers["suppression_reasons"]["reasons"]
    panel = Panel("suppression_reasons", "Why triggers were suppressed",
                  "Suppressions per reason, most frequent at the top; colours are rules.")
    if not reasons:
        panel.empty = "no suppressions recorded"
        return panel
    order = list(reasons)[::-1]
    figure = go.Figure()
    rules = [rule for rule in colours if any(rule in r["by_rule"] for r in reasons.values())]
    for rule in rules:
        figure.add_trace(go.Bar(y=order, x=[reasons[reason]["by_rule"].get(rule, 0) for reason in order],
                                orientation="h", name=rule, marker_color=colours[rule],
                                hovertemplate=f"{html.escape(rule)}<br>%{{y}}: %{{x}}<extra></extra>"))
    figure.update_layout(barmode="stack")
    panel.figure = _layout(figure, height=max(300, 60 + 28 * len(order)))
    return panel


def _conversion_panels(numbers: dict[str, Any], colours: dict[str, str]) -> list[Panel]:
    import plotly.graph_objects as go

    rates = numbers["conversion_rates"]
    window_d = numbers["conversion_window_s"] / 86_400
    rate_panel = Panel("conversion_rates", "Conversion rate: treated vs held out, per rule",
                       f"Share of each arm's customers who bought a product of their message within "
                       f"{window_d:g} days, online or in store. Whiskers: 95 % Wilson score interval.", wide=True)
    uplift_panel = Panel("uplift", "Uplift: what the message adds",
                         "Treated rate minus held-out rate, in percentage points; whiskers: 95 % interval "
                         "(Newcombe's hybrid score interval, method 10). An interval clear of 0 means the rule "
                         "changes behaviour.")
    if not rates["recorded"]:
        rate_panel.empty = uplift_panel.empty = ("no conversions recorded (no conversions.jsonl in the folder: "
                                                 "replay with --conversions FILE)")
        return [rate_panel, uplift_panel]
    rules = {rule: r for rule, r in rates["rules"].items() if r["treated"]["customers"] or r["holdout"]["customers"]}
    if not rules:
        rate_panel.empty = uplift_panel.empty = "no triggers recorded, so no one to convert"
        return [rate_panel, uplift_panel]
    figure = go.Figure()
    for arm, label in (("treated", "treated (sent)"), ("holdout", "held out")):
        shown = [rule for rule, r in rules.items() if r[arm]["customers"]]
        if not shown:
            continue
        values = [rules[rule][arm]["rate"] for rule in shown]
        figure.add_trace(go.Bar(
            x=shown, y=values, name=label, marker_color=_ARM_COLOURS[arm],
            error_y={"type": "data", "symmetric": False,
                     "array": [rules[rule][arm]["ci_high"] - v for rule, v in zip(shown, values)],
                     "arrayminus": [v - rules[rule][arm]["ci_low"] for rule, v in zip(shown, values)]},
            customdata=[[rules[rule][arm]["converted"], rules[rule][arm]["customers"]] for rule in shown],
            hovertemplate="%{x}<br>%{y:.1%} (%{customdata[0]} of %{customdata[1]} customers)<extra>" + label
                          + "</extra>"))
    figure.update_layout(barmode="group", yaxis_tickformat=".0%", yaxis_title="customers who converted")
    rate_panel.figure = _layout(figure)
    rate_panel.table = [["rule", "treated", "held out", "uplift", "95 % interval of the uplift"]] + [
        [rule, f"{_pct(r['treated']['rate'])} ({r['treated']['converted']}/{r['treated']['customers']})",
         f"{_pct(r['holdout']['rate'])} ({r['holdout']['converted']}/{r['holdout']['customers']})"
         if r["holdout"]["customers"] else "no holdout",
         _pp(r["uplift"]), f"{_pp(r['uplift_ci_low'])} to {_pp(r['uplift_ci_high'])}" if r["uplift"] is not None
         else "–"] for rule, r in rules.items()]
    measured = [rule for rule, r in rules.items() if r["uplift"] is not None]
    if not measured:
        uplift_panel.empty = ("no holdout group recorded: no suppression of reason holdout (set [rules.<name>] "
                              "holdout = 0.1 to hold out a tenth of the customers)")
    else:
        values = [100 * rules[rule]["uplift"] for rule in measured]
        uplift = go.Figure(go.Scatter(
            x=values, y=measured, mode="markers", marker={"size": 12, "color": [colours.get(r, "#333") for r in measured]},
            error_x={"type": "data", "symmetric": False,
                     "array": [100 * rules[rule]["uplift_ci_high"] - v for rule, v in zip(measured, values)],
                     "arrayminus": [v - 100 * rules[rule]["uplift_ci_low"] for rule, v in zip(measured, values)]},
            hovertemplate="%{y}: %{x:+.1f} pp<extra></extra>", showlegend=False))
        uplift.add_vline(x=0, line_dash="dot", line_color="#888")
        uplift.update_layout(xaxis_title="uplift, percentage points", xaxis_ticksuffix=" pp")
        uplift.update_yaxes(type="category", autorange="reversed")
        uplift_panel.figure = _layout(uplift, height=max(260, 120 + 50 * len(measured)))
    if rates["unmatched_conversions"]:
        uplift_panel.lede += (f" ({rates['unmatched_conversions']} conversions name a message not in this folder and "
                              "are left out.)")
    return [rate_panel, uplift_panel]


def _channel_panel(numbers: dict[str, Any]) -> Panel:
    import plotly.graph_objects as go

    channels = numbers["conversions_by_channel"]
    panel = Panel("conversions_by_channel", "Conversions by purchase channel: online vs in store",
                  "Purchases after a message that was sent (treated arm), per rule: online (web, app) and at a till. "
                  "The in-store part is what online-only engines cannot see.")
    if not channels["recorded"]:
        panel.empty = "no conversions recorded (no conversions.jsonl in the folder)"
        return panel
    treated = channels["arms"].get("treated", {})
    if not channels["treated_by_rule"]:
        panel.empty = "no conversions recorded after a message sent"
        return panel
    figure = go.Figure()
    rules = list(channels["treated_by_rule"])
    for channel in PURCHASE_CHANNELS:
        figure.add_trace(go.Bar(x=rules, y=[channels["treated_by_rule"][rule]["channels"].get(channel, 0) for rule in rules],
                                name=_CHANNEL_NAMES[channel], marker_color=_CHANNEL_COLOURS[channel],
                                hovertemplate="%{x}<br>%{y} conversions<extra>" + _CHANNEL_NAMES[channel] + "</extra>"))
    figure.update_layout(barmode="stack", yaxis_title="conversions")
    panel.figure = _layout(figure)
    holdout = channels["arms"].get("holdout", {})
    panel.table = [["arm", "online", "in store", "amount"]] + [
        [label, f"{arm.get('online', 0):,}", f"{arm.get('in_store', 0):,}", f"{arm.get('amount', 0):,.2f}"]
        for label, arm in (("treated", treated), ("held out", holdout))]
    return panel


def _visits_panel(numbers: dict[str, Any]) -> Panel:
    import plotly.graph_objects as go

    visits = numbers["visits"]["stores"]
    panel = Panel("visits", "Store visits per store",
                  "Confirmed visits (a phone dwelling inside the store's radius), and the distinct customers behind them.")
    if not visits:
        panel.empty = "no store visits recorded"
        return panel
    stores = list(visits)
    figure = go.Figure([
        go.Bar(x=stores, y=[visits[s]["visits"] for s in stores], name="visits", marker_color="#4c78a8",
               hovertemplate="%{x}: %{y} visits<extra></extra>"),
        go.Bar(x=stores, y=[visits[s]["customers"] for s in stores], name="customers", marker_color="#72b7b2",
               hovertemplate="%{x}: %{y} customers<extra></extra>")])
    figure.update_layout(barmode="group")
    figure.update_xaxes(type="category")
    panel.figure = _layout(figure)
    return panel


def _match_panel(numbers: dict[str, Any]) -> Panel:
    import plotly.graph_objects as go

    match = numbers["match_rate"]
    panel = Panel("match_rate", f"Match rate: {_pct(match['rate'])} of till receipts are known customers",
                  "Receipts per day whose loyalty card or phone resolved to a customer, and anonymous ones.")
    if not match["recorded"]:
        panel.empty = "no events recorded (replay with --events FILE to see the till receipts)"
        return panel
    if not match["receipts"]:
        panel.empty = "no till receipts recorded"
        return panel
    days = list(match["by_day"])
    figure = go.Figure([
        go.Bar(x=days, y=[match["by_day"][d]["matched"] for d in days], name="known customer", marker_color="#54a24b",
               customdata=[match["by_day"][d]["rate"] for d in days],
               hovertemplate="%{x}: %{y} known (%{customdata:.0%})<extra></extra>"),
        go.Bar(x=days, y=[match["by_day"][d]["receipts"] - match["by_day"][d]["matched"] for d in days],
               name="anonymous", marker_color="#bab0ac", hovertemplate="%{x}: %{y} anonymous<extra></extra>")])
    figure.update_layout(barmode="stack", yaxis_title="receipts")
    figure.update_xaxes(type="category")
    panel.figure = _layout(figure)
    panel.table = [["store", "receipts", "known", "match rate"]] + [
        [store, f"{row['receipts']:,}", f"{row['matched']:,}", _pct(row["rate"])]
        for store, row in match["by_store"].items()]
    return panel


def _ropo_panel(numbers: dict[str, Any]) -> Panel:
    import plotly.graph_objects as go

    r = numbers["ropo"]
    window_d = r["window_s"] / 86_400
    panel = Panel("ropo", f"ROPO: viewed online, bought in store — {_pct(r['rate'])}",
                  f"Customers who viewed a product online, of them those who bought at a till, and those who bought "
                  f"a product they had viewed at a till within {window_d:g} days of the view.")
    if not r["recorded"]:
        panel.empty = "no events recorded (replay with --events FILE to see views and till receipts)"
        return panel
    if not r["viewers"]:
        panel.empty = "no product views by known customers recorded"
        return panel
    steps = ["viewed online", "bought at a till", f"bought a viewed product in store ≤ {window_d:g} d"]
    figure = go.Figure(go.Funnel(y=steps, x=[r["viewers"], r["viewers_buying_in_store"], r["ropo_customers"]],
                                 textinfo="value+percent initial", marker={"color": ["#4c78a8", "#72b7b2", "#f58518"]},
                                 hovertemplate="%{y}: %{x} customers<extra></extra>"))
    panel.figure = _layout(figure, height=300)
    delay = "–" if r["median_delay_h"] is None else f"{r['median_delay_h']:.1f} h"
    panel.table = [["ROPO customers", "products", "median time from view to till"],
                   [f"{r['ropo_customers']:,} of {r['viewers']:,}", f"{r['products']:,}", delay]]
    return panel


def build_panels(numbers: dict[str, Any]) -> list[Panel]:
    colours = _colours(numbers["activity"]["rules"])
    return [_activity_panel(numbers, colours), *_conversion_panels(numbers, colours), _channel_panel(numbers),
            _reasons_panel(numbers, colours), _match_panel(numbers), _ropo_panel(numbers), _visits_panel(numbers)]


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1d2433}
header{background:#1d2433;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px;font-weight:600}
header p{margin:4px 0 0;color:#c3c9d6;font-size:13px}
.kpis{display:flex;flex-wrap:wrap;gap:12px;padding:16px 28px 0}
.kpi{background:#fff;border-radius:8px;padding:10px 16px;min-width:120px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.kpi b{display:block;font-size:22px}
.kpi span{font-size:12px;color:#5b6478}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px;padding:16px 28px}
.panel{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:0}
.panel.wide{grid-column:1/-1}
.panel h2{font-size:16px;margin:0 0 4px}
.lede{font-size:13px;color:#5b6478;margin:0 0 8px}
.empty{padding:40px 10px;text-align:center;color:#7a8294;background:#fafbfc;border:1px dashed #d5d9e0;border-radius:6px}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eceef2}
th{color:#5b6478;font-weight:600}
footer{padding:0 28px 24px;font-size:12px;color:#5b6478}
"""


def render_html(numbers: dict[str, Any], title: str = "omnitrigger report") -> str:
    """The page: every plot's JSON, plotly.js inlined once, the numbers as JSON."""
    from plotly.offline import get_plotlyjs

    panels = build_panels(numbers)
    s, rates, match, r = numbers["summary"], numbers["conversion_rates"], numbers["match_rate"], numbers["ropo"]
    kpis = [("triggers sent", f"{s['triggers']:,}"), ("customers reached", f"{s['customers_reached']:,}"),
            ("suppressed", f"{s['suppressed']:,}"), ("held out", f"{s['holdout']:,}"),
            ("conversions", f"{s['conversions']:,}" if rates["recorded"] else "–"),
            ("match rate", _pct(match["rate"])), ("ROPO", _pct(r["rate"])), ("store visits", f"{s['visits']:,}")]
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             f"<style>{_CSS}</style>", f"<script>{get_plotlyjs()}</script></head><body>",
             f"<header><h1>{html.escape(title)}</h1><p>{html.escape(numbers['folder'])} · conversion window "
             f"{numbers['conversion_window_s'] / 86_400:g} days</p></header>", "<div class=\"kpis\">"]
    parts += [f"<div class=\"kpi\"><b>{html.escape(value)}</b><span>{html.escape(name)}</span></div>" for name, value in kpis]
    parts.append("</div><main>")
    for panel in panels:
        parts.append(f"<section class=\"panel{' wide' if panel.wide else ''}\" id=\"panel-{panel.key}\" "
                     f"data-panel=\"{panel.key}\"><h2>{html.escape(panel.title)}</h2>"
                     f"<p class=\"lede\">{html.escape(panel.lede)}</p>")
        if panel.figure is not None:
            parts.append(panel.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{panel.key}",
                                              default_height=f"{panel.figure.layout.height}px",
                                              config={"displaylogo": False, "responsive": True}))
        else:
            parts.append(f"<p class=\"empty\">{html.escape(panel.empty or 'nothing recorded')}</p>")
        if panel.table:
            header, *rows = panel.table
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                         + "</tbody></table>")
        parts.append("</section>")
    files = ", ".join(f"{stream}: {name}" for stream, name in numbers["files"].items())
    parts.append(f"</main><footer><p>95 % intervals: {html.escape(INTERVAL_METHOD)}. Conversion rate = customers "
                 "of the arm who converted / customers of the arm.</p>"
                 f"<p>Read: {html.escape(files)}.</p></footer>")
    data = orjson.dumps(numbers, option=orjson.OPT_NON_STR_KEYS).decode().replace("</", "<\\/")
    parts.append(f"<script type=\"application/json\" id=\"report-numbers\">{data}</script></body></html>\n")
    return "".join(parts)


def write_report(folder: Path, html_path: Path, window_s: float = DEFAULT_CONVERSION_WINDOW_S) -> dict[str, Any]:
    """Read `folder`, write the page to `html_path` (whole or not at all); returns the numbers."""
    numbers = compute_report(load_outputs(folder), window_s)
    page = render_html(numbers).encode()
    html_path = Path(html_path)
    if not html_path.parent.is_dir():
        raise ReportError(f"cannot write {html_path}: folder {html_path.parent} not found")
    try:
        fd, temporary = tempfile.mkstemp(dir=html_path.parent, prefix=f".{html_path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(page)
            os.chmod(temporary, 0o644)
            os.replace(temporary, html_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise ReportError(f"cannot write {html_path}: {error.strerror or error}") from None
    return numbers

