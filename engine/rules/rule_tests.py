"""Rule tests: the examples written beside the rules (the `tests` section), run before a rule set is accepted.

A test gives a transaction, the window values it sees (an entity without
history otherwise), optionally derived fields (e.g. `ip_country`) and a model
score, and the expected decision, reason codes and shadow hits. It runs
through the same enrichment, rule evaluation and decision code as live
traffic; only the window store and the model are replaced by the values the
test states. `parse_tests` reads the section; `run_rule_tests` runs it.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.decision import decide, model_reasons, thresholds
from engine.enrich import BOOL, FIELDS, NUMBER, STRING, Money, prepare
from engine.iso import CURRENCY_EXPONENTS
from engine.rules.errors import Collector
from engine.rules.evaluate import evaluate_rules
from engine.rules.ruleset import SCORE, RuleSet, RuleTest
from engine.rules.source import Located
from engine.transaction import Action, Channel, Transaction
from engine.validation import InvalidTransaction, Limits


@dataclass(frozen=True, slots=True)
class TestOutcome:
    test: RuleTest
    decision: Action | None
    reasons: frozenset[str]
    shadow: frozenset[str]
    failure: str  # '' when the test passed
    #: Ids of every rule that fired, acting or in shadow: the rules this test is an example of.
    fired: frozenset[str] = frozenset()

    def where_parts(self) -> tuple[str, int, int]:
        file, line, column = self.test.where.rsplit(":", 2)
        return file, int(line), int(column)


def _names(items: frozenset[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def run_rule_test(ruleset: RuleSet, test: RuleTest) -> TestOutcome:
    try:
        txn, fields = prepare(ruleset.enricher, test.transaction, Limits(), None)
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
    acting, shadow = evaluate_rules(
        ruleset, fields, txn.transaction_id, True, not math.isnan(score), rollout=test.rollout
    )
    policy = ruleset.model_policy  # a rule test has no model: the rule set's thresholds alone
    acting.extend(model_reasons(thresholds((policy.review_at, policy.deny_at)), score))
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
    failure = ""
    if problems:
        # The shadow hits too, even when the test expects none: a rule meant to act may be in
        # shadow, or out of its rollout share (pin it with `rollout: in`).
        failure = (
            f"test '{test.name}' failed: " + "; ".join(problems) + f" (shadow rules that fired: {_names(shadow_ids)})"
        )
    fired = frozenset(r.rule_id for r in (*acting, *shadow) if r.rule_id)
    return TestOutcome(test, decision, codes, shadow_ids, failure, fired)


def run_rule_tests(ruleset: RuleSet) -> list[TestOutcome]:
    return [run_rule_test(ruleset, t) for t in ruleset.tests]


_TEST_KEYS = ("name", "transaction", "windows", "fields", "score", "rollout", "expect")
#: A test's `rollout`: every rolling-out rule acts (`in`) or is in shadow (`out`), whatever the transaction's bucket.
_ROLLOUT = {"in": True, "out": False}
_TXN_KEYS = (
    "transaction_id",
    "event_time",
    "amount",
    "currency",
    "user_id",
    "card_id",
    "device_id",
    "ip",
    "country",
    "merchant_id",
    "merchant_category",
    "channel",
    "attributes",
)
_TEST_EPOCH_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z, when a test gives no event_time


def _test_transaction(b: Collector, node: Located, tname: str, money: Money) -> Transaction | None:
    b.unknown_keys(node, _TXN_KEYS, f"the transaction of test '{tname}'")
    currency = str(node.get("currency", money.base))
    if currency not in CURRENCY_EXPONENTS:
        b.err(node.value_at("currency"), f"test '{tname}': {currency!r} is not an ISO 4217 currency code")
        return None
    amount = node.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1e15:
        b.err(
            node.value_at("amount") if "amount" in node else (node.line, node.column),
            f"test '{tname}': the transaction needs an 'amount' in major units (e.g. 12.50)",
        )
        return None
    when = node.get("event_time")
    event_ms = _TEST_EPOCH_MS
    if when is not None:
        try:
            parsed = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise ValueError("no time zone")
            event_ms = int(parsed.timestamp() * 1000)
        except ValueError:
            b.err(
                node.value_at("event_time"),
                f"test '{tname}': 'event_time' must be ISO 8601 with a zone, e.g. 2026-01-01T03:00:00Z",
            )
            return None
    channel_text = str(node.get("channel", "unspecified"))
    channel = next((c for c in Channel if c.value == channel_text), None)
    if channel is None:
        b.err(
            node.value_at("channel"), f"test '{tname}': 'channel' must be one of {', '.join(c.value for c in Channel)}"
        )
        return None
    attrs = node.get("attributes", {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str | int | float) for v in attrs.values()):
        b.err(node.value_at("attributes"), f"test '{tname}': 'attributes' must map names to plain values")
        return None
    strings = {
        k: str(node.get(k, ""))
        for k in ("user_id", "card_id", "device_id", "ip", "country", "merchant_id", "merchant_category")
    }
    if not strings["user_id"] and not strings["card_id"]:
        strings["card_id"] = "test-card"
    return Transaction(
        transaction_id=str(node.get("transaction_id", "test-" + hashlib.sha256(tname.encode()).hexdigest()[:16])),
        event_time_ms=event_ms,
        amount_minor=round(float(amount) * 10 ** CURRENCY_EXPONENTS[currency]),
        currency=currency,
        channel=channel,
        attributes=tuple(sorted((str(k), str(v)) for k, v in attrs.items())),
        **strings,
    )


def parse_tests(
    b: Collector,
    nodes: list[tuple[str, Located, int, int]],
    money: Money,
    catalog: Mapping[str, str],
    window_names: frozenset[str],
) -> list[RuleTest]:
    out: list[RuleTest] = []
    seen: dict[str, str] = {}
    for file, node, line, col in nodes:
        b.file = file
        b.unknown_keys(node, _TEST_KEYS, "a rule test")
        tname = node.get("name")
        if not isinstance(tname, str) or not tname.strip():
            b.err((line, col), "a rule test needs a 'name'")
            continue
        if tname in seen:
            b.err(node.value_at("name"), f"duplicate test name '{tname}' (first in {seen[tname]})")
            continue
        seen[tname] = f"{file}:{node.value_at('name')[0]}"
        txn_node = node.get("transaction")
        if not isinstance(txn_node, Located):
            b.err(node.key_at("name"), f"test '{tname}' needs a 'transaction' mapping (amount, currency, card_id, ...)")
            continue
        txn = _test_transaction(b, txn_node, tname, money)
        windows: dict[str, float] = {}
        raw_windows = node.get("windows")
        if raw_windows is None:
            raw_windows = Located()
            raw_windows.key_pos, raw_windows.value_pos = {}, {}
        elif not isinstance(raw_windows, Located):
            b.err(node.value_at("windows"), f"test '{tname}': 'windows' must map window names to values")
            raw_windows = Located()
            raw_windows.key_pos, raw_windows.value_pos = {}, {}
        for wname, value in raw_windows.items():
            if wname not in window_names:
                close = difflib.get_close_matches(wname, list(window_names), n=1)
                b.err(
                    raw_windows.key_at(wname),
                    f"test '{tname}': unknown window '{wname}'",
                    f"did you mean '{close[0]}'?" if close else "",
                )
            elif isinstance(value, bool) or not isinstance(value, int | float):
                b.err(raw_windows.value_at(wname), f"test '{tname}': window '{wname}' must be a number")
            else:
                windows[wname] = float(value)
        fields: dict[str, Any] = {}
        raw_fields = node.get("fields")
        if raw_fields is None:
            pass
        elif isinstance(raw_fields, Located):
            for fname, value in raw_fields.items():
                kind = catalog.get(fname)
                if kind is None or fname in window_names or fname == SCORE:
                    close = difflib.get_close_matches(fname, [n for n in FIELDS], n=1)
                    b.err(
                        raw_fields.key_at(fname),
                        f"test '{tname}': '{fname}' is not a derived field",
                        f"did you mean '{close[0]}'?"
                        if close
                        else "windows go under 'windows', the score under 'score'",
                    )
                elif _kind_of(value) != kind:
                    b.err(raw_fields.value_at(fname), f"test '{tname}': '{fname}' is a {kind}, got {value!r}")
                else:
                    fields[fname] = value
        else:
            b.err(node.value_at("fields"), f"test '{tname}': 'fields' must map field names to values")
        score = node.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
            b.err(node.value_at("score"), f"test '{tname}': 'score' must be a probability between 0 and 1")
            continue
        rollout = None
        if "rollout" in node:
            rollout = _ROLLOUT.get(str(node["rollout"]).lower()) if not isinstance(node["rollout"], bool) else None
            if rollout is None:
                b.err(
                    node.value_at("rollout"),
                    f"test '{tname}': 'rollout' must be 'in' (rolling-out rules act) or 'out' (they are in shadow)",
                )
                continue
        expect = node.get("expect")
        if not isinstance(expect, Located) or not expect:
            b.err(node.key_at("name"), f"test '{tname}' needs an 'expect' mapping with 'decision' and/or 'reasons'")
            continue
        b.unknown_keys(expect, ("decision", "reasons", "shadow"), f"the expectation of test '{tname}'")
        decision = None
        if "decision" in expect:
            text = str(expect["decision"])
            decision = Action[text.upper()] if text in ("allow", "review", "deny") else None
            if decision is None:
                b.err(expect.value_at("decision"), f"test '{tname}': 'decision' must be allow, review or deny")
                continue
        sets: dict[str, frozenset[str] | None] = {"reasons": None, "shadow": None}
        for key in sets:
            if key in expect:
                items = expect[key]
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    b.err(expect.value_at(key), f"test '{tname}': '{key}' must be a list (of reason codes / rule ids)")
                    continue
                sets[key] = frozenset(items)
        if txn is None:
            continue
        out.append(
            RuleTest(
                name=tname,
                where=f"{file}:{node.value_at('name')[0]}:{node.value_at('name')[1]}",
                transaction=txn,
                windows=windows,
                fields=fields,
                score=None if score is None else float(score),
                decision=decision,
                reasons=sets["reasons"],
                shadow=sets["shadow"],
                rollout=rollout,
            )
        )
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    return STRING
