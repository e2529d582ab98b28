"""Replay: the parallel windows pass and the scoring side stay in step when rows are rejected."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engine.offline.datasets import PRESETS, table_to_dataset
from engine.offline.replay import AnswerStore, ReplayStats, label_events, replay
from engine.offline.synthetic import generate
from engine.rules.loader import load_ruleset
from engine.transaction import Transaction
from engine.windows.spec import BoundWindows
from tests.support import RULES


def _transactions_with_rejected_runs() -> tuple[list[Transaction], np.ndarray | None]:
    """Synthetic history where whole stretches of rows (longer than a batch) are rejected by validation."""
    rows = generate(days=6, users=80, seed=11)
    for i, row in enumerate(rows):
        if i % 7 == 0 or 300 <= i < 700:  # scattered rejections, and a stretch that fills whole batches
            row["merchant_id"] += " "  # a trailing space: rejected (docs/data.md, ids)
    dataset = table_to_dataset(pa.Table.from_pylist(rows), PRESETS["native"])
    return dataset.transactions, dataset.labels


def test_parallel_replay_with_rejected_rows_and_labels_matches_one_process() -> None:
    """Issue 24's crash: a batch whose rows were all rejected sent no answer; scoring indexed past it."""
    ruleset = load_ruleset(RULES)
    transactions, labels = _transactions_with_rejected_runs()
    events = label_events(transactions, labels, None, ruleset)
    assert events, "the rule set counts labels, so the replay feeds some back"
    results = {}
    for parallel in (False, True):
        stats = ReplayStats()
        out = [
            (i, s.result.decision, s.result.score, tuple(r.code for r in s.result.reasons))
            for i, s in replay(transactions, ruleset, None, stats, batch_size=64, labels=events, parallel=parallel)
        ]
        results[parallel] = (out, stats.scored, stats.rejected, stats.labels)
    assert results[True] == results[False]
    out, scored, rejected, _ = results[True]
    assert rejected >= 500 and scored == len(transactions) - rejected


def test_answer_store_skips_empty_batches_and_still_checks_ids() -> None:
    """Empty answer batches (every row of a batch rejected) are skipped; a drift still fails loudly."""
    batches: list[list[tuple[str, tuple[int, ...]]]] = [[], [("t1", (1,))], [], [], [("t2", (2,))], []]

    class Fed(AnswerStore):
        def _receive(self) -> list[tuple[str, tuple[int, ...]]]:
            if not batches:
                raise RuntimeError("no answer left")
            return batches.pop(0)

    store = Fed()
    plan = load_ruleset(RULES).windows
    assert store.apply(plan, BoundWindows("t1", 1, ()), "").raw == (1,)
    assert store.apply(plan, BoundWindows("t2", 2, ()), "").raw == (2,)
    with pytest.raises(RuntimeError, match="no answer left"):
        store.apply(plan, BoundWindows("t3", 3, ()), "")
    batches.append([("t9", (9,))])
    with pytest.raises(RuntimeError, match="out of step"):
        store.apply(plan, BoundWindows("t4", 4, ()), "")
