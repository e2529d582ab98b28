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
from collections.abc import Callable
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
__all__ = ["IdempotencyConflict", "InvalidTransaction", "Pipeline", "Scored", "Snapshot"]

#: Time kept for the model, rules and the response after the window store answers.
DEADLINE_MARGIN_S = 0.005


@dataclass(frozen=True, slots=True)
class Snapshot:
    ruleset: RuleSet
    model: Model | None  # None only offline, to compute features before a model exists
    feature_names: tuple[str, ...]  # numeric fields reported in responses, in a stable order


@dataclass(frozen=True, slots=True)
class Scored:
    result: ScoreResult
    replayed: bool  # a retry answered from the idempotency record
    fields: dict[str, Any]  # every field the rules saw (empty for a replay)


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
        on_degraded: Callable[[str, str], None] | None = None,
    ) -> None:
        self.snapshot = make_snapshot(ruleset, model)
        self.store = store
        self.limits = limits or Limits()
        self.clock = clock
        self.check_clock = check_clock
        self.record = record
        self.on_degraded = on_degraded or (lambda cause, detail: None)

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
        ruleset = snap.ruleset
        addr = validate(txn, self.limits, int(self.clock() * 1000) if self.check_clock else None)
        if addr is not None and (ip := str(addr)) != txn.ip:
            txn = replace(txn, ip=ip)  # one spelling per address, for windows and retries
        fields = ruleset.enricher.enrich(txn, addr)
        fields["attributes"] = dict(txn.attributes)
        plan = ruleset.windows
        bound = plan.bind(txn.transaction_id, txn.event_time_ms, fields)
        fingerprint = txn.fingerprint()

        reasons: list[Reason] = []
        windows_ok = True
        try:
            if time_left_s is not None and time_left_s < self.store.budget_s + DEADLINE_MARGIN_S:
                raise StoreUnavailable(f"{time_left_s * 1000:.0f} ms left before the caller's deadline")
            outcome = self.store.apply(plan, bound, fingerprint)
        except StoreUnavailable as exc:
            windows_ok = False
            fields.update(plan.missing())
            self.on_degraded("windows", str(exc))
        else:
            if outcome.replay is not None:
                return Scored(ScoreResult.from_json(outcome.replay), replayed=True, fields={})
            fields.update(plan.finish(outcome.raw))

        # The score is usable only when the model ran on complete inputs and gave a
        # number. Without windows it is not run (its window features would be NaN);
        # without a model (offline feature computation) there is no score either.
        # Either way rules on the score are skipped.
        model = snap.model
        score = float("nan")
        if model is not None and windows_ok:
            try:
                score = model.predict(fields)
            except Exception as exc:  # noqa: BLE001 - a broken model must not fail the payment
                self.on_degraded("model", f"{type(exc).__name__}: {exc}")
            else:
                if math.isnan(score):
                    self.on_degraded("model", "the model returned a non-finite score")
        score_ok = not math.isnan(score)
        model_failed = model is not None and windows_ok and not score_ok
        fields[SCORE] = score

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
            features={name: float(fields[name]) for name in snap.feature_names},
            elapsed_us=(time.perf_counter_ns() - started) // 1000,
            shadow=tuple(shadow),
        )
        if windows_ok and self.record:
            # The record is a second store call: skipped when it could outlast the
            # caller's deadline (a retry is then scored again, counting nothing twice).
            if deadline is not None and deadline - time.monotonic() < self.store.budget_s + DEADLINE_MARGIN_S:
                self.on_degraded("record", "skipped: too close to the caller's deadline")
            else:
                try:
                    self.store.remember(txn.transaction_id, fingerprint, result.to_json())
                except StoreUnavailable as exc:
                    self.on_degraded("record", str(exc))
        return Scored(result, replayed=False, fields=fields)

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
