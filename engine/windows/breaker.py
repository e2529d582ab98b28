"""Circuit breakers for the window store's Redis targets: one slow answer is not an outage.

A `Breaker` watches the calls to one target (a standalone Redis, or one
master of a Redis Cluster) over a rolling window of `window_s` seconds, in
one-second buckets:

- **closed** (normal): every call goes to Redis. The breaker opens when the
  window holds at least `min_failures` failures *and* they are at least
  `failure_rate` of its calls. A single timeout among hundreds of good calls
  (a scheduling hiccup, a busy Redis for a moment) fails that one call only.
- **open**: calls fail fast (`StoreUnavailable(kind='open')`), without
  waiting for a dead Redis, for `open_s`.
- **half-open**: after `open_s`, one call at a time goes through as a probe
  (the others still fail fast). A probe that succeeds closes the breaker (and
  clears the window); one that fails opens it again for `open_s`.

What counts as a failure is the caller's choice: the stores count timeouts
and connection errors measured on the socket (Redis's own latency: a socket
timeout fires only when no byte came back within the budget, however long a
starved thread then waits for the GIL), not errors of a single command.

Thread-safe; `allow`, `success` and `failure` take one short lock each.
State changes go to `on_change(name, old, new)`, for logs and metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
#: Gauge values of the states (risk_store_breaker_state).
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and for how long (defaults: README, "Operations")."""

    window_s: int = 10
    min_failures: int = 5
    failure_rate: float = 0.5
    open_s: float = 0.5

    def __post_init__(self) -> None:
        if self.window_s < 1 or self.min_failures < 1 or not 0.0 < self.failure_rate <= 1.0 or self.open_s <= 0:
            raise ValueError(f"invalid breaker policy: {self}")


class Breaker:
    """The circuit breaker of one target (module docstring)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.state = CLOSED
        self._open_until = 0.0
        self._probing = False
        self._probe_started = 0.0
        # Rolling window: per whole second, [calls, failures], in a ring of window_s slots.
        size = self.policy.window_s
        self._second = [-1] * size
        self._calls = [0] * size
        self._failures = [0] * size
        self.last_error = ""
        self.opened = 0  # times the breaker opened (for tests and Status)

    def allow(self) -> bool:
        """Whether a call may go to the target now (False: fail fast). A True in half-open is the probe."""
        if self.state == CLOSED:  # the common case, read without the lock
            return True
        with self._lock:
            now = self._clock()
            if self.state == OPEN:
                if now < self._open_until:
                    return False
                self._set(HALF_OPEN)
            if self.state == HALF_OPEN:
                # One probe at a time; a probe that never reported back (its thread died) is
                # replaced after open_s, so the breaker cannot stay half-open for good.
                if self._probing and now < self._probe_started + self.policy.open_s:
                    return False
                self._probing = True
                self._probe_started = now
                return True
            return True

    def success(self) -> None:
        with self._lock:
            if self.state == HALF_OPEN:
                self._probing = False
                self._clear()
                self._set(CLOSED)
                return
            self._bump(failed=False)

    def failure(self, error: str = "") -> None:
        with self._lock:
            if error:
                self.last_error = error
            if self.state == HALF_OPEN:
                self._probing = False
                self._trip()
                return
            if self.state == OPEN:
                return  # a call that started before the breaker opened
            self._bump(failed=True)
            calls, failures = self._window()
            if failures >= self.policy.min_failures and failures >= self.policy.failure_rate * calls:
                self._trip()

    def cancel(self) -> None:
        """Give back a probe that `allow` granted but the caller did not use (another target refused)."""
        with self._lock:
            if self.state == HALF_OPEN:
                self._probing = False

    def remaining_open_s(self) -> float:
        """How long calls still fail fast (0 when closed or ready to probe)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    # -- under the lock ------------------------------------------------------
    def _bump(self, failed: bool) -> None:
        """Count one call in the current second's slot."""
        now = int(self._clock())
        slot = now % self.policy.window_s
        if self._second[slot] != now:
            self._second[slot] = now
            self._calls[slot] = 0
            self._failures[slot] = 0
        self._calls[slot] += 1
        if failed:
            self._failures[slot] += 1

    def _window(self) -> tuple[int, int]:
        """(calls, failures) over the last window_s seconds."""
        oldest = int(self._clock()) - self.policy.window_s
        calls = failures = 0
        for i in range(self.policy.window_s):
            if self._second[i] > oldest:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def _clear(self) -> None:
        size = self.policy.window_s
        self._second = [-1] * size
        self._calls = [0] * size
        self._failures = [0] * size

    def _trip(self) -> None:
        self._open_until = self._clock() + self.policy.open_s
        self.opened += 1
        self._set(OPEN)

    def _set(self, state: str) -> None:
        old, self.state = self.state, state
        if old != state and self._on_change is not None:
            self._on_change(self.name, old, state)
