"""The conformance suite every operator passes (in the spirit of river's estimator checks).

For each operator in `omnitrigger.operators.OPERATORS` and its case below:
  * the logic alone gives the same output for the same input across two runs and across batch sizes;
  * a shard rolled back to its last snapshot and fed the rest gives the uninterrupted output (crash safety);
  * through the Bytewax flow, outputs are byte-identical across batch sizes and between one process and a
    2-process cluster on 127.0.0.1.

Adding an operator means adding a case here; `test_every_operator_has_a_case` fails until you do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conftest import replay
from omnitrigger.config import Config
from omnitrigger.operators import OPERATORS, StageOperator
from omnitrigger.recording import RecordingReader
from omnitrigger.records import Emitted, Event
from omnitrigger.schemas import Contracts
from omnitrigger.state import RocksDBStore, ShardState
from recordings import receipts_with_redeliveries, taobao_web_events
from conftest import write_lines

CONFIG = Config(dedup_retention_s=30 * 86_400)


def dedup_case(real_data: Path, recording: Path) -> None:
    receipts_with_redeliveries(real_data, recording, count=400, redelivered=60)
    events = taobao_web_events(real_data, limit=800)
    write_lines(recording / "web.events.jsonl", events + events[100:160])


CASES: dict[str, Callable[[Path, Path], None]] = {
    "dedup": dedup_case,
}

OPERATOR_NAMES = sorted(OPERATORS)


def test_every_operator_has_a_case() -> None:
    assert set(CASES) == set(OPERATORS)


@pytest.fixture(params=OPERATOR_NAMES)
def case(request, tmp_path: Path, real_data: Path) -> tuple[str, Path]:
    recording = tmp_path / "recording"
    CASES[request.param](real_data, recording)
    return request.param, recording


def read_all(recording: Path) -> list[Event]:
    reader = RecordingReader(recording, Contracts(), reference_ms=2_000_000_000_000)
    items = reader.read_batch(10**9)
    reader.close()
    return [item for item in items if type(item) is Event]


def run_logic(operator_type: type[StageOperator], events: list[Event], store_path: Path, batch_size: int,
              crash_at: int | None = None) -> tuple[list[int], list[Emitted]]:
    """Feed events in batches, committing after each batch; optionally lose uncommitted work at `crash_at`."""
    store = RocksDBStore(store_path)
    state = ShardState(store, operator_type.name, 0)
    operator = operator_type(state, CONFIG)
    passed: list[int] = []
    emitted: list[Emitted] = []
    position = 0
    while position < len(events):
        batch = events[position:position + batch_size]
        result = operator.on_events(batch)
        if crash_at is not None and position <= crash_at < position + batch_size:
            # The batch was processed but never snapshotted: roll back and rebuild, as a resume does.
            committed = state.generation
            state = ShardState(store, operator_type.name, 0)
            state.rollback_to(committed)
            operator = operator_type(state, CONFIG)
            crash_at = None
            continue
        passed += [event.seq for event in result.events]
        emitted += result.emitted
        state.commit()
        position += batch_size
    store.close()
    return passed, emitted


def test_logic_is_deterministic_across_runs_and_batch_sizes(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    events = read_all(recording)
    reference = run_logic(OPERATORS[name], events, tmp_path / "db-ref", batch_size=100)
    assert reference[0] and reference[1], "the case must pass some events on and emit some records"
    assert run_logic(OPERATORS[name], events, tmp_path / "db-again", batch_size=100) == reference
    for batch_size in (1, 7, 1000, len(events)):
        assert run_logic(OPERATORS[name], events, tmp_path / f"db-{batch_size}", batch_size) == reference


def test_logic_recovers_from_lost_uncommitted_work(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    events = read_all(recording)
    reference = run_logic(OPERATORS[name], events, tmp_path / "db-ref", batch_size=50)
    for crash_at in (0, len(events) // 3, len(events) - 1):
        assert run_logic(OPERATORS[name], events, tmp_path / f"db-crash-{crash_at}", 50, crash_at) == reference


def test_flow_output_is_identical_across_batch_sizes(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    _, reference = replay(tmp_path, recording, name="b1000", operators=(name,), config=CONFIG)
    assert reference["events"], "the case must produce events"
    _, small = replay(tmp_path, recording, name="b3", operators=(name,),
                      config=CONFIG.with_overrides(batch_size=3))
    assert small == reference


@pytest.mark.cluster
def test_flow_output_is_identical_on_a_two_process_cluster(case: tuple[str, Path], tmp_path: Path) -> None:
    name, recording = case
    _, single = replay(tmp_path, recording, name="one", operators=(name,), config=CONFIG)
    _, cluster = replay(tmp_path, recording, name="two", operators=(name,), config=CONFIG, processes=2)
    assert cluster == single
