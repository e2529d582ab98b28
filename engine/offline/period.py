"""The period of an offline command (`--since`, `--until`): parsing the bounds and keeping the rows inside.

`since` is inclusive, `until` exclusive, both on the event time, written as
a date (`2018-07-01`, midnight UTC), a date-time (`2018-07-01T12:00:00Z`;
without a zone, UTC) or epoch milliseconds. Rows outside are dropped before
the replay, so windows start empty at `since` (the backtest's warm-up
warning says how long they take to fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from engine.offline.datasets import Dataset, DatasetError
from engine.offline.export import ExportError, parse_time


@dataclass(frozen=True)
class Period:
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def bounded(self) -> bool:
        return self.since_ms is not None or self.until_ms is not None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def parse_period(since: str | None, until: str | None) -> Period:
    """The period of `--since` and `--until` (either may be None); DatasetError for a bad bound."""
    bounds: list[int | None] = []
    for flag, text in (("--since", since), ("--until", until)):
        if text is None or not text.strip():
            bounds.append(None)
            continue
        try:
            bounds.append(parse_time(text))
        except ExportError as exc:
            raise DatasetError(f"{flag}: {exc}") from None
    period = Period(*bounds)
    if period.since_ms is not None and period.until_ms is not None and period.until_ms <= period.since_ms:
        raise DatasetError(f"--until ({until}) must be after --since ({since})")
    return period


def select_period(dataset: Dataset, period: Period, limit: int | None = None) -> Dataset:
    """The rows of `dataset` in the period (event time in [since, until)), then the first `limit` of them.

    DatasetError when no row is left, so that a mistyped bound is not a silent empty run.
    """
    if not period.bounded and limit is None:
        return dataset
    times = np.fromiter(
        (t.event_time_ms for t in dataset.transactions), dtype=np.int64, count=len(dataset.transactions)
    )
    keep = np.ones(len(times), dtype=bool)
    if period.since_ms is not None:
        keep &= times >= period.since_ms
    if period.until_ms is not None:
        keep &= times < period.until_ms
    index = np.flatnonzero(keep)
    if limit is not None:
        index = index[:limit]
    if period.bounded and len(index) == 0:
        span = f"the data runs from {_iso(int(times.min()))} to {_iso(int(times.max()))}" if len(times) else "no rows"
        raise DatasetError(f"no row of the data lies in the period ({span})")
    rows = index.tolist()
    return Dataset(
        transactions=[dataset.transactions[i] for i in rows],
        labels=dataset.labels[index] if dataset.labels is not None else None,
        label_times_ms=dataset.label_times_ms[index] if dataset.label_times_ms is not None else None,
    )
