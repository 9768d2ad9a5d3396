"""The one eviction rule of every in-memory cache in front of the state: keep the newest, drop the oldest.

ShardState's committed values, the documents a stage holds decoded (`documents.py`) and identity's decoded
entries are plain dicts, because a dict lookup is the cheapest thing a record can pay per read. A dict keeps
insertion order, so trimming its oldest entries needs no bookkeeping per hit. Trimming to three quarters,
never clearing, matters once the entities outgrow the cache (100,000 customers): a cache that clears when
full sends every hot key back to RocksDB at once.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["forget_oldest"]


def forget_oldest(cache: dict[Any, Any], capacity: int) -> list[Any]:
    """Trim `cache` to three quarters of `capacity`, oldest entries first (nothing if it holds no more); the keys
    dropped, for a cache that keeps something beside each entry (`documents.py` its sweep index's expiry)."""
    excess = len(cache) - capacity * 3 // 4
    if excess <= 0:
        return []
    dropped = list(itertools.islice(cache, excess))
    for key in dropped:
        del cache[key]
    return dropped
