"""An operator's event-time clock for one shard, and the expiry sweep it drives.

Every stateful operator keeps "now" as the latest event time it has seen (never the wall clock:
the same input gives the same state), saved in the shard's meta so a resumed shard has it, and
every so often removes from disk the keys whose event-time expiry has passed (`ShardState.sweep`).
This is that logic once:

    clock = ShardClock(state, sweep_every_ms=3_600_000)
    clock.advance(event.ts_ms)   # per event; never goes back
    clock.save()                 # per batch
    clock.sweep_if_due()         # where the operator may lose expired keys

`sweep_margin_ms` keeps keys that far past their expiry (the rules sweep a day behind, so a late
visit still finds its views); `remember_sweep` keeps the last sweep's time in the meta too, for
operators whose reads see expired keys until they are swept (then the sweep times must be the same
on a resumed run as on an uninterrupted one).
"""

from __future__ import annotations

from omnitrigger.state.shard_state import ShardState

_CLOCK = b"clock"
_SWEPT = b"swept"


class ShardClock:
    def __init__(self, state: ShardState, sweep_every_ms: int | None = None, sweep_margin_ms: int = 0,
                 remember_sweep: bool = False) -> None:
        self.state = state
        self.sweep_every_ms = sweep_every_ms
        self.sweep_margin_ms = sweep_margin_ms
        self.remember_sweep = remember_sweep
        saved = state.get_meta(_CLOCK)
        self.now_ms = int(saved) if saved else 0
        swept = state.get_meta(_SWEPT) if remember_sweep else None
        self.swept_at_ms = int(swept) if swept else (0 if remember_sweep else self.now_ms)

    def advance(self, ts_ms: int) -> bool:
        """Move to `ts_ms` if it is later; whether it moved."""
        if ts_ms > self.now_ms:
            self.now_ms = ts_ms
            return True
        return False

    def save(self) -> None:
        self.state.put_meta(_CLOCK, b"%d" % self.now_ms)

    def sweep_if_due(self) -> int | None:
        """Remove expired keys from disk once the clock has moved `sweep_every_ms` since the last sweep;
        the expiry cutoff swept to (for the owner's documents too, state/documents.py), or None."""
        if self.sweep_every_ms is None or self.now_ms - self.swept_at_ms < self.sweep_every_ms:
            return None
        cutoff = self.now_ms - self.sweep_margin_ms
        self.state.sweep(cutoff)
        self.swept_at_ms = self.now_ms
        if self.remember_sweep:
            self.state.put_meta(_SWEPT, b"%d" % self.now_ms)
        return cutoff


def saved_clock(state: ShardState) -> int:
    """A shard's clock as its operator last saved it (0: none yet), for readers of a finished run's state."""
    saved = state.get_meta(_CLOCK)
    return int(saved) if saved else 0
