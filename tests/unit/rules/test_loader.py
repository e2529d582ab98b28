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
    assert "ok: rule set 2026.12.06-2" in proc.stdout and "34 tests passed" in proc.stdout


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


# --- every error at once, each with a hint for the habits of other languages ----------------------------


def test_a_missing_message_and_a_type_error_are_reported_in_one_run(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        HEADER
        + "rules:\n"
        + "  - id: no_message\n"  # line 5
        + '    condition: "card_count_1h >= 5"\n'
        + "    action: deny\n"
        + "    reason_code: A\n"
        + "  - id: typed\n"  # line 9
        + '    condition: "country > 5"\n'
        + "    action: review\n"
        + "    reason_code: B\n"
        + "    message: m\n"
        + "  - id: no_message_bad_condition\n"  # line 14: a missing key no longer hides its condition
        + '    condition: "amount >= 1,000"\n'
        + "    action: review\n"
        + "    reason_code: C\n",
    )
    assert errs == [
        "5:5: rule 'no_message' has no 'message' (a sentence for the reviewer; it may show values:"
        ' "{card_count_10m} payments in 10 minutes")',
        "10:17: in rule 'typed': '>' compares numbers, got string and number",
        "14:5: rule 'no_message_bad_condition' has no 'message' (a sentence for the reviewer; it may show values:"
        ' "{card_count_10m} payments in 10 minutes")',
        "15:27: in rule 'no_message_bad_condition': '1,000' is not a number: a comma separates list items"
        " (write 1000 or 1_000)",
    ]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (
            "country = 'BR' AND amount > 10",
            [
                "6:25: in rule 'r1': '=' is not a comparison in the rule language"
                " (write '==' to compare, e.g. country == 'BR')",
                "6:32: in rule 'r1': 'AND' is not a word of the rule language (write 'and' in lower case)",
            ],
        ),
        (
            "amount > 1 && (card_count_1h > 2 || amount <> 3)",
            [
                "6:28: in rule 'r1': '&&' is not an operator of the rule language (write 'and')",
                "6:50: in rule 'r1': '||' is not an operator of the rule language (write 'or')",
                "6:60: in rule 'r1': '<>' is not an operator of the rule language (write '!=' for 'not equal')",
            ],
        ),
        (
            "amount >= 1,000",
            ["6:27: in rule 'r1': '1,000' is not a number: a comma separates list items (write 1000 or 1_000)"],
        ),
        (
            "merchant_category == 5732",
            [
                "6:38: in rule 'r1': '==' compares a string with a number"
                " ('merchant_category' is text: quote the value, merchant_category == '5732')"
            ],
        ),
        (
            "ip_country == 'UK'",
            [
                "6:31: in rule 'r1': 'ip_country' is never 'UK', so this can never be true"
                " (the ISO 3166-1 code of the United Kingdom is 'GB', not 'UK')"
            ],
        ),
        (
            "country in ['DE', 'UK']",
            [
                "6:17: in rule 'r1': 'country' is never 'UK', so this can never be true"
                " (the ISO 3166-1 code of the United Kingdom is 'GB', not 'UK')"
            ],
        ),
        ("country == BR", ["6:28: in rule 'r1': unknown field 'BR' (a value is quoted: 'BR')"]),
        (
            "!ip_is_private",
            ["6:17: in rule 'r1': '!' is not an operator of the rule language (write 'not', e.g. not ip_is_private)"],
        ),
        (
            "device_id == null",
            [
                "6:30: in rule 'r1': 'null' is not a value of the rule language (test a value that was not sent"
                " with 'is missing', e.g. device_id is missing)"
            ],
        ),
    ],
)
def test_habits_from_other_languages_get_a_hint_at_their_column(
    tmp_path: Path, condition: str, expected: list[str]
) -> None:
    rule = f'rules:\n  - id: r1\n    condition: "{condition}"\n    action: review\n    reason_code: X\n    message: m\n'
    assert errors_of(tmp_path, HEADER + rule) == expected


def test_durations_written_as_people_say_them_get_the_spelling_to_use(tmp_path: Path) -> None:
    text = (
        'version: "t1"\n'
        "allowed_lateness: 10 mins\n"
        "windows:\n"
        "  - {name: a1, entity: card_id, aggregate: count, duration: 1hr}\n"
        "  - {name: a2, entity: card_id, aggregate: count, duration: 2 weeks}\n"
        "  - {name: a3, entity: card_id, aggregate: count, duration: 1.5h}\n"
        "  - {name: a4, entity: card_id, aggregate: count, duration: 10}\n"
    )
    errs = errors_of(tmp_path, text)
    assert errs == [
        "2:19: 'allowed_lateness': '10 mins' is not a duration (write '10m')",
        "4:61: window 'a1': 'duration' '1hr' is not a duration (write '1h')",
        "5:61: window 'a2': 'duration' '2 weeks' is not a duration (write '14d')",
        "6:61: window 'a3': 'duration' '1.5h' is not a duration (write '90m' (whole numbers only))",
        "7:61: window 'a4': 'duration' 10 is not a duration (add a unit: '10m', '10h' or '10d'"
        " (a whole number and one of s, m, h, d: '90s', '10m', '24h', '30d'))",
    ]


def test_a_broken_list_entry_names_its_own_file_and_line_not_an_unknown_list(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ranges.txt").write_text("10.0.0.0/8\n# a comment\n  192.168.1.0/33\n")
    errs = errors_of(
        tmp_path,
        HEADER
        + "lists:\n"
        + "  blocked_ip_ranges: {kind: cidr, file: lists/ranges.txt}\n"
        + "  sanctioned: {kind: country, values: [KP, UK]}\n"
        + "rules:\n"
        + "  - id: r1\n"
        + '    condition: "ip in lists.blocked_ip_ranges or country in lists.sanctioned"\n'
        + "    action: deny\n"
        + "    reason_code: X\n"
        + "    message: m\n",
    )
    assert errs == [
        "3:3: list 'blocked_ip_ranges': '192.168.1.0/33' is not an IP network:"
        " '192.168.1.0/33' does not appear to be an IPv4 or IPv6 network",
        "6:44: list 'sanctioned': 'UK' is not an ISO 3166-1 alpha-2 country code"
        " (the ISO 3166-1 code of the United Kingdom is 'GB', not 'UK')",
    ]  # (the list file's error is at lists/ranges.txt, line 3, column 3; nothing about the rule reading it)


def test_windows_over_any_text_field_and_time_windows_are_checked(tmp_path: Path) -> None:
    text = (
        'version: "t1"\n'
        "windows:\n"
        "  - {name: ok1, entity: card_id, aggregate: distinct, field: ip_country, duration: 1d}\n"
        "  - {name: ok2, entity: card_id, aggregate: distinct, field: attributes.shop, duration: 1d}\n"
        "  - {name: ok3, entity: [user_id, device_id], aggregate: is_new, duration: 90d}\n"
        "  - {name: b1, entity: card_id, aggregate: distinct, field: ip_contry, duration: 1d}\n"  # line 6
        "  - {name: b2, entity: card_id, aggregate: distinct, field: amount, duration: 1d}\n"
        "  - {name: b3, entity: card_id, aggregate: distinct, duration: 1d}\n"
        "  - {name: b4, entity: card_id, aggregate: first_seen, field: card_id, duration: 1d}\n"
        "  - {name: b5, entity: card_id, aggregate: since_previous, duration: 1d, delay: 1h}\n"
        "  - {name: b6, entity: card_id, source: feedback, aggregate: is_new, duration: 1d}\n"
        "rules:\n"
        "  - id: r1\n"  # line 13
        '    condition: "b1 >= 3 and ok1 >= 2"\n'  # a broken window is still known: no noise here
        "    action: review\n"
        "    reason_code: X\n"
        "    message: m\n"
    )
    errs = errors_of(tmp_path, text)
    assert errs == [
        "6:61: window 'b1': cannot count distinct values of 'ip_contry': not a field (did you mean 'ip_country'?)",
        "7:61: window 'b2': a distinct count counts text values, and 'amount' is a number (text fields: currency,"
        " user_id, card_id, device_id, ip, country, merchant_id, merchant_category, channel, ip_country, ip_region,"
        " attributes.NAME)",
        "8:6: window 'b3': a distinct count needs a 'field', the value whose different values it counts"
        " (e.g. card_id, ip_country, merchant_category or attributes.NAME)",
        "9:56: window 'b4': a first_seen window (it reads event times) takes no 'field'",
        "10:74: window 'b5': a since_previous window takes no 'delay'",
        "11:62: window 'b6': is_new tells whether the transaction is its entity's first, and a label window does"
        " not hold transactions (first_seen or since_previous read a label window)",
    ]


def test_a_field_that_is_not_a_name_is_an_error_not_a_crash(tmp_path: Path) -> None:
    text = (
        'version: "t1"\n'
        "windows:\n"
        "  - {name: w1, entity: card_id, aggregate: distinct, field: [card_id], duration: 1d}\n"
        "  - {name: w2, entity: card_id, aggregate: sum, field: {a: 1}, duration: 1d}\n"
    )
    errs = errors_of(tmp_path, text)
    assert errs[0].startswith("3:61: window 'w1': 'field' must be a field name, got ['card_id']")
    assert errs[1].startswith("4:56: window 'w2': 'sum' needs a numeric 'field'")


def test_every_file_a_rule_set_names_is_confined_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.mmdb import write_mmdb

    rules, outside = tmp_path / "rules", tmp_path / "elsewhere"
    rules.mkdir()
    outside.mkdir()
    write_mmdb(outside / "geo.mmdb", {}, database_type="GeoIP2-Country")
    (outside / "map.yaml").write_text("transaction_id: id\n")
    for line in (
        "geoip: ../../../../../../../../etc/passwd",
        "geoip: ../elsewhere/geo.mmdb",
        f"geoip: {outside / 'geo.mmdb'}",
        "data_mapping: ../elsewhere/map.yaml",
    ):
        errs = errors_of(rules, HEADER + line + "\n")
        assert len(errs) == 1 and "must be inside the rules folder" in errs[0], errs
        assert "root:" not in errs[0]  # nothing of /etc/passwd was read
    (rules / "link.mmdb").symlink_to(outside / "geo.mmdb")  # a symlink out is outside too
    assert "must be inside the rules folder" in errors_of(rules, HEADER + "geoip: link.mmdb\n")[0]
    monkeypatch.setenv("RISK_RULES_ALLOWED_DIRS", str(outside))  # the operator allows that folder
    (rules / "r.yaml").write_text(HEADER + "geoip: ../elsewhere/geo.mmdb\n")
    assert load_ruleset(rules).enricher.geo is not None


def test_keep_attributes_names_what_the_decision_log_keeps(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(HEADER + "keep_attributes: [device_os, channel_ref]\n")
    assert load_ruleset(tmp_path).keep_attributes == {"device_os", "channel_ref"}
    errs = errors_of(tmp_path, HEADER + "keep_attributes: [device os]\n")
    assert "'keep_attributes' must be a list of attribute names" in errs[0]
