"""Reasons and model contributions in plain words, built from the shipped rule set's own definitions."""

from __future__ import annotations

from engine.desk.wording import Wording
from engine.rules.loader import load_ruleset
from tests.support import RULES


def test_contributions_read_as_sentences_not_log_odds() -> None:
    w = Wording(load_ruleset(RULES, run_tests=False))
    record = {
        "features": {"amount": 540.0, "card_avg_amount_30d": 45.0, "amount_to_card_avg_30d": 12.0},
        "reasons": [
            {
                "code": "MODEL_SCORE_HIGH",
                "source": "model",
                "action": "deny",
                "rule_id": "",
                "message": "model score 0.913 >= deny threshold 0.9 (model)",
                "contributions": [
                    {"feature": "amount_to_card_avg_30d", "value": 12.0, "contribution": 2.4},
                    {"feature": "card_count_10m", "value": 5.0, "contribution": 1.1},
                    {"feature": "device_distinct_cards_1d", "value": 3.0, "contribution": 0.5},
                    {"feature": "merchant_frauds_known_7d", "value": 1.0, "contribution": 0.4},
                    {"feature": "card_avg_amount_60d_before_14d", "value": None, "contribution": 0.3},
                    {"feature": "is_night", "value": 1.0, "contribution": -0.2},
                ],
            },
            {
                "code": "AMOUNT_VERY_LARGE",
                "source": "rule",
                "action": "review",
                "rule_id": "very_large_amount",
                "message": "Amount of 10,000 EUR or more.",
            },
            {"code": "WINDOWS_UNAVAILABLE", "source": "system", "action": "review", "rule_id": "", "message": "x"},
        ],
    }
    lines = w.contributions(record)
    assert [line.text for line in lines] == [
        "The amount is 12.0× this card's average payment over the last 30 days "
        "(amount 540.00 EUR, this card's average payment over the last 30 days 45.00 EUR).",
        "5 payments with this card in the last 10 minutes.",
        "3 different cards used with this device in the last day.",
        "1 fraud reported for this merchant in the last 7 days.",
        "This card's average payment over the 60 days before the last 14 days is unknown "
        "(no history to compute it from).",
        "Paid at night (before 7:00).",
    ]
    assert [(line.direction, line.strength) for line in lines][:3] == [
        ("up", "strongly"),  # the largest
        ("up", "moderately"),  # 1.1 / 2.4
        ("up", "slightly"),  # 0.5 / 2.4
    ]
    assert lines[-1].direction == "down"
    assert all("log" not in line.text and "0.4" not in line.text for line in lines)

    reasons = w.reasons(record)
    assert reasons[0].text.startswith("The model scores this payment 0.91 on its scale of 0 (genuine) to 1 (fraud)")
    assert "deny threshold of 0.90" in reasons[0].text
    assert reasons[1].text == "Amount of 10,000 EUR or more."
    assert reasons[1].detail == "Single payments far above what the platform normally sees."
    assert "window store did not answer" in reasons[2].text


def test_windows_over_any_field_and_time_windows_read_as_sentences() -> None:
    w = Wording(load_ruleset(RULES, run_tests=False))
    assert w.feature("card_ip_countries_1d", 3.0, {}) == "3 different IP countries used with this card in the last day."
    assert w.feature("card_since_previous_1h", 12.5, {}) == (
        "The previous payment with this card was 12.5 s before this one."
    )
    assert w.feature("user_first_seen_90d", 46_800.0, {}) == "This user first seen 13 h ago (within the last 90 days)."
    assert (
        w.feature("user_device_is_new_90d", 1.0, {}) == "This user and this device: new, not seen in the last 90 days."
    )
    assert w.feature("user_device_is_new_90d", 0.0, {}) == "This user and this device: seen before in the last 90 days."
    assert w.noun("card_since_previous_1h") == "the time since the previous payment with this card in the last hour"
