"""`omnitrigger explain`: what the state folder knows of one customer, and what the outputs say happened to them.

An on-call engineer or a marketer asks "why did (or didn't) this customer get this message?". The answer is
in two places: the state folder (identifiers, consents, pending deadlines, caps in force) and the output
files (triggers, suppressions with their reason, cancellations, retractions). This module reads both,
read-only, and returns one `Explanation`; `omnitrigger/cli/offline.py` prints it as text or JSON.

Read-only, also while a job runs on the folder: each RocksDB is opened as a *secondary* instance
(`AccessType.secondary`), which takes no lock, never writes the primary's files and catches up with the
primary's WAL once at open. Every file is opened and kept open at start (`max_open_files = -1`), so a
compaction in the running job deleting a table file cannot pull it away mid-read. What RocksDB holds is
what the shards have committed (`state/shard_state.py` buffers an epoch's writes in memory and writes them
at the snapshot), so nothing half-done is seen; a running job's newest generation may still be rolled back
if it crashes before Bytewax commits that epoch.

Where things are (state/shard_state.py: data keys are `d <namespace> NUL <2-byte shard> <key>`):
    identity   namespace "identity", shard 0, in the sequencer's RocksDB (process 0):
               i <type code> <value> -> [customer, last seen ms]; c <customer> -> {"first", "ids"}
    history    namespace "history", shard 0, in the history stage's RocksDB (rocksdb/history; on a cluster, the
               process Bytewax gives the key "history"): k <customer> -> {channel: [status, ts_ms]}
    rules      namespace "rules", shard `shard_of(customer, rule_shards)` (operators/router.py), in the
               RocksDB of whichever process ran that shard: A/B (pending), C (consents), F and G (caps)
The rules' and the policy's key layouts are decoded here, mirroring operators/rules.py and
operators/policy.py (their module docstrings list them); they belong in the rule host and will move there.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rocksdict import AccessType, Options, Rdict

from omnitrigger.config import Config
from omnitrigger.operators.identity import _TYPE_CODE, IDENTIFIER_TYPES
from omnitrigger.operators.policy import FIRES, PRODUCT_CAPS, consents_of
from omnitrigger.operators.router import shard_of
from omnitrigger.operators.rules.host import customer_document, pending_section
from omnitrigger.operators.rules import configured_rules, iso
from omnitrigger.pii import PII_TYPES, Pseudonymizer, key_from_environment
from omnitrigger.state import ShardState, StateError
from omnitrigger.state.clock import saved_clock

#: The suppressed stream's reasons that are cancellations (the deadline was called off), not policy decisions.
CANCEL_REASONS = frozenset({"purchased", "removed_from_cart", "moved_to_cart"})
#: The output files read from --out-dir (the replay's and the demo's names).
OUTPUT_FILES = {"triggers": "triggers.jsonl", "suppressed": "suppressed.jsonl", "retractions": "retractions.jsonl"}

_HASHED = re.compile(r"^[0-9a-f]{32}$")  # an email or phone given already hashed (a trigger's recipient)


class ExplainError(Exception):
    """The customer or identifier is not in the state folder, or the folder cannot be read; one line."""


@dataclass
class Explanation:
    """Everything known of one customer; `to_dict()` is the --json document."""

    customer_id: str
    state_dir: str
    found_by: dict[str, str] | None  # {"type", "value"} of --identifier (email and phone hashed)
    identity_clock: str | None  # the identity stage's clock (latest event time): "now" for expiry
    rules_clock: str | None  # the customer's rules shard's watermark: "now" for deadlines and caps
    rules_shard: int
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    consents: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the policy decides with
    consent_ledger: dict[str, dict[str, Any]] = field(default_factory=dict)  # history's, kept with the identifiers
    pending: list[dict[str, Any]] = field(default_factory=list)
    customer_cap: dict[str, Any] | None = None
    product_caps: list[dict[str, Any]] = field(default_factory=list)
    #: per rule with a control group: {"rule", "share", "held_out"} (a function of the customer id alone)
    holdouts: list[dict[str, Any]] = field(default_factory=list)
    product: str | None = None
    out_dir: str | None = None
    triggers: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    cancellations: list[dict[str, Any]] = field(default_factory=list)
    retractions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Plain text for a person."""
        out = [f"customer {self.customer_id}" + (f" (found by {self.found_by['type']} {self.found_by['value']})"
                                                 if self.found_by else "")]
        out.append(f"  state: {self.state_dir}; identity clock {self.identity_clock or '-'}, "
                   f"rules shard {self.rules_shard} clock {self.rules_clock or '-'}")
        if self.product is not None:
            out.append(f"  product filter: {self.product}")
        out.append(f"identifiers: {len(self.identifiers)}")
        out += [f"  {i['type']}: {i['value']} (last seen {i['last_seen']})" for i in self.identifiers]
        out.append(f"consents: {len(self.consents)}" + ("" if self.consents else " (none: no channel may be used)"))
        out += [f"  {channel}: {c['status']} at {c['ts']}" for channel, c in sorted(self.consents.items())]
        if self.consent_ledger and self.consent_ledger != self.consents:
            out.append("consent ledger (history; follows merges):")
            out += [f"  {channel}: {c['status']} at {c['ts']}" for channel, c in sorted(self.consent_ledger.items())]
        out.append(f"pending deadlines: {len(self.pending)}")
        out += [f"  {p['rule']} {p['product']!r}: due {p['due']} (set {p['set_at']}; evidence "
                f"{', '.join(p['evidence'])})" for p in self.pending]
        cap = self.customer_cap
        if cap is None:
            out.append("customer cap: no trigger in the window")
        else:
            state = "in force" if cap["capped"] else "not reached"
            out.append(f"customer cap: {cap['triggers_in_window']} of {cap['limit']} triggers in the "
                       f"{cap['window']} window ({state}" + (f", until {cap['until']})" if cap["capped"] else ")"))
        out.append(f"product caps in force: {len(self.product_caps)}")
        out += [f"  {p['product']!r} ({'any rule' if p['rule'] == '*' else p['rule']}): last message {p['last']}, "
                f"until {p['until']}" for p in self.product_caps]
        if self.holdouts:
            out.append("control groups:")
            out += [f"  {h['rule']} (holdout {h['share']:g}): " + ("held out" if h["held_out"] else "treated")
                    for h in self.holdouts]
        if self.out_dir is not None:
            out.append(f"outputs in {self.out_dir}:")
            out.append(f"  triggers: {len(self.triggers)}")
            out += [f"    {t['ts']} {t['rule']} {t['products']} via {t.get('channel')} ({t['trigger_id']})"
                    for t in self.triggers]
            out.append(f"  suppressed: {len(self.suppressed)}")
            out += [f"    {s['ts']} {s['rule']} {s['products']}: {s['reason']} ({s['trigger_id']})"
                    for s in self.suppressed]
            out.append(f"  cancelled: {len(self.cancellations)}")
            out += [f"    {s['ts']} {s['rule']} {s['products']}: {s['reason']}"
                    + (f" ({s['purchase_channel']})" if s.get("purchase_channel") else "") for s in self.cancellations]
            out.append(f"  retracted: {len(self.retractions)}")
            out += [f"    {r['trigger_ts']} {r['rule']} {r['products']}: bought {r['purchase_ts']} via "
                    f"{r.get('purchase_channel')} (trigger {r['trigger_id']})" for r in self.retractions]
        return out


class ReadOnlyStore:
    """A RocksDB folder opened as a secondary instance: reads only, no lock, safe beside a running job.

    Implements the reading half of state/store.py's KeyValueStore, so a `ShardState` reads through it.
    """

    def __init__(self, path: Path) -> None:
        if not (path / "CURRENT").is_file():
            raise ExplainError(f"{path} holds no RocksDB state")
        self.path = path
        self._secondary = Path(tempfile.mkdtemp(prefix="omnitrigger-explain-"))
        options = Options(raw_mode=True)
        options.set_max_open_files(-1)  # every table file opened now: a compaction cannot delete one from under us
        try:
            self._db = Rdict(str(path), options, access_type=AccessType.secondary(str(self._secondary)))
            self._db.try_catch_up_with_primary()
        except Exception as error:  # rocksdict raises a bare Exception("IO error: ...", "Corruption: ...")
            shutil.rmtree(self._secondary, ignore_errors=True)
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ExplainError(f"cannot open the RocksDB state in {path} read-only ({first})") from None

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self._db.get(keys) if keys else []

    def scan(self, start: bytes, end: bytes, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        if reverse:
            raise NotImplementedError("explain scans forwards only")
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid() and iterator.key() < end:
            yield iterator.key(), iterator.value()
            iterator.next()

    def write(self, changes: Any) -> None:
        raise StateError("explain opens the state read-only")

    def delete_range(self, start: bytes, end: bytes) -> None:
        raise StateError("explain opens the state read-only")

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            shutil.rmtree(self._secondary, ignore_errors=True)


class StateFolder:
    """The RocksDB stores of a replay's or a live job's state folder (one process or a cluster), read-only."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        layout_file = self.state_dir / "layout.json"
        if not self.state_dir.is_dir():
            raise ExplainError(f"state folder not found: {self.state_dir}")
        try:
            self.layout: dict[str, Any] = orjson.loads(layout_file.read_bytes())
        except FileNotFoundError:
            raise ExplainError(f"{self.state_dir} is not an omnitrigger state folder (no layout.json)") from None
        except (OSError, orjson.JSONDecodeError) as error:
            raise ExplainError(f"state folder {self.state_dir} has an unreadable layout.json ({error})") from None
        self.rule_shards = int(self.layout.get("rule_shards", 16))
        # One RocksDB store a shard key, rocksdb/sequencer, rocksdb/rules-0000, ... (one process or a one-machine
        # cluster; a process of a cluster over machines has those of the keys it ran).
        folders = [folder for folder in sorted(self.state_dir.glob("rocksdb/*")) if (folder / "CURRENT").is_file()]
        if not folders:
            raise ExplainError(f"state folder {self.state_dir} holds no RocksDB state yet")
        self.stores: list[ReadOnlyStore] = []
        try:
            for folder in folders:
                self.stores.append(ReadOnlyStore(folder))
        except BaseException:
            self.close()
            raise

    def shards(self, namespace: str, shard: int) -> list[ShardState]:
        """The views of (namespace, shard) in every store where that shard has committed (generation 1 on):
        one store, the shard key's."""
        views = [ShardState(store, namespace, shard) for store in self.stores]
        return [view for view in views if view.generation > 0]

    def check_pii_key(self, key: bytes) -> None:
        """Hashed identifiers are key-specific: a lookup with another key would find nobody, silently."""
        from omnitrigger.runner.state_folder import pii_key_id

        made = self.layout.get("pii_key_id")
        if made is not None and made != pii_key_id(key):
            raise ExplainError(f"state folder {self.state_dir} was made with another OMNITRIGGER_PII_KEY (key id "
                               f"{made}, this one is {pii_key_id(key)}): email and phone cannot be looked up")

    def close(self) -> None:
        for store in self.stores:
            store.close()
        self.stores = []


def parse_identifier(text: str) -> tuple[str, str]:
    """`TYPE:VALUE` -> (type, value); ValueError with a one-line message if the type is unknown."""
    kind, colon, value = text.partition(":")
    kind = kind.strip()
    if not colon or not value:
        raise ValueError(f"expected TYPE:VALUE (types: {', '.join(IDENTIFIER_TYPES)}), got {text!r}")
    if kind not in IDENTIFIER_TYPES:
        raise ValueError(f"unknown identifier type {kind!r} (types: {', '.join(IDENTIFIER_TYPES)})")
    return kind, value


def stored_value(kind: str, value: str, config: Config) -> str:
    """The value as the state holds it: email and phone normalised and keyed-hashed (omnitrigger/pii.py),
    unless given already hashed (32 hex digits, as a trigger's recipient shows them)."""
    if kind not in PII_TYPES:
        return value
    if _HASHED.match(value):
        return value
    hashed = Pseudonymizer(key_from_environment(), config.default_country_code).protect_value(kind, value)
    if not isinstance(hashed, str) or not _HASHED.match(hashed):
        raise ExplainError(f"the {kind} given cannot be an {kind} (the pipeline keeps such a value as invalid; it "
                           "never links)")
    return hashed


def _clock(view: ShardState | None) -> int:
    return saved_clock(view) if view is not None else 0


def _first(views: list[ShardState]) -> ShardState | None:
    return views[0] if views else None


def explain(state_dir: Path, *, customer: str | None = None, identifier: tuple[str, str] | None = None,
            product: str | None = None, out_dir: Path | None = None, config: Config | None = None) -> Explanation:
    """Read `state_dir` (read-only) and, if given, `out_dir`, for one customer (by id or by an identifier)."""
    if (customer is None) == (identifier is None):
        raise ValueError("give exactly one of customer and identifier")
    config = config or Config()
    folder = StateFolder(state_dir)
    try:
        identity = _first(folder.shards("identity", 0))
        identity_now = _clock(identity)
        found_by = None
        if identifier is not None:
            kind, value = identifier
            if kind in PII_TYPES and not _HASHED.match(value):
                folder.check_pii_key(key_from_environment())
            value = stored_value(kind, value, config)
            found_by = {"type": kind, "value": value}
            raw = identity.get(b"i" + _TYPE_CODE[kind] + value.encode(), identity_now) if identity else None
            if raw is None:
                shown, why = (value, "never seen, or expired") if kind not in PII_TYPES else (
                    f"(hashed {value})", "never seen, expired, or hashed with another key")
                raise ExplainError(f"identifier {kind} {shown} not found in state folder {state_dir} ({why})")
            customer = orjson.loads(raw)[0]
        assert customer is not None
        shard = shard_of(customer, folder.rule_shards)
        rules = folder.shards("rules", shard)
        rules_view = _first(rules)
        rules_now = _clock(rules_view)
        result = Explanation(customer_id=customer, state_dir=str(state_dir), found_by=found_by,
                             identity_clock=iso(identity_now) if identity_now else None,
                             rules_clock=iso(rules_now) if rules_now else None, rules_shard=shard, product=product)
        found = False
        if identity is not None:
            found |= _read_identity(identity, customer, identity_now, result)
        history = _first(folder.shards("history", 0))
        if history is not None:
            raw = history.get(b"k" + customer.encode(), _clock(history))
            if raw:
                result.consent_ledger = _consents(orjson.loads(raw))
                found = True
        for view in rules:
            found |= _read_rules(view, customer, rules_now, config, product, result)
    finally:
        folder.close()
    result.holdouts = holdout_assignments(customer, config)
    if out_dir is not None:
        found |= _read_outputs(Path(out_dir), customer, product, result)
    if not found:
        raise ExplainError(f"customer {customer} not found in state folder {state_dir}"
                           + (f" or in {out_dir}" if out_dir is not None else "")
                           + " (merged into another customer, expired, or never seen)")
    return result


def _read_identity(view: ShardState, customer: str, now_ms: int, result: Explanation) -> bool:
    """The customer's identifiers: the `c` record, each checked against its `i` key (still this customer's)."""
    raw = view.get(b"c" + customer.encode(), now_ms)
    if raw is None:
        return False
    for kind, value in orjson.loads(raw)["ids"]:
        entry = view.get(b"i" + _TYPE_CODE[kind] + value.encode(), now_ms)
        if entry is None:
            continue
        owner, last_seen = orjson.loads(entry)
        if owner == customer:
            result.identifiers.append({"type": kind, "value": value, "last_seen": iso(last_seen),
                                       "last_seen_ms": last_seen})
    result.identifiers.sort(key=lambda i: (IDENTIFIER_TYPES.index(i["type"]), i["value"]))
    return True


def holdout_assignments(customer: str, config: Config) -> list[dict[str, Any]]:
    """Whether `customer` is held out of each rule that has a control group (as the rules host decides it)."""
    from omnitrigger.operators.rules.host import held_out, holdout_share

    out = []
    for rule in configured_rules(config):
        share = holdout_share(rule, config)
        if share > 0:
            out.append({"rule": rule.name, "share": share, "held_out": held_out(rule, customer, share)})
    return out


def _consents(raw: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    return {channel: {"status": status, "ts": iso(ts_ms), "ts_ms": ts_ms}
            for channel, (status, ts_ms) in sorted(raw.items())}


def _read_rules(view: ShardState, customer: str, now_ms: int, config: Config, product: str | None,
                result: Explanation) -> bool:
    """Pending deadlines, consents and caps of `customer`, from its document in its rules shard (layouts:
    operators/rules/host.py, operators/policy.py)."""
    doc = customer_document(view, customer)
    if doc is None:
        return False
    for rule_of in configured_rules(config):
        if rule_of.code is None:
            continue
        for subject, (due, set_ms, evidence, _) in sorted(doc.get(pending_section(rule_of), {}).items()):
            subject = orjson.loads(subject)
            if product is not None and str(subject) != product:
                continue
            result.pending.append({"rule": rule_of.name, "product": subject, "due": iso(due), "due_ms": due,
                                   "fires_after": iso(due + int(config.purchase_grace_s * 1000)),
                                   "set_at": iso(set_ms), "set_ms": set_ms, "evidence": evidence})
    result.pending.sort(key=lambda p: (p["due_ms"], p["rule"], str(p["product"])))
    consents = consents_of(doc)
    if consents:
        result.consents = _consents(consents)
    fires = doc.get(FIRES, {}).get("")
    window_ms = int(config.customer_cap_window_s * 1000)
    if fires:
        recent = sorted(t for t in fires[0] if t > now_ms - window_ms)
        if recent:
            limit = config.max_triggers_per_customer
            capped = len(recent) >= limit
            result.customer_cap = {
                "triggers_in_window": len(recent), "limit": limit, "window": _duration(window_ms),
                "trigger_times": [iso(t) for t in recent], "capped": capped,
                # the cap lifts when the oldest trigger that keeps the count at the limit leaves the window
                "until": iso(recent[len(recent) - limit] + window_ms) if capped else None}
    product_window_ms = int(config.product_cap_window_s * 1000)
    for subject, (last, _) in sorted(doc.get(PRODUCT_CAPS, {}).items()):
        rule, capped_product = orjson.loads(subject)
        if product is not None and capped_product != product:
            continue
        if last > now_ms - product_window_ms:
            result.product_caps.append({"rule": rule, "product": capped_product, "last": iso(last), "last_ms": last,
                                        "until": iso(last + product_window_ms)})
    return True


def _duration(ms: int) -> str:
    """As the config writes it: "24h", "7d", "90m"."""
    if ms and ms % 86_400_000 == 0 and ms > 2 * 86_400_000:
        return f"{ms // 86_400_000}d"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _read_outputs(out_dir: Path, customer: str, product: str | None, result: Explanation) -> bool:
    """The customer's records in the output files (streamed: a byte check before any JSON is decoded)."""
    if not out_dir.is_dir():
        raise ExplainError(f"output folder not found: {out_dir}")
    present = {name: out_dir / file for name, file in OUTPUT_FILES.items() if (out_dir / file).is_file()}
    if "triggers" not in present and "suppressed" not in present:
        raise ExplainError(f"output folder {out_dir} has neither {OUTPUT_FILES['triggers']} nor "
                           f"{OUTPUT_FILES['suppressed']}")
    result.out_dir = str(out_dir)
    needle = customer.encode()
    found = False
    for name, path in present.items():
        with path.open("rb") as handle:
            for line in handle:
                if needle not in line:
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ExplainError(f"{path} is not JSON lines (a line does not parse)") from None
                if record.get("customer_id") != customer:
                    continue
                found = True
                if product is not None and product not in [str(p) for p in record.get("products", [])]:
                    continue
                if name == "triggers":
                    result.triggers.append(record)
                elif name == "retractions":
                    result.retractions.append(record)
                elif record.get("reason") in CANCEL_REASONS:
                    result.cancellations.append(record)
                else:
                    result.suppressed.append(record)
    return found

