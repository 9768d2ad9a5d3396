"""Live input without bytewax: decode Kafka messages like the replay does, and merge partitions in event time.

`MessageDecoder` turns one Kafka message into an `Event` or a dead letter
with the replay's contract and dead-letter logic (`recording.LineDecoder`'s
contracts, pseudonymizer and helpers), as if the message were the payload
of the kcat envelope `omnitrigger record` writes for it: a live run and a
replay of its recording give the same reasons, raw text, topic, partition
and offset. The message's Kafka timestamp is the reference time of the
"event time in the future" check.

`EventTimeMerger` is the live twin of the replay's merge: it hands out
records across every input partition in (event time, topic, partition,
offset) order, the order a replay of the same records uses, holding a
record back only while a partition that has data in flight might still
deliver an earlier one, and never longer than `merge_wait_s`. A partition
at its end (librdkafka's partition EOF) holds nothing back. So a backlog
(start-up, catching up after an outage) is read in the replay's order,
and a live stream with at most that much delay. Each record gets the next
`seq` of one counter kept in the source snapshot, so on a backlog the seqs,
customer ids and trigger ids are those of a replay of the same records.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Any

from omnitrigger.io.recording import LineDecoder, _dead_letter, _loads
from omnitrigger.records import DEAD_LETTERS, Emitted, Event, with_seq
from omnitrigger.schemas import ContractViolation

Part = tuple[str, int]  # (Kafka topic, partition)


class MessageDecoder:
    def __init__(self, line_decoder: LineDecoder) -> None:
        self.contracts = line_decoder.contracts
        self.pseudonymizer = line_decoder.pseudonymizer
        self.max_record_bytes = line_decoder.max_record_bytes
        self.max_clock_skew_ms = line_decoder.max_clock_skew_ms

    def decode(self, contract_topic: str, kafka_topic: str, partition: int, offset: int, value: bytes | None,
               key: bytes | None, kafka_ts: int, last_ts: int) -> tuple[int, Event | Emitted]:
        """(merge time, Event or dead letter). A dead letter's merge time is `last_ts`, as in the replay."""
        try:
            if value is None:
                raise ContractViolation("empty_payload", "the message's value is null")
            if len(value) > self.max_record_bytes:
                raise ContractViolation("record_too_large",
                                        f"{len(value)} bytes exceeds max_record_bytes {self.max_record_bytes}")
            # A Kafka timestamp is the producer's clock: an event time past it by more than max_clock_skew
            # is a device clock that would move the event-time clock for everyone.
            reference_ms = kafka_ts if kafka_ts > 0 else int(time.time() * 1000)
            max_future_ms = self.max_clock_skew_ms if kafka_ts > 0 else None
            fast = self.contracts.check_json(contract_topic, value, reference_ms, max_future_ms=max_future_ms)
            if fast is not None:  # the Structs vouched for it (LineDecoder.decode does the same)
                body, ts_ms = fast
            else:
                body = _loads(value, "invalid_payload_json")
                ts_ms = self.contracts.check(contract_topic, body, reference_ms, value, max_future_ms=max_future_ms)
            self.pseudonymizer.protect(body, value)
        except ContractViolation as violation:
            raw: bytes | str = value if value is not None else b""
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
            key_text = key.decode("utf-8", "replace") if key is not None else None
            record = _dead_letter(violation, self.pseudonymizer.redact_raw(raw), kafka_topic, partition, offset,
                                  None, key_text)
            return last_ts, Emitted(DEAD_LETTERS, (0, 0), record)
        return ts_ms, Event(0, contract_topic, partition, offset, ts_ms, body)


class _Queue:
    __slots__ = ("items", "eof", "empty_since", "next_offset", "last_ts", "emitted_ts", "max_ts")

    def __init__(self, next_offset: int, last_ts: int) -> None:
        self.items: deque[tuple[int, int, Event | Emitted]] = deque()  # (merge_ts, offset, item)
        self.eof = False
        self.empty_since = time.monotonic()
        self.next_offset = next_offset  # the offset after the last record handed out: where a resume starts
        self.last_ts = last_ts  # merge time of the last record decoded (a dead letter after it inherits it)
        self.emitted_ts = last_ts  # merge time of the last record handed out: what a resume starts from
        self.max_ts = last_ts  # the highest event time handed out (for the watermark-lag metric)


class EventTimeMerger:
    """Per-partition queues merged by (merge time, Kafka topic, partition, offset); resumable by `snapshot()`."""

    def __init__(self, parts: list[Part], resume: dict[str, Any] | None, merge_wait_s: float) -> None:
        resume = resume or {"seq": 0, "parts": {}}
        self.next_seq: int = resume["seq"]
        saved = {tuple(entry[:2]): entry[2:] for entry in resume["parts"]}
        self.queues: dict[Part, _Queue] = {}
        for part in parts:
            next_offset, last_ts = saved.get(part, (-1, 0))
            self.queues[part] = _Queue(next_offset, last_ts)
        self.merge_wait_s = merge_wait_s
        self._heap: list[tuple[int, str, int, int]] = []  # one head per non-empty queue

    def start_offset(self, part: Part) -> int:
        """Where to start reading `part`: after the last record handed out, or -1 for "no position yet"."""
        return self.queues[part].next_offset

    def last_ts(self, part: Part) -> int:
        return self.queues[part].last_ts

    def add(self, part: Part, offset: int, merge_ts: int, item: Event | Emitted) -> None:
        queue = self.queues[part]
        queue.eof = False
        queue.last_ts = merge_ts
        if not queue.items:
            heapq.heappush(self._heap, (merge_ts, part[0], part[1], offset))
        queue.items.append((merge_ts, offset, item))

    def mark_eof(self, part: Part) -> None:
        queue = self.queues.get(part)
        if queue is not None:
            queue.eof = True

    def _blocked(self, now: float, outage: bool) -> bool:
        """A partition with data in flight and nothing buffered might still deliver an earlier record.

        During a broker outage such a partition blocks without a time limit: its records are on their way.
        """
        for queue in self.queues.values():
            if not queue.items and not queue.eof and (outage or now - queue.empty_since < self.merge_wait_s):
                return True
        return False

    def pop_ready(self, max_items: int, now: float | None = None, outage: bool = False) -> list[Event | Emitted]:
        """Up to `max_items` records in merged order, each with its seq, as far as no partition blocks.

        Whether a partition blocks is asked of every queue once; after that only the queue just popped can
        change its answer (it blocks once it runs empty, not at its end, while `merge_wait_s` has not passed
        since, which is at once: the time is `now` throughout)."""
        now = time.monotonic() if now is None else now
        out: list[Event | Emitted] = []
        heap = self._heap
        if not heap or self._blocked(now, outage):
            return out
        waits = outage or self.merge_wait_s > 0
        queues = self.queues
        seq = self.next_seq
        while heap and len(out) < max_items:
            merge_ts, topic, partition, _ = heapq.heappop(heap)
            queue = queues[(topic, partition)]
            _, offset, item = queue.items.popleft()
            out.append(with_seq(item, seq) if type(item) is Event else item._replace(sort_key=(seq, 0)))
            seq += 1
            queue.next_offset = offset + 1
            queue.emitted_ts = merge_ts
            if merge_ts > queue.max_ts:
                queue.max_ts = merge_ts
            if queue.items:
                head_ts, head_offset, _ = queue.items[0]
                heapq.heappush(heap, (head_ts, topic, partition, head_offset))
            else:
                queue.empty_since = now
                if waits and not queue.eof:
                    break
        self.next_seq = seq
        return out

    def idle(self) -> bool:
        """Nothing buffered and every partition at its end."""
        return not self._heap and all(queue.eof for queue in self.queues.values())

    def snapshot(self) -> dict[str, Any]:
        return {"seq": self.next_seq,
                "parts": [[topic, partition, queue.next_offset, queue.emitted_ts]
                          for (topic, partition), queue in sorted(self.queues.items())]}
