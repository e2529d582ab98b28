"""Replay: labeled history through the live pipeline, in event-time order.

The only difference from serving is the store (in-process, no idempotency
records) and the clock check (off: history is old by definition). Backtest
and training both read their features from here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from engine.model.predictor import Model
from engine.offline.datasets import paused_cycle_collector
from engine.pipeline import Pipeline, Scored
from engine.rules.ruleset import RuleSet
from engine.transaction import Transaction
from engine.validation import InvalidTransaction
from engine.windows.memory import MemoryStore


@dataclass
class ReplayStats:
    scored: int = 0
    rejected: int = 0
    first_errors: list[str] | None = None
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


#: Transactions scored per model call in replay.
BATCH_SIZE = 2048


def replay(
    transactions: Sequence[Transaction],
    ruleset: RuleSet,
    model: Model | None,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator[tuple[int, Scored]]:
    """Yield (index, scored) for each valid transaction; invalid ones are counted in `stats`.

    Transactions are scored in batches with `Pipeline.score_batch` (the model
    runs once per batch); the answers are those of scoring them one by one.
    """
    stats = stats if stats is not None else ReplayStats()
    stats.first_errors = stats.first_errors or []
    pipeline = Pipeline(ruleset, model, MemoryStore(remember_responses=False), check_clock=False, record=False)
    started = time.perf_counter()
    total = len(transactions)
    with paused_cycle_collector():
        for first in range(0, total, batch_size):
            batch = transactions[first : first + batch_size]
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
    stats.seconds = time.perf_counter() - started


def print_progress(done: int, total: int) -> None:
    """A one-line progress report on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r  replay [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")
