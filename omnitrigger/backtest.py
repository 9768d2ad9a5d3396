"""`omnitrigger backtest`: the same recording replayed under two configs, and what the change does, per rule.

How a marketer tries a rule change before it goes live: replay a recording of real traffic under the
config in force (A) and under the proposed one (B), then compare the outputs. Per rule:

- triggers added and removed, matched by `trigger_id` (a hash of rule, customer, product or visit, and
  time: the same id in both runs is the same message, unchanged);
- of those, triggers that became suppressions (with the new reason) and suppressions that became
  triggers (with the old reason): the same trigger_id in the other run's suppressed stream;
- suppressions whose reason changed, matched by trigger_id, else by (rule, customer, products, time);
  suppressions (cancellations included) only in A or only in B;
- retractions added and removed (by `retraction_id`).
Each comes with its count and up to EXAMPLES example customer ids.

`compare_outputs` is a plain function over two output folders (no Bytewax); `run_backtest` makes those
folders with the replay machinery (omnitrigger/runner/replay.py) and compares them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from omnitrigger.config import Config
from omnitrigger.operators.rules import RULES

#: Example customers shown per change.
EXAMPLES = 3
#: The output files a backtest writes and compares, by stream.
STREAM_FILES = {"triggers": "triggers.jsonl", "suppressed": "suppressed.jsonl", "retractions": "retractions.jsonl",
                "conversions": "conversions.jsonl"}

Record = dict[str, Any]


@dataclass
class Change:
    """A group of changed records: how many, counted by reason (or "old -> new"), a few customers."""

    count: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, record: Record, reason: str | None = None) -> None:
        self.count += 1
        if reason is not None:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        customer = record.get("customer_id")
        if customer is not None and customer not in self.examples and len(self.examples) < EXAMPLES:
            self.examples.append(customer)

    def describe(self) -> str:
        reasons = (" (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.by_reason.items())) + ")"
                   if self.by_reason else "")
        examples = f"; e.g. {', '.join(self.examples)}" if self.examples else ""
        return f"{self.count}{reasons}{examples}"


@dataclass
class RuleDiff:
    """What changed for one rule between run A and run B."""

    rule: str
    triggers_a: int = 0
    triggers_b: int = 0
    unchanged: int = 0
    added: Change = field(default_factory=Change)  # triggers only in B
    removed: Change = field(default_factory=Change)  # triggers only in A
    became_suppressed: Change = field(default_factory=Change)  # of `removed`: suppressed in B, by B's reason
    became_trigger: Change = field(default_factory=Change)  # of `added`: suppressed in A, by A's reason
    moved: Change = field(default_factory=Change)  # pairs of added and removed with the same customer and
    # products, only the time differs (a longer delay): by the shift, "+30m"
    reason_changed: Change = field(default_factory=Change)  # suppressed in both, by "A's -> B's"
    suppressions_added: Change = field(default_factory=Change)  # suppressed in B, nothing in A, by reason
    suppressions_removed: Change = field(default_factory=Change)  # suppressed in A, nothing in B, by reason
    suppressed_a: int = 0
    suppressed_b: int = 0
    retractions_added: Change = field(default_factory=Change)
    retractions_removed: Change = field(default_factory=Change)
    #: conversions (issue 17) by arm: {"treated": n, "holdout": n} in each run
    conversions_a: dict[str, int] = field(default_factory=dict)
    conversions_b: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added.count or self.removed.count or self.reason_changed.count
                    or self.suppressions_added.count or self.suppressions_removed.count
                    or self.retractions_added.count or self.retractions_removed.count
                    or self.conversions_a != self.conversions_b)

    def lines(self) -> list[str]:
        head = (f"{self.rule}: triggers {self.triggers_a} -> {self.triggers_b}, suppressed {self.suppressed_a} -> "
                f"{self.suppressed_b}")
        if not self.changed:
            return [head + ": unchanged"]
        out = [head + f" ({self.unchanged} triggers unchanged)"]
        out.append(f"  triggers added: {self.added.describe()}")
        if self.became_trigger.count:
            out.append(f"    were suppressed in A: {self.became_trigger.describe()}")
        out.append(f"  triggers removed: {self.removed.describe()}")
        if self.became_suppressed.count:
            out.append(f"    suppressed in B: {self.became_suppressed.describe()}")
        if self.moved.count:
            out.append(f"  of those, the same customer and products at another time: {self.moved.describe()}")
        for title, change in (("suppressions whose reason changed", self.reason_changed),
                              ("suppressions only in B", self.suppressions_added),
                              ("suppressions only in A", self.suppressions_removed),
                              ("retractions only in B", self.retractions_added),
                              ("retractions only in A", self.retractions_removed)):
            if change.count:
                out.append(f"  {title}: {change.describe()}")
        if self.conversions_a != self.conversions_b:
            def arms(counts: dict[str, int]) -> str:
                return ", ".join(f"{arm} {n}" for arm, n in sorted(counts.items())) or "none"
            out.append(f"  conversions: {arms(self.conversions_a)} -> {arms(self.conversions_b)}")
        return out


@dataclass
class BacktestReport:
    """The comparison of two runs' outputs; `to_dict()` is the --json document."""

    totals_a: dict[str, int]
    totals_b: dict[str, int]
    rules: dict[str, RuleDiff]
    #: [{"setting": file key, "field": Config field, "a", "b"}] (durations in seconds)
    settings_changed: list[dict[str, Any]] = field(default_factory=list)
    recording: str | None = None
    config_a: str | None = None  # the file, None = the defaults
    config_b: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = []
        if self.recording is not None:
            out.append(f"backtest of {self.recording}: A = {self.config_a or 'defaults'}, "
                       f"B = {self.config_b or 'defaults'}")
        if self.settings_changed:
            out.append("settings changed: " + "; ".join(
                f"{change['setting']}: {_show(change['a'], change['field'])} -> {_show(change['b'], change['field'])}"
                for change in self.settings_changed))
        else:
            out.append("settings changed: none")
        out.append("totals (A -> B): " + ", ".join(f"{stream} {self.totals_a.get(stream, 0)} -> "
                                                   f"{self.totals_b.get(stream, 0)}" for stream in STREAM_FILES))
        for diff in self.rules.values():
            out += diff.lines()
        return out


def _show(value: Any, field_name: str = "") -> str:
    """A setting as the config file writes it: durations (fields in seconds, `*_s`) as "90m", "24h"."""
    if field_name.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = round(value * 1000)
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms and ms % size == 0:
                return f'"{ms // size}{unit}"'
        return f'"{ms}ms"'
    return orjson.dumps(value).decode()


def read_stream(path: Path) -> list[Record]:
    """A JSON-lines output file's records (a missing file is an empty stream)."""
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def _tuple_key(record: Record) -> tuple[Any, ...]:
    return (record.get("rule"), record.get("customer_id"), tuple(str(p) for p in record.get("products") or ()),
            record.get("ts_ms"))


def _pair_suppressions(a: list[Record], b: list[Record]) -> tuple[list[tuple[Record, Record]], list[Record], list[Record]]:
    """Match suppressions of A and B: by trigger_id (same reasons paired first), then by the
    (rule, customer, products, ts) tuple. Returns (pairs, only in A, only in B)."""
    pairs: list[tuple[Record, Record]] = []
    left_a, left_b = list(a), list(b)
    for key in (lambda r: r.get("trigger_id"), _tuple_key):
        by_key: dict[Any, list[Record]] = {}
        for record in left_b:
            by_key.setdefault(key(record), []).append(record)
        rest_a: list[Record] = []
        for record in left_a:
            candidates = by_key.get(key(record))
            if not candidates:
                rest_a.append(record)
                continue
            same = next((c for c in candidates if c.get("reason") == record.get("reason")), candidates[0])
            candidates.remove(same)
            pairs.append((record, same))
        matched_b = {id(other) for _, other in pairs}
        left_a, left_b = rest_a, [record for record in left_b if id(record) not in matched_b]
    return pairs, left_a, left_b


def compare_outputs(folder_a: Path, folder_b: Path, rules: Iterable[str] = RULES) -> BacktestReport:
    """Compare two output folders (triggers.jsonl, suppressed.jsonl, retractions.jsonl each), per rule."""
    streams = {name: {stream: read_stream(Path(folder) / file) for stream, file in STREAM_FILES.items()}
               for name, folder in (("a", folder_a), ("b", folder_b))}
    seen = [record.get("rule") for run in streams.values() for records in run.values() for record in records]
    names = list(dict.fromkeys([*rules, *sorted({str(rule) for rule in seen if rule is not None} - set(rules))]))
    def totals(run: dict[str, list[Record]]) -> dict[str, int]:  # conversions only where a run has them
        return {stream: len(records) for stream, records in run.items() if stream != "conversions" or records}

    report = BacktestReport(totals_a=totals(streams["a"]), totals_b=totals(streams["b"]), rules={})
    for rule in names:
        run_a = {stream: [r for r in records if r.get("rule") == rule] for stream, records in streams["a"].items()}
        run_b = {stream: [r for r in records if r.get("rule") == rule] for stream, records in streams["b"].items()}
        report.rules[rule] = _compare_rule(rule, run_a, run_b)
    return report


def _compare_rule(rule: str, a: dict[str, list[Record]], b: dict[str, list[Record]]) -> RuleDiff:
    diff = RuleDiff(rule, triggers_a=len(a["triggers"]), triggers_b=len(b["triggers"]),
                    suppressed_a=len(a["suppressed"]), suppressed_b=len(b["suppressed"]))
    ids_a = {t["trigger_id"] for t in a["triggers"]}
    ids_b = {t["trigger_id"] for t in b["triggers"]}
    diff.unchanged = len(ids_a & ids_b)
    suppressed_a = _index(a["suppressed"])
    suppressed_b = _index(b["suppressed"])
    crossed_a: set[int] = set()  # suppressions of A that are triggers in B, and the reverse
    crossed_b: set[int] = set()
    added = _only_in(b["triggers"], ids_a, suppressed_a, diff.added, diff.became_trigger, crossed_a)
    removed = _only_in(a["triggers"], ids_b, suppressed_b, diff.removed, diff.became_suppressed, crossed_b)
    _pair_moved(diff, removed, added)
    pairs, only_a, only_b = _pair_suppressions([s for s in a["suppressed"] if id(s) not in crossed_a],
                                               [s for s in b["suppressed"] if id(s) not in crossed_b])
    for old, new in pairs:
        if old.get("reason") != new.get("reason"):
            diff.reason_changed.add(new, f"{old.get('reason')} -> {new.get('reason')}")
    for record in only_b:
        diff.suppressions_added.add(record, record.get("reason"))
    for record in only_a:
        diff.suppressions_removed.add(record, record.get("reason"))
    for counts, run in ((diff.conversions_a, a), (diff.conversions_b, b)):
        for record in run["conversions"]:
            counts[str(record.get("arm"))] = counts.get(str(record.get("arm")), 0) + 1
    retractions_a = {r["retraction_id"] for r in a["retractions"]}
    retractions_b = {r["retraction_id"] for r in b["retractions"]}
    for record in b["retractions"]:
        if record["retraction_id"] not in retractions_a:
            diff.retractions_added.add(record)
    for record in a["retractions"]:
        if record["retraction_id"] not in retractions_b:
            diff.retractions_removed.add(record)
    return diff


def _only_in(triggers: list[Record], other_ids: set[str], other_suppressed: dict[Any, list[Record]], only: Change,
             crossed: Change, crossed_ids: set[int]) -> list[Record]:
    """The triggers of one run whose id the other run did not send, each counted in `only`; those the other
    run suppressed instead also in `crossed`, by the other run's reason (their suppressions in `crossed_ids`)."""
    left = []
    for trigger in triggers:
        if trigger["trigger_id"] in other_ids:
            continue
        left.append(trigger)
        only.add(trigger)
        other = _find(other_suppressed, trigger)
        if other is not None:
            crossed_ids.add(id(other))
            crossed.add(trigger, other.get("reason"))
    return left


def _pair_moved(diff: RuleDiff, removed: list[Record], added: list[Record]) -> None:
    """Count removed and added triggers of one customer and the same products as moved, by the time shift."""
    by_subject: dict[tuple[Any, ...], list[Record]] = {}
    for trigger in added:
        by_subject.setdefault(_tuple_key(trigger)[:3], []).append(trigger)
    for trigger in removed:
        candidates = by_subject.get(_tuple_key(trigger)[:3])
        if candidates:
            later = candidates.pop(0)
            shift_ms = later["ts_ms"] - trigger["ts_ms"]
            diff.moved.add(later, ("+" if shift_ms >= 0 else "-") + _show(abs(shift_ms) / 1000, "_s").strip('"'))


def _index(records: list[Record]) -> dict[Any, list[Record]]:
    """Suppressions by trigger_id and by tuple key, for finding a trigger's counterpart."""
    index: dict[Any, list[Record]] = {}
    for record in records:
        index.setdefault(("id", record.get("trigger_id")), []).append(record)
        index.setdefault(("tuple", _tuple_key(record)), []).append(record)
    return index


def _find(index: dict[Any, list[Record]], trigger: Record) -> Record | None:
    for key in (("id", trigger.get("trigger_id")), ("tuple", _tuple_key(trigger))):
        candidates = index.get(key)
        if candidates:
            return candidates[0]
    return None


def settings_changed(config_a: Config, config_b: Config) -> list[dict[str, Any]]:
    """The settings that differ, by their config file name (`rules.cart_abandoned_after`) where one exists."""
    from omnitrigger import config as config_module

    names = {field_name: f"{section}.{key}"
             for (section, key), (field_name, _) in getattr(config_module, "_KEYS", {}).items()}
    changed = []
    for item in fields(Config):
        a, b = getattr(config_a, item.name), getattr(config_b, item.name)
        if a != b:
            changed.append({"setting": names.get(item.name, item.name), "field": item.name, "a": _plain(a),
                            "b": _plain(b)})
    return changed


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def run_backtest(recording: Path, stores: Path, config_a: Config, config_b: Config, *,
                 keep: Path | None = None, say: Callable[[str], None] | None = None) -> BacktestReport:
    """Replay `recording` under `config_a` and under `config_b` (each in a temporary state folder, writing
    triggers, suppressed and retractions into `keep`/a and `keep`/b, or a temporary folder), then compare.

    One-line errors are the replay's (ReplayError, RecordingError, StoresError, PiiKeyError, ...).
    """
    from omnitrigger.pii import key_from_environment
    from omnitrigger.io.recording import recording_files
    from omnitrigger.runner.replay import ReplayOptions, run_replay  # the flow (Bytewax) only when a backtest runs
    from omnitrigger.io.stores import load_stores

    for config in (config_a, config_b):  # what run_replay checks first: fail before anything runs, in one line
        recording_files(Path(recording), config.kafka_topic_prefix, dict(config.kafka_input_topics))
    key_from_environment()
    load_stores(Path(stores))
    with tempfile.TemporaryDirectory(prefix="omnitrigger-backtest-") as temporary:
        work = Path(keep) if keep is not None else Path(temporary)
        folders = {"A": work / "a", "B": work / "b"}
        for name, config in (("A", config_a), ("B", config_b)):
            out = folders[name]
            if say is not None:
                say(f"backtest: replaying {recording} under {name}")
            run_replay(ReplayOptions(recording_dir=Path(recording), stores=Path(stores), out=out / STREAM_FILES["triggers"],
                                     suppressed=out / STREAM_FILES["suppressed"],
                                     retractions=out / STREAM_FILES["retractions"],
                                     conversions=out / STREAM_FILES["conversions"], config=config))
        report = compare_outputs(folders["A"], folders["B"])
    report.settings_changed = settings_changed(config_a, config_b)
    report.recording = str(recording)
    return report

