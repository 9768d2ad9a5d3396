"""Recorded topics: read a recording folder as streams, each record stamped with its place in one merged order.

A recording is a folder of `<topic>.jsonl` files. Each line is either the
envelope `kcat -C -J` writes (`{"topic","partition","offset","tstype","ts",
"key","payload"}`, payload a JSON string or object) or a bare event.

A stream is one Kafka partition: a file, or, for a file whose kcat envelopes
name several partitions (a recording of a multi-partition topic), each of
them (`recording_streams`). `StreamReader` decodes one stream's lines into
`Event`s or dead letters and stamps each with its order key; sorting by the
keys merges the streams by (event time, topic, partition, offset), like a
consumer reading every partition at once (omnitrigger/io/live_input.py
`EventTimeMerger`), each stream as it is written (a k-way merge, not a
sort): an event that is late within its stream stays late, as it would be
on Kafka, and a line with no usable time keeps its place in its stream.
`RecordingReader` merges every stream of a folder in one place (benchmarks,
`omnitrigger publish`); a replay reads one source part a stream
(flows/recording_source.py) and merges them in the sequencer
(operators/input_merge.py), in the same order. A stream's position is a few
numbers, so a replay resumes where it stopped. Nothing here imports bytewax.
"""

from __future__ import annotations

import base64
import gzip
import heapq
import logging
import re
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from omnitrigger.pii import Pseudonymizer, key_from_environment, redact_detail, redact_key, redact_text
from omnitrigger.records import DEAD_LETTERS, Emitted, Event
from omnitrigger.schemas import INPUT_TOPICS, Contracts, ContractViolation
from omnitrigger.schemas.contracts import LATEST_TS_MS
from omnitrigger.state.ordering import FINISHED

log = logging.getLogger("omnitrigger.recording")


class RecordingError(Exception):
    """The recording folder itself is unusable (missing, empty, unreadable)."""


RECORDING_SUFFIXES = (".jsonl", ".jsonl.gz")


def recording_files(recording_dir: Path, topic_prefix: str = "",
                    topic_overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """The recorded topic files of a recording, by contract topic; a clear error if there are none.

    A file is `<topic>.jsonl` or `<topic>.jsonl.gz`, where the topic is the
    contract's name (`pos.receipts`), the Kafka name with `[kafka]
    topic_prefix` (`prod.pos.receipts`), or a `[kafka] input_topics`
    override (`clickstream`): the names `omnitrigger record` writes and
    kcat users give. RecordingReader names the files that are none of these in one warning.
    """
    known, _ = _scan(recording_dir, topic_prefix, topic_overrides)
    return known


def _scan(recording_dir: Path, topic_prefix: str, topic_overrides: dict[str, str] | None) -> tuple[dict[str, Path], list[str]]:
    if not recording_dir.is_dir():
        raise RecordingError(f"recording folder not found: {recording_dir}")
    names: dict[str, str] = {}
    for topic in INPUT_TOPICS:
        kafka_name = (topic_overrides or {}).get(topic, topic)
        for name in {topic, kafka_name, topic_prefix + kafka_name}:
            names[name] = topic
    known: dict[str, Path] = {}
    skipped: list[str] = []
    for path in sorted(recording_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = next((suffix for suffix in RECORDING_SUFFIXES if path.name.endswith(suffix)), None)
        topic = names.get(path.name[: -len(suffix)]) if suffix else None
        if topic is None:
            skipped.append(path.name)
            continue
        if topic in known:
            raise RecordingError(f"two files for topic {topic} in {recording_dir}: {known[topic].name} and {path.name}")
        known[topic] = path
    if not known:
        raise RecordingError(
            f"no recorded topics in {recording_dir}: expected files named <topic>.jsonl (or .jsonl.gz) for "
            f"{', '.join(INPUT_TOPICS)}" + (f"; found {', '.join(skipped[:10])}" if skipped else ""))
    return dict(sorted(known.items(), key=lambda item: item[1].name)), skipped


class LineDecoder:
    """Turns one recorded line into an Event or a dead letter, never an exception.

    Email and phone are hashed here, right after the contract check, and
    redacted by pattern from the rest of the record; a dead letter's raw
    record, Kafka key and detail are redacted too: nothing downstream sees
    them raw. Any nesting depth and any line up to `max_record_bytes` (not
    counting its line terminator) decodes in time linear in its length.
    """

    def __init__(self, contracts: Contracts, max_record_bytes: int, reference_ms: int | None,
                 pseudonymizer: Pseudonymizer, max_clock_skew_ms: int | None = None) -> None:
        """`reference_ms`: an extra "now" for bare lines (None: only the stream clock); `max_clock_skew_ms`:
        how far an event time may pass its Kafka timestamp (None: the contracts' `max_future_ms`)."""
        self.contracts = contracts
        self.pseudonymizer = pseudonymizer
        self.max_record_bytes = max_record_bytes
        self.reference_ms = reference_ms
        self.max_clock_skew_ms = contracts.max_future_ms if max_clock_skew_ms is None else max_clock_skew_ms

    def decode(self, line: bytes, file_topic: str, line_no: int, source_file: str | None,
               last_ts: int, stream_clock_ms: int | None = None) -> tuple[int, str, int, int, Any, bool]:
        """(merge time, topic, partition, offset, body or dead-letter record, is an event).

        A plain tuple, not an object: this runs once for every record of a replay. An envelope's
        event time is judged against its Kafka timestamp (`max_clock_skew_ms`), a bare line's
        against `stream_clock_ms` and `reference_ms`, the earlier of those given (`max_future_ms`).
        """
        topic, partition, offset = file_topic, 0, line_no
        raw: bytes | str = line
        key = None
        reference_ms = self.reference_ms
        if stream_clock_ms is not None:
            reference_ms = stream_clock_ms if reference_ms is None else min(reference_ms, stream_clock_ms)
        max_future_ms = None
        try:
            if len(line) > self.max_record_bytes:  # the terminator aside, it may still fit
                size = len(line) - (2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0)
                if size > self.max_record_bytes:
                    raise ContractViolation("record_too_large",
                                            f"{size} bytes exceeds max_record_bytes {self.max_record_bytes}")
            # Most lines: a bare event the Structs vouch for, and not an envelope (one as kcat -J writes
            # it starts with its topic: the Structs need not be asked to refuse it).
            value = None if line.startswith(b'{"topic":') else self.contracts.vouch(file_topic, line)
            if value is not None and not ("payload" in value and "topic" in value and "offset" in value):
                ts_ms = self.contracts.vouched_time(value, LATEST_TS_MS if reference_ms is None else reference_ms)
                self.pseudonymizer.protect(value, line)
                return ts_ms, topic, partition, offset, value, True
            fast = None
            guard = line  # the bytes the body comes from, for protect's "nothing to redact" test
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
                    max_future_ms = self.max_clock_skew_ms
                payload = value["payload"]
                raw = payload if isinstance(payload, str) else line.strip()
                if payload is None:
                    raise ContractViolation("empty_payload", "the envelope's payload is null")
                value = payload
                if isinstance(payload, str):
                    data = guard = payload.encode()
                    fast = self.contracts.check_json(file_topic, data, LATEST_TS_MS if reference_ms is None
                                                     else reference_ms, max_future_ms=max_future_ms)
                    value = fast[0] if fast is not None else _loads(data, "invalid_payload_json")
            if fast is not None:  # the payload's Structs vouched for it
                ts_ms = fast[1]
            else:
                ts_ms = self.contracts.check(file_topic, value, LATEST_TS_MS if reference_ms is None else reference_ms,
                                             line, max_future_ms=max_future_ms)
            self.pseudonymizer.protect(value, guard)
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


#: An envelope's partition: a JSON number (no leading zero, no "-0"), then its end.
_PARTITION_NUMBER = rb'(0|-?[1-9][0-9]*)'
#: A kcat line's start, up to its partition, spaces allowed between the tokens as JSON allows them (kcat
#: writes none; an envelope made by hand may).
_KCAT_PARTITION = re.compile(
    rb'\{[ \t]*"topic"[ \t]*:[ \t]*"(?:[^"\\]|\\.)*"[ \t]*,[ \t]*"partition"[ \t]*:[ \t]*' + _PARTITION_NUMBER
    + rb'[ \t]*[,}]')


def line_partition(line: bytes) -> int:
    """The Kafka partition a recorded line's stream is: its kcat envelope's, the topic and the partition first
    as kcat writes them (`{"topic":"...","partition":N,...`, N a JSON number); 0 for any other line (a
    bare event, a line that is not JSON, an envelope written by hand with its keys in another order).

    Only the line's start is looked at, so a partition's cursor can skip the others' lines by their first
    bytes (`_PartitionCursor`). The event's `partition` is still the envelope's, as decoded."""
    if line.startswith(b"{"):
        match = _KCAT_PARTITION.match(line)
        if match is not None:
            return int(match[1])
    return 0


_PRESCAN_CHUNK = 1 << 20
_TOPIC_FIELD = b'"topic"'  # in every kcat envelope: a run of lines without it holds bare events only


def file_partitions(path: Path) -> list[int]:
    """The partitions a recording file's lines belong to (`line_partition`), in order; one pass over the file.

    Read a MiB at a time: a run of lines with no envelope is all partition 0 (bare events), and a run of kcat
    envelopes of one topic (the file's head, `{"topic":"...","partition":`, at every line start) is read
    with one search for the head; only other lines are looked at one by one.
    """
    found: set[int] = set()
    heads: re.Pattern[bytes] | None = None  # the head and the number after it, at a line start
    with _open(path) as handle:
        rest = b""
        rest_searched = True  # whether `rest` is known to hold no envelope's topic field (searched already)
        overlap = len(_TOPIC_FIELD) - 1
        while True:
            chunk = handle.read(_PRESCAN_CHUNK)
            if chunk and _TOPIC_FIELD not in chunk and \
                    _TOPIC_FIELD not in (rest[-overlap:] if rest_searched else rest) + chunk[:overlap]:
                # No envelope in the chunk, nor in the line cut by its start: searched where it was read, not
                # copied (a bare file, most recordings, costs one search a MiB).
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    found.add(0)
                    rest = chunk[cut:]
                else:
                    rest += chunk
                rest_searched = True
                continue
            rest_searched = False
            data = rest + chunk
            if not chunk:  # the last line, if it has no line terminator
                if data:
                    found.add(line_partition(data))
                break
            cut = data.rfind(b"\n") + 1
            lines, rest = data[:cut], data[cut:]
            if not lines:
                continue
            if _TOPIC_FIELD not in lines:  # no envelope: all partition 0
                found.add(0)
                continue
            if heads is None and lines.startswith(b'{"topic":"'):
                match = _KCAT_PARTITION.match(lines)
                if match is not None and not any(space in lines[:match.start(1)] for space in (b" ", b"\t")):
                    heads = re.compile(re.escape(b"\n" + lines[:match.start(1)]) + _PARTITION_NUMBER + rb"[,}]")
            numbers = heads.findall(b"\n" + lines) if heads is not None else []
            if len(numbers) == lines.count(b"\n"):  # every line a kcat envelope of the file's topic
                found.update(int(number) for number in set(numbers))
            else:
                found.update(line_partition(line) for line in lines.split(b"\n")[:-1])
    return sorted(found) or [0]


class _FileCursor:
    """One stream of a recording file being read line by line, with its resumable position: every line of
    a file of one partition (`partition` None). `_PartitionCursor` reads one partition of a file of several."""

    partition: int | None = None

    def __init__(self, topic: str, path: Path, byte_pos: int, line_no: int, last_ts: int) -> None:
        self.topic = topic
        self.path = path
        self.name = path.name
        self.key = stream_key(path.name, None)  # its name in `position()`
        self.handle: BinaryIO = _open(path)
        self.handle.seek(byte_pos)
        self.byte_pos = byte_pos  # just past the last line emitted: where a resume reads on
        self.line_no = line_no  # the file's line number at byte_pos
        self.read_pos = byte_pos  # just past the last line read (a line read is emitted next, or skipped)
        self.read_line_no = line_no
        self.last_ts = last_ts  # merge time of the last line decoded: a dead letter after it inherits it
        self.emitted_ts = last_ts  # merge time of the last line emitted: where a resume starts

    def read_line(self, limit: int = 0) -> tuple[bytes, int] | None:
        """The stream's next line and its line number in the file; None at the file's end."""
        line = self.handle.readline()
        if not line:
            return None
        number = self.read_line_no
        self.read_line_no += 1
        self.read_pos += len(line)
        return line, number

    def mark(self) -> Any:
        """Where reading is now, for `reset` (a look ahead that must not move the stream)."""
        return self.read_pos, self.read_line_no

    def reset(self, mark: Any) -> None:
        self.read_pos, self.read_line_no = mark
        self.handle.seek(self.read_pos)

    def line_at(self, start: int, length: int) -> bytes:
        """The bytes of the line read earlier at `start` (what `omnitrigger publish` sends as recorded)."""
        self.handle.seek(start)
        line = self.handle.read(length)
        self.handle.seek(self.read_pos)
        return line

    def close(self) -> None:
        self.handle.close()


class _PartitionCursor(_FileCursor):
    """The lines of one Kafka partition of a file that holds several; the other lines are skipped, counted in
    the line numbers and byte offsets all the same.

    Each partition of the file has its cursor, and each reads the whole file, so skipping must cost little.
    The file is read a MiB at a time. Once a kcat line has shown the file's head (`{"topic":"...",
    "partition":`), the next line of this partition is found by searching the block for the head and this
    partition's number at a line start, and the lines before it are skipped at once when every one of them
    is another partition's kcat line (counted with `bytes.count`); any other line is looked at alone
    (`line_partition`).
    """

    _BLOCK = 1 << 20

    def __init__(self, topic: str, path: Path, partition: int, byte_pos: int, line_no: int, last_ts: int) -> None:
        super().__init__(topic, path, byte_pos, line_no, last_ts)
        self.partition = partition
        self.key = stream_key(path.name, partition)
        self._buffer = b""
        self._buffer_start = byte_pos  # the file offset of _buffer[0]
        self._at = 0  # the next unread byte in _buffer: read_pos == _buffer_start + _at
        self._eof = False
        self._kcat_head: bytes | None = None  # b'\n{"topic":"...","partition":', as this file's kcat lines begin
        self._own_digits = b""  # the head and this partition's number
        self._own = b""  # the same and a comma: the start of this partition's kcat lines
        self._spaced_heads: tuple[bytes, ...] = ()
        self._longer_numbers: tuple[bytes, ...] = ()
        self._reread: BinaryIO | None = None

    def _fill(self) -> bool:
        """Read the next block onto the unread rest of the buffer; False at the file's end."""
        if self._eof:
            return False
        block = self.handle.read(self._BLOCK)
        if not block:
            self._eof = True
            return False
        self._buffer = self._buffer[self._at:] + block
        self._buffer_start += self._at
        self._at = 0
        return True

    def _next_line(self) -> tuple[bytes, int] | None:
        """The next line of the file, whatever its partition, and its line number."""
        while True:
            end = self._buffer.find(b"\n", self._at)
            if end >= 0:
                line = self._buffer[self._at:end + 1]
                break
            if not self._fill():
                line = self._buffer[self._at:]  # the last line, without a terminator, or nothing
                if not line:
                    return None
                break
        self._at += len(line)
        number = self.read_line_no
        self.read_line_no += 1
        self.read_pos = self._buffer_start + self._at
        return line, number

    def _skip_to_own(self, limit: int, skipped: int) -> int:
        """Skip, at once, the lines up to this partition's next kcat line (or to the block's last complete
        line) if every one of them is another partition's kcat line, and no more than `limit` less
        `skipped` of them when a limit is given; returns how many lines were skipped."""
        head, buffer, at = self._kcat_head, self._buffer, self._at
        if head is None or at == 0 or buffer[at - 1] != 10:  # the search needs the terminator before the line
            return 0
        if self.partition == 0:  # a kcat head with no valid number after it is partition 0: read line by line
            return 0
        start = at - 1
        found = buffer.find(self._own, start)
        if found < 0:
            found = buffer.rfind(b"\n")
        if found <= start:
            return 0
        lines = buffer.count(b"\n", start, found)  # each such terminator starts a line to skip
        if buffer.count(head, start, found) != lines or not self._others_only(buffer, start, found):
            return 0
        if limit and skipped + lines > limit:
            return 0
        self._at = found + 1
        self.read_line_no += lines
        self.read_pos = self._buffer_start + self._at
        return lines

    def read_line(self, limit: int = 0) -> tuple[bytes, int] | None:
        """The partition's next line and its line number in the file; None at the file's end (or after
        `limit` lines of other partitions, when given)."""
        skipped = 0
        partition = self.partition
        while True:
            skipped += self._skip_to_own(limit, skipped)
            if limit and skipped >= limit:
                return None
            read = self._next_line()
            if read is None:
                return None
            line = read[0]
            if self._kcat_head is None and line.startswith(b'{"topic":"'):
                match = _KCAT_PARTITION.match(line)
                if match is not None and b" " not in line[:match.start(1)] and b"\t" not in line[:match.start(1)]:
                    self._learn_head(line[:match.start(1)])  # as kcat writes it
            if line_partition(line) == partition:
                return read
            skipped += 1
            if limit and skipped >= limit:
                return None

    def _others_only(self, buffer: bytes, start: int, end: int) -> bool:
        """Whether the lines in buffer[start:end], each starting with the head, are all other partitions':
        the number after the head is not this partition's, in any spelling `line_partition` reads (with a
        brace after it, or spaces around it); a longer number starting with the same digits is another."""
        if any(buffer.count(spaced, start, end) for spaced in self._spaced_heads):
            return False
        same_start = buffer.count(self._own_digits, start, end)
        if not same_start:
            return True
        return same_start == sum(buffer.count(longer, start, end) for longer in self._longer_numbers)

    def _learn_head(self, head: bytes) -> None:
        self._kcat_head = b"\n" + head
        self._own_digits = self._kcat_head + b"%d" % self.partition
        self._own = self._own_digits + b","
        # What `_others_only` searches for, made once: a head with a space after it, and this partition's
        # number with another digit after it.
        self._spaced_heads = (self._kcat_head + b" ", self._kcat_head + b"\t")
        self._longer_numbers = tuple(self._own_digits + bytes([digit]) for digit in b"0123456789")

    def mark(self) -> Any:
        return (self._buffer, self._buffer_start, self._at, self._eof, self.read_line_no, self.read_pos,
                self.handle.tell())

    def reset(self, mark: Any) -> None:
        self._buffer, self._buffer_start, self._at, self._eof, self.read_line_no, self.read_pos, here = mark
        self.handle.seek(here)

    def line_at(self, start: int, length: int) -> bytes:
        if start >= self._buffer_start and start + length <= self._buffer_start + len(self._buffer):
            return self._buffer[start - self._buffer_start:start - self._buffer_start + length]
        if self._reread is None:
            self._reread = _open(self.path)
        self._reread.seek(start)
        return self._reread.read(length)

    def close(self) -> None:
        super().close()
        if self._reread is not None:
            self._reread.close()


def stream_key(file_name: str, partition: int | None) -> str:
    """A stream's name in a reader's position: its file's, or `<file>@<partition>` for one partition of a file
    that holds several."""
    return file_name if partition is None else f"{file_name}@{partition}"


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")  # type: ignore[return-value]


#: A decoded record with its place in the merged order: (order key, file topic, partition, offset, merge time,
#: body or dead-letter record, is an event). The key: see `StreamReader`.
Stamped = tuple[tuple, str, int, int, int, Any, bool]
#: Where a stream resumes: byte offset and line number of its next unread line, the merge time of the last line
#: it emitted, its clock, the running max of its order key, and its next position.
StreamPosition = tuple[int, int, int, "int | None", "list[Any] | None", int]
_BELOW_EVERY_KEY: tuple = ()


class StreamLayout(NamedTuple):
    """One stream of a recording: a file, or one partition of a file whose kcat envelopes name several."""

    key: str  # its name in a position, and a partitioned source's part name: `stream_key`
    topic: str
    path: Path
    partition: int | None  # None: every line of the file


def recording_streams(recording_dir: Path, topic_prefix: str = "",
                      topic_overrides: dict[str, str] | None = None) -> list[StreamLayout]:
    """The streams of a recording, in the order that numbers them (the last part of their records' order keys);
    the files no input topic names are skipped with one warning."""
    files, skipped = _scan(Path(recording_dir), topic_prefix, topic_overrides)
    if skipped:
        log.warning("recording files skipped: no input topic has these names (expected <topic>.jsonl or "
                    ".jsonl.gz, the topic with or without [kafka] topic_prefix): %s", ", ".join(skipped),
                    extra={"fields": {"recording": str(recording_dir), "skipped": skipped}})
    streams = []
    for topic, path in files.items():
        partitions = file_partitions(path)
        for partition in ([None] if len(partitions) == 1 else partitions):
            streams.append(StreamLayout(stream_key(path.name, partition), topic, path, partition))
    return streams


class StreamReader:
    """One stream of a recording, decoded in file order, each record stamped with its place in the merged order.

    The order key is the running max of (merge time, topic, partition, offset, stream index) over the stream's
    records so far, then the record's position in the stream. Every stream's keys increase, no two streams
    share one, and sorting all records by them is the greedy k-way merge by (merge time, topic, partition,
    offset, stream index) earlier versions performed (state/ordering.py; tests/test_ordering.py proves it).
    So `RecordingReader`, merging the streams of one folder, and a partitioned source (a part a stream,
    flows/recording_source.py) with a `FrontierMerge` after it hand the records out in one order.

    The stream's own clock (the latest event time it emitted) bounds bare lines: a line more than
    `max_future` past it that nothing after it in the stream supports is a `timestamp_in_future` dead letter
    (`_unsupported`), so one wrong clock can neither move the flow's event-time clock for everyone nor hold
    back the rest of its stream. Being the stream's own, the rule gives one answer whichever process reads
    the stream and whatever the other streams hold.
    """

    def __init__(self, layout: StreamLayout, index: int, decoder: LineDecoder, max_future_ms: int,
                 saved: StreamPosition | None = None) -> None:
        """`saved`: what `position()` returned, to go on from there (None: the stream's start)."""
        byte_pos, line_no, last_ts, clock_ms, max_key, position = saved if saved else (0, 0, 0, None, None, 0)
        self.clock_ms: int | None = clock_ms
        self._position: int = position  # the next record's
        # the last record's key: the running max saved, then that record's position
        self._last_key: tuple = tuple(max_key) + (position - 1,) if max_key is not None else _BELOW_EVERY_KEY
        self.layout = layout
        self.index = index
        self.decoder = decoder
        self.max_future_ms = max_future_ms
        self.cursor: _FileCursor = (_FileCursor(layout.topic, layout.path, byte_pos, line_no, last_ts)
                                    if layout.partition is None else
                                    _PartitionCursor(layout.topic, layout.path, layout.partition, byte_pos, line_no,
                                                     last_ts))
        self._head_end = self._head_length = self._head_line_no = 0
        # the next record, decoded; None once the stream is exhausted
        self.head: Stamped | None = self._decode_next(self.clock_ms, self._last_key, self._position)

    def _decode_next(self, clock_ms: int | None, last_key: tuple, position: int) -> Stamped | None:
        """The stream's next line decoded and stamped, at `position` after the record of `last_key`, judged
        against the stream's clock `clock_ms`; None at the stream's end."""
        cursor = self.cursor
        read = cursor.read_line()
        if read is None:
            return None
        line, line_no = read
        decoded = self.decoder.decode(line, cursor.topic, line_no, cursor.name, cursor.last_ts)
        if decoded[5] and (clock_ms is None or decoded[0] > clock_ms + self.max_future_ms):
            reference_ms = self._unsupported(decoded[0], clock_ms)
            if reference_ms is not None:  # judged again against that clock: a bare line becomes a dead letter
                decoded = self.decoder.decode(line, cursor.topic, line_no, cursor.name, cursor.last_ts,
                                              stream_clock_ms=reference_ms)
        merge_ts, topic, partition, offset, body, is_event = decoded
        cursor.last_ts = merge_ts
        # The running max of (merge time, topic as the envelope names it, partition, offset, stream index),
        # then the position: a key above the last one's is its own running max; one that is not (late, or a
        # repeat) takes the last one's and sorts right after it.
        key = (merge_ts, topic, partition, offset, self.index, position)
        if not key > last_key:
            key = last_key[:5] + (position,)
        self._head_end, self._head_length, self._head_line_no = cursor.read_pos, len(line), line_no
        # The record's topic is its file's: the contract's name, whatever the envelope calls it (prefixed).
        return key, cursor.topic, partition, offset, merge_ts, body, is_event

    def _unsupported(self, ts_ms: int, clock_ms: int | None) -> int | None:
        """The clock to judge a line at `ts_ms` against, if its own stream (whose clock is `clock_ms`) does not
        support a jump that far.

        The line is ahead of the stream's clock by more than `max_future` (or the clock has not started). It is
        a real gap in the data if the next events of its stream (up to 16 lines ahead) all stay within
        `max_future` of it: the file carries on from there. If one of them comes back earlier, the line (or the
        short run it starts) is a lone spike: a wrong clock. A line with no events after it is the stream's last
        word and is taken as it is (a recording may end with one record days later to move the clock on).
        """
        earliest = self._earliest_ahead()
        if earliest is None or earliest >= ts_ms - self.max_future_ms:
            return None
        return earliest if clock_ms is None else max(clock_ms, earliest)

    def _earliest_ahead(self, lines: int = 16, other_lines: int = 4096) -> int | None:
        """The earliest event time in the next `lines` lines of the stream (None: no event among them),
        looking past at most `other_lines` lines of other partitions for each."""
        cursor = self.cursor
        here = cursor.mark()
        earliest: int | None = None
        try:
            for _ in range(lines):
                read = cursor.read_line(limit=other_lines)
                if read is None:
                    break
                line, line_no = read
                merge_ts, *_, is_event = self.decoder.decode(line, cursor.topic, line_no, cursor.name, 0)
                if is_event and (earliest is None or merge_ts < earliest):
                    earliest = merge_ts
            return earliest
        finally:
            cursor.reset(here)

    def read(self, max_records: int, below: tuple = FINISHED) -> list[Stamped]:
        """The stream's next records, at most `max_records`, up to the first whose key is not below `below`
        (another stream's next key: what this stream hands out before it in the merged order)."""
        out: list[Stamped] = []
        head = self.head
        if head is None or max_records <= 0 or not head[0] < below:
            return out
        decode_next = self._decode_next
        clock_ms = self.clock_ms
        position = self._position
        while True:
            out.append(head)
            if head[6] and (clock_ms is None or head[4] > clock_ms):
                clock_ms = head[4]
            end, line_no = self._head_end, self._head_line_no
            position += 1
            head = decode_next(clock_ms, head[0], position)
            if head is None or len(out) >= max_records or not head[0] < below:
                break
        last = out[-1]
        cursor = self.cursor
        cursor.byte_pos, cursor.line_no, cursor.emitted_ts = end, line_no + 1, last[4]
        self.head, self.clock_ms, self._position, self._last_key = head, clock_ms, position, last[0]
        return out

    def frontier(self) -> tuple:
        """Every key this stream hands out from now on is above this: just below its head's (its records'
        positions are consecutive); `FINISHED` once it is exhausted."""
        head = self.head
        if head is None:
            return FINISHED
        key = head[0]
        return key[:5] + (key[5] - 1,)

    def head_line(self) -> bytes:
        """The head's bytes as recorded (what `omnitrigger publish` sends)."""
        return self.cursor.line_at(self._head_end - self._head_length, self._head_length)

    def position(self) -> StreamPosition:
        """Where to resume: just past the last line emitted."""
        cursor = self.cursor
        return (cursor.byte_pos, cursor.line_no, cursor.emitted_ts, self.clock_ms,
                list(self._last_key[:5]) if self._last_key else None, self._position)

    def bytes_done(self) -> int:
        return self.cursor.byte_pos

    def close(self) -> None:
        self.cursor.close()


def numbered(stamped: list[Stamped], seq: int) -> list[Event | Emitted]:
    """Stamped records as the flow reads them, numbered from `seq` in this order: `Event`s, and dead letters."""
    new = tuple.__new__  # `Event(...)` without its Python-level __new__: once per record
    return [new(Event, (seq + i, record[1], record[2], record[3], record[4], record[5], None)) if record[6]
            else Emitted(DEAD_LETTERS, (seq + i, 0), record[5]) for i, record in enumerate(stamped)]


def bytes_read(streams: list[StreamReader], sizes: dict[str, int]) -> int:
    """How much of the files `streams` read is read: per file, as far as its slowest stream has got (a file of
    several partitions is read by several streams); `sizes`: each file's size, by name."""
    done: dict[str, int] = {}
    for stream in streams:
        name = stream.layout.path.name
        here = sizes[name] if stream.head is None else stream.bytes_done()
        done[name] = min(done.get(name, here), here)
    return sum(done.values())


class RecordingReader:
    """Reads a recording in merged event-time order: every stream of the folder (`StreamReader`), merged by
    their records' order keys, each record numbered by its place (`seq`). For `omnitrigger publish` and the
    benchmarks; a replay resumes its source parts instead (flows/recording_source.py)."""

    def __init__(self, recording_dir: Path, contracts: Contracts, *, max_record_bytes: int = 262_144,
                 reference_ms: int | None = None, pseudonymizer: Pseudonymizer | None = None,
                 max_clock_skew_ms: int = 900_000, topic_prefix: str = "",
                 topic_overrides: dict[str, str] | None = None) -> None:
        """`pseudonymizer` defaults to one keyed from OMNITRIGGER_PII_KEY (PiiKeyError if unset);
        `topic_prefix` and `topic_overrides` are `[kafka]`'s, for files named as the Kafka topics."""
        layout = recording_streams(Path(recording_dir), topic_prefix, topic_overrides)
        decoder = LineDecoder(contracts, max_record_bytes, reference_ms,
                              pseudonymizer or Pseudonymizer(key_from_environment()), max_clock_skew_ms)
        self.next_seq = 0
        self._sizes = {stream.path.name: stream.path.stat().st_size for stream in layout}
        self.streams = [StreamReader(stream, index, decoder, contracts.max_future_ms)
                        for index, stream in enumerate(layout)]
        self._heap: list[tuple[tuple, int]] = [(stream.head[0], stream.index) for stream in self.streams
                                               if stream.head is not None]
        heapq.heapify(self._heap)

    def read_batch(self, max_records: int) -> list[Event | Emitted]:
        """Up to `max_records` items in merged order; an empty list once the recording is exhausted."""
        stamped: list[Stamped] = []
        heap = self._heap  # (next key, stream index): keys are unique, so the index only says which
        streams = self.streams
        while heap and len(stamped) < max_records:
            index = heap[0][1]
            # up to the next key of any other stream: the least of the root's children
            below = FINISHED if len(heap) == 1 else heap[1][0] if len(heap) == 2 else min(heap[1][0], heap[2][0])
            stream = streams[index]
            stamped += stream.read(max_records - len(stamped), below)
            if stream.head is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (stream.head[0], index))
        batch = numbered(stamped, self.next_seq)
        self.next_seq += len(batch)
        return batch

    @property
    def clock_ms(self) -> int | None:
        """The latest event time handed out: the latest of the streams' clocks."""
        return max((stream.clock_ms for stream in self.streams if stream.clock_ms is not None), default=None)

    def read_lines(self, max_records: int) -> list[tuple[str, bytes, int]]:
        """Like `read_batch`, but each record as (file topic, the line as recorded, merge time): what
        `omnitrigger publish` sends, in the replay's order and paced by the replay's clock."""
        out: list[tuple[str, bytes, int]] = []
        heap = self._heap
        while heap and len(out) < max_records:
            stream = self.streams[heap[0][1]]
            assert stream.head is not None
            line, merge_ts = stream.head_line(), stream.head[4]
            self.read_batch(1)
            out.append((stream.layout.topic, line, merge_ts))
        return out

    def bytes_done(self) -> int:
        """How much of the recording is read: per file, as far as its slowest stream has got."""
        return bytes_read(self.streams, self._sizes)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
