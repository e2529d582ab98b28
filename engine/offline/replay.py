"""Replay: labeled history through the live pipeline, in event-time order.

The only difference from serving is the store (in-process, no idempotency
records) and the clock check (off: history is old by definition). Backtest
and training both read their features from here.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from engine.model.predictor import Model
from engine.offline.datasets import paused_cycle_collector
from engine.pipeline import Pipeline, Scored
from engine.rules.ruleset import RuleSet
from engine.transaction import Feedback, Transaction
from engine.validation import InvalidTransaction
from engine.windows.memory import MemoryStore
from engine.windows.spec import FRAUD, GENUINE

#: A label as replay feeds it: (known at, epoch ms; index of its transaction; outcome).
LabelEvent = tuple[int, int, str]


@dataclass
class ReplayStats:
    scored: int = 0
    rejected: int = 0
    labels: int = 0  # label feedback events replayed
    first_errors: list[str] | None = None
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


#: Transactions scored per model call in replay.
BATCH_SIZE = 2048


def label_events(
    transactions: Sequence[Transaction],
    labels: np.ndarray | None,
    label_times_ms: np.ndarray | None,
    ruleset: RuleSet,
) -> list[LabelEvent]:
    """The label feedback that replay must feed, in the order it became known.

    Only outcomes that some window of the rule set counts; a label becomes
    known at its own time when the data has one, else `label_delay` after
    its transaction (the rule set's setting). Unlabeled rows give none.
    """
    wanted = ruleset.windows.labels
    if labels is None or not wanted:
        return []
    delay = ruleset.label_delay_ms
    events: list[LabelEvent] = []
    for i in np.flatnonzero(~np.isnan(labels)).tolist():
        outcome = FRAUD if labels[i] >= 0.5 else GENUINE
        if outcome not in wanted:
            continue
        known = int(label_times_ms[i]) if label_times_ms is not None and label_times_ms[i] >= 0 else -1
        if known < 0:
            known = transactions[i].event_time_ms + delay
        events.append((known, i, outcome))
    events.sort()
    return events


def replay(
    transactions: Sequence[Transaction],
    ruleset: RuleSet,
    model: Model | None,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    labels: Sequence[LabelEvent] = (),
) -> Iterator[tuple[int, Scored]]:
    """Yield (index, scored) for each valid transaction; invalid ones are counted in `stats`.

    Transactions (sorted by event time) are scored in batches with
    `Pipeline.score_batch` (the model runs once per batch); the answers are
    those of scoring them one by one. `labels` (from `label_events`) are fed
    through `Pipeline.feedback` as live labels would be: each before the
    first transaction at or after the time it became known, so a window sees
    only labels known at its transaction's time.
    """
    stats = stats if stats is not None else ReplayStats()
    stats.first_errors = stats.first_errors or []
    pipeline = Pipeline(ruleset, model, MemoryStore(remember_responses=False), check_clock=False, record=False)
    started = time.perf_counter()
    total = len(transactions)
    next_label = 0
    event_time = attrgetter("event_time_ms")
    with paused_cycle_collector():
        first = 0
        while first < total:
            end = min(first + batch_size, total)
            if next_label < len(labels):
                now = transactions[first].event_time_ms
                while next_label < len(labels) and labels[next_label][0] <= now:
                    known, index, outcome = labels[next_label]
                    next_label += 1
                    try:
                        pipeline.feedback(Feedback(transactions[index], outcome, known))
                    except InvalidTransaction:
                        continue  # its transaction was rejected too
                    stats.labels += 1
                if next_label < len(labels):  # stop the batch where the next label becomes known
                    end = bisect_left(transactions, labels[next_label][0], first + 1, end, key=event_time)
            batch = transactions[first:end]
            for i, (txn, scored) in enumerate(zip(batch, pipeline.score_batch(batch), strict=True), first):
                if not isinstance(scored, Scored):
                    if not isinstance(scored, InvalidTransaction):
                        raise scored  # an id reused with other content (not with this store)
                    stats.rejected += 1
                    if len(stats.first_errors) < 10:
                        stats.first_errors.append(f"{txn.transaction_id}: {scored}")
                    continue
                stats.scored += 1
                if progress is not None and i % 50_000 == 0:
                    progress(i, total)
                yield i, scored
            first = end
    stats.seconds = time.perf_counter() - started


def print_progress(done: int, total: int) -> None:
    """A one-line progress report on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r  replay [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")
