"""Structured logs: one JSON object a line on stderr, from the standard logging module.

    {"ts": "2026-11-25T18:00:00.123Z", "level": "warning", "logger": "omnitrigger.live",
     "msg": "brokers unreachable; waiting", "brokers": "kafka:9092"}

Fields passed as `extra={"fields": {...}}` are merged into the object.

`Throttle` is a logging filter for chatty sources (librdkafka's clients
repeat a failing reconnect every few hundred ms): the first line of a kind
goes through, then at most one a `interval_s`; what it held back is counted
and said (`"suppressed": N` on the next line of that kind, or a line
"N similar warnings suppressed" from `flush_all`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from typing import Any, Callable

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            document.update(fields)
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def setup(level: int = logging.INFO) -> None:
    """Send the `omnitrigger` loggers to stderr as JSON lines (once; later calls only set the level)."""
    logger = logging.getLogger("omnitrigger")
    logger.setLevel(level)
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False


_SUMMARY = "_omnitrigger_throttle_summary"


def _default_kind(record: logging.LogRecord) -> tuple[Any, ...]:
    """librdkafka's lines ("%s [%s] %s", facility, client, text) by facility; other lines by message and code."""
    fields = getattr(record, "fields", None)
    code = fields.get("code") if isinstance(fields, dict) else None
    if record.msg == "%s [%s] %s" and isinstance(record.args, tuple) and record.args:
        return record.name, "librdkafka", record.args[0]
    return record.name, str(record.msg), code


class Throttle(logging.Filter):
    """Let the first record of each kind through, then at most one a `interval_s`; count and report the rest."""

    _all: "weakref.WeakSet[Throttle]" = weakref.WeakSet()

    def __init__(self, interval_s: float = 60.0,
                 kind: Callable[[logging.LogRecord], tuple[Any, ...]] = _default_kind) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.kind = kind
        self._lock = threading.Lock()
        # kind -> [last let through (monotonic), held back since, logger name, level, message]
        self._kinds: dict[tuple[Any, ...], list[Any]] = {}
        Throttle._all.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        kind = self.kind(record)
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(kind)
            if state is not None and now - state[0] < self.interval_s:
                state[1] += 1
                return False
            held = state[1] if state is not None else 0
            self._kinds[kind] = [now, 0, record.name, record.levelno, str(record.msg)]
        if held:
            fields = getattr(record, "fields", None)
            record.fields = {**(fields if isinstance(fields, dict) else {}), "suppressed": held}
        return True

    def suppressed(self) -> int:
        """Records held back and not yet reported."""
        with self._lock:
            return sum(state[1] for state in self._kinds.values())

    def flush(self, force: bool = False) -> None:
        """Log "N similar warnings suppressed" for each kind that held some back over a full interval (or now)."""
        now = time.monotonic()
        due = []
        with self._lock:
            for kind, state in self._kinds.items():
                if state[1] and (force or now - state[0] >= self.interval_s):
                    due.append((state[2], state[3], state[4], state[1], round(now - state[0], 1), kind))
                    state[0], state[1] = now, 0
        for name, level, message, count, since_s, kind in due:
            what = f"{kind[2]} lines" if kind[1] == "librdkafka" else repr(message)
            logging.getLogger(name).log(
                level, f"{count} similar warnings suppressed ({what} in the last {since_s:g} s)",
                extra={"fields": {"suppressed": count, "since_s": since_s}, _SUMMARY: True})

    @classmethod
    def flush_all(cls, force: bool = False) -> None:
        """`flush` every throttle of this process."""
        for throttle in list(cls._all):
            throttle.flush(force)


def throttled(name: str, interval_s: float = 60.0) -> logging.Logger:
    """The logger `name` with a `Throttle` on it (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(existing, Throttle) for existing in logger.filters):
        logger.addFilter(Throttle(interval_s))
    return logger
