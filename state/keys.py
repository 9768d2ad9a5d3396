"""Key encoding shared by every operator: a one-byte (or short) prefix, an owner, and what it is about.

    owned_key(b"S", "store_1", "P1")   -> b"S" + b"store_1" + b"\x00" + b'"P1"'

The owner (a store, a customer or a device id) ends at a zero byte, so an owner's keys
never mix with those of an owner whose id merely starts the same way, and
decoding needs no knowledge of how long an id is. The subject is its JSON
text (products are strings or integers), so "1" and 1 stay apart.
"""

from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = b"\x00"


def owned_key(prefix: bytes, owner: str, subject: Any) -> bytes:
    return prefix + owner.encode() + SEPARATOR + orjson.dumps(subject)


def end_of(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (for scans)."""
    return prefix + b"\xff"
