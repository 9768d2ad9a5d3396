"""Recorded topics: read a recording folder as one event-time-ordered stream.

A recording is a folder of `<topic>.jsonl` files. Each line is either the
envelope `kcat -C -J` writes (`{"topic","partition","offset","tstype","ts",
"key","payload"}`, payload a JSON string or object) or a bare event.

`RecordingReader` merges the files by (event time, topic, partition, offset),
like a consumer reading every partition at once, and decodes each line into
an `Event` or a dead letter. Each file is merged as it is written (a k-way
merge, not a sort): an event that is late within its file stays late, as it
would be on Kafka. A line with no usable time keeps its place in its file.
The reader's position (`position()`) is a few numbers per file, so a replay
resumes where it stopped. Nothing here imports bytewax.
"""

from __future__ import annotations

import base64
import heapq
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from omnitrigger.pii import Pseudonymizer, key_from_environment, redact_detail, redact_key, redact_text
from omnitrigger.records import DEAD_LETTERS, Emitted, Event
from omnitrigger.schemas import INPUT_TOPICS, Contracts, ContractViolation

Position = dict[str, Any]


class RecordingError(Exception):
    """The recording folder itself is unusable (missing, empty, unreadable)."""


def recording_files(recording_dir: Path) -> dict[str, Path]:
    """The `<topic>.jsonl` files of a recording, by topic; a clear error if there are none."""
    if not recording_dir.is_dir():
        raise RecordingError(f"recording folder not found: {recording_dir}")
    files = {path.name[: -len(".jsonl")]: path for path in sorted(recording_dir.glob("*.jsonl"))}
    known = {topic: path for topic, path in files.items() if topic in INPUT_TOPICS}
    if not known:
        raise RecordingError(
            f"no recorded topics in {recording_dir}: expected files named <topic>.jsonl for {', '.join(INPUT_TOPICS)}")
    return known


class LineDecoder:
    """Turns one recorded line into an Event or a dead letter, never an exception.

    Email and phone are hashed here, right after the contract check, and
    redacted by pattern from the rest of the record; a dead letter's raw
    record, Kafka key and detail are redacted too: nothing downstream sees
    them raw. Any nesting depth and any line up to `max_record_bytes` (not
    counting its line terminator) decodes in time linear in its length.
    """

    def __init__(self, contracts: Contracts, max_record_bytes: int, reference_ms: int,
                 pseudonymizer: Pseudonymizer) -> None:
        self.contracts = contracts
        self.pseudonymizer = pseudonymizer
        self.max_record_bytes = max_record_bytes
        self.reference_ms = reference_ms

    def decode(self, line: bytes, file_topic: str, line_no: int, source_file: str | None,
               last_ts: int) -> tuple[int, str, int, int, Any, bool]:
        """(merge time, topic, partition, offset, body or dead-letter record, is an event).

        A plain tuple, not an object: this runs once for every record of a replay.
        """
        topic, partition, offset = file_topic, 0, line_no
        raw: bytes | str = line
        key = None
        reference_ms = self.reference_ms
        try:
            size = len(line) - (2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0)
            if size > self.max_record_bytes:
                raise ContractViolation("record_too_large", f"{size} bytes exceeds max_record_bytes {self.max_record_bytes}")
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = _loads(line.strip(), "invalid_json")  # says why; an empty line is its own reason
            if type(value) is dict and "payload" in value and "topic" in value and "offset" in value:
                envelope_topic = value["topic"]
                # A string, as kcat writes it; anything else (a hand-made line) keeps the file's topic.
                topic = envelope_topic if type(envelope_topic) is str else file_topic
                partition = _as_int(value.get("partition"), 0)
                offset = _as_int(value.get("offset"), line_no)
                key = value.get("key")
                kafka_ts = value.get("ts")
                if type(kafka_ts) is int and kafka_ts > 0:
                    reference_ms = kafka_ts
                payload = value["payload"]
                raw = payload if isinstance(payload, str) else line.strip()
                if payload is None:
                    raise ContractViolation("empty_payload", "the envelope's payload is null")
                value = _loads(payload.encode(), "invalid_payload_json") if isinstance(payload, str) else payload
            ts_ms = self.contracts.check(file_topic, value, reference_ms, line)
            self.pseudonymizer.protect(value, line)
        except ContractViolation as violation:
            record = _dead_letter(violation, self.pseudonymizer.redact_raw(raw), topic, partition, offset,
                                  source_file, key)
            return last_ts, topic, partition, offset, record, False
        return ts_ms, topic, partition, offset, value, True


def _loads(data: bytes, reason: str) -> Any:
    """`data` parsed, or the ContractViolation that says why not (nesting past orjson's limit is `too_deep`)."""
    if not data:
        raise ContractViolation("empty_line", "the line is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ContractViolation("invalid_utf8", f"byte {bad.start} is not valid UTF-8") from None
        if str(error).startswith("depth limit exceeded"):
            raise ContractViolation("too_deep", "objects and arrays nest more than JSON decoding allows "
                                                "(1,024 levels)") from None
        raise ContractViolation(reason, str(error)[:200]) from None


def _as_int(value: Any, default: int) -> int:
    return value if type(value) is int else default


def _dead_letter(violation: ContractViolation, raw: bytes | str, topic: str, partition: int, offset: int,
                 source_file: str | None, key: Any) -> dict[str, Any]:
    """The dead-letter record; `raw` is already redacted, and the topic, detail and key are masked here.

    The detail can echo a rejected value and the key is often a customer's phone: both are masked by
    pattern (`pii.redact_detail`, `pii.redact_key`), so a dead letter holds no raw email or phone.
    """
    record: dict[str, Any] = {
        "reason": violation.reason,
        "detail": redact_detail(violation.detail),
        "topic": redact_text(topic),
        "partition": partition,
        "offset": offset,
        "source_file": source_file,
    }
    if key is not None:
        record["key"] = redact_key(key)
    if isinstance(raw, str):
        record["raw"] = raw
    else:
        try:
            record["raw"] = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            record["raw_base64"] = base64.b64encode(raw.rstrip(b"\r\n")).decode("ascii")
    return record


class _FileCursor:
    """One recording file being read line by line, with its resumable position."""

    def __init__(self, topic: str, path: Path, byte_pos: int, line_no: int, last_ts: int) -> None:
        self.topic = topic
        self.name = path.name
        self.handle: BinaryIO = path.open("rb")
        self.handle.seek(byte_pos)
        self.byte_pos = byte_pos  # start of the next line not yet emitted
        self.line_no = line_no
        self.last_ts = last_ts  # merge time of the last line decoded: a dead letter after it inherits it
        self.emitted_ts = last_ts  # merge time of the last line emitted: where a resume starts

    def read_line(self) -> bytes | None:
        line = self.handle.readline()
        return line if line else None


class RecordingReader:
    """Reads a recording in merged event-time order, resumable from `position()`."""

    def __init__(self, recording_dir: Path, contracts: Contracts, *, max_record_bytes: int = 262_144,
                 reference_ms: int | None = None, position: Position | None = None,
                 pseudonymizer: Pseudonymizer | None = None) -> None:
        """`pseudonymizer` defaults to one keyed from OMNITRIGGER_PII_KEY (PiiKeyError if unset)."""
        files = recording_files(Path(recording_dir))
        position = position or {"seq": 0, "files": {}}
        self.decoder = LineDecoder(contracts, max_record_bytes,
                                   reference_ms if reference_ms is not None else int(time.time() * 1000),
                                   pseudonymizer or Pseudonymizer(key_from_environment()))
        self.next_seq: int = position["seq"]
        self.total_bytes = sum(path.stat().st_size for path in files.values())
        self._cursors: list[_FileCursor] = []
        self._heap: list[tuple[int, str, int, int, int, int, Any, bool]] = []
        for index, (topic, path) in enumerate(files.items()):
            byte_pos, line_no, last_ts = position["files"].get(path.name, (0, 0, 0))
            cursor = _FileCursor(topic, path, byte_pos, line_no, last_ts)
            self._cursors.append(cursor)
            self._advance(index)

    def _advance(self, index: int) -> None:
        """Decode the next line of file `index` and put it on the merge heap."""
        cursor = self._cursors[index]
        line = cursor.read_line()
        if line is None:
            return
        merge_ts, topic, partition, offset, body, is_event = self.decoder.decode(
            line, cursor.topic, cursor.line_no, cursor.name, cursor.last_ts)
        cursor.last_ts = merge_ts
        heapq.heappush(self._heap, (merge_ts, topic, partition, offset, index, len(line), body, is_event))

    def read_batch(self, max_records: int) -> list[Event | Emitted]:
        """Up to `max_records` items in merged order; an empty list once the recording is exhausted."""
        batch: list[Event | Emitted] = []
        heap = self._heap
        cursors = self._cursors
        seq = self.next_seq
        while heap and len(batch) < max_records:
            merge_ts, _, partition, offset, index, line_len, body, is_event = heapq.heappop(heap)
            cursor = cursors[index]
            batch.append(Event(seq, cursor.topic, partition, offset, merge_ts, body) if is_event
                         else Emitted(DEAD_LETTERS, (seq, 0), body))
            seq += 1
            cursor.emitted_ts = merge_ts
            cursor.byte_pos += line_len
            cursor.line_no += 1
            self._advance(index)
        self.next_seq = seq
        return batch

    def position(self) -> Position:
        """Where to resume: per file the byte offset, line number and merge time of the next unread line."""
        return {"seq": self.next_seq,
                "files": {c.name: (c.byte_pos, c.line_no, c.emitted_ts) for c in self._cursors}}

    def bytes_done(self) -> int:
        return sum(cursor.byte_pos for cursor in self._cursors)

    def close(self) -> None:
        for cursor in self._cursors:
            cursor.handle.close()

