"""The scoring pipeline: one code path for live serving, replay, backtest and training.

For each transaction, in this order: validation -> enrichment -> idempotency
check and windows (one store call) -> model score -> rules -> decision with
reasons -> record of the response for retries.

The rule set and model in use form one immutable `Snapshot`; `swap` replaces
it with a single reference assignment, so a request always sees one
consistent pair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.decision import decide
from engine.enrich import BOOL, NUMBER
from engine.model.predictor import Model
from engine.rules.evaluate import evaluate_rules
from engine.rules.ruleset import SCORE, RuleSet
from engine.transaction import Action, Reason, ReasonSource, ScoreResult, Transaction
from engine.validation import InvalidTransaction, Limits, validate
from engine.windows.store import IdempotencyConflict, StoreUnavailable, WindowStore

# The errors a door must handle, importable from here.
__all__ = ["BatchAnswer", "IdempotencyConflict", "InvalidTransaction", "Pipeline", "Scored", "Snapshot"]

#: Time kept for the model, rules and the response after the window store answers.
DEADLINE_MARGIN_S = 0.005


@dataclass(frozen=True, slots=True)
class Snapshot:
    ruleset: RuleSet
    model: Model | None  # None only offline, to compute features before a model exists
    feature_names: tuple[str, ...]  # numeric fields reported in responses, in a stable order


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
    score: float = float("nan")
    elapsed_ns: int = 0
    prepare_ns: int = 0
    store_ns: int = 0
    model_ns: int = 0


#: What `score_batch` gives for each transaction: its answer, or the error `score` would raise.
BatchAnswer = Scored | InvalidTransaction | IdempotencyConflict

#: Fills a batch answer's place until its transaction is concluded.
_PLACEHOLDER: Any = object()


def prepare(
    ruleset: RuleSet, txn: Transaction, limits: Limits, now_ms: int | None
) -> tuple[Transaction, dict[str, Any]]:
    """Validation and enrichment: the transaction in its canonical spelling and its field map.

    Raises InvalidTransaction. Shared by scoring and by the rule tests.
    """
    addr = validate(txn, limits, now_ms)
    if addr is not None and (ip := str(addr)) != txn.ip:
        txn = replace(txn, ip=ip)  # one spelling per address, for windows and retries
    fields = ruleset.enricher.enrich(txn, addr)
    fields["attributes"] = dict(txn.attributes)
    return txn, fields


def model_reasons(ruleset: RuleSet, score: float) -> list[Reason]:
    """The reason the model's thresholds add for a score (none for NaN or a low score)."""
    policy = ruleset.model_policy
    if math.isnan(score):
        return []
    if policy.deny_at is not None and score >= policy.deny_at:
        return [
            Reason(
                "MODEL_SCORE_HIGH",
                ReasonSource.MODEL,
                f"model score {score:.3f} >= deny threshold {policy.deny_at}",
                Action.DENY,
            )
        ]
    if policy.review_at is not None and score >= policy.review_at:
        return [
            Reason(
                "MODEL_SCORE_ELEVATED",
                ReasonSource.MODEL,
                f"model score {score:.3f} >= review threshold {policy.review_at}",
                Action.REVIEW,
            )
        ]
    return []


def _features(names: tuple[str, ...], fields: dict[str, Any]) -> dict[str, float]:
    """The numeric fields reported in a response, as floats, in `names` order (one C-level pass)."""
    return dict(zip(names, map(float, map(fields.__getitem__, names)), strict=True))


def make_snapshot(ruleset: RuleSet, model: Model | None) -> Snapshot:
    names = tuple(sorted(n for n, t in ruleset.catalog.items() if t in (NUMBER, BOOL)))
    return Snapshot(ruleset, model, names)


class Pipeline:
    """Scores transactions. Thread-safe: all state lives in the store.

    Live serving checks the event time against `clock` and records every
    response for retries; replay turns both off (`check_clock=False`,
    `record=False`) and is otherwise the very same code.
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
        on_degraded: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.snapshot = make_snapshot(ruleset, model)
        self.store = store
        self.limits = limits or Limits()
        self.clock = clock
        self.check_clock = check_clock
        self.record = record
        # on_degraded(cause, detail, kind): kind is the StoreUnavailable kind for store failures, '' otherwise
        self.on_degraded = on_degraded or (lambda cause, detail, kind: None)

    def swap(self, ruleset: RuleSet, model: Model | None) -> None:
        self.snapshot = make_snapshot(ruleset, model)

    def score(self, txn: Transaction, time_left_s: float | None = None) -> Scored:
        """Score one transaction.

        `time_left_s` is how long the caller will wait (its deadline); when it
        is shorter than the store's budget plus a margin, the store is not
        called and the answer is degraded rather than late.

        Raises InvalidTransaction (bad input) and IdempotencyConflict (an id
        reused with other content); every other failure degrades the answer
        instead of failing it.
        """
        started = time.perf_counter_ns()
        deadline = None if time_left_s is None else time.monotonic() + time_left_s
        snap = self.snapshot
        step = self._windows(snap, txn, time_left_s)
        if isinstance(step, Scored):
            return step
        if step.windows_ok:
            before_model = time.perf_counter_ns()
            step.score = self._predict_one(snap, step.fields)
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
        share = (time.perf_counter_ns() - started) // len(pending)
        for position, step in pending:
            out[position] = self._conclude(snap, step, step.elapsed_ns + share, None)
        pending.clear()

    def _windows(self, snap: Snapshot, txn: Transaction, time_left_s: float | None) -> Scored | _Pending:
        """Validation, enrichment, then the idempotency check and windows (one store call).

        Returns the recorded answer for a retry, else the transaction's fields
        with its windows (NaN when the store could not answer).
        """
        ruleset = snap.ruleset
        started = time.perf_counter_ns()
        txn, fields = prepare(ruleset, txn, self.limits, int(self.clock() * 1000) if self.check_clock else None)
        plan = ruleset.windows
        bound = plan.bind(txn.transaction_id, txn.event_time_ms, fields)
        # The fingerprint tells a retry from a reused id: only a store that keeps
        # idempotency records, or the record of the response, reads it.
        store = self.store
        fingerprint = txn.fingerprint() if self.record or getattr(store, "uses_fingerprints", True) else ""

        windows_ok = True
        before_store = time.perf_counter_ns()
        try:
            if time_left_s is not None and time_left_s < store.budget_s + DEADLINE_MARGIN_S:
                raise StoreUnavailable(f"{time_left_s * 1000:.0f} ms left before the caller's deadline", "deadline")
            outcome = store.apply(plan, bound, fingerprint)
        except StoreUnavailable as exc:
            windows_ok = False
            fields.update(plan.missing())
            self.on_degraded("windows", str(exc), exc.kind)
        else:
            if outcome.replay is not None:
                return Scored(ScoreResult.from_json(outcome.replay), replayed=True, fields={})
            plan.finish_into(outcome.raw, fields)
        done = time.perf_counter_ns()
        return _Pending(
            txn, fields, fingerprint, windows_ok, prepare_ns=before_store - started, store_ns=done - before_store
        )

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
        model = snap.model
        txn, fields, score, windows_ok = step.txn, step.fields, step.score, step.windows_ok
        score_ok = not math.isnan(score)
        model_failed = model is not None and windows_ok and not score_ok
        fields[SCORE] = score

        reasons: list[Reason] = []
        acting, shadow = evaluate_rules(ruleset, fields, txn.transaction_id, windows_ok, score_ok)
        reasons.extend(acting)
        reasons.extend(model_reasons(ruleset, score))
        if not windows_ok:
            reasons.append(self._fallback(ruleset, fields))
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
        )
        concluded = time.perf_counter_ns()
        if windows_ok and self.record:
            # The record is a second store call: skipped when it could outlast the
            # caller's deadline (a retry is then scored again, counting nothing twice).
            if deadline is not None and deadline - time.monotonic() < self.store.budget_s + DEADLINE_MARGIN_S:
                self.on_degraded("record", "skipped: too close to the caller's deadline", "deadline")
            else:
                try:
                    self.store.remember(txn.transaction_id, step.fingerprint, result.to_json())
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

    @staticmethod
    def _fallback(ruleset: RuleSet, fields: dict[str, Any]) -> Reason:
        policy = ruleset.degraded
        message = "frequency windows unavailable; decided by the degraded policy"
        for action, cond in ((Action.DENY, policy.deny_when), (Action.REVIEW, policy.review_when)):
            try:
                hit = cond is not None and cond(fields)
            except (ArithmeticError, TypeError, ValueError):
                hit = False
            if hit:
                return Reason("WINDOWS_UNAVAILABLE", ReasonSource.SYSTEM, message, action)
        return Reason("WINDOWS_UNAVAILABLE", ReasonSource.SYSTEM, message, Action.ALLOW)
