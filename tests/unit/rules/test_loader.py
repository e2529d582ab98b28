"""Rule set checks: every error with file, line and column; the condition language's types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.rules import RuleSetInvalid, load_ruleset
from engine.rules.expr import ExprError, compile_condition
from tests.support import ROOT, RULES

HEADER = 'version: "t1"\nwindows:\n  - {name: card_count_1h, entity: card_id, aggregate: count, duration: 1h}\n'


def errors_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(tmp_path)
    return [f"{e.line}:{e.column}: {e.message}" + (f" ({e.hint})" if e.hint else "") for e in exc.value.errors]


def test_shipped_rules_check_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "rules", "check", str(RULES)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: rule set 2026.12.06-1" in proc.stdout and "25 tests passed" in proc.stdout


def test_unknown_field_points_at_the_name_with_a_hint(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        HEADER
        + 'rules:\n  - id: r1\n    condition: "amout > 5"\n    action: deny\n    reason_code: X\n    message: m\n',
    )
    assert errs == ["6:17: in rule 'r1': unknown field 'amout' (did you mean 'amount'?)"]


def test_type_errors_and_bad_values_all_reported_at_once(tmp_path: Path) -> None:
    text = HEADER + (
        "rules:\n"
        "  - id: r1\n"  # line 5
        "    condition: country > 5\n"  # line 6
        "    action: block\n"  # line 7
        "    reason_code: lower\n"  # line 8
        "    message: m\n"
        "  - id: r1\n"  # line 10
        "    condition: amount > 1\n"
        "    action: deny\n"
        "    reason_code: X\n"
        "    message: m\n"
        "  - id: r2\n"  # line 15
        "    condition: card_count_1h\n"
        "    action: review\n"
        "    reason_code: Y\n"
        "    message: m\n"
        "    severity: high\n"  # line 20
    )
    errs = errors_of(tmp_path, text)
    assert "6:16: in rule 'r1': '>' compares numbers, got string and number" in errs
    assert "7:13: rule 'r1': 'action' must be allow, review or deny, got 'block'" in errs
    assert "8:18: rule 'r1': 'reason_code' must be UPPER_SNAKE_CASE, got 'lower'" in errs
    assert any(e.startswith("10:9: duplicate rule id 'r1'") for e in errs)
    assert "16:16: in rule 'r2': a condition must be true or false, this one is a number" in errs
    assert any(e.startswith("20:5: unknown key 'severity' in a rule") for e in errs)


def test_window_errors(tmp_path: Path) -> None:
    text = (
        'version: "t1"\n'
        "windows:\n"
        "  - {name: a1, entity: cardid, aggregate: count, duration: 1h}\n"
        "  - {name: a2, entity: card_id, aggregate: median, duration: 1h}\n"
        "  - {name: a3, entity: card_id, aggregate: count, duration: 100d}\n"
        "  - {name: a4, entity: card_id, aggregate: sum, field: country, duration: 1h}\n"
        "  - {name: amount, entity: card_id, aggregate: count, duration: 1h}\n"
    )
    errs = errors_of(tmp_path, text)
    assert any(e.startswith("3:24: window 'a1': 'entity'") and "did you mean 'card_id'" in e for e in errs)
    assert any(e.startswith("4:44: window 'a2': 'aggregate' must be one of") for e in errs)
    assert "5:61: window 'a3': 'duration' '100d' is out of range: it must be between 1m and 90d" in errs
    assert any(e.startswith("6:56: window 'a4': 'sum' needs a numeric 'field'") for e in errs)
    assert any(e.startswith("7:12: window name 'amount' is reserved") for e in errs)


def test_reserved_window_names_and_bad_rates(tmp_path: Path) -> None:
    text = (
        'version: "t1"\n'
        "currency: {base: EUR, rates: {USD: .inf, CNY: .nan, JPY: 0}}\n"
        "windows:\n"
        "  - {name: attributes, entity: card_id, aggregate: count, duration: 1h}\n"
        "  - {name: score, entity: card_id, aggregate: count, duration: 1h}\n"
        "  - {name: lambda, entity: card_id, aggregate: count, duration: 1h}\n"
    )
    errs = errors_of(tmp_path, text)
    for code in ("USD", "CNY", "JPY"):
        assert any(f"the rate of {code} must be a positive, finite number" in e for e in errs), errs
    for name in ("attributes", "score", "lambda"):
        assert any(f"window name '{name}' is reserved" in e for e in errs), errs


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, 'version: "t1"\nrules: [\n  - id: x\n')
    assert len(errs) == 1 and errs[0].split(":")[0] in {"3", "4"} and "invalid YAML" in errs[0]


def test_missing_version_and_degraded_policy_may_not_read_windows(tmp_path: Path) -> None:
    window = "  - {name: card_count_1h, entity: card_id, aggregate: count, duration: 1h}\n"
    errs = errors_of(tmp_path, "degraded:\n  review_when: card_count_1h > 3\nwindows:\n" + window)
    assert any("no 'version'" in e for e in errs)
    assert any(e.startswith("2:16: in degraded.review_when: unknown field 'card_count_1h'") for e in errs)


def test_rules_check_cli_fails_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        HEADER + 'rules:\n  - id: r1\n    condition: "amount >"\n    action: deny\n    reason_code: X\n    message: m\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "rules", "check", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"{tmp_path / 'r.yaml'}:6:" in proc.stdout and "syntax error" in proc.stdout


CATALOG = {"amount": "number", "country": "string", "is_night": "bool", "card_count_1h": "number", "score": "number"}


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("amount >= 10 and not is_night", {"amount": 10, "is_night": False}, True),
        ("amount >= 10 and not is_night", {"amount": 10, "is_night": True}, False),
        ("country in ['US', 'CA'] or amount * 2 > 100", {"country": "DE", "amount": 51}, True),
        ("country not in ['US']", {"country": "US"}, False),
        ("1 < card_count_1h <= 3", {"card_count_1h": 3}, True),
        ("amount / card_count_1h > 2", {"amount": 5, "card_count_1h": 0}, False),
        # a zero divisor gives a missing value: only its own comparison is false
        ("amount / card_count_1h > 2 or amount >= 5", {"amount": 5, "card_count_1h": 0}, True),
        ("amount / card_count_1h <= 2", {"amount": 5, "card_count_1h": 0}, False),
        ("score > 0.5", {"score": float("nan")}, False),
        ("-amount < -5", {"amount": 6}, True),
        ("attributes.mcc == '5967'", {"attributes": {"mcc": "5967"}}, True),
        ("attributes.mcc == '5967'", {"attributes": {}}, False),
        ("is_night == true", {"is_night": True}, True),
    ],
)
def test_language_semantics(text: str, fields: dict, expected: object) -> None:
    assert compile_condition(text, CATALOG).fn(fields) is expected


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "amount.__class__",
        "(lambda: 1)() == 1",
        "[x for x in [1]] == 1",
        "country[0] == 'U'",
        "amount ** 2 > 1",
        "amount if is_night else 0",
        "country in country",
        "f['amount'] > 1",
        "amount > 1; True",
        "country in ['US'] == 'US'",
        "amount in [1, 2] < 3",
        " and ".join(["amount > 1"] * 300),
        "(" * 250 + "amount > 1" + ")" * 250,
        "-" * 1900 + "amount < 1",
    ],
)
def test_anything_outside_the_language_is_refused(text: str) -> None:
    with pytest.raises(ExprError):
        compile_condition(text, CATALOG)
