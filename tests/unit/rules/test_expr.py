"""Each feature of the rule language, and each of its error messages with line and column.

Named lists (string, number, country, CIDR; inline and from files), `is
missing`, the safe functions, unreachable conditions, rule modes and gradual
rollout, amounts in other currencies, and the merchant category field.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

import pytest

from engine.enrich import Enricher, Money
from engine.rollout import rollout_bucket
from engine.rules import RuleSetInvalid, load_ruleset
from engine.rules.evaluate import evaluate_rules
from engine.rules.expr import ExprError, Scope, compile_condition, habits
from engine.rules.lists import CidrSet, NamedList, parse_network
from engine.rules.ruleset import DOMAINS
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits, parse_ip, validate

CATALOG = {
    "amount": "number",
    "country": "string",
    "ip_country": "string",
    "channel": "string",
    "card_id": "string",
    "device_id": "string",
    "ip": "string",
    "merchant_category": "string",
    "is_night": "bool",
    "card_avg_amount_7d": "number",
    "score": "number",
}
LISTS = {
    "blocked_cards": NamedList("blocked_cards", "string", frozenset({"c1", "c2"}), "x"),
    "limits": NamedList("limits", "number", frozenset({5.0, 10.0}), "x"),
    "bad_countries": NamedList("bad_countries", "country", frozenset({"KP", "IR"}), "x"),
    "bad_nets": NamedList(
        "bad_nets", "cidr", CidrSet([parse_network("10.0.0.0/8"), parse_network("2001:db8::/32")]), "x"
    ),
}
SCOPE = Scope(CATALOG, LISTS, DOMAINS)


def run(text: str, **fields: Any) -> bool:
    if "ip" in fields:
        fields["_addr"] = ipaddress.ip_address(fields["ip"]) if fields["ip"] else None
    return bool(compile_condition(text, SCOPE).fn(fields))


def error(text: str) -> ExprError:
    with pytest.raises(ExprError) as exc:
        compile_condition(text, SCOPE)
    return exc.value


# --- named lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("card_id in lists.blocked_cards", {"card_id": "c1"}, True),
        ("card_id in lists.blocked_cards", {"card_id": "c3"}, False),
        ("card_id not in lists.blocked_cards", {"card_id": "c3"}, True),
        ("amount in lists.limits", {"amount": 10}, True),
        (
            "country in lists.bad_countries or ip_country in lists.bad_countries",
            {"country": "DE", "ip_country": "IR"},
            True,
        ),
        ("ip in lists.bad_nets", {"ip": "10.200.3.4"}, True),
        ("ip in lists.bad_nets", {"ip": "11.0.0.1"}, False),
        ("ip in lists.bad_nets", {"ip": "2001:db8:1::9"}, True),
        ("ip in lists.bad_nets", {"ip": "2001:db9::1"}, False),
        ("ip in lists.bad_nets", {"ip": ""}, False),
        ("ip not in lists.bad_nets", {"ip": "8.8.8.8"}, True),
    ],
)
def test_named_lists(text: str, fields: dict[str, Any], expected: bool) -> None:
    assert run(text, **fields) is expected


def test_cidr_set_merges_ranges_and_matches_edges() -> None:
    nets = CidrSet([parse_network(n) for n in ("192.0.2.0/25", "192.0.2.128/25", "198.51.100.7")])
    assert nets.contains(ipaddress.ip_address("192.0.2.0"))
    assert nets.contains(ipaddress.ip_address("192.0.2.255"))
    assert not nets.contains(ipaddress.ip_address("192.0.3.0"))
    assert nets.contains(ipaddress.ip_address("198.51.100.7"))
    assert not nets.contains(ipaddress.ip_address("198.51.100.8"))
    assert not nets.contains(ipaddress.ip_address("::ffff:c000:200"))  # an IPv6 address is not in an IPv4 net


def test_list_errors_name_the_list_and_the_position() -> None:
    e = error("card_id in lists.blocked_card")
    assert (e.line, e.column, e.message, e.hint) == (
        1,
        12,
        "unknown list 'blocked_card'",
        "did you mean 'blocked_cards'?",
    )
    e = error("amount in lists.blocked_cards")
    assert e.message == "list 'blocked_cards' holds string values, the left side is a number"
    e = error("card_id in lists.bad_nets")
    assert e.message == "CIDR list 'bad_nets' matches the 'ip' field, e.g. 'ip in lists.blocked_ranges'"
    assert error("lists.blocked_cards == 'x'").message.startswith("a named list only stands on the right of 'in'")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


RULE = 'rules:\n  - {{id: r1, condition: "{cond}", action: deny, reason_code: X, message: m}}\n'


def test_lists_from_files_with_comments(tmp_path: Path) -> None:
    write(tmp_path, "lists/cards.txt", "# stolen\nc-1\n\nc-2   # from the issuer\n")
    write(tmp_path, "lists/nets.txt", "203.0.113.0/24\n2001:db8:bad::/48 # v6\n")
    write(
        tmp_path,
        "a.yaml",
        'version: "1"\nlists:\n  cards: {kind: string, file: lists/cards.txt}\n'
        "  nets: {kind: cidr, file: lists/nets.txt}\n" + RULE.format(cond="card_id in lists.cards or ip in lists.nets"),
    )
    rs = load_ruleset(tmp_path)
    assert rs.lists["cards"].values == frozenset({"c-1", "c-2"})
    assert len(rs.lists["nets"]) == 2
    assert str(tmp_path / "lists" / "cards.txt") in rs.files


def test_bad_list_entries_are_reported_at_their_file_line(tmp_path: Path) -> None:
    write(tmp_path, "lists/nets.txt", "10.0.0.0/8\n# ok so far\n10.0.0.1/8\n")
    write(
        tmp_path,
        "a.yaml",
        'version: "1"\nlists:\n'
        "  nets: {kind: cidr, file: lists/nets.txt}\n"
        "  places: {kind: country, values: [DE, XX]}\n"
        "  nums: {kind: number, values: [1, two]}\n"
        "  gone: {kind: string, file: lists/none.txt}\n"
        "  odd: {kind: colour, values: [red]}\n",
    )
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(tmp_path)
    got = [(Path(e.file).name, e.line, e.column, e.message) for e in exc.value.errors]
    assert ("nets.txt", 3, 1) == got[0][:3] and "'10.0.0.1/8' is not an IP network" in got[0][3]
    assert ("a.yaml", 4, 40, "list 'places': 'XX' is not an ISO 3166-1 alpha-2 country code") in got
    assert ("a.yaml", 5, 36, "list 'nums': 'two' is not a number") in got
    assert any(g[0] == "a.yaml" and g[1] == 6 and "cannot read" in g[3] for g in got)
    assert ("a.yaml", 7, 15, "list 'odd': 'kind' must be one of string, number, country, cidr") in got


# --- is missing, functions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("device_id is missing", {"device_id": ""}, True),
        ("device_id is missing", {"device_id": "d1"}, False),
        ("device_id is not missing", {"device_id": "d1"}, True),
        ("score is missing", {"score": math.nan}, True),
        ("score is not missing and score > 0.5", {"score": 0.7}, True),
        ("card_avg_amount_7d * 2 is missing", {"card_avg_amount_7d": math.nan}, True),
        ("ip_country is missing", {"ip_country": ""}, True),
        ("starts_with(card_id, 'tok_')", {"card_id": "tok_123"}, True),
        ("ends_with(lower(device_id), 'emu')", {"device_id": "Pixel-EMU"}, True),
        ("contains(upper(card_id), 'TEST')", {"card_id": "a-test-1"}, True),
        ("length(card_id) < 6", {"card_id": "abc"}, True),
        ("abs(amount - 100) < 1", {"amount": 99.5}, True),
        ("max(amount, 10) == 10 and min(amount, 10) == 3", {"amount": 3}, True),
        ("max(amount, card_avg_amount_7d) > 1", {"amount": 3, "card_avg_amount_7d": math.nan}, False),
        ("if_missing(card_avg_amount_7d, 0) == 0", {"card_avg_amount_7d": math.nan}, True),
        ("if_missing(card_avg_amount_7d, 0) == 8", {"card_avg_amount_7d": 8.0}, True),
        ("in_cidr(ip, '192.0.2.0/24', '2001:db8::/32')", {"ip": "192.0.2.77"}, True),
        ("in_cidr(ip, '192.0.2.0/24')", {"ip": "192.0.3.1"}, False),
        ("replace(card_id, ' ', '_') == 'a_b_c'", {"card_id": "a b c"}, True),
        ("concat(card_id, '-', device_id) == 'c1-d1'", {"card_id": "c1", "device_id": "d1"}, True),
        ("text(amount) == '42' and text(amount / 8) == '5.25'", {"amount": 42.0}, True),
        ("text(card_avg_amount_7d) == ''", {"card_avg_amount_7d": math.nan}, True),
        # 09:30 in New York in January is 14:30 UTC; an offset in the text wins over the zone
        (
            "parse_time(card_id, '%Y-%m-%d %H:%M', 'America/New_York') == 1767277800000",
            {"card_id": "2026-01-01 09:30"},
            True,
        ),
        (
            "parse_time(card_id, '%Y-%m-%dT%H:%M%z', 'Asia/Tokyo') == 1767277800000",
            {"card_id": "2026-01-01T14:30+0000"},
            True,
        ),
    ],
)
def test_missing_values_and_functions(text: str, fields: dict[str, Any], expected: bool) -> None:
    assert run(text, **fields) is expected


def test_parse_time_refuses_an_unknown_zone_and_a_text_off_its_format() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/Else'"):
        run("parse_time(card_id, '%Y-%m-%d', 'Nowhere/Else') > 0", card_id="2026-01-01")
    with pytest.raises(ValueError, match="does not match format"):
        run("parse_time(card_id, '%Y-%m-%d', 'UTC') > 0", card_id="01/02/2026")


@pytest.mark.parametrize(
    ("text", "column", "message", "hint"),
    [
        ("is_night is missing", 1, "a true/false field is never missing", ""),
        ("amount is 5", 1, "'is' is only used as 'is missing' or 'is not missing'", ""),
        ("missing == 1", 1, "'missing' only follows 'is' or 'is not', e.g. 'device_id is missing'", ""),
        ("starts_with(amount, 'x')", 13, "argument 1 of starts_with() must be a string, got a number", ""),
        ("startswith(card_id, 'x')", 1, "unknown function 'startswith'", "did you mean 'starts_with'?"),
        ("abs(amount, 1) > 0", 1, "abs() takes 1 argument(s), got 2", ""),
        ("max(amount) > 0", 1, "max() takes at least 2 argument(s), got 1", ""),
        (
            "in_cidr(ip, '10.0.0.300/8')",
            13,
            "'10.0.0.300/8' is not an IP network: '10.0.0.300/8' does not appear to be an IPv4 or IPv6 network",
            "",
        ),
        (
            "in_cidr(card_id, '10.0.0.0/8')",
            9,
            "in_cidr() matches the 'ip' field, e.g. 'ip in lists.blocked_ranges'",
            "",
        ),
        ("lower(card_id, key='x') == 'a'", 1, "functions take plain arguments, not name=value", ""),
    ],
)
def test_function_and_missing_errors(text: str, column: int, message: str, hint: str) -> None:
    e = error(text)
    assert (e.column, e.message, e.hint) == (column, message, hint)


# --- unreachable conditions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "channel == 'atm'",
            "'channel' is never 'atm', so this can never be true",
            "values: app, mini_program, qr_code, unspecified, web",
        ),
        ("country in ['DE', 'XK1']", "'country' is never 'XK1', so this can never be true", ""),
        ("'webb' == channel", "'channel' is never 'webb', so this can never be true", "did you mean 'web'?"),
        (
            "amount > 100 and amount < 50",
            "unreachable: the bounds on 'amount' contradict each other: no value is above 100 and below 50",
            "the rule could never fire; fix or remove it",
        ),
        (
            "amount >= 10 and is_night and amount < 10",
            "unreachable: the bounds on 'amount' contradict each other: no value is above 10 and below 10",
            "the rule could never fire; fix or remove it",
        ),
        (
            "country == 'DE' and country == 'FR'",
            "unreachable: no value of 'country' satisfies all the conditions on it joined by 'and'",
            "the rule could never fire; fix or remove it",
        ),
        (
            "amount in [1, 2] and amount > 5",
            "unreachable: no value of 'amount' satisfies all the conditions on it joined by 'and'",
            "the rule could never fire; fix or remove it",
        ),
        ("false", "unreachable: the condition is always false", "the rule could never fire; fix or remove it"),
    ],
)
def test_unreachable_conditions_are_refused(text: str, message: str, hint: str) -> None:
    e = error(text)
    assert e.message == message
    if hint:
        assert e.hint == hint


@pytest.mark.parametrize(
    "text",
    [
        "amount >= 10 and amount <= 10",
        "amount > 100 or amount < 50",
        "country == 'DE' or country == 'FR'",
        "amount in [1, 6] and amount > 5",
    ],
)
def test_satisfiable_conditions_are_kept(text: str) -> None:
    compile_condition(text, SCOPE)


def test_unreachable_rule_in_a_file_points_at_the_condition(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", 'version: "1"\n' + RULE.format(cond="channel == 'atm'"))
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(tmp_path)
    (err,) = exc.value.errors
    assert (err.line, err.column) == (3, 37)  # the value the field never takes
    assert err.message == "in rule 'r1': 'channel' is never 'atm', so this can never be true"


# --- modes, rollout, money --------------------------------------------------------------------------

MODES_YAML = """version: "m1"
currency: {base: EUR, rates: {JPY: 0.0061}}
rules:
  - {id: big, condition: "amount >= 100", action: review, reason_code: BIG, message: Large amount.}
  - {id: big_shadow, condition: "amount >= 100", action: deny, reason_code: BIG_SHADOW, message: m, mode: shadow}
  - {id: big_off, condition: "amount >= 100", action: deny, reason_code: BIG_OFF, message: m, mode: disabled}
  - {id: big_half, condition: "amount >= 100", action: deny, reason_code: BIG_HALF, message: m, rollout: 50}
"""


def fields_of(rs: Any, txn: Transaction) -> dict[str, Any]:
    validate(txn, Limits(), None)
    fields = rs.enricher.enrich(txn)
    fields["attributes"] = {}
    return fields


def test_shadow_disabled_and_rollout(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MODES_YAML)
    rs = load_ruleset(tmp_path)
    assert [r.id for r in rs.rules] == ["big", "big_shadow", "big_half"] and rs.disabled == ("big_off",)
    acted_half = 0
    for i in range(2000):
        txn = Transaction(f"t{i}", 1_767_268_800_000, 20_000, "EUR", card_id="c")
        acting, shadow = evaluate_rules(rs, fields_of(rs, txn), txn.transaction_id, True, False)
        acting_ids = [r.rule_id for r in acting]
        shadow_ids = [r.rule_id for r in shadow]
        assert "big" in acting_ids and "big_shadow" in shadow_ids and "big_off" not in acting_ids + shadow_ids
        in_share = rollout_bucket("big_half", txn.transaction_id) < 5000
        assert ("big_half" in acting_ids) is in_share and ("big_half" in shadow_ids) is not in_share
        acted_half += in_share
        # the same id always lands in the same part (a gateway retry)
        again, _ = evaluate_rules(rs, fields_of(rs, txn), txn.transaction_id, True, False)
        assert [r.rule_id for r in again] == acting_ids
    assert 900 < acted_half < 1100


def test_rule_mode_errors(tmp_path: Path) -> None:
    lines = [
        "  - {id: a, condition: amount > 1, action: deny, reason_code: A, message: m, mode: live}",
        "  - {id: b, condition: amount > 1, action: deny, reason_code: B, message: m, rollout: 0}",
        "  - {id: c, condition: amount > 1, action: deny, reason_code: C, message: m, mode: shadow, rollout: 5}",
        "  - {id: c, condition: amount > 2, action: deny, reason_code: C, message: m}",
    ]
    write(tmp_path, "a.yaml", 'version: "1"\nrules:\n' + "\n".join(lines) + "\n")
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(tmp_path)
    got = [(e.line, e.column, e.message) for e in exc.value.errors]

    def col(line: int, text: str) -> int:  # 1-based column of `text` on rule line `line`
        return lines[line - 3].index(text) + 1

    assert got == [
        (3, col(3, "live"), "rule 'a': 'mode' must be one of active, shadow, disabled, got 'live'"),
        (4, col(4, "0}"), "rule 'b': 'rollout' must be a percentage above 0 and at most 100"),
        (5, col(5, "5}"), "rule 'c': 'rollout' applies to active rules (a shadow rule acts on none)"),
        (6, col(6, "c,"), f"duplicate rule id 'c' (first in {tmp_path / 'a.yaml'}:5)"),
    ]


def test_reasons_say_which_currency_amounts_were_compared_in(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MODES_YAML)
    rs = load_ruleset(tmp_path)
    txn = Transaction("t-jpy", 1_767_268_800_000, 20_000, "JPY", card_id="c")  # 20,000 yen = 122 EUR
    acting, _ = evaluate_rules(rs, fields_of(rs, txn), txn.transaction_id, True, False)
    big = next(r for r in acting if r.rule_id == "big")
    assert big.message == "Large amount. (amounts compared in EUR: 20,000 JPY = 122.00 EUR)"
    txn = Transaction("t-eur", 1_767_268_800_000, 20_000, "EUR", card_id="c")
    acting, _ = evaluate_rules(rs, fields_of(rs, txn), txn.transaction_id, True, False)
    assert next(r for r in acting if r.rule_id == "big").message == "Large amount."


@pytest.mark.parametrize(("currency", "minor", "eur"), [("JPY", 1000, 6.1), ("KWD", 1000, 3.0), ("EUR", 1000, 10.0)])
def test_minor_units_follow_iso_4217(currency: str, minor: int, eur: float) -> None:
    enricher = Enricher(Money("EUR", {"JPY": 0.0061, "KWD": 3.0}))
    txn = Transaction("t", 1_767_268_800_000, minor, currency, card_id="c")
    assert enricher.enrich(txn)["amount"] == pytest.approx(eur)


def test_merchant_category_is_a_field_and_is_validated() -> None:
    txn = Transaction("t", 1_767_268_800_000, 100, "EUR", card_id="c", merchant_category="7995")
    assert Enricher(Money("EUR", {})).enrich(txn)["merchant_category"] == "7995"
    for bad in ("799", "79955", "79a5", "７９９５"):
        with pytest.raises(InvalidTransaction) as exc:
            validate(
                Transaction("t", 1_767_268_800_000, 100, "EUR", card_id="c", merchant_category=bad), Limits(), None
            )
        assert exc.value.field == "merchant_category"


# --- hardening (found in review) ------------------------------------------------------------------


def load_errors(folder: Path) -> list[tuple[str, int, int, str]]:
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(folder)
    return [(Path(e.file).name, e.line, e.column, e.message) for e in exc.value.errors]


def test_yaml_anchors_and_aliases_are_refused(tmp_path: Path) -> None:
    # nested aliases would expand a few lines into billions of values
    write(
        tmp_path,
        "a.yaml",
        'version: "1"\nlists:\n  x:\n    kind: string\n    values:\n      - &l0 [a, b]\n      - *l0\n',
    )
    assert load_errors(tmp_path) == [("a.yaml", 6, 9, "invalid YAML: anchors (&name) are not allowed in rule files")]


def test_hostile_inputs_give_errors_not_tracebacks(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", 'version: "1"\nx: ' + "[" * 5000 + "\n")
    assert load_errors(tmp_path) == [("a.yaml", 1, 1, "invalid YAML: nested too deeply")]
    write(
        tmp_path,
        "a.yaml",
        'version: "1"\n'
        + RULE.format(cond="amount < 1" + "0" * 400)
        + "tests:\n  - {name: t, transaction: {amount: .inf}, expect: {decision: allow}}\n"
        + "  - {name: u, transaction: {amount: .nan}, expect: {decision: allow}}\n"
        + "  - {name: v, transaction: {amount: 1, attributes: {k: [1, 2]}}, expect: {decision: allow}}\n",
    )
    messages = [e[3] for e in load_errors(tmp_path)]
    assert messages == [
        "test 't': the transaction needs an 'amount' in major units (e.g. 12.50)",
        "test 'u': the transaction needs an 'amount' in major units (e.g. 12.50)",
        "test 'v': 'attributes' must map names to plain values",
    ]


@pytest.mark.parametrize(
    ("rule_lines", "line", "token"),
    [
        # leading spaces inside the quotes (the failing comparison starts at `amount`)
        (["  - condition: \"  amount > 'x'\""], 3, "amount"),
        # non-ASCII text before the error: columns count characters, not bytes
        (["  - condition: \"merchant_id == '商户商户' and amont > 5\""], 3, "amont"),
        # a folded block: the error is on its second line
        (["  - condition: >", "      amount > 5 and", "      amont > 5"], 5, "amont"),
        # a literal block
        (["  - condition: |", "      amount > 5", "      and amont > 5"], 5, "amont"),
        # a plain scalar over two lines
        (["  - condition: amount > 5 and", "      amont > 5"], 4, "amont"),
    ],
)
def test_condition_errors_point_at_the_character(tmp_path: Path, rule_lines: list[str], line: int, token: str) -> None:
    rest = ["    id: r1", "    action: deny", "    reason_code: X", "    message: m"]
    lines = ['version: "1"', "rules:", *rule_lines, *rest]
    write(tmp_path, "a.yaml", "\n".join(lines) + "\n")
    ((_, got_line, got_column, message),) = load_errors(tmp_path)
    assert (got_line, got_column) == (line, lines[line - 1].index(token) + 1), message


@pytest.mark.parametrize(
    "text",
    ["ip_country == ''", "country == '' and amount > 10", "channel not in ['atm']", "country not in ['XX']"],
)
def test_unknown_values_and_negations_are_not_unreachable(text: str) -> None:
    compile_condition(text, SCOPE)


def test_a_missing_score_or_window_can_be_tested(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        'version: "1"\ncurrency: {base: EUR}\n'
        "windows:\n  - {name: card_count_1h, entity: card_id, aggregate: count, duration: 1h}\n"
        "rules:\n"
        '  - {id: no_score, condition: "score is missing and amount >= 1000", action: review, reason_code: A,'
        " message: m}\n"
        '  - {id: low_score, condition: "if_missing(score, 0) < 0.1", action: review, reason_code: B, message: m}\n'
        '  - {id: scored, condition: "score < 0.1", action: review, reason_code: C, message: m}\n'
        '  - {id: no_windows, condition: "card_count_1h is missing", action: review, reason_code: D, message: m}\n',
    )
    rs = load_ruleset(tmp_path)
    txn = Transaction("t", 1_767_268_800_000, 200_000, "EUR", card_id="c")
    fields = fields_of(rs, txn)
    fields.update({"score": math.nan, "card_count_1h": math.nan})
    acting, _ = evaluate_rules(rs, fields, "t", windows_ok=False, score_ok=False)
    assert sorted(r.code for r in acting) == ["A", "B", "D"]  # C reads the score as a value: skipped


def test_list_files_bom_ipv4_mapped_and_confinement(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "lists").mkdir(parents=True)
    (rules / "lists" / "cards.txt").write_bytes("\ufeffcard-1\ncard-2\n".encode())
    (rules / "lists" / "nets.txt").write_text("::ffff:10.0.0.0/104\n")
    write(
        rules,
        "a.yaml",
        'version: "1"\nlists:\n  cards: {kind: string, file: lists/cards.txt}\n'
        "  nets: {kind: cidr, file: lists/nets.txt}\n",
    )
    rs = load_ruleset(rules)
    assert rs.lists["cards"].values == frozenset({"card-1", "card-2"})
    nets = rs.lists["nets"].values
    assert isinstance(nets, CidrSet)
    assert nets.contains(ipaddress.ip_address("10.1.2.3"))  # addresses are compared as IPv4
    assert run("in_cidr(ip, '::ffff:10.0.0.0/104')", ip="10.9.9.9")
    (tmp_path / "secret.txt").write_text("top secret\n")
    leak = "  leak: {kind: country, file: ../secret.txt}"
    write(rules, "a.yaml", f'version: "1"\nlists:\n{leak}\n')
    ((_, line, column, message),) = load_errors(rules)
    assert (line, column) == (3, leak.index("../") + 1) and message.startswith(
        "list 'leak': the file must be inside the rules folder"
    )
    assert "top secret" not in message


def test_big_lists_parse_once_per_file_version(tmp_path: Path) -> None:
    import time

    lines = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32" for i in range(200_000)]
    write(tmp_path, "lists/nets.txt", "\n".join(lines) + "\n")
    write(tmp_path, "a.yaml", 'version: "1"\nlists:\n  nets: {kind: cidr, file: lists/nets.txt}\n')
    first = load_ruleset(tmp_path)
    started = time.perf_counter()
    second = load_ruleset(tmp_path)
    assert second.lists["nets"].values is first.lists["nets"].values  # not parsed again
    assert time.perf_counter() - started < 5  # a generous bound: reparsing would not be caught by it alone
    assert first.lists["nets"].values.contains(ipaddress.ip_address("10.3.13.63"))


def test_amounts_are_exact_decimals() -> None:
    """19.99 EUR is 19.99: rules compare amounts with the literals analysts write."""
    enricher = Enricher(Money("EUR", {}))
    for minor in (1999, 1, 10, 29, 57, 115, 1_000_000_07):
        fields = enricher.enrich(Transaction("t", 1_767_268_800_000, minor, "EUR", card_id="c"))
        assert fields["amount"] == float(f"{minor // 100}.{minor % 100:02d}")
    fields = enricher.enrich(Transaction("t", 1_767_268_800_000, 1999, "EUR", card_id="c"))
    assert compile_condition("amount == 19.99 and amount in [19.99] and not amount > 19.99", SCOPE).fn(fields)


def test_the_native_mapping_reads_the_merchant_category(tmp_path: Path) -> None:
    import pyarrow as pa

    from engine.offline.datasets import PRESETS, table_to_dataset

    row: dict[str, Any] = {
        "transaction_id": "t1",
        "event_time_ms": 1_767_268_800_000,
        "amount_minor": 500,
        "currency": "EUR",
        "label": 0,
        **dict.fromkeys(("user_id", "card_id", "device_id", "ip", "country", "merchant_id", "channel"), ""),
    }
    row["card_id"] = "c"
    with_mcc = table_to_dataset(pa.Table.from_pylist([{**row, "merchant_category": "7995"}]), PRESETS["native"])
    assert with_mcc.transactions[0].merchant_category == "7995"
    without = table_to_dataset(pa.Table.from_pylist([row]), PRESETS["native"])  # older files: no such column
    assert without.transactions[0].merchant_category == ""


@pytest.mark.parametrize(
    ("sent", "text", "version", "private"),
    [
        ("8.8.8.8", "8.8.8.8", 4, False),
        ("10.1.2.3", "10.1.2.3", 4, True),
        ("::ffff:10.1.2.3", "10.1.2.3", 4, True),  # IPv4-mapped: the IPv4 address
        ("::FFFF:8.8.4.4", "8.8.4.4", 4, False),
        ("2001:DB8:0::1", "2001:db8::1", 6, True),  # documentation range: reserved for no one
        ("2606:4700::1111", "2606:4700::1111", 6, False),
        ("::1", "::1", 6, True),
        ("fe80::1", "fe80::1", 6, True),
        ("169.254.0.7", "169.254.0.7", 4, True),
        ("240.0.0.1", "240.0.0.1", 4, True),
    ],
)
def test_an_ip_is_parsed_once_per_spelling_with_the_same_facts(
    sent: str, text: str, version: int, private: bool
) -> None:
    """`parse_ip` (cached) gives what parsing the address each time would: canonical text, version, private."""
    for _ in range(2):  # the second answer comes from the cache
        addr, canonical_text, is_private = parse_ip(sent)
        assert (canonical_text, addr.version, is_private) == (text, version, private)
    txn = Transaction("t-ip", 1_767_268_800_000, 100, "EUR", card_id="c", ip=sent)
    validate(txn, Limits(), None)
    fields = Enricher(Money("EUR", {})).enrich(txn)
    assert (fields["ip_version"], fields["ip_is_private"]) == (version, private)


def test_a_malformed_ip_is_refused_every_time() -> None:
    for _ in range(2):  # errors are not cached as answers
        with pytest.raises(InvalidTransaction, match="ip"):
            validate(Transaction("t-bad", 1_767_268_800_000, 100, "EUR", card_id="c", ip="10.0.0.256"), Limits(), None)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("country = 'BR' AND amount > 10", [(8, "'='"), (15, "'AND'")]),
        ("a && b || c", [(2, "'&&'"), (7, "'||'")]),
        ("amount <> 3 or not x OR y", [(7, "'<>'"), (21, "'OR'")]),
        ("amount => 5", [(7, "'=>'")]),
        ("!ip_is_private", [(0, "'!'")]),
        ("device_id == NULL", [(13, "'NULL'")]),
        ("amount >= 1,000", [(10, "'1,000'")]),
        ("amount >= 1,250,000.50", [(10, "'1,250,000.50'")]),
        ("amount in [1,000, 2,000]", [(11, "'1,000'"), (18, "'2,000'")]),  # [1, 0, 2, 0] is no one's list
    ],
)
def test_habits_of_other_languages_are_all_found(text: str, found: list[tuple[int, str]]) -> None:
    assert [(e.offset, e.message.split(" ")[0]) for e in habits(text)] == found


@pytest.mark.parametrize(
    "text",
    [
        "country == 'BR' and amount >= 10",
        "x == 'a = b AND c || d'",  # inside a string: not a habit
        "amount != 3 and amount <= 4 and amount >= 5",
        "amount in [1, 500, 2]",
        "amount in [1,500]",  # a list of 1 and 500, as written
        "lower(card_id, key='x') == 'a'",  # a keyword argument: refused later with its own message
        "attributes.NOTE == 'x'",
    ],
)
def test_no_habit_where_the_language_means_what_is_written(text: str) -> None:
    assert habits(text) == []
