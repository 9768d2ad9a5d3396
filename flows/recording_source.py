"""Bytewax source over a recording folder: one part a stream, micro-batches, each part resumable by its position.

A stream is a recorded file, or one Kafka partition of a file whose kcat envelopes name several
(omnitrigger/io/recording.py `recording_streams`). Each part decodes, checks and hashes its own lines and stamps
every record with its order key (`StreamReader`); the sequencer merges the parts back into the recording's one
order (operators/input_merge.py), so the outputs do not depend on which part reads when, or where. Each
Bytewax item is a whole micro-batch (`PartBatch`), because Bytewax's per-item cost dominates otherwise
(docs/design.md#bytewax-per-item-cost: 106k items/s one at a time, millions carried in batches).

The parts of one process take turns (state/ordering.py `ReadTurns`): a part reads a batch only while its next
record comes first among theirs, so the merge holds about a batch a part. With `stop_after` a part reads only
up to the next record of another part, so the parts together send exactly the first `stop_after` records of
the merged order (counted from the recording's start, as a resumed replay's seqs are), and the merge releases
them all; that holds because the parts share one process and its count. In a cluster the parts run on process 0
for now (flows/cluster_worker.py `PinnedSource`): every process would need the recording to read its own, and
nothing bounds how far a part on another process runs ahead of the merge (docs/scaling.md, "Measured
2026-12-07, eleventh step").
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
from omnitrigger.io.recording import LineDecoder, StreamLayout, StreamReader, bytes_read, recording_streams
from omnitrigger.records import PartBatch
from omnitrigger.schemas import Contracts
from omnitrigger.state.ordering import FINISHED, ReadTurns

log = logging.getLogger("omnitrigger.replay")


class _ProcessParts:
    """What the parts of one process share: one decoder, their turns, the records they sent, the progress line."""

    def __init__(self, config: Config, stop_after: int | None, progress: bool) -> None:
        contracts = Contracts(max_future_ms=int(config.max_future_s * 1000), max_depth=config.max_depth)
        self.decoder = LineDecoder(contracts, config.max_record_bytes, config.reference_time_ms,
                                   Pseudonymizer(key_from_environment(), config.default_country_code),
                                   int(config.max_clock_skew_s * 1000))
        self.max_future_ms = contracts.max_future_ms
        self.turns = ReadTurns()
        self.stop_after = stop_after
        self.sent = 0  # records the parts of this process have sent, since the recording's start
        self.streams: list[StreamReader] = []
        self._sizes: dict[str, int] = {}  # each file's size, by name, for the progress line
        self.progress = progress
        self.progress_interval_s = config.progress_interval_s
        self._started = time.monotonic()
        self._last_report = self._started
        self._sent_at_start = 0
        self._ended = 0

    def add(self, stream: StreamReader) -> None:
        self.streams.append(stream)
        self._sizes[stream.layout.path.name] = stream.layout.path.stat().st_size
        self.sent += stream.position()[5]
        self._sent_at_start = self.sent
        self.turns.update(stream.index, None if stream.head is None else stream.head[0])

    def stopped(self) -> bool:
        return self.stop_after is not None and self.sent >= self.stop_after

    def ended(self) -> None:
        self._ended += 1
        if self._ended == len(self.streams):
            self.report(final=True)

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.progress or (not final and now - self._last_report < self.progress_interval_s):
            return
        self._last_report = now
        done = self.sent - self._sent_at_start
        rate = done / max(now - self._started, 1e-9)
        percent = 100.0 * bytes_read(self.streams, self._sizes) / max(sum(self._sizes.values()), 1)
        print(f"\rreplay: {done:,} records read ({percent:5.1f}% of the recording), {rate:,.0f} records/s",
              end="\n" if final else "", file=sys.stderr, flush=True)


class _StreamPart(StatefulSourcePartition):
    """One stream of the recording as a Bytewax source part: its records in order key, with its frontier.

    Every batch it returns is one `PartBatch`. It reads only on its turn (`ReadTurns`), but tells the merge
    its frontier once before it first waits, and once before it stops early (`stop_after`, or the runner's
    stop): a part the merge has not heard from holds back every other part's records.
    """

    def __init__(self, stream: StreamReader, parts: int, shared: _ProcessParts, batch_size: int) -> None:
        self.stream = stream
        self.parts = parts
        self.shared = shared
        self.batch_size = batch_size
        self._finished = False  # its last batch, with the FINISHED frontier, is out
        self._ended = False
        self._announced = False  # its frontier has reached the merge at least once

    def next_batch(self) -> list[PartBatch]:
        stream, shared, index = self.stream, self.shared, self.stream.index
        if self._finished or (shared.stopped() and self._announced):
            self._end()
        if shared.stopped():
            return self._frontier_only()
        if stream.head is not None and not shared.turns.is_lowest(index):
            # another part of this process has the earlier records: its turn
            return [] if self._announced else self._frontier_only()
        records: list[tuple] = []
        if stream.head is not None:
            if shared.stop_after is None:
                records = stream.read(self.batch_size)
            else:  # exactly the merged order's first stop_after: only up to the other parts' next record
                records = stream.read(min(self.batch_size, shared.stop_after - shared.sent),
                                      shared.turns.limit_for(index))
            shared.sent += len(records)
            shared.turns.update(index, None if stream.head is None else stream.head[0])
        frontier = stream.frontier()
        self._finished = frontier == FINISHED
        self._announced = True
        shared.report()
        return [PartBatch(index, self.parts, frontier, records)]

    def _frontier_only(self) -> list[PartBatch]:
        self._announced = True
        return [PartBatch(self.stream.index, self.parts, self.stream.frontier(), [])]

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.shared.turns.update(self.stream.index, None)
            self.shared.ended()
        raise StopIteration()

    def snapshot(self) -> Any:
        return self.stream.position()

    def close(self) -> None:
        self.stream.close()


class RecordingSource(FixedPartitionedSource):
    """Reads `recording_dir`, one part a stream; `stop_after` ends the replay after that many records of the
    merged order (counted from the recording's start)."""

    def __init__(self, recording_dir: Path, config: Config, stop_after: int | None = None,
                 progress: bool = False) -> None:
        self.recording_dir = Path(recording_dir)
        self.config = config
        self.stop_after = stop_after
        self.progress = progress
        self._layout: list[StreamLayout] | None = None
        self._shared: _ProcessParts | None = None

    def layout(self) -> list[StreamLayout]:
        if self._layout is None:
            self._layout = recording_streams(self.recording_dir, self.config.kafka_topic_prefix,
                                             dict(self.config.kafka_input_topics))
        return self._layout

    def list_parts(self) -> list[str]:
        return [stream.key for stream in self.layout()]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StreamPart:
        layout = self.layout()
        index = next(i for i, stream in enumerate(layout) if stream.key == for_part)
        if self._shared is None:
            self._shared = _ProcessParts(self.config, self.stop_after, self.progress)
        shared = self._shared
        stream = StreamReader(layout[index], index, shared.decoder, shared.max_future_ms, resume_state)
        shared.add(stream)
        return _StreamPart(stream, len(layout), shared, self.config.batch_size)
