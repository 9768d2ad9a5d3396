"""Step 4 of a replay: the outputs finished, and what the run found summed up.

Once the flow has ended (its input read to the end, or stopped at a snapshot), process 0's
parts/ holds every output record in checked part files (flows/part_file_sink.py). `finish_outputs`
merges them, stream by stream, into the output files (all written to temporary files and renamed
into place at the end: omnitrigger/io/outputs.py), writes --identities from the identity state, and
returns the `ReplaySummary` the CLI prints. A cluster's other processes write nothing: `ProcessDone`.
A live run has no such step: its outputs are on the output topics as it runs.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from omnitrigger.operators.stage_chain import STATS, merge_run_totals
from omnitrigger.io.outputs import AtomicFile, OutputFiles, Parts, output_error
from omnitrigger.records import CONVERSIONS, REFUSED_LINKS, RETRACTIONS, SUPPRESSED, TRIGGERS, VISITS


@dataclass
class ReplaySummary:
    read_by_topic: dict[str, int]
    dead_letters_by_reason: dict[str, int]
    duplicates_by_topic: dict[str, int]
    triggers_by_rule: dict[str, int]
    suppressed_by_reason: dict[str, int]
    refused_links_by_reason: dict[str, int]
    visits: int
    late_pings: int
    identifiers: int
    customers: int
    records_this_run: int
    seconds: float
    retractions_by_rule: dict[str, int] = field(default_factory=dict)
    #: identifier values ignored as blank or blocked (identity's run totals), by type
    ignored_identifiers: dict[str, int] = field(default_factory=dict)
    #: confirmed visits not written because the customer had not allowed location processing
    visits_without_location_consent: int = 0
    returns: int = 0
    #: purchases of messaged products within the conversion window, by arm ("treated", "holdout")
    conversions_by_arm: dict[str, int] = field(default_factory=dict)

    @property
    def records_read(self) -> int:
        return sum(self.read_by_topic.values())

    def lines(self) -> list[str]:
        rate = self.records_this_run / self.seconds if self.seconds > 0 else 0.0
        out = [f"records read: {self.records_read:,}"]
        out += [f"  {topic}: {count:,}" for topic, count in self.read_by_topic.items()]
        out.append(f"dead letters: {sum(self.dead_letters_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.dead_letters_by_reason.items()]
        out.append(f"duplicates dropped: {sum(self.duplicates_by_topic.values()):,}")
        out += [f"  {topic}: {count:,}" for topic, count in self.duplicates_by_topic.items()]
        out.append(f"store visits: {self.visits:,} (late pings dropped: {self.late_pings:,}; without location "
                   f"consent, not written: {self.visits_without_location_consent:,})")
        out.append(f"identifiers: {self.identifiers:,} in {self.customers:,} customers")
        if self.ignored_identifiers:
            out.append(f"blank or blocked identifier values ignored: {sum(self.ignored_identifiers.values()):,}")
            out += [f"  {kind}: {count:,}" for kind, count in self.ignored_identifiers.items()]
        out.append(f"returns (cancel nothing): {self.returns:,}")
        out.append(f"links refused: {sum(self.refused_links_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.refused_links_by_reason.items()]
        out.append(f"triggers: {sum(self.triggers_by_rule.values()):,}")
        out += [f"  {rule}: {count:,}" for rule, count in self.triggers_by_rule.items()]
        out.append(f"suppressed: {sum(self.suppressed_by_reason.values()):,}")
        out += [f"  {reason}: {count:,}" for reason, count in self.suppressed_by_reason.items()]
        out.append(f"retracted (bought before their time): {sum(self.retractions_by_rule.values()):,}")
        out += [f"  {rule}: {count:,}" for rule, count in self.retractions_by_rule.items()]
        out.append(f"conversions (bought within the window after a message): {sum(self.conversions_by_arm.values()):,}")
        out += [f"  {arm}: {count:,}" for arm, count in self.conversions_by_arm.items()]
        out.append(f"events/s: {rate:,.0f} ({self.records_this_run:,} records in {self.seconds:.2f} s this run)")
        return out



@dataclass
class ProcessDone:
    """What a process of a cluster other than 0 reports: process 0 gathers the outputs and writes the summary."""

    role: str
    seconds: float

    def lines(self) -> list[str]:
        return [f"{self.role}: done in {self.seconds:.2f} s; process 0 writes the outputs and the summary"]



def _final_visits(lines: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
    """Visits still open at the end are written at each end of input (a stopped and resumed replay has
    several); keep the visit's real end if it came later, else its last "open" record. Two passes over the
    merged visits (`lines()` gives them again), holding only visit ids."""
    ended: set[str] = set()
    last_open: dict[str, int] = {}
    for n, line in enumerate(lines()):
        visit = orjson.loads(line)
        if visit.get("ended_by") != "open":
            ended.add(visit["visit_id"])
        else:
            last_open[visit["visit_id"]] = n
    for n, line in enumerate(lines()):
        visit = orjson.loads(line)
        if visit.get("ended_by") != "open" or (visit["visit_id"] not in ended and last_open[visit["visit_id"]] == n):
            yield line


def _write_identities(rocksdb_dir: Path, path: Path | None, files: OutputFiles | None = None) -> tuple[int, int]:
    """`--identities`: every live identifier and its customer, read from the finished run's identity state
    (streamed, so ten million identifiers never sit in memory); returns (identifiers, customers).

    The file is written through `files` (renamed into place with the other outputs), or alone, atomically."""
    from omnitrigger.operators.identity import Identity, identities
    from omnitrigger.runner.state_folder import SEQUENCER_STORE
    from omnitrigger.state import RocksDBStore, ShardState

    count, customers = 0, set()
    own = files is None and path is not None
    files = OutputFiles() if own else files
    target: AtomicFile | None = files.open(Path(path)) if path is not None and files is not None else None
    try:
        sequencer = rocksdb_dir / SEQUENCER_STORE  # the sequencer key's store holds the identity state
        for folder in [sequencer] if (sequencer / "CURRENT").is_file() else []:
            store = RocksDBStore(folder)
            try:
                for record in identities(ShardState(store, Identity.name, 0)):
                    count += 1
                    customers.add(record["customer_id"])
                    if target is not None:
                        try:
                            target.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
                        except OSError as error:
                            raise output_error(error, target.path) from None
            finally:
                store.close()
        if own and files is not None:
            files.commit()
    finally:
        if own and files is not None:
            files.discard()
    return count, len(customers)


#: The field each counted stream's summary is by.
_COUNTED = {TRIGGERS: "rule", SUPPRESSED: "reason", REFUSED_LINKS: "reason", RETRACTIONS: "rule", CONVERSIONS: "arm"}


def finish_outputs(outputs: dict[str, Path | None], identities: Path | None, parts_dir: Path, before: dict[str, Any],
                   seconds: float) -> ReplaySummary:
    """Merge the checked part files into the output files, by stream (`outputs`: the path of each, None for one
    only counted), and `identities`, all renamed into place at the end, and sum up; `before` is the run
    totals in the part files before this run (a resumed replay counts only what it read)."""
    parts = Parts(parts_dir, work_dir=parts_dir.parent)
    stats = merge_run_totals(parts.loaded(STATS))
    counts: dict[str, Counter] = {}
    written: dict[str, int] = {}
    with OutputFiles() as files:
        for stream, path in outputs.items():
            if path is None and stream not in _COUNTED and stream != VISITS:
                continue
            target = files.open(Path(path)) if path is not None else None
            lines: Iterator[bytes] = (_final_visits(lambda: parts.records(VISITS)) if stream == VISITS
                                      else parts.records(stream))
            counts[stream], written[stream] = _write_stream(target, lines, _COUNTED.get(stream))
        identifiers, customers = _write_identities(parts_dir.parent / "rocksdb", identities, files)
        files.commit()
    read_now = sum(stats.get("read", {}).values())
    read_before = sum(before.get("read", {}).values())
    return ReplaySummary(
        read_by_topic=dict(sorted(stats.get("read", {}).items())),
        dead_letters_by_reason=dict(sorted(stats.get("dead_letters", {}).items())),
        duplicates_by_topic=dict(sorted(stats.get("duplicates", {}).items())),
        triggers_by_rule=dict(sorted(counts[TRIGGERS].items())),
        suppressed_by_reason=dict(sorted(counts[SUPPRESSED].items())),
        refused_links_by_reason=dict(sorted(counts[REFUSED_LINKS].items())),
        visits=written[VISITS],
        late_pings=stats.get("visits", {}).get("late_pings", 0),
        identifiers=identifiers,
        customers=customers,
        records_this_run=read_now - read_before,
        seconds=seconds,
        retractions_by_rule=dict(sorted(counts[RETRACTIONS].items())),
        ignored_identifiers={kind.removeprefix("ignored_"): count
                             for kind, count in sorted(stats.get("identity", {}).items())},
        visits_without_location_consent=stats.get("visits", {}).get("visits_without_location_consent", 0),
        returns=sum(stats.get("returns", {}).values()),
        conversions_by_arm=dict(sorted(counts[CONVERSIONS].items())),
    )


@functools.lru_cache(maxsize=None)
def _field_reader(name: str) -> Callable[[bytes], Any]:
    """Reads one top-level field of a JSON object (None when absent) and skips the rest without building it:
    a third of what decoding the whole record costs."""
    decode = msgspec.json.Decoder(msgspec.defstruct(f"_{name}", [(name, Any, None)])).decode
    return lambda line: getattr(decode(line), name)


def _write_stream(target: AtomicFile | None, lines: Iterator[bytes], field: str | None) -> tuple[Counter, int]:
    """Write a merged stream to `target` (None: only count it); returns (records by `field`, records)."""
    counter: Counter = Counter()
    count = 0
    read_field = _field_reader(field) if field is not None else None
    for line in lines:
        count += 1
        if read_field is not None:
            counter[str(read_field(line))] += 1
        if target is not None:
            try:
                target.write(line)
            except OSError as error:
                raise output_error(error, target.path) from None
    return counter, count
