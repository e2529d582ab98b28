"""The scoring pipeline: one code path for live serving, replay, backtest and training.

For each transaction, in this order: validation -> enrichment -> idempotency
check and windows (one store call) -> derived features -> model score (and a
challenger's) -> rules -> decision with reasons (and, for a review or deny the
model drives, its explanation) -> record of the response for retries.
`feedback` records a transaction's outcome, learned later, in the label
windows that count it.

When the store does not answer, the answer is degraded: the short windows a
serving process keeps of every call it scores (`engine.windows.fallback`)
stand in for the store's, rules on other windows are skipped, and the rule set's degraded
policy adds its reason. A caller whose deadline leaves no time for the store
is refused (`DeadlineTooClose`), never answered unchecked.

The rule set and model in use form one immutable `Snapshot`; `swap` replaces
it with a single reference assignment, so a request always sees one
consistent pair.

A snapshot may also hold a challenger model (`engine.model.registry`): it
scores the same fields after the champion. In shadow mode it never decides;
in split mode it decides the transactions whose stable bucket falls in its
share (when it could score them). Either way the answer records the other
model's version, score and the decision it would have given
(`ScoreResult.challenger`), and a failing challenger never fails or
degrades the answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from engine.decision import NO_THRESHOLDS, Thresholds, decide, model_reasons
from engine.enrich import BOOL, NUMBER, prepare
from engine.model.drift import DriftMonitor
from engine.model.predictor import Model, applicable_thresholds
from engine.model.registry import Challenger
from engine.rules.evaluate import evaluate_rules
from engine.rules.ruleset import SCORE, RuleSet
from engine.transaction import (
    Action,
    ChallengerResult,
    Feedback,
    FeedbackResult,
    Reason,
    ReasonSource,
    ScoreResult,
    Transaction,
)
from engine.validation import InvalidTransaction, Limits
from engine.windows.fallback import FallbackWindows
from engine.windows.spec import LABELS, BoundWindows
from engine.windows.store import IdempotencyConflict, ReadableStore, StoreUnavailable, WindowStore

# The errors a door must handle, importable from here.
__all__ = [
    "BatchAnswer",
    "DeadlineTooClose",
    "IdempotencyConflict",
    "InvalidTransaction",
    "Pipeline",
    "Scored",
    "Snapshot",
]

#: Time kept for the model, rules and the response after the window store answers.
DEADLINE_MARGIN_S = 0.005
#: Features named in the reason of a review or deny the model drove.
EXPLAIN_TOP_K = 3

_R = TypeVar("_R")


class DeadlineTooClose(Exception):
    """The caller's deadline leaves too little time for a properly scored answer (its windows need the store).

    Serving refuses such a call (RESOURCE_EXHAUSTED) rather than answer it
    without its checks: the gateway retries elsewhere or applies its own
    fallback, knowingly.
    """

    def __init__(self, time_left_s: float, needed_s: float) -> None:
        super().__init__(
            f"{time_left_s * 1000:.0f} ms left before the caller's deadline; a scored answer may need"
            f" {needed_s * 1000:.0f} ms (the window store's budget and a margin)"
        )
        self.time_left_s = time_left_s
        self.needed_s = needed_s


@dataclass(frozen=True, slots=True)
class Snapshot:
    ruleset: RuleSet
    model: Model | None  # None only offline, to compute features before a model exists
    feature_names: tuple[str, ...]  # numeric fields reported in responses, in a stable order
    challenger: Challenger | None = None  # a second model beside `model`, in shadow or split mode
    #: The score thresholds that apply to `model` and to the challenger's model (applicable_thresholds, once)
    thresholds: Thresholds = NO_THRESHOLDS
    challenger_thresholds: Thresholds = NO_THRESHOLDS

    def thresholds_of(self, model: Model | None) -> Thresholds:
        if self.challenger is not None and model is self.challenger.model:
            return self.challenger_thresholds
        return self.thresholds


#: The steps whose duration `Scored.timings_ns` reports, in order.
STEPS = ("prepare", "windows", "model", "rules", "record")


@dataclass(frozen=True, slots=True)
class Scored:
    result: ScoreResult
    replayed: bool  # a retry answered from the idempotency record
    fields: dict[str, Any]  # every field the rules saw (empty for a replay)
    #: ns spent in each of STEPS: validation + enrichment + binding, the window store
    #: call, the model, rules + decision + answer, the record; zeros where not measured
    timings_ns: tuple[int, ...] = (0, 0, 0, 0, 0)


@dataclass(slots=True)
class _Pending:
    """A transaction past the window store, waiting for the model, rules and decision."""

    txn: Transaction
    fields: dict[str, Any]
    fingerprint: str
    windows_ok: bool
    #: When the store did not answer: why (its message), and the windows read from the fallback instead.
    unavailable: str = ""
    fallback: frozenset[str] = frozenset()
    score: float = float("nan")
    elapsed_ns: int = 0
    prepare_ns: int = 0
    store_ns: int = 0
    model_ns: int = 0
    challenger_score: float = float("nan")
    dry_run: bool = False  # read-only: nothing recorded


#: What `score_batch` gives for each transaction: its answer, or the error `score` would raise.
BatchAnswer = Scored | InvalidTransaction | IdempotencyConflict

#: Fills a batch answer's place until its transaction is concluded.
_PLACEHOLDER: Any = object()


def _replayed(replay: object, kind: type[_R], parse: Callable[[str], _R]) -> _R:
    """A retry's recorded response: its JSON from Redis, the response itself from the in-process store."""
    if isinstance(replay, str):
        return parse(replay)
    if isinstance(replay, kind):
        return replay
    raise TypeError(f"the record of this id holds a {type(replay).__name__}, not a {kind.__name__}")


def _features(names: tuple[str, ...], fields: dict[str, Any]) -> dict[str, float]:
    """The numeric fields reported in a response, as floats, in `names` order."""
    return {name: float(fields[name]) for name in names}


def make_snapshot(ruleset: RuleSet, model: Model | None, challenger: Challenger | None = None) -> Snapshot:
    names = tuple(sorted(n for n, t in ruleset.catalog.items() if t in (NUMBER, BOOL)))
    return Snapshot(
        ruleset,
        model,
        names,
        challenger,
        applicable_thresholds(ruleset, model),
        applicable_thresholds(ruleset, challenger.model if challenger is not None else None),
    )


class Pipeline:
    """Scores transactions. Thread-safe: all state lives in the store.

    Live serving checks the event time against `clock`, records every
    response for retries and explains the model's reviews and denies; replay
    turns all three off (`check_clock=False`, `record=False`,
    `explain=False`: no offline output carries the contributions) and is
    otherwise the very same code.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        model: Model | None,
        store: WindowStore,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        check_clock: bool = True,
        record: bool = True,
        explain: bool = True,
        on_degraded: Callable[[str, str, str], None] | None = None,
        challenger: Challenger | None = None,
        fallback: FallbackWindows | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.snapshot = make_snapshot(ruleset, model, challenger)
        #: Live serving: keeps each scored row for the drift gauge (engine.model.drift), off the request path.
        self.drift = drift
        self.store = store
        #: Short windows kept in this process for when the store does not answer (serving only).
        self.fallback = fallback
        self.limits = limits or Limits()
        self.clock = clock
        self.check_clock = check_clock
        self.record = record
        self.explain = explain
        # Decided once for the store, which never changes: whether anything reads a
        # transaction's fingerprint (only a store that keeps idempotency records, or the
        # record of the response, tells a retry from a reused id with it), and whether the
        # store needs the transaction bound to window groups (one that replays answers does not).
        self._fingerprints = record or store.uses_fingerprints
        self._binds = store.reads_groups
        # on_degraded(cause, detail, kind): kind is the StoreUnavailable kind for store failures, '' otherwise
        self.on_degraded = on_degraded or (lambda cause, detail, kind: None)
        # A store that writes retry records behind the answer (engine/windows/records.py):
        # `remember` costs no round trip, so no deadline is too close for it, and records
        # it fails to write later are reported as degraded records.
        records = store.records
        self._records_behind = records is not None
        if records is not None:
            records.on_lost = lambda detail, kind: self.on_degraded("record", detail, kind)

    def swap(self, ruleset: RuleSet, model: Model | None, challenger: Challenger | None = None) -> None:
        self.snapshot = make_snapshot(ruleset, model, challenger)

    def score(self, txn: Transaction, time_left_s: float | None = None, dry_run: bool = False) -> Scored:
        """Score one transaction.

        `time_left_s` is how long the caller will wait (its deadline); when it
        is shorter than the store's budget plus a margin, DeadlineTooClose is
        raised before anything is counted: the call cannot be scored properly
        in time, and answering it without its windows would let a payment
        through unchecked because a process was busy.

        Raises InvalidTransaction (bad input), IdempotencyConflict (an id
        reused with other content) and DeadlineTooClose; a store or model that
        fails degrades the answer instead of failing it.

        `dry_run`: the same pipeline against live state, read-only: the
        windows are read (without this transaction in them) and nothing is
        written: no window, no retry record, no fallback window. The result
        says `dry_run`.
        """
        started = time.perf_counter_ns()
        deadline = None if time_left_s is None else time.monotonic() + time_left_s
        snap = self.snapshot
        step = self._windows(snap, txn, time_left_s, dry_run)
        if isinstance(step, Scored):
            return step
        if step.windows_ok:
            before_model = time.perf_counter_ns()
            step.score = self._predict_one(snap, step.fields)
            if snap.challenger is not None:
                step.challenger_score = self._predict_challenger(snap.challenger, (step,))[0]
            if self.drift is not None and snap.model is not None:
                self.drift.record(snap.model, step.fields, step.score)
            step.model_ns = time.perf_counter_ns() - before_model
        elapsed_ns = time.perf_counter_ns() - started
        return self._conclude(snap, step, elapsed_ns, deadline)

    def score_batch(self, transactions: Sequence[Transaction]) -> list[BatchAnswer]:
        """Score transactions in order, running the model once for the whole batch.

        The same steps as `score` (with no caller deadline): validation,
        enrichment and the window store for each transaction in order, then
        one model call for all of them, then rules, decision (and the record)
        for each in order. The answers are those of calling `score` on each
        in turn, except `elapsed_us` (here the transaction's own steps plus its
        share of the model call); a transaction `score` would refuse gets its
        exception in its place instead. Window state never depends on a
        decision, so scoring the model later changes nothing; with `record`
        on, a repeated transaction id first finishes the batch before it, so
        that it finds the record `score` would have found.
        """
        snap = self.snapshot
        out: list[BatchAnswer] = []
        pending: list[tuple[int, _Pending]] = []
        pending_ids: set[str] = set()
        for txn in transactions:
            if self.record and txn.transaction_id in pending_ids:
                self._finish_batch(snap, pending, out)
                pending_ids.clear()
            started = time.perf_counter_ns()
            try:
                step = self._windows(snap, txn, None)
            except (InvalidTransaction, IdempotencyConflict) as exc:
                out.append(exc.with_traceback(None))  # no frames kept alive (and no cycle through this one)
                continue
            if isinstance(step, Scored):
                out.append(step)
                continue
            step.elapsed_ns = time.perf_counter_ns() - started
            pending.append((len(out), step))
            pending_ids.add(txn.transaction_id)
            out.append(_PLACEHOLDER)
        self._finish_batch(snap, pending, out)
        return out

    def feedback(self, fb: Feedback, time_left_s: float | None = None) -> FeedbackResult:
        """Record a transaction's outcome in the label windows that count it, once.

        The transaction is validated and enriched as when it was scored (its
        event time is not checked against the clock: labels come late), and
        the outcome is added, at `known_at_ms`, to the label series of its
        entities. A retry with the same content is answered from the record
        (`duplicate`, even when its `known_at_ms` differs: the first stands); a
        different outcome for the same transaction is an IdempotencyConflict.
        Raises InvalidTransaction, IdempotencyConflict, DeadlineTooClose and
        StoreUnavailable: a label is not on a payment's path, so nothing is
        degraded, the caller retries.
        """
        ruleset = self.snapshot.ruleset
        if fb.outcome not in LABELS:
            raise InvalidTransaction("outcome", f"must be one of {', '.join(LABELS)}")
        txn, fields = prepare(ruleset.enricher, fb.transaction, self.limits, None)
        if fb.known_at_ms < txn.event_time_ms:
            raise InvalidTransaction("known_at", "lies before the transaction's event_time")
        if self.check_clock and fb.known_at_ms > self.clock() * 1000 + self.limits.max_event_lead_s * 1000:
            raise InvalidTransaction("known_at", f"lies more than {self.limits.max_event_lead_s:.0f} s in the future")
        fb = replace(fb, transaction=txn)
        plan = ruleset.windows
        bound = plan.bind_feedback(f"label {txn.transaction_id}", fb.known_at_ms, fields, fb.outcome)
        fingerprint = fb.fingerprint()
        store = self.store
        self._check_time_left(time_left_s)
        outcome = store.apply(plan, bound, fingerprint)
        if outcome.replay is not None:
            first = _replayed(outcome.replay, FeedbackResult, lambda text: FeedbackResult.from_json(text, False))
            return replace(first, duplicate=True)
        result = FeedbackResult(
            transaction_id=txn.transaction_id,
            outcome=fb.outcome,
            known_at_ms=fb.known_at_ms,
            duplicate=False,
            series_updated=sum(1 for bg in bound.groups if bg.add),
            ruleset_version=ruleset.version,
        )
        if self.record:
            try:
                store.remember(bound.transaction_id, fingerprint, result)
            except StoreUnavailable as exc:  # counted already; a retry re-adds the same event, once
                self.on_degraded("record", str(exc), exc.kind)
        return result

    def _finish_batch(
        self,
        snap: Snapshot,
        pending: list[tuple[int, _Pending]],
        out: list[BatchAnswer],
    ) -> None:
        """Score the pending transactions with one model call, then conclude each in order."""
        if not pending:
            return
        started = time.perf_counter_ns()
        with_windows = [step for _, step in pending if step.windows_ok]
        if snap.model is not None and with_windows:
            try:
                scores = snap.model.predict_many([step.fields for step in with_windows])
            except Exception:  # noqa: BLE001 - then each alone, exactly as `score` would
                for step in with_windows:
                    step.score = self._predict_one(snap, step.fields)
            else:
                for step, score in zip(with_windows, scores, strict=True):
                    step.score = score
                    if math.isnan(score):
                        self.on_degraded("model", "the model returned a non-finite score", "")
        if snap.challenger is not None and with_windows:
            for step, score in zip(with_windows, self._predict_challenger(snap.challenger, with_windows), strict=True):
                step.challenger_score = score
        share = (time.perf_counter_ns() - started) // len(pending)
        for position, step in pending:
            out[position] = self._conclude(snap, step, step.elapsed_ns + share, None)
        pending.clear()

    def _windows(
        self, snap: Snapshot, txn: Transaction, time_left_s: float | None, dry_run: bool = False
    ) -> Scored | _Pending:
        """Validation, enrichment, then the idempotency check and windows (one store call).

        Returns the recorded answer for a retry, else the transaction's fields
        with its windows (NaN when the store could not answer).
        """
        ruleset = snap.ruleset
        started = time.perf_counter_ns()
        txn, fields, bound = self._bind(ruleset, txn)
        plan = ruleset.windows
        store = self.store
        fingerprint = txn.fingerprint() if self._fingerprints and not dry_run else ""
        if dry_run and not isinstance(store, ReadableStore):
            raise InvalidTransaction("dry_run", f"the {store.name} window store cannot read without writing")

        windows_ok = True
        unavailable = ""
        fallback: frozenset[str] = frozenset()
        self._check_time_left(time_left_s)
        before_store = time.perf_counter_ns()
        try:
            if dry_run:
                assert isinstance(store, ReadableStore)
                outcome = store.read(plan, bound)
            else:
                outcome = store.apply(plan, bound, fingerprint)
        except StoreUnavailable as exc:
            windows_ok = False
            unavailable = f"{store.name}: {exc.kind}"
            fields.update(plan.missing())
            self.on_degraded("windows", str(exc), exc.kind)
            if self.fallback is not None:
                fallback = self.fallback.read_into(plan, txn.transaction_id, txn.event_time_ms, fields, fingerprint)
        else:
            if outcome.replay is not None:
                return Scored(_replayed(outcome.replay, ScoreResult, ScoreResult.from_json), replayed=True, fields={})
            if self.fallback is not None and not dry_run:
                self.fallback.add(plan, txn.transaction_id, txn.event_time_ms, fields, fingerprint)
            plan.finish_into(outcome.raw, fields)
        if ruleset.features:
            ruleset.derive(fields)
        done = time.perf_counter_ns()
        return _Pending(
            txn,
            fields,
            fingerprint,
            windows_ok,
            unavailable,
            fallback,
            prepare_ns=before_store - started,
            store_ns=done - before_store,
            dry_run=dry_run,
        )

    def _bind(self, ruleset: RuleSet, txn: Transaction) -> tuple[Transaction, dict[str, Any], BoundWindows]:
        """Validation, enrichment and the transaction's place in each window group."""
        txn, fields = prepare(
            ruleset.enricher, txn, self.limits, int(self.clock() * 1000) if self.check_clock else None
        )
        if not self._binds:
            return txn, fields, BoundWindows(txn.transaction_id, txn.event_time_ms, ())
        return txn, fields, ruleset.windows.bind(txn.transaction_id, txn.event_time_ms, fields)

    def add_to_windows(self, txn: Transaction) -> None:
        """Only what changes window state: validation, enrichment and the store call, nothing read back.

        The windows pass of a parallel replay (`engine.offline.replay`) runs
        this ahead of scoring, in another process, with the same store calls
        in the same order as `score_batch`. Raises InvalidTransaction.
        """
        ruleset = self.snapshot.ruleset
        txn, _, bound = self._bind(ruleset, txn)
        self.store.apply(ruleset.windows, bound, txn.fingerprint() if self._fingerprints else "")

    def _check_time_left(self, time_left_s: float | None) -> None:
        """Raise DeadlineTooClose when the caller cannot wait for a store call and the rest of the pipeline."""
        needed = self.store.budget_s + DEADLINE_MARGIN_S
        if time_left_s is not None and time_left_s < needed:
            raise DeadlineTooClose(time_left_s, needed)

    def _predict_one(self, snap: Snapshot, fields: dict[str, Any]) -> float:
        """The model's score for one transaction with complete windows (NaN when it fails)."""
        # The score is usable only when the model ran on complete inputs and gave a
        # number. Without windows it is not run (its window features would be NaN);
        # without a model (offline feature computation) there is no score either.
        # Either way rules on the score are skipped.
        model = snap.model
        if model is None:
            return float("nan")
        try:
            score = model.predict(fields)
        except Exception as exc:  # noqa: BLE001 - a broken model must not fail the payment
            self.on_degraded("model", f"{type(exc).__name__}: {exc}", "")
            return float("nan")
        if math.isnan(score):
            self.on_degraded("model", "the model returned a non-finite score", "")
        return score

    def _conclude(self, snap: Snapshot, step: _Pending, elapsed_ns: int, deadline: float | None) -> Scored:
        """Rules, decision with reasons, and the record of the response for retries."""
        started = time.perf_counter_ns()
        ruleset = snap.ruleset
        # The model that decides (the champion, or a split challenger) and the other one.
        model, score, other, other_score, challenger_decided = self._roles(snap, step)
        txn, fields, windows_ok = step.txn, step.fields, step.windows_ok
        score_ok = not math.isnan(score)
        model_failed = model is not None and windows_ok and not score_ok
        fields[SCORE] = score

        reasons: list[Reason] = []
        acting, shadow = evaluate_rules(ruleset, fields, txn.transaction_id, windows_ok, score_ok, step.fallback)
        reasons.extend(acting)
        for reason in model_reasons(snap.thresholds_of(model), score):
            reasons.append(self._explain(model, reason, fields) if model is not None and self.explain else reason)
        if not windows_ok:
            reasons.append(self._degraded_reason(ruleset, fields, step))
        if model_failed:
            reasons.append(
                Reason(
                    "MODEL_UNAVAILABLE",
                    ReasonSource.SYSTEM,
                    "the model could not score; rules on the score were skipped",
                    Action.ALLOW,
                )
            )

        decision, ordered = decide(reasons)
        result = ScoreResult(
            transaction_id=txn.transaction_id,
            decision=decision,
            score=score,
            reasons=ordered,
            ruleset_version=ruleset.version,
            model_version=model.version if model is not None else "",
            degraded=not windows_ok or model_failed,
            features=_features(snap.feature_names, fields),
            elapsed_us=(elapsed_ns + time.perf_counter_ns() - started) // 1000,
            shadow=tuple(shadow),
            challenger=self._other_result(snap, step, other, other_score, challenger_decided),
            ruleset_digest=ruleset.digest,
            enrichment=ruleset.enricher.describe(fields),
            dry_run=step.dry_run,
        )
        concluded = time.perf_counter_ns()
        if windows_ok and self.record and not step.dry_run:
            # The record is a second store call: skipped when it could outlast the
            # caller's deadline (a retry is then scored again, counting nothing twice).
            # Written behind the answer, it never waits for the store.
            if (
                not self._records_behind
                and deadline is not None
                and deadline - time.monotonic() < self.store.budget_s + DEADLINE_MARGIN_S
            ):
                self.on_degraded("record", "skipped: too close to the caller's deadline", "deadline")
            else:
                try:
                    self.store.remember(txn.transaction_id, step.fingerprint, result)
                except StoreUnavailable as exc:
                    self.on_degraded("record", str(exc), exc.kind)
        timings = (
            step.prepare_ns,
            step.store_ns,
            step.model_ns,
            concluded - started,
            time.perf_counter_ns() - concluded,
        )
        return Scored(result, replayed=False, fields=fields, timings_ns=timings)

    def _explain(self, model: Model, reason: Reason, fields: dict[str, Any]) -> Reason:
        """A review or deny the model drove, with the features that pushed its score up most."""
        try:
            contributions = model.explain(fields, EXPLAIN_TOP_K)
        except Exception as exc:  # noqa: BLE001 - an explanation must not fail the payment
            self.on_degraded("explain", f"{type(exc).__name__}: {exc}", "")
            return reason
        return replace(reason, contributions=contributions)

    def _predict_challenger(self, challenger: Challenger, steps: Sequence[_Pending]) -> list[float]:
        """The challenger's scores for transactions with complete windows: NaN where it fails, never an error."""
        try:
            if len(steps) == 1:
                return [challenger.model.predict(steps[0].fields)]
            return challenger.model.predict_many([step.fields for step in steps])
        except Exception as exc:  # noqa: BLE001 - a broken challenger must not touch the champion's answer
            if len(steps) > 1:  # then each alone, exactly as `score` would
                return [self._predict_challenger(challenger, (step,))[0] for step in steps]
            self.on_degraded("challenger", f"{type(exc).__name__}: {exc}", "")
            return [float("nan")]

    @staticmethod
    def _roles(snap: Snapshot, step: _Pending) -> tuple[Model | None, float, Model | None, float, bool]:
        """(deciding model, its score, other model, its score, whether the challenger decides).

        The challenger decides in split mode when the transaction's stable
        bucket falls in its share and it gave a score; otherwise the champion.
        """
        challenger = snap.challenger
        if challenger is None:
            return snap.model, step.score, None, float("nan"), False
        if challenger.decides(step.txn.transaction_id) and not math.isnan(step.challenger_score):
            return challenger.model, step.challenger_score, snap.model, step.score, True
        return snap.model, step.score, challenger.model, step.challenger_score, False

    def _other_result(
        self, snap: Snapshot, step: _Pending, model: Model | None, score: float, challenger_decided: bool
    ) -> ChallengerResult | None:
        """The model that did not decide: its score and the decision it would have given (same rules, not acted on)."""
        if snap.challenger is None or model is None:
            return None
        ruleset = snap.ruleset
        fields = {**step.fields, SCORE: score}
        acting, _ = evaluate_rules(
            ruleset, fields, step.txn.transaction_id, step.windows_ok, not math.isnan(score), step.fallback
        )
        acting.extend(model_reasons(snap.thresholds_of(model), score))
        if not step.windows_ok:
            acting.append(self._degraded_reason(ruleset, fields, step))
        decision, _ = decide(acting)
        return ChallengerResult(model.version, score, decision, challenger_decided, snap.challenger.mode)

    @staticmethod
    def _degraded_reason(ruleset: RuleSet, fields: dict[str, Any], step: _Pending) -> Reason:
        """The SYSTEM reason of an answer without the store's windows: what it read instead, and the policy's action."""
        policy = ruleset.degraded
        if step.fallback:
            read = (
                f"{len(step.fallback)} short window(s) read from this process's own memory"
                " (only what this process scored itself); rules on them applied, rules on other"
                " windows skipped"
            )
        else:
            read = "rules on windows skipped"
        message = f"frequency windows unavailable ({step.unavailable}); {read}; decided by the degraded policy"
        for action, cond in ((Action.DENY, policy.deny_when), (Action.REVIEW, policy.review_when)):
            try:
                hit = cond is not None and cond(fields)
            except (ArithmeticError, TypeError, ValueError):
                hit = False
            if hit:
                return Reason("WINDOWS_UNAVAILABLE", ReasonSource.SYSTEM, message, action)
        return Reason("WINDOWS_UNAVAILABLE", ReasonSource.SYSTEM, message, Action.ALLOW)
