"""Bytewax source over a recording folder: one partition, micro-batches, resumable by offset.

One partition on purpose: the merged event-time order is what makes a replay
deterministic, and it is produced in one place. Each Bytewax item is a whole
micro-batch (a list), because Bytewax's per-item cost dominates otherwise
(docs/design.md#bytewax-per-item-cost: 106k items/s one at a time, millions carried in batches).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from omnitrigger.config import Config
from omnitrigger.pii import Pseudonymizer, key_from_environment
from omnitrigger.recording import RecordingReader
from omnitrigger.schemas import Contracts

log = logging.getLogger("omnitrigger.replay")


class _RecordingPartition(StatefulSourcePartition):
    def __init__(self, recording_dir: Path, config: Config, resume_state: Any, stop_after: int | None,
                 progress: bool) -> None:
        self.reader = RecordingReader(
            recording_dir, Contracts(max_future_ms=int(config.max_future_s * 1000), max_depth=config.max_depth),
            max_record_bytes=config.max_record_bytes, reference_ms=config.reference_time_ms,
            position=resume_state, pseudonymizer=Pseudonymizer(key_from_environment(), config.default_country_code),
            max_clock_skew_ms=int(config.max_clock_skew_s * 1000), topic_prefix=config.kafka_topic_prefix,
            topic_overrides=dict(config.kafka_input_topics))
        self.batch_size = config.batch_size
        self.stop_at_seq = stop_after
        self.progress = progress
        self.progress_interval_s = config.progress_interval_s
        self._started = time.monotonic()
        self._first_seq = self.reader.next_seq
        self._last_report = self._started

    def next_batch(self) -> list[Any]:
        wanted = self.batch_size
        if self.stop_at_seq is not None:
            wanted = min(wanted, self.stop_at_seq - self.reader.next_seq)
        batch = self.reader.read_batch(wanted) if wanted > 0 else []
        if not batch:
            self._report(final=True)
            raise StopIteration()
        self._report()
        return [batch]

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.progress or (not final and now - self._last_report < self.progress_interval_s):
            return
        self._last_report = now
        done = self.reader.next_seq - self._first_seq
        rate = done / max(now - self._started, 1e-9)
        percent = 100.0 * self.reader.bytes_done() / max(self.reader.total_bytes, 1)
        print(f"\rreplay: {done:,} records read ({percent:5.1f}% of the recording), {rate:,.0f} records/s",
              end="\n" if final else "", file=sys.stderr, flush=True)

    def snapshot(self) -> Any:
        return self.reader.position()

    def close(self) -> None:
        self.reader.close()


class RecordingSource(FixedPartitionedSource):
    """Reads `recording_dir` in merged event-time order; `stop_after` ends the replay at that record."""

    def __init__(self, recording_dir: Path, config: Config, stop_after: int | None = None,
                 progress: bool = False) -> None:
        self.recording_dir = Path(recording_dir)
        self.config = config
        self.stop_after = stop_after
        self.progress = progress

    def list_parts(self) -> list[str]:
        return ["recording"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _RecordingPartition:
        return _RecordingPartition(self.recording_dir, self.config, resume_state, self.stop_after, self.progress)
