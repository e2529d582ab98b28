"""Rule tests: the examples written beside the rules, run before a rule set is accepted.

A test gives a transaction, the window values it sees (an entity without
history otherwise), optionally derived fields (e.g. `ip_country`) and a model
score, and the expected decision, reason codes and shadow hits. It runs
through the same enrichment, rule evaluation and decision code as live
traffic; only the window store and the model are replaced by the values the
test states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.decision import decide
from engine.pipeline import model_reasons, prepare
from engine.rules.evaluate import evaluate_rules
from engine.rules.ruleset import SCORE, RuleSet, RuleTest
from engine.transaction import Action
from engine.validation import InvalidTransaction, Limits


@dataclass(frozen=True, slots=True)
class TestOutcome:
    test: RuleTest
    decision: Action | None
    reasons: frozenset[str]
    shadow: frozenset[str]
    failure: str  # '' when the test passed

    def where_parts(self) -> tuple[str, int, int]:
        file, line, column = self.test.where.rsplit(":", 2)
        return file, int(line), int(column)


def _names(items: frozenset[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def run_rule_test(ruleset: RuleSet, test: RuleTest) -> TestOutcome:
    try:
        txn, fields = prepare(ruleset, test.transaction, Limits(), None)
    except InvalidTransaction as exc:
        return TestOutcome(test, None, frozenset(), frozenset(), f"test '{test.name}': invalid transaction: {exc}")
    fields.update(ruleset.windows.finish([0] * ruleset.windows.raw_size))
    fields.update(test.windows)
    fields.update(test.fields)
    # Derived features from what the test set, unless the test sets them itself.
    ruleset.derive(fields)
    fields.update(test.windows)
    fields.update(test.fields)
    score = math.nan if test.score is None else test.score
    fields[SCORE] = score
    acting, shadow = evaluate_rules(ruleset, fields, txn.transaction_id, True, not math.isnan(score))
    acting.extend(model_reasons(ruleset, score))
    decision, _ = decide(acting)
    codes = frozenset(r.code for r in acting)
    shadow_ids = frozenset(r.rule_id for r in shadow)
    problems = []
    if test.decision is not None and decision != test.decision:
        problems.append(f"expected {test.decision.name.lower()}, got {decision.name.lower()}")
    if test.reasons is not None and codes != test.reasons:
        problems.append(f"expected reasons [{_names(test.reasons)}], got [{_names(codes)}]")
    if test.shadow is not None and shadow_ids != test.shadow:
        problems.append(f"expected shadow hits [{_names(test.shadow)}], got [{_names(shadow_ids)}]")
    failure = f"test '{test.name}' failed: " + "; ".join(problems) if problems else ""
    return TestOutcome(test, decision, codes, shadow_ids, failure)


def run_rule_tests(ruleset: RuleSet) -> list[TestOutcome]:
    return [run_rule_test(ruleset, t) for t in ruleset.tests]
