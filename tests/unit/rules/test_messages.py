"""Messages with values: placeholders checked at load, values written with their units when a rule fires."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.pipeline import Pipeline
from engine.rules import RuleSetInvalid, load_ruleset
from engine.rules.messages import COUNT, MONEY, MONEY_AS_SENT, SECONDS, compile_message, duration_text, formatter
from engine.transaction import Transaction
from engine.windows.memory import MemoryStore

T0 = 1_767_268_800_000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.25, "0.2 s"),
        (2.5, "2.5 s"),
        (12, "12 s"),
        (29.999, "29.9 s"),  # rounded down: never the threshold it is under
        (59.99, "59.9 s"),
        (60, "1 min"),
        (250, "4 min 10 s"),
        (3599.9, "59 min 59 s"),
        (3600, "1 h"),
        (11_100, "3 h 5 min"),
        (46_800, "13 h"),
        (86_400, "1 d"),
        (183_600, "2 d 3 h"),
        (90 * 86_400, "90 d"),
    ],
)
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_each_unit_is_written_as_such() -> None:
    fields = {"amount": 1234.5, "amount_original": 170000.0, "currency": "JPY", "n": 6.0, "gap": 12.0}
    assert formatter("amount", MONEY, "EUR")(fields) == "1,234.50 EUR"
    assert formatter("amount_original", MONEY_AS_SENT, "EUR")(fields) == "170,000 JPY"
    assert formatter("n", COUNT, "EUR")(fields) == "6"
    assert formatter("gap", SECONDS, "EUR")(fields) == "12 s"
    assert formatter("gap", SECONDS, "EUR")({"gap": math.nan}) == "unknown"  # no previous event
    assert formatter("ip_country", "text", "EUR")({"ip_country": ""}) == "unknown"
    assert formatter("is_night", "yes_no", "EUR")({"is_night": True}) == "yes"
    assert formatter("attributes.shop", "text", "EUR")({"attributes": {"shop": "s1"}}) == "s1"
    assert formatter("attributes.shop", "text", "EUR")({"attributes": {}}) == "unknown"


def test_a_message_without_placeholders_needs_no_template_and_braces_escape() -> None:
    assert compile_message("Five payments in 10 minutes.", {"amount": MONEY}, "EUR") == (None, [])
    template, errors = compile_message("{{literal}} {amount}", {"amount": MONEY}, "EUR")
    assert not errors and template is not None
    assert template.render({"amount": 5.0}) == "{literal} 5.00 EUR"


@pytest.mark.parametrize(
    ("text", "offset", "message", "hint"),
    [
        ("{amout} paid", 1, "unknown field 'amout' in the message", "did you mean '{amount}'?"),
        ("paid {amount", 5, "a '{' without its '}'", "close it, or write '{{' for a literal brace"),
        ("paid } now", 5, "a '}' without its '{'", "write '}}' for a literal brace"),
        ("paid {} now", 5, "an empty '{}' in the message", "put a field or window name inside"),
    ],
)
def test_message_errors(text: str, offset: int, message: str, hint: str) -> None:
    template, errors = compile_message(text, {"amount": MONEY}, "EUR")
    assert template is None
    assert [(e.offset, e.message, e.hint) for e in errors] == [(offset, message, hint)]


RULES = """version: "m1"
currency: {base: EUR, rates: {JPY: 0.0061}}
windows:
  - {name: card_count_10m, entity: card_id, aggregate: count, duration: 10m}
  - {name: card_since_previous_1h, entity: card_id, aggregate: since_previous, duration: 1h}
rules:
  - id: burst
    condition: "card_count_10m >= 2"
    action: review
    reason_code: BURST
    message: "{card_count_10m} payments on this card in 10 minutes, {card_since_previous_1h} apart;
      this one {amount} ({amount_original})."
  - id: typo
    condition: "amount > 0"
    action: review
    reason_code: TYPO
    message: "{card_count_10min} payments"
"""


def test_unknown_names_in_messages_are_errors_at_their_column(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    with pytest.raises(RuleSetInvalid) as exc:
        load_ruleset(tmp_path)
    (err,) = exc.value.errors
    assert (err.line, err.column) == (17, 16)  # the name inside the braces
    assert err.message == "rule 'typo': unknown field 'card_count_10min' in the message"
    assert err.hint.startswith("did you mean '{card_count_10m}'")


def test_a_fired_rule_shows_its_values(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULES.split("  - id: typo")[0])
    pipeline = Pipeline(load_ruleset(tmp_path), None, MemoryStore(), check_clock=False)
    first = pipeline.score(Transaction("t1", T0, 10_000, "JPY", card_id="c1")).result
    assert first.reasons == ()  # one payment: the rule does not fire (and formats nothing)
    second = pipeline.score(Transaction("t2", T0 + 12_500, 170_000, "JPY", card_id="c1")).result
    (reason,) = second.reasons
    # (the condition reads no amount: no "amounts compared in EUR" note after the message)
    assert reason.message == "2 payments on this card in 10 minutes, 12.5 s apart; this one 1,037.00 EUR (170,000 JPY)."
