"""Evaluating a rule set on one transaction's fields: which rules act, which only shadow.

The one place rules run, for live serving, replay, backtest and rule tests.
A rule acts when it is active and, under a gradual rollout, the transaction
falls in its share; otherwise its hit is recorded as a shadow hit, never part
of the decision. The share is chosen by a stable hash of the rule id and the
transaction id, so a retry lands in the same part and each rule samples its
own share independently of the others (`engine.rollout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.iso import CURRENCY_EXPONENTS
from engine.rollout import BUCKETS, rollout_bucket
from engine.rules.ruleset import Rule, RuleSet
from engine.transaction import Reason, ReasonSource


def acts_on(rule: Rule, transaction_id: str, rollout: bool | None = None) -> bool:
    """Whether an active rule acts on this transaction (always, unless it is rolling out).

    `rollout` pins the part of a rolling-out rule (a rule test's `rollout: in` or
    `out`) instead of the transaction's bucket.
    """
    if rule.mode != "active":
        return False
    if rule.rollout >= 100.0:
        return True
    if rollout is not None:
        return rollout
    return rollout_bucket(rule.id, transaction_id) < rule.rollout * (BUCKETS / 100)


def reason_message(rule: Rule, fields: Mapping[str, Any], base: str) -> str:
    """The rule's message (with its values, for a message that shows some); amounts in another
    currency say what they were compared as. Only called for a rule that fired."""
    message = rule.message if rule.template is None else rule.template.render(fields)
    if not rule.reads_amount or fields.get("currency", base) == base:
        return message
    currency = fields["currency"]
    digits = CURRENCY_EXPONENTS.get(currency, 2)
    return (
        f"{message} (amounts compared in {base}: {fields['amount_original']:,.{digits}f} {currency}"
        f" = {fields['amount']:,.{CURRENCY_EXPONENTS[base]}f} {base})"
    )


def evaluate_rules(
    ruleset: RuleSet,
    fields: Mapping[str, Any],
    transaction_id: str,
    windows_ok: bool,
    score_ok: bool,
    fallback: frozenset[str] = frozenset(),
    rollout: bool | None = None,
) -> tuple[list[Reason], list[Reason]]:
    """(acting reasons, shadow reasons) of the rules that fire.

    Rules that read a window are skipped when the windows are unavailable
    (unless every window they read is among `fallback`, the windows a
    degraded answer still has: engine.windows.fallback), rules that read the
    score when there is no score: they could only misread a missing value. A
    condition that fails at run time (e.g. a division by zero) is false.
    `rollout` pins the part of rolling-out rules (rule tests; see `acts_on`).
    """
    acting: list[Reason] = []
    shadow: list[Reason] = []
    base = ruleset.enricher.money.base
    complete = windows_ok and score_ok  # the common case: no rule is skipped
    for rule in ruleset.rules:
        if not complete and (
            (rule.uses_windows and not windows_ok and not rule.window_reads <= fallback)
            or (rule.uses_score and not score_ok)
        ):
            continue
        try:
            fired = rule.condition(fields)
        except (ArithmeticError, TypeError, ValueError):
            fired = False
        if fired:
            reason = Reason(
                rule.reason_code, ReasonSource.RULE, reason_message(rule, fields, base), rule.action, rule.id
            )
            (acting if acts_on(rule, transaction_id, rollout) else shadow).append(reason)
    return acting, shadow
