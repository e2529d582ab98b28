"""The window store interface shared by the Redis and in-process stores.

A store does two things for a transaction, atomically and in one call:
check the idempotency record, and (for a new transaction) add the event to
the windows of each of its entities and read them back. A second call
remembers the response for retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.transaction import Recorded
from engine.windows.records import RecordWriter
from engine.windows.spec import BoundWindows, WindowPlan

#: What made a store unavailable (`StoreUnavailable.kind`).
UNAVAILABLE_KINDS = ("timeout", "connection", "open", "deadline", "other")


class StoreUnavailable(Exception):
    """The store could not answer within its budget (down, slow, broken).

    `kind` says why: 'timeout', 'connection', 'open' (failing fast: the
    target's circuit breaker is open, engine.windows.breaker), 'deadline'
    (not called: the caller's deadline was too close) or 'other'.
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind if kind in UNAVAILABLE_KINDS else "other"


class IdempotencyConflict(Exception):
    """The transaction id was seen before with different content."""

    def __init__(self, transaction_id: str) -> None:
        super().__init__(f"transaction_id {transaction_id!r} was already scored with different content")
        self.transaction_id = transaction_id


@dataclass(frozen=True, slots=True)
class WindowsOutcome:
    """What `apply` found: a stored response to replay, or the raw window values."""

    #: The remembered response, for a retry: its JSON from Redis, the response itself
    #: (`Recorded.packed().unpacked()`) from the in-process store.
    replay: str | Any | None
    raw: tuple[int, ...]  # one integer per stored window (plan.raw_size), when not a replay


class WindowStore(Protocol):
    """Keeps window state and idempotency records (see engine.windows for semantics).

    Besides its calls, a store declares what it does as data (read once by
    the pipeline and the server, never probed): `uses_fingerprints`,
    `reads_groups` and `records` (class attributes or properties).
    """

    name: str
    #: The longest one call may take; a caller with less time left skips the store.
    budget_s: float

    @property
    def uses_fingerprints(self) -> bool:
        """Whether `apply` reads the fingerprint (a store that keeps idempotency records tells a retry
        from a reused id with it); when False and nothing records answers, it is not computed."""
        ...

    @property
    def reads_groups(self) -> bool:
        """Whether `apply` reads the transaction's window groups (`BoundWindows.groups`); a store that
        plays back answers computed elsewhere does not, and the pipeline skips binding."""
        ...

    @property
    def records(self) -> RecordWriter | None:
        """The writer of retry records behind the answer (`remember` then costs no round trip and reports
        the records it loses through `records.on_lost`), or None: `remember` writes them itself."""
        ...

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        """Idempotency check, then add the event and read its windows, atomically.

        Raises IdempotencyConflict when the id was seen with another
        fingerprint, StoreUnavailable when the store cannot answer.
        """
        ...

    def remember(self, transaction_id: str, fingerprint: str, response: Recorded) -> None:
        """Keep the response of a scored transaction (or recorded label) for its retries."""
        ...

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        """Connect (and load the plan's scripts) before the first call needs it; False when it does not answer."""
        ...

    def breakers(self) -> dict[str, str]:
        """Each remote target's circuit breaker state (closed, half_open, open); {} for a store without one."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ReadableStore(Protocol):
    """A store that can read a transaction's windows without writing anything (dry runs)."""

    def read(self, plan: WindowPlan, bound: BoundWindows) -> WindowsOutcome:
        """The windows as `apply` would read them, minus the transaction itself: no group added to, no record."""
        ...
