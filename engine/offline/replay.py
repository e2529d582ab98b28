"""Replay: labeled history through the live pipeline, in event-time order.

The only differences from serving are the store (in-process, no idempotency
records), the clock check (off: history is old by definition) and the
model's explanations (off unless asked: no offline output reads them).
Backtest and training both read their features from here.

A long replay runs on two cores: a forked windows pass makes the store calls
ahead of scoring and a `PlaybackStore` hands its answers to the same
pipeline in this process (see `replay`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import sys
import threading
import time
import traceback
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from operator import attrgetter

import numpy as np

from engine.model.predictor import Model
from engine.offline.datasets import paused_cycle_collector
from engine.pipeline import Pipeline, Scored
from engine.rules.ruleset import RuleSet
from engine.transaction import Feedback, Recorded, Transaction
from engine.validation import InvalidTransaction
from engine.windows.memory import MemoryStore
from engine.windows.records import RecordWriter
from engine.windows.spec import FRAUD, GENUINE, BoundWindows, WindowPlan
from engine.windows.store import WindowsOutcome, WindowStore

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


#: Below this many transactions, replay runs in one process (starting a second costs more than it saves).
PARALLEL_MIN_ROWS = 20_000


def parallel_by_default(rows: int) -> bool:
    """Whether `replay` runs its windows pass in a second process when not told.

    Yes for a long replay on a machine with more than one core where
    processes can be forked (Linux); `RISK_REPLAY_PROCESSES=1` says no.
    """
    if os.environ.get("RISK_REPLAY_PROCESSES", "").strip() == "1":
        return False
    return rows >= PARALLEL_MIN_ROWS and (os.cpu_count() or 1) > 1 and "fork" in mp.get_all_start_methods()


def replay(
    transactions: Sequence[Transaction],
    ruleset: RuleSet,
    model: Model | None,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    labels: Sequence[LabelEvent] = (),
    parallel: bool | None = None,
    explain: bool = False,
    store: WindowStore | None = None,
) -> Iterator[tuple[int, Scored]]:
    """Yield (index, scored) for each valid transaction; invalid ones are counted in `stats`.

    Transactions (sorted by event time) are scored in batches with
    `Pipeline.score_batch` (the model runs once per batch); the answers are
    those of scoring them one by one. `labels` (from `label_events`) are fed
    through `Pipeline.feedback` as live labels would be: each before the
    first transaction at or after the time it became known, so a window sees
    only labels known at its transaction's time. The model's reviews and
    denies carry no contributions unless `explain` (no offline output
    reads them; on the handbook data they cost 8 % of the scoring side).

    `parallel` (default: `parallel_by_default`) splits the work over two
    processes: a forked windows pass runs the store calls (`add_to_windows`,
    `feedback`) on the in-process store ahead of scoring, and this process
    runs the very same pipeline on a `PlaybackStore` that answers each store
    call with the windows pass's answer to it. The answers are identical
    either way (tested); only the time differs.

    `store` replaces the replay's own store (and its windows pass): an
    `AnswerStore` holding windows computed elsewhere (the Spark engine).
    """
    stats = stats if stats is not None else ReplayStats()
    stats.first_errors = stats.first_errors or []
    if parallel is None:
        parallel = store is None and parallel_by_default(len(transactions))
    started = time.perf_counter()
    total = len(transactions)
    with paused_cycle_collector(), contextlib.ExitStack() as cleanup:
        if store is not None:
            pass
        elif parallel:
            store = cleanup.enter_context(PlaybackStore.forked(transactions, ruleset, batch_size, labels))
        else:
            store = replay_store(transactions, labels)
        pipeline = Pipeline(ruleset, model, store, check_clock=False, record=False, explain=explain)
        for due, first, end in _steps(transactions, labels, batch_size):
            for known, index, outcome in due:
                try:
                    pipeline.feedback(Feedback(transactions[index], outcome, known))
                except InvalidTransaction:
                    continue  # its transaction was rejected too
                stats.labels += 1
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
    stats.seconds = time.perf_counter() - started


def replay_store(transactions: Sequence[Transaction], labels: Sequence[LabelEvent]) -> MemoryStore:
    """The in-process store of a replay: no records, no wall-clock expiry, and no index of ids when none repeats.

    Every store call of a replay is a transaction (its id) or a label
    (`label ` + its transaction's id); when no transaction id repeats and no
    transaction has two labels, no event id can come twice.
    """
    ids = {t.transaction_id for t in transactions}
    new_ids = (
        len(ids) == len(transactions)
        and len({index for _, index, _ in labels}) == len(labels)
        and not any(i.startswith("label ") for i in ids)
    )
    return MemoryStore(remember_responses=False, expire_idle=False, new_ids=new_ids)


def _steps(
    transactions: Sequence[Transaction], labels: Sequence[LabelEvent], batch_size: int
) -> Iterator[tuple[Sequence[LabelEvent], int, int]]:
    """Replay's order of work: (labels to feed now, then the batch [first, end) to score).

    A batch stops where the next label becomes known, so that label is fed
    before the first transaction at or after its time. The windows pass and
    the scoring side of a parallel replay both follow this order.
    """
    total = len(transactions)
    next_label = 0
    event_time = attrgetter("event_time_ms")
    first = 0
    while first < total:
        end = min(first + batch_size, total)
        due_from = next_label
        if next_label < len(labels):
            now = transactions[first].event_time_ms
            while next_label < len(labels) and labels[next_label][0] <= now:
                next_label += 1
            if next_label < len(labels):
                end = bisect_left(transactions, labels[next_label][0], first + 1, end, key=event_time)
        yield labels[due_from:next_label], first, end
        first = end


class _ReplaySideStore:
    """What the two stores of a parallel replay share: no records, no fingerprints, nothing to connect or close."""

    budget_s = 0.0
    uses_fingerprints = False
    reads_groups = True
    records: RecordWriter | None = None

    def remember(self, transaction_id: str, fingerprint: str, response: Recorded) -> None:
        pass

    def warm_up(self, plan: WindowPlan | None = None) -> bool:
        return True

    def breakers(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


class AnswerStore(_ReplaySideStore):
    """A window store that answers each call with the raw windows computed elsewhere for it, in order.

    A windows pass made the same store calls on a `MemoryStore` (a forked
    process in a parallel replay, `PlaybackStore`; the per-entity jobs of the
    Spark engine, `engine.offline.spark`) and gives its answers, each with
    the id it was for; `apply` takes the next one and checks that it is for
    the same id, so the two sides cannot drift apart silently.
    """

    name = "answers"
    reads_groups = False  # the pipeline need not bind a transaction to window groups for it
    #: Who computed the answers, for the error when the two sides drift apart.
    origin = "windows pass"

    def __init__(self, answers: Sequence[tuple[str, tuple[int, ...]]] = ()) -> None:
        self._answers: Sequence[tuple[str, tuple[int, ...]]] = answers
        self._next = 0

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        while self._next == len(self._answers):  # a batch whose rows were all rejected sends no answer
            self._answers = self._receive()
            self._next = 0
        event_id, raw = self._answers[self._next]
        self._next += 1
        if event_id != bound.transaction_id:
            raise RuntimeError(f"{self.origin} out of step: it answered {event_id!r}, not {bound.transaction_id!r}")
        return WindowsOutcome(replay=None, raw=raw)

    def _receive(self) -> Sequence[tuple[str, tuple[int, ...]]]:
        """The next answers, when those given are used up (none: the two sides drifted apart)."""
        raise RuntimeError(f"{self.origin} out of step: no answer left")


class PlaybackStore(AnswerStore):
    """An `AnswerStore` fed by the windows pass of a parallel replay, in another process.

    The windows pass (`_windows_pass`, forked by `forked`) makes the same
    store calls in the same order and sends its answers a batch at a time.
    """

    name = "playback"
    origin = "replay windows pass"

    def __init__(self, conn: Connection, process: BaseProcess) -> None:
        super().__init__()
        self._conn = conn
        self._process = process

    @classmethod
    @contextlib.contextmanager
    def forked(
        cls, transactions: Sequence[Transaction], ruleset: RuleSet, batch_size: int, labels: Sequence[LabelEvent]
    ) -> Iterator[PlaybackStore]:
        """Fork the windows pass over these transactions and labels; stop it when done."""
        ctx = mp.get_context("fork")
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_windows_pass, args=(receiver, sender, transactions, ruleset, batch_size, labels), daemon=True
        )
        process.start()
        sender.close()
        try:
            yield cls(receiver, process)
        finally:
            receiver.close()
            if process.is_alive():
                process.terminate()
            process.join()

    def _receive(self) -> list[tuple[str, tuple[int, ...]]]:
        while not self._conn.poll(1.0):
            if not self._process.is_alive():
                raise RuntimeError(f"replay windows pass exited with code {self._process.exitcode}")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):  # OSError: it died in the middle of sending a batch
            self._process.join(5.0)
            raise RuntimeError(
                f"replay windows pass ended before replay did (exit code {self._process.exitcode})"
            ) from None
        if isinstance(message, str):
            raise RuntimeError(f"replay windows pass failed:\n{message}")
        answers: list[tuple[str, tuple[int, ...]]] = message
        return answers


class _RecordingStore(_ReplaySideStore):
    """The windows pass's store: an in-process store whose answers are also kept for the scoring side."""

    name = "recording"

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.answers: list[tuple[str, tuple[int, ...]]] = []

    def apply(self, plan: WindowPlan, bound: BoundWindows, fingerprint: str) -> WindowsOutcome:
        outcome = self._store.apply(plan, bound, fingerprint)
        self.answers.append((bound.transaction_id, outcome.raw))
        return outcome


#: Batches of answers the windows pass may run ahead of scoring (the rest of the time it waits).
AHEAD_BATCHES = 16


def _windows_pass(
    other_end: Connection,
    conn: Connection,
    transactions: Sequence[Transaction],
    ruleset: RuleSet,
    batch_size: int,
    labels: Sequence[LabelEvent],
) -> None:
    """The forked side of a parallel replay: every store call of the replay, in order, answered a batch at a time.

    A thread writes the answers to the pipe, so this pass keeps computing
    while scoring is busy, up to `AHEAD_BATCHES` ahead.
    """
    # The scoring side's end, inherited: closed here so that it is the only reader and
    # writing fails (rather than blocks forever) once the scoring side is gone.
    other_end.close()
    outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=AHEAD_BATCHES)
    sender = threading.Thread(target=_send_all, args=(conn, outbox), daemon=True)
    sender.start()
    try:
        store = _RecordingStore(replay_store(transactions, labels))
        pipeline = Pipeline(ruleset, None, store, check_clock=False, record=False)
        for due, first, end in _steps(transactions, labels, batch_size):
            for known, index, outcome in due:
                with contextlib.suppress(InvalidTransaction):
                    pipeline.feedback(Feedback(transactions[index], outcome, known))
            for txn in transactions[first:end]:
                with contextlib.suppress(InvalidTransaction):
                    pipeline.add_to_windows(txn)
            _post(outbox, sender, pickle.dumps(store.answers, pickle.HIGHEST_PROTOCOL))
            store.answers = []
    except _ScoringGone:
        pass  # nobody to answer: end quietly
    except BaseException:  # noqa: BLE001 - reported to the scoring side, which raises it
        with contextlib.suppress(_ScoringGone):
            _post(outbox, sender, pickle.dumps(traceback.format_exc()))
    finally:
        with contextlib.suppress(_ScoringGone):
            _post(outbox, sender, None)
        sender.join()  # it ends once everything is written, or when the pipe breaks
        conn.close()


class _ScoringGone(Exception):
    """The scoring side stopped reading (it ended early or died): the windows pass stops too."""


def _post(outbox: queue.Queue[bytes | None], sender: threading.Thread, message: bytes | None) -> None:
    """Queue a message for the sender thread; raise _ScoringGone once the sender has stopped."""
    while True:
        if not sender.is_alive():
            raise _ScoringGone
        try:
            outbox.put(message, timeout=0.5)
            return
        except queue.Full:
            continue


def _send_all(conn: Connection, outbox: queue.Queue[bytes | None]) -> None:
    """Write each message of the outbox to the pipe (the scoring side unpickles it) until None.

    Ends early when the pipe breaks (the scoring side is gone), which `_post` sees.
    """
    with contextlib.suppress(OSError):
        while (message := outbox.get()) is not None:
            conn.send_bytes(message)


def print_progress(done: int, total: int) -> None:
    """A one-line progress report on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r  replay [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")
