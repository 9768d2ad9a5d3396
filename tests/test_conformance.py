"""The conformance suite every operator passes (in the spirit of river's estimator checks).

For each operator in `omnitrigger.operators.OPERATORS`, on the demo's synthetic recording (always there:
no ../shared needed to check a new operator) and on its real-data case below; and for the rules stage with
every rule kind switched on (`JOURNEYS`, the synthetic `journeys` case):
  * the logic alone gives the same output for the same input across two runs and across batch sizes;
  * a shard rolled back to its last snapshot and fed the rest gives the uninterrupted output (crash safety);
  * through the Bytewax flow, outputs are byte-identical across batch sizes and between one process and a
    2-process cluster on 127.0.0.1.

Adding an operator means adding a case here; `test_every_operator_has_a_case` fails until you do. A case
names the operators that must run before the one under test (history needs identity's customer ids); they
run in front of it in every check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import orjson
import pytest

from conftest import replay
from omnitrigger.config import Config
from omnitrigger.operators import OPERATORS, StageOperator
from omnitrigger.io.recording import RecordingReader
from omnitrigger.records import Emitted, Event
from omnitrigger.schemas import ContractViolation, Contracts, parse_event_time
from omnitrigger.state import RocksDBStore, ShardState
from geolife import load_rows, ping_bodies, place_stores, write_stores_csv
from recordings import identity_recording, omnichannel_recording, receipts_with_redeliveries, taobao_web_events
from conftest import write_lines

CONFIG = Config(dedup_retention_s=30 * 86_400)


def dedup_case(real_data: Path, recording: Path) -> None:
    receipts_with_redeliveries(real_data, recording, count=400, redelivered=60)
    events = taobao_web_events(real_data, limit=800)
    write_lines(recording / "web.events.jsonl", events + events[100:160])


def identity_case(real_data: Path, recording: Path) -> None:
    identity_recording(real_data, recording, users=40, receipts=200)


def visits_case(real_data: Path, recording: Path) -> None:
    """GeoLife user 000's real pings (3,634, some marked inaccurate or cell) and stores where they dwell: 27 visits."""
    rows = load_rows(real_data, users=("000",))
    write_lines(recording / "geo.pings.jsonl", ping_bodies(rows))
    write_stores_csv(recording.parent / CASE_STORES, place_stores(rows, count=6))


def omnichannel_case(real_data: Path, recording: Path) -> None:
    """Clickstream, receipts, links, consents and GPS traces of 40 shoppers, stores where the traces dwell."""
    _, stores = omnichannel_recording(real_data, recording, users=40, receipts=200, trace_days=1)
    write_stores_csv(recording.parent / CASE_STORES, stores)


#: A case that needs stores of its own writes them here, next to its recording folder.
CASE_STORES = "case-stores.csv"


def case_config(recording: Path) -> Config:
    stores = recording.parent / CASE_STORES
    return CONFIG.with_overrides(stores_file=str(stores)) if stores.exists() else CONFIG


def case_stores(recording: Path) -> dict[str, Path]:
    stores = recording.parent / CASE_STORES
    return {"stores": stores} if stores.exists() else {}


class Case(NamedTuple):
    build: Callable[[Path, Path], None]  # (real_data, recording folder) -> writes the recording
    upstream: tuple[str, ...] = ()  # operators that run before the one under test


CASES: dict[str, Case] = {
    "dedup": Case(dedup_case),
    "identity": Case(identity_case),
    "history": Case(identity_case, upstream=("identity",)),
    "visits": Case(visits_case),
    "clock": Case(identity_case),
    "rules": Case(omnichannel_case, upstream=("identity", "visits", "history", "clock")),
}

OPERATOR_NAMES = sorted(OPERATORS)


def test_every_operator_has_a_case() -> None:
    assert set(CASES) == set(OPERATORS)


@pytest.fixture(params=OPERATOR_NAMES)
def case(request, tmp_path: Path, real_data: Path) -> tuple[str, Path]:
    recording = tmp_path / "recording"
    CASES[request.param].build(real_data, recording)
    return request.param, recording


def read_all(recording: Path) -> list[Event]:
    reader = RecordingReader(recording, Contracts(), reference_ms=2_000_000_000_000)
    items = reader.read_batch(10**9)
    reader.close()
    return [item for item in items if type(item) is Event]


def chain_of(name: str) -> list[str]:
    return [*CASES[name].upstream, name]


def run_logic(name: str, events: list[Event], store_path: Path, batch_size: int,
              crash_at: int | None = None, config: Config = CONFIG) -> tuple[list[Event], list[Emitted]]:
    """Feed events in batches through the case's operators, committing after each batch like an epoch;
    optionally lose uncommitted work at `crash_at`. Returns what the last operator passed on and what all emitted."""
    store = RocksDBStore(store_path)
    names = chain_of(name)

    def build(generations: list[int] | None) -> tuple[list[ShardState], list[StageOperator]]:
        states = [ShardState(store, OPERATORS[n].name, 0) for n in names]
        if generations is not None:
            for state, generation in zip(states, generations):
                state.rollback_to(generation)
        return states, [OPERATORS[n](state, config) for n, state in zip(names, states)]

    states, operators = build(None)
    passed: list[Event] = []
    emitted: list[Emitted] = []
    position = 0
    while position < len(events):
        batch = events[position:position + batch_size]
        batch_emitted: list[Emitted] = []
        for operator in operators:
            result = operator.on_events(batch)
            batch, batch_emitted = result.events, batch_emitted + result.emitted
        if crash_at is not None and position <= crash_at < position + batch_size:
            # The batch was processed but never snapshotted: roll back and rebuild, as a resume does.
            states, operators = build([state.generation for state in states])
            crash_at = None
            continue
        passed += batch
        emitted += batch_emitted
        for state in states:
            state.commit()
        position += batch_size
    for operator in operators:
        emitted += operator.on_eof(len(events)).emitted
    store.close()
    # Output files hold each stream sorted by sort key (omnitrigger/io/outputs.py): that order is the contract,
    # not the order records left the operators. Two different records under one key would lose one of them.
    by_key = {(e.stream, e.sort_key): e for e in emitted}
    assert len(by_key) == len({(e.stream, e.sort_key, repr(e.record)) for e in emitted}), "a sort key is reused"
    return passed, [by_key[key] for key in sorted(by_key)]


def test_logic_is_deterministic_across_runs_and_batch_sizes(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    events = read_all(recording)
    config = case_config(recording)
    reference = run_logic(name, events, tmp_path / "db-ref", batch_size=100, config=config)
    upstream = (run_logic(CASES[name].upstream[-1], events, tmp_path / "db-up", 100, config=config)
                if CASES[name].upstream else None)
    assert reference[0], "the case must pass some events on"
    assert reference[1] or reference != upstream, "the operator must do something: emit records or change events"
    assert run_logic(name, events, tmp_path / "db-again", batch_size=100, config=config) == reference
    for batch_size in (1, 7, 1000, len(events)):
        assert run_logic(name, events, tmp_path / f"db-{batch_size}", batch_size, config=config) == reference


def test_logic_recovers_from_lost_uncommitted_work(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    events = read_all(recording)
    config = case_config(recording)
    reference = run_logic(name, events, tmp_path / "db-ref", batch_size=50, config=config)
    for crash_at in (0, len(events) // 3, len(events) - 1):
        assert run_logic(name, events, tmp_path / f"db-crash-{crash_at}", 50, crash_at, config=config) == reference


def test_flow_output_is_identical_across_batch_sizes(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    _, reference = replay(tmp_path, recording, name="b1000", operators=tuple(chain_of(name)), config=CONFIG,
                          **case_stores(recording))
    assert reference["events"], "the case must produce events"
    _, small = replay(tmp_path, recording, name="b3", operators=tuple(chain_of(name)),
                      config=CONFIG.with_overrides(batch_size=3), **case_stores(recording))
    assert small == reference


# -- synthetic cases: the demo's generated recording, no ../shared needed ---------------------------------------

#: Every rule kind switched on: the rules a table declares, and each built-in kind once more.
JOURNEYS = (
    ("checkout_abandoned", (("after", "30m"), ("cancelled_by", ("purchase",)), ("kind", "abandonment"),
                            ("starts_on", ("begin_checkout", "add_to_cart")))),
    ("replenishment", (("kind", "replenishment"),)),
    ("welcome", (("kind", "welcome"),)),
    ("back_in_stock", (("kind", "back_in_stock"),)),
    ("store_visit_offer", (("min_stock", 1),)),
)


def demo_recording(folder: Path) -> Path:
    """The demo's recording (omnitrigger/demo/generator.py, seed 7) with its stores and a catalogue."""
    from omnitrigger.demo.generator import RecordingGenerator

    generator = RecordingGenerator(seed=7).generate()
    recording = folder / "recording"
    generator.write(recording)
    generator.write_stores(folder / CASE_STORES)
    (folder / "catalog.csv").write_text("product_id,category,repurchase_days\n" + "".join(
        f"{product},demo,\n" for product in generator.products) + ",demo,3\n")
    # Stock levels: every other product out of stock online and in the first store for the first half day.
    first = min(orjson.loads(line)["ts_ms"] for line in _events_of(recording / "web.events.jsonl"))
    store = generator_store(folder / CASE_STORES)
    write_lines(recording / "inventory.levels.jsonl", [
        {"event_id": f"s-{n}-{where}-{phase}", "ts": first + phase * 43_200_000 - 3_600_000, "store_id": where,
         "product_id": product, "qty": (0 if n % 2 == 0 else 7) if phase == 0 else 9}
        for phase in (0, 1) for n, product in enumerate(generator.products) for where in ("online", store)])
    return recording


def _events_of(path: Path) -> list[bytes]:
    """Each valid line's body with its event time, as JSON lines ({"ts_ms": ...})."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            body = orjson.loads(line)
            out.append(orjson.dumps({"ts_ms": parse_event_time(body["ts"])}))
        except (orjson.JSONDecodeError, ContractViolation, KeyError, TypeError):
            continue
    return out


def generator_store(stores_csv: Path) -> str:
    return stores_csv.read_text().splitlines()[1].split(",")[0]


def assert_conformant(name: str, recording: Path, tmp_path: Path, config: Config, rule: str | None = None) -> None:
    """The suite's checks for one operator (and its upstream) under `config`; with `rule`, that rule must
    have made some output on the way."""
    events = read_all(recording)
    config = config.with_overrides(stores_file=str(recording.parent / CASE_STORES))
    reference = run_logic(name, events, tmp_path / "db-ref", batch_size=100, config=config)
    assert reference[0], "the case must pass some events on"
    if rule is not None:
        assert any(e.record.get("rule") == rule for e in reference[1]), f"{rule} made no output on the case"
    for batch_size in (1, 7, len(events)):
        assert run_logic(name, events, tmp_path / f"db-{batch_size}", batch_size, config=config) == reference
    for crash_at in (0, len(events) // 2):
        assert run_logic(name, events, tmp_path / f"db-crash-{crash_at}", 50, crash_at, config=config) == reference
    stores = {"stores": recording.parent / CASE_STORES}
    _, big = replay(tmp_path, recording, name="flow-b1000", operators=tuple(chain_of(name)), config=config, **stores)
    _, small = replay(tmp_path, recording, name="flow-b3", operators=tuple(chain_of(name)),
                      config=config.with_overrides(batch_size=3), **stores)
    assert small == big


def journeys_config(folder: Path) -> Config:
    return CONFIG.with_overrides(rule_tables=JOURNEYS, catalog_file=str(folder / "catalog.csv"))


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_every_operator_is_conformant_on_the_synthetic_recording(name: str, tmp_path: Path) -> None:
    assert_conformant(name, demo_recording(tmp_path / "demo"), tmp_path, CONFIG)


@pytest.mark.parametrize("rule", [name for name, _ in JOURNEYS])
def test_every_rule_kind_is_conformant(rule: str, tmp_path: Path) -> None:
    recording = demo_recording(tmp_path / "demo")
    assert_conformant("rules", recording, tmp_path, journeys_config(recording.parent), rule=rule)


@pytest.mark.cluster
def test_flow_output_is_identical_on_a_two_process_cluster(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    _, single = replay(tmp_path, recording, name="one", operators=tuple(chain_of(name)), config=CONFIG,
                       **case_stores(recording))
    _, cluster = replay(tmp_path, recording, name="two", operators=tuple(chain_of(name)), config=CONFIG, processes=2,
                        **case_stores(recording))
    assert cluster == single
