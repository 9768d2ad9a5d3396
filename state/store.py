"""The key-value store interface that operator state is written against.

Small on purpose: point reads, one atomic batch write, ordered range scans and
range deletes are all RocksDB needs to offer, and all a second backend (an
in-memory one for a notebook, say) would have to implement.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Protocol


class KeyValueStore(Protocol):
    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, or None."""

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The values under `keys`, in order (one batched lookup)."""

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply puts (a value) and deletes (None) atomically."""

    def scan(self, start: bytes, end: bytes, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Key-ordered pairs with start <= key < end."""

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key with start <= key < end."""

    def close(self) -> None:
        """Flush and release the store."""
