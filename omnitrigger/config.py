"""Configuration: defaults in code, overrides from a TOML file, one clear error for a bad value.

A config file has one table per section below, for example:

    [dedup]
    retention = "7d"
    [replay]
    batch_size = 1000

Durations are seconds or a string with a unit: "90s", "60m", "24h", "7d".
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from omnitrigger.schemas import INPUT_TOPICS


class ConfigError(Exception):
    """A config file or value is wrong; the message is one line for the user."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration_s(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration such as 90, \"60m\" or \"7d\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"{name}: expected a duration such as 90, \"60m\" or \"7d\", got {value!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < 0:
        raise ConfigError(f"{name}: a duration cannot be negative")
    return seconds


#: The default snapshot interval (`Config.epoch_s`), seconds: live, and in a replay.
LIVE_EPOCH_S = 1.0
REPLAY_EPOCH_S = 30.0


@dataclass(frozen=True)
class Config:
    # [contracts]
    max_record_bytes: int = 262_144
    max_depth: int = 32  # objects and arrays nested deeper are dead letters (too_deep); at most 200
    max_future_s: float = 86_400.0  # past the stream's own clock (bare recorded lines)
    max_clock_skew_s: float = 900.0  # past the record's Kafka timestamp (live, and kcat envelopes)
    # [dedup]
    dedup_retention_s: float = 7 * 86_400.0
    dedup_topics: tuple[str, ...] = ("pos.receipts", "web.events")
    # [replay]
    batch_size: int = 1000
    epoch_interval_s: float | None = None  # None: the mode's default (`epoch_s`)
    reference_time_ms: int | None = None  # an extra "now" bound for bare lines' future check; None = only the stream's clock
    progress_interval_s: float = 2.0
    # [state]
    keep_generations: int = 64
    state_cache_entries: int = 50_000  # committed values kept in memory per shard, to spare RocksDB reads
    # The sequencer and the history stage write their buffered changes once this many are pending (0: only at
    # their snapshots), so that at an epoch's end, when what follows waits for their snapshots, those have
    # little left to write.
    spill_entries: int = 10_000
    # [identity]
    default_country_code: str = "358"  # phones without a leading + or 00 get this E.164 country code
    identifier_limits: tuple[tuple[str, int], ...] = (("auth_id", 1), ("loyalty_id", 1))  # at most N per customer
    blocked_identifiers: tuple[str, ...] = ()  # never link, on top of the built-in list
    min_link_confidence: float = 0.9
    identifier_retention_s: float = 400 * 86_400.0  # an identifier unseen this long is forgotten
    history_retention_s: float = 30 * 86_400.0  # rule-relevant events kept per customer, to follow merges
    history_max_events: int = 500
    # [visits]
    max_accuracy_m: float = 100.0
    excluded_sources: tuple[str, ...] = ("cell",)
    visit_max_gap_s: float = 300.0
    visit_min_dwell_s: float = 120.0
    allowed_lateness_s: float = 120.0
    # [rules]
    cart_abandoned_after_s: float = 3600.0
    browse_abandoned_after_s: float = 86_400.0
    offer_lookback_s: float = 86_400.0
    offer_max_products: int = 5
    disabled_rules: tuple[str, ...] = ()  # the kill switch in the file; a control file can flip it while running
    rules_lateness_s: float = 10.0  # deadlines fire once the event-time clock (latest event time minus this) passes
    rule_shards: int = 16  # the rules stage's fixed shard keys; fixed for the life of a state folder
    rule_timers_in_memory: int = 20_000  # per rules shard: the earliest pending deadlines kept in memory
    purchase_grace_s: float = 300.0  # a deadline fires once the clock passes it plus this: a late till purchase still cancels
    retraction_window_s: float = 86_400.0  # how long after a trigger a purchase made before it can still retract it
    cart_group_window_s: float = 600.0  # a customer's cart deadlines this close after the first fire as one trigger; 0: off
    add_cancels_browse: bool = True  # an add to cart cancels the product's pending browse reminder (moved_to_cart)
    # [policy]
    channels: tuple[str, ...] = ("push", "email", "sms")  # the first channel with consent is used
    max_triggers_per_customer: int = 3
    customer_cap_window_s: float = 86_400.0
    product_cap_window_s: float = 86_400.0
    control_file: str | None = None  # JSON {"disabled_rules": [...]}, re-read when it changes
    quiet_hours: str = "21:00-09:00"  # local time; a deadline inside is deferred to the end; "": off
    timezone: str = "Europe/Helsinki"  # the zone of quiet_hours
    offer_quiet_hours: bool = False  # [rules.store_visit_offer] quiet_hours: true suppresses offers then (quiet_hours)
    # [rules.<name>] tables as the file gives them (lists as tuples): the built-in rules' overrides and the
    # rules the config declares (operators/rules/registry.py checks and builds them).
    rule_tables: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    # plugins = ["my_rules"] (top level): Python modules that register rule kinds, imported before the rules
    # are built, from the config file's folder or the Python path.
    plugins: tuple[str, ...] = ()
    plugin_dirs: tuple[str, ...] = ()  # run time: the config file's folder, where plugins are found first
    cross_rule_product_cap: bool = True  # one message per (customer, product) per product_cap_window across all rules
    require_location_consent: bool = True  # an in-store offer (and a visit record) needs the customer's location consent
    max_delay_s: float = 900.0  # live: a trigger this late after its time is suppressed (stale), not sent; 0: off
    holdout: float = 0.0  # the share of customers held out of every rule (a rule's table may set its own)
    # [metrics]
    conversion_window_s: float = 7 * 86_400.0  # a purchase of a messaged product this soon after converts it
    # [kafka] (live mode: `omnitrigger run`, `record`, `publish`)
    kafka_topic_prefix: str = ""  # put in front of every topic name, input and output (per environment)
    kafka_input_topics: tuple[tuple[str, str], ...] = ()  # (contract topic, Kafka topic) overrides
    kafka_triggers_topic: str = "omnitrigger.triggers"
    kafka_suppressed_topic: str = "omnitrigger.suppressed"
    kafka_visits_topic: str = "omnitrigger.visits"
    kafka_dead_letters_topic: str = "omnitrigger.dead_letters"
    kafka_retractions_topic: str = "omnitrigger.retractions"
    kafka_conversions_topic: str = "omnitrigger.conversions"  # purchases of messaged (or held-out) products
    kafka_identities_topic: str = "omnitrigger.identities"  # compacted: customer id -> identifiers; "": not published
    kafka_refused_links_topic: str = "omnitrigger.refused_links"  # identity links refused, with why; "": not published
    kafka_duplicates_topic: str = "omnitrigger.duplicates"  # redelivered records dropped by dedup; "": not published
    kafka_start: str = "earliest"  # where a fresh state folder starts reading: earliest or latest
    kafka_fetch_wait_s: float = 0.005  # fetch.wait.max.ms: the consumer's share of the latency
    kafka_batch_wait_s: float = 0.010  # a live batch waits this long to fill up to batch_size records
    kafka_linger_s: float = 0.005  # linger.ms of the output producer
    kafka_heartbeat_interval_s: float = 1.0  # an idle source tells the event-time clock the wall time this often
    kafka_merge_wait_s: float = 1.0  # at most this long the event-time merge waits for a partition with data in flight
    kafka_delivery_timeout_s: float = 600.0  # an output message not acknowledged by then stops the job
    kafka_preflight_timeout_s: float = 5.0  # brokers must answer the start-up check within this
    kafka_dedup_tail: int = 10_000  # triggers read back per partition at start, to drop re-sent trigger ids
    kafka_metrics_port: int = 9464  # Prometheus endpoint; 0 turns it off
    kafka_metrics_bind: str = "0.0.0.0"  # the address the metrics endpoint listens on ("127.0.0.1": this machine only)
    kafka_on_retention_gap: str = "fail"  # input deleted by retention before it was read: "fail" or "skip" past it
    kafka_client_properties: tuple[tuple[str, str], ...] = ()  # extra librdkafka settings (security, ...)
    kafka_ready_max_lag: int = 1000  # /readyz: ready while every input partition is fewer messages behind than this
    kafka_progress_interval_s: float = 60.0  # a "progress" log line this often (records in, triggers out, lag); 0: none
    # Set at run time, not from the file: the stores CSV the replay or job was started with, and whether
    # there is a wall clock (`omnitrigger run`: max_delay applies; a replay has none, so nothing is stale).
    stores_file: str | None = None
    wall_clock: bool = False
    catalog_file: str | None = None  # --catalog: product_id,category,repurchase_days (replenishment rules)

    @property
    def epoch_s(self) -> float:
        """How often Bytewax snapshots (`[replay] epoch_interval`). By default 1 s live, where a crash re-runs
        the epoch since the last snapshot against the brokers, and 30 s in a replay, where a re-run costs only
        time: each epoch ends with every stage's commits and the processes of a cluster waiting for each
        other. 5 s epochs made a replay of the real-data mix x10 15 % faster on one process and 35 % on two
        than 1 s; since the sequencer and the history stage spill as the epoch goes (`spill_entries`), an
        epoch's writes no longer wait in memory for its end, and 60 s made two processes 6 % faster than 5 s
        (benchmarks/README.md, "Epochs")."""
        if self.epoch_interval_s is not None:
            return self.epoch_interval_s
        return LIVE_EPOCH_S if self.wall_clock else REPLAY_EPOCH_S

    def with_overrides(self, **overrides: Any) -> "Config":
        return replace(self, **overrides)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "Config":
        """The inverse of `dataclasses.asdict` after a JSON round trip (lists back to tuples)."""
        return cls(**{key: _tuples(value) for key, value in document.items()})


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


# (section, key) in the file -> (field name, converter)
def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _whole_number(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: expected a whole number (0 or more), got {value!r}")
    return value


def _max_depth(value: Any, name: str) -> int:
    """1..200: a stage that wraps a deeper body (the journal, an output) could reach orjson's 254-level limit."""
    if type(value) is not int or not 1 <= value <= 200:
        raise ConfigError(f"{name}: expected a whole number of levels from 1 to 200, got {value!r}")
    return value


def _topics(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(topic not in ("pos.receipts", "web.events") for topic in value):
        raise ConfigError(f"{name}: expected a list drawn from [\"pos.receipts\", \"web.events\"], got {value!r}")
    return tuple(value)


def _country_code(value: Any, name: str) -> str:
    text = str(value).lstrip("+")
    if isinstance(value, bool) or not text.isdigit() or not 1 <= len(text) <= 3:
        raise ConfigError(f"{name}: expected a 1 to 3 digit country calling code such as \"358\", got {value!r}")
    return text


def _identifier_limits(value: Any, name: str) -> tuple[tuple[str, int], ...]:
    kinds = ("device_id", "cookie_id", "auth_id", "email", "phone", "loyalty_id")
    if not isinstance(value, dict) or any(kind not in kinds for kind in value):
        raise ConfigError(f"{name}: expected a table of identifier type = limit, types from {', '.join(kinds)}")
    return tuple(sorted((kind, _positive_int(limit, f"{name}.{kind}")) for kind, limit in value.items()))


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    return tuple(value)


def _sources(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(source not in ("gps", "wifi", "cell") for source in value):
        raise ConfigError(f"{name}: expected a list drawn from [\"gps\", \"wifi\", \"cell\"], got {value!r}")
    return tuple(value)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name}: expected a number from 0 to 1, got {value!r}")
    return float(value)


def _batch_wait_s(value: Any, name: str) -> float:
    """A live batch's wait: at most a second, since the source answers a stop and sends heartbeats between batches."""
    seconds = parse_duration_s(value, name)
    if seconds > 1.0:
        raise ConfigError(f"{name}: at most 1s (the source answers a stop and the idle heartbeat between batches; "
                          f"5ms to 10ms is the useful range), got {value!r}")
    return seconds


def _holdout_share(value: Any, name: str) -> float:
    """A share of customers from 0 to 0.5: a control group larger than the treated one is a typo."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.5:
        raise ConfigError(f"{name}: expected a share of customers from 0 to 0.5 (0.1: one in ten), got {value!r}")
    return float(value)


def _metres(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number of metres, got {value!r}")
    return float(value)


def _rule_names(value: Any, name: str) -> tuple[str, ...]:
    """A list of rule names; that each names a rule is checked once the rule tables are read (`_check_rules`)."""
    if not isinstance(value, list) or not all(isinstance(rule, str) for rule in value):
        raise ConfigError(f"{name}: expected a list of rule names, got {value!r}")
    return tuple(value)


def _channels(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(channel not in ("push", "email", "sms") for channel in value):
        raise ConfigError(f"{name}: expected a non-empty list drawn from [\"push\", \"email\", \"sms\"], got {value!r}")
    return tuple(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value


def _quiet_window(value: Any, name: str) -> str:
    from omnitrigger.operators.quiet_hours import parse_window

    try:
        parse_window(value if isinstance(value, str) else "?")
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None
    return value


def _time_zone(value: Any, name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"{name}: expected an IANA time zone such as \"Europe/Helsinki\", got {value!r}") from None
    return value


def _path(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a file path, got {value!r}")
    return value


def _topic_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]{0,200}", value):
        raise ConfigError(f"{name}: expected a Kafka topic name (letters, digits, '.', '_', '-'), got {value!r}")
    return value


def _input_topic_map(value: Any, name: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or any(topic not in INPUT_TOPICS for topic in value):
        raise ConfigError(f"{name}: expected a table of contract topic = Kafka topic, contract topics from "
                          f"{', '.join(INPUT_TOPICS)}")
    return tuple(sorted((topic, _topic_name(kafka, f"{name}.{topic}")) for topic, kafka in value.items()))


def _start(value: Any, name: str) -> str:
    if value not in ("earliest", "latest"):
        raise ConfigError(f"{name}: expected \"earliest\" or \"latest\", got {value!r}")
    return value


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{name}: expected a TCP port from 0 (off) to 65535, got {value!r}")
    return value


def _bind_address(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", value):
        raise ConfigError(f"{name}: expected an address to listen on, such as \"127.0.0.1\" or \"0.0.0.0\", got {value!r}")
    return value


def _retention_gap(value: Any, name: str) -> str:
    if value not in ("fail", "skip"):
        raise ConfigError(f"{name}: expected \"fail\" (refuse to start) or \"skip\" (go on past the lost input), "
                          f"got {value!r}")
    return value


def _client_properties(value: Any, name: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table of librdkafka settings, such as \"security.protocol\" = \"SSL\"")
    return tuple(sorted((str(key), str(setting)) for key, setting in value.items()))


def _timestamp_ms(value: Any, name: str) -> int:
    from omnitrigger.schemas import ContractViolation, parse_event_time

    try:
        return parse_event_time(value)
    except ContractViolation:
        raise ConfigError(f"{name}: expected RFC 3339 with an offset or epoch milliseconds, got {value!r}") from None


_KEYS: dict[tuple[str, str], tuple[str, Any]] = {
    ("contracts", "max_record_bytes"): ("max_record_bytes", _positive_int),
    ("contracts", "max_depth"): ("max_depth", _max_depth),
    ("contracts", "max_future"): ("max_future_s", parse_duration_s),
    ("contracts", "max_clock_skew"): ("max_clock_skew_s", parse_duration_s),
    ("dedup", "retention"): ("dedup_retention_s", parse_duration_s),
    ("dedup", "topics"): ("dedup_topics", _topics),
    ("replay", "batch_size"): ("batch_size", _positive_int),
    ("replay", "epoch_interval"): ("epoch_interval_s", parse_duration_s),
    ("replay", "reference_time"): ("reference_time_ms", _timestamp_ms),
    ("replay", "progress_interval"): ("progress_interval_s", parse_duration_s),
    ("state", "keep_generations"): ("keep_generations", _positive_int),
    ("state", "cache_entries"): ("state_cache_entries", _positive_int),
    ("state", "spill_entries"): ("spill_entries", _whole_number),
    ("identity", "default_country_code"): ("default_country_code", _country_code),
    ("identity", "limits"): ("identifier_limits", _identifier_limits),
    ("identity", "blocked_values"): ("blocked_identifiers", _strings),
    ("identity", "min_confidence"): ("min_link_confidence", _fraction),
    ("identity", "retention"): ("identifier_retention_s", parse_duration_s),
    ("identity", "history_retention"): ("history_retention_s", parse_duration_s),
    ("identity", "history_max_events"): ("history_max_events", _positive_int),
    ("visits", "max_accuracy_m"): ("max_accuracy_m", _metres),
    ("visits", "excluded_sources"): ("excluded_sources", _sources),
    ("visits", "max_gap"): ("visit_max_gap_s", parse_duration_s),
    ("visits", "min_dwell"): ("visit_min_dwell_s", parse_duration_s),
    ("visits", "allowed_lateness"): ("allowed_lateness_s", parse_duration_s),
    ("rules", "cart_abandoned_after"): ("cart_abandoned_after_s", parse_duration_s),
    ("rules", "browse_abandoned_after"): ("browse_abandoned_after_s", parse_duration_s),
    ("rules", "offer_lookback"): ("offer_lookback_s", parse_duration_s),
    ("rules", "offer_max_products"): ("offer_max_products", _positive_int),
    ("rules", "disabled"): ("disabled_rules", _rule_names),
    ("rules", "allowed_lateness"): ("rules_lateness_s", parse_duration_s),
    ("rules", "shards"): ("rule_shards", _positive_int),
    ("rules", "timers_in_memory"): ("rule_timers_in_memory", _positive_int),
    ("rules", "purchase_grace"): ("purchase_grace_s", parse_duration_s),
    ("rules", "retraction_window"): ("retraction_window_s", parse_duration_s),
    ("rules", "cart_group_window"): ("cart_group_window_s", parse_duration_s),
    ("rules", "add_cancels_browse"): ("add_cancels_browse", _boolean),
    ("policy", "channels"): ("channels", _channels),
    ("policy", "max_triggers_per_customer"): ("max_triggers_per_customer", _positive_int),
    ("policy", "customer_cap_window"): ("customer_cap_window_s", parse_duration_s),
    ("policy", "product_cap_window"): ("product_cap_window_s", parse_duration_s),
    ("policy", "control_file"): ("control_file", _path),
    ("policy", "require_location_consent"): ("require_location_consent", _boolean),
    ("policy", "cross_rule_product_cap"): ("cross_rule_product_cap", _boolean),
    ("policy", "quiet_hours"): ("quiet_hours", _quiet_window),
    ("policy", "timezone"): ("timezone", _time_zone),
    ("policy", "max_delay"): ("max_delay_s", parse_duration_s),
    ("policy", "holdout"): ("holdout", _holdout_share),
    ("metrics", "conversion_window"): ("conversion_window_s", parse_duration_s),
    ("kafka", "topic_prefix"): ("kafka_topic_prefix", _topic_name),
    ("kafka", "input_topics"): ("kafka_input_topics", _input_topic_map),
    ("kafka", "triggers_topic"): ("kafka_triggers_topic", _topic_name),
    ("kafka", "suppressed_topic"): ("kafka_suppressed_topic", _topic_name),
    ("kafka", "visits_topic"): ("kafka_visits_topic", _topic_name),
    ("kafka", "dead_letters_topic"): ("kafka_dead_letters_topic", _topic_name),
    ("kafka", "retractions_topic"): ("kafka_retractions_topic", _topic_name),
    ("kafka", "conversions_topic"): ("kafka_conversions_topic", _topic_name),
    ("kafka", "identities_topic"): ("kafka_identities_topic", _topic_name),
    ("kafka", "refused_links_topic"): ("kafka_refused_links_topic", _topic_name),
    ("kafka", "duplicates_topic"): ("kafka_duplicates_topic", _topic_name),
    ("kafka", "start"): ("kafka_start", _start),
    ("kafka", "fetch_wait"): ("kafka_fetch_wait_s", parse_duration_s),
    ("kafka", "batch_wait"): ("kafka_batch_wait_s", _batch_wait_s),
    ("kafka", "linger"): ("kafka_linger_s", parse_duration_s),
    ("kafka", "heartbeat_interval"): ("kafka_heartbeat_interval_s", parse_duration_s),
    ("kafka", "merge_wait"): ("kafka_merge_wait_s", parse_duration_s),
    ("kafka", "delivery_timeout"): ("kafka_delivery_timeout_s", parse_duration_s),
    ("kafka", "preflight_timeout"): ("kafka_preflight_timeout_s", parse_duration_s),
    ("kafka", "dedup_tail"): ("kafka_dedup_tail", _positive_int),
    ("kafka", "metrics_port"): ("kafka_metrics_port", _port),
    ("kafka", "metrics_bind"): ("kafka_metrics_bind", _bind_address),
    ("kafka", "on_retention_gap"): ("kafka_on_retention_gap", _retention_gap),
    ("kafka", "client"): ("kafka_client_properties", _client_properties),
    ("kafka", "ready_max_lag"): ("kafka_ready_max_lag", _positive_int),
    ("kafka", "progress_interval"): ("kafka_progress_interval_s", parse_duration_s),
}

#: Fields set by the program at run time, never from the file.
RUNTIME_FIELDS = {"stores_file", "wall_clock", "plugin_dirs", "catalog_file"}
#: Fields set from [rules.<name>] tables (offer_quiet_hours: the offer's quiet_hours default, for code).
TABLE_FIELDS = {"rule_tables", "offer_quiet_hours", "plugins"}


def load_config(path: Path | None) -> Config:
    """Defaults, overridden by the TOML file at `path` if given."""
    if path is None:
        return Config()
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    overrides: dict[str, Any] = {}
    rule_tables: dict[str, Any] = {}
    plugins = document.pop("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(name, str) and name for name in plugins):
        raise ConfigError(f"config file {path}: plugins: expected a list of Python module names, got {plugins!r}")
    if plugins:
        overrides["plugins"] = tuple(plugins)
        overrides["plugin_dirs"] = (str(Path(path).resolve().parent),)
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
        for key, value in table.items():
            if section == "rules" and isinstance(value, dict):  # [rules.<name>]: a rule
                rule_tables[key] = tuple(sorted((setting, _tuples(item)) for setting, item in value.items()))
                continue
            if (section, key) not in _KEYS:
                known = ", ".join(f"{s}.{k}" for s, k in _KEYS)
                raise ConfigError(f"config file {path}: unknown setting {section}.{key} (known: {known})")
            field_name, convert = _KEYS[(section, key)]
            overrides[field_name] = convert(value, f"{section}.{key}")
    config = Config(**overrides, rule_tables=tuple(sorted(rule_tables.items())))
    _check_max_delay(config, path)
    _check_rules(config, path)
    return config


def _check_rules(config: Config, path: Path) -> None:
    """Every [rules.<name>] table must make a rule, and [rules] disabled name rules there are."""
    from omnitrigger.operators.rules import RuleConfigError, rule_names

    try:
        names = rule_names(config)  # imports the plugins first
    except RuleConfigError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    unknown = [rule for rule in config.disabled_rules if rule not in names]
    if unknown:
        raise ConfigError(f"config file {path}: rules.disabled: expected a list drawn from {list(names)}, "
                          f"got {list(config.disabled_rules)!r}")


def _check_max_delay(config: Config, path: Path) -> None:
    """A deadline fires `purchase_grace` plus the lateness after its time: a smaller max_delay would make every
    reminder stale, so it is refused rather than silently sending nothing."""
    floor = config.purchase_grace_s + config.rules_lateness_s
    if 0 < config.max_delay_s <= floor:
        raise ConfigError(f"config file {path}: policy.max_delay ({config.max_delay_s:g} s) must be more than "
                          f"rules.purchase_grace plus rules.allowed_lateness ({floor:g} s), the delay every "
                          "reminder has by design; or \"0\" to switch the stale check off")


assert {name for name, _ in _KEYS.values()} | RUNTIME_FIELDS | TABLE_FIELDS == {f.name for f in fields(Config)}, \
    "every setting has a file key"
assert all(topic in INPUT_TOPICS for topic in Config.dedup_topics)
