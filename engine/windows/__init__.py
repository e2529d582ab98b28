"""Frequency (velocity) windows: what they mean and where they are kept.

`spec` defines a window and compiles a set of windows into a `WindowPlan`;
`memory` and `redis_store` keep the state with exactly the same semantics.

Semantics (the same in every store, see docs/windows.md):
- A window `d` of transaction `T` at event time `t` covers the events of the
  same entity with event time in the half-open interval `(t - d, t]`. `T` is
  inside its own windows, so a count is at least 1.
- Events are identified by transaction id: adding the same id again (a
  retry, a replay) replaces it instead of counting it twice.
- An event that arrives late (out of order) is counted in the windows of the
  events after it that arrive later, and reads its own window as of its event
  time: events with a later event time are not in it.
- When an event is added, the entity's events older than its time minus
  (longest window + `allowed_lateness`) are dropped: events up to
  `allowed_lateness` late are counted exactly.
- Sums, extremes and distinct counts see at most the newest
  `max_events_per_series` events of one entity; counts see all.
"""

from engine.windows.spec import Aggregate, BoundWindows, WindowPlan, WindowSpec
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowsOutcome, WindowStore

__all__ = [
    "Aggregate",
    "BoundWindows",
    "IdempotencyConflict",
    "StoreUnavailable",
    "WindowPlan",
    "WindowSpec",
    "WindowStore",
    "WindowsOutcome",
]
