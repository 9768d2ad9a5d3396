"""Key encoding shared by every operator: a one-byte (or short) prefix, an owner, and what it is about.

    owned_key(b"V", "cus_...", "P1")   -> b"V" + b"cus_..." + b"\x00" + b'"P1"'
    owner_prefix(b"V", "cus_...")       -> b"V" + b"cus_..." + b"\x00"  (scan every key of that owner)

The owner (a customer or device id) ends at a zero byte, so an owner's keys
never mix with those of an owner whose id merely starts the same way, and
decoding needs no knowledge of how long an id is. The subject is its JSON
text (products are strings or integers), so "1" and 1 stay apart.
"""

from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = b"\x00"


def owner_prefix(prefix: bytes, owner: str) -> bytes:
    return prefix + owner.encode() + SEPARATOR


def owned_key(prefix: bytes, owner: str, subject: Any) -> bytes:
    return prefix + owner.encode() + SEPARATOR + orjson.dumps(subject)


def subject_of(key: bytes, prefix_length: int) -> Any:
    """The subject of a key made by `owned_key`, given the length of its `owner_prefix`."""
    return orjson.loads(key[prefix_length:])


def split_owned_key(key: bytes, prefix_length: int = 1) -> tuple[str, Any]:
    """(owner, subject) of a key made by `owned_key` with a prefix of `prefix_length` bytes."""
    owner, _, subject = key[prefix_length:].partition(SEPARATOR)
    return owner.decode(), orjson.loads(subject)


def end_of(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (for scans)."""
    return prefix + b"\xff"
