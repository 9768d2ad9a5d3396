"""Structured logs: one JSON object a line on stderr, from the standard logging module.

    {"ts": "2026-11-25T18:00:00.123Z", "level": "warning", "logger": "omnitrigger.live",
     "msg": "brokers unreachable; waiting", "brokers": "kafka:9092"}

Fields passed as `extra={"fields": {...}}` are merged into the object.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

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
