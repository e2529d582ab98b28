"""What each rule adds, the causes of changed decisions, the warnings, the money view and the period, end to end.

The hand-made case of test_backtest (13 rows, rules A and B) through the CLI;
every number below is worked out by hand from its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.unit.offline.test_backtest import ENGINE_YAML, case, run, summary_of

__all__ = ["case"]  # the fixture, shared with test_backtest


def by_id(value: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule_id"]: r for r in value["rules"]}


def test_unique_catches_and_overlap(case: dict[str, Path]) -> None:
    out = case["tmp"] / "out"
    assert run("--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(out)) == 0
    s = summary_of(out)
    value = s["rule_value"]
    rules = by_id(value)
    # big_amount: t02 (fraud, 150 EUR) t06 t12 (genuine) t09 (unlabeled); t09 is also card_burst's, t12 web_channel's.
    assert {k: rules["big_amount"][k] for k in ("hits", "precision", "unique_hits", "unique_frauds")} == {
        "hits": 4,
        "precision": 1 / 3,
        "unique_hits": 2,  # t02, t06
        "unique_frauds": 1,
    }
    assert rules["big_amount"]["unique_fraud_amount"] == 150.0
    assert (rules["card_burst"]["unique_frauds"], rules["card_burst"]["unique_fraud_amount"]) == (1, 30.0)  # t05
    assert (rules["web_channel"]["unique_frauds"], rules["web_channel"]["unique_fraud_amount"]) == (1, 60.0)  # t08
    assert rules["web_channel"]["recall"] == 1 / 6 and rules["web_channel"]["amount_recall"] == 6_000 / 36_000
    assert value["model"] is None  # no model: no model row
    assert value["flagged_by_none_frauds"] == 3  # t03 t04 t11
    assert value["overlap"] == {
        "sources": ["big_amount", "card_burst", "web_channel"],
        "rows": [[4, 1, 1], [1, 2, 0], [1, 0, 3]],
        "frauds": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    }
    # report.json is the same document, and the HTML shows the table.
    assert (out / "report.json").read_text() == (out / "summary.json").read_text()
    page = (out / "report.html").read_text()
    assert "What each rule adds" in page and "frauds only this source flags" in page


def test_compare_gives_causes_b_charts_and_both_rule_values(case: dict[str, Path]) -> None:
    out = case["tmp"] / "out"
    argv = ["--data", str(case["data"]), "--rules", str(case["a"]), "--compare", str(case["b"]), "--out", str(out)]
    assert run(*argv, "--review-cost", "2", "--chargeback-factor", "1.5", "--false-decline-margin", "0.1") == 0
    s = summary_of(out)
    # t07 loses web_channel (review -> allow); t10 and t11 (a fraud) gain big_amount at 50 EUR.
    assert s["compare"]["causes"] == [
        {"cause": "+big_amount", "changed": 2, "changed_frauds": 1},
        {"cause": "-web_channel", "changed": 1, "changed_frauds": 0},
    ]
    changes = pq.read_table(out / "changes.parquet").to_pylist()
    assert [(c["transaction_id"], c["caused_by"]) for c in changes] == [
        ("t07", ["-web_channel"]),
        ("t10", ["+big_amount"]),
        ("t11", ["+big_amount"]),
    ]
    b = by_id(s["compare"]["summary_b"]["rule_value"])
    # B's big_amount: t02 t06 t08 t09 t10 t11 t12; alone on t02 t06 t08 t10 t11 t12 (t09 has card_burst).
    assert (b["big_amount"]["hits"], b["big_amount"]["unique_hits"], b["big_amount"]["unique_frauds"]) == (7, 6, 3)
    assert b["big_amount"]["unique_fraud_amount"] == 150.0 + 60.0 + 80.0
    assert "web_channel" not in b
    assert s["compare"]["summary_b"]["daily"][1] == {
        "day": "2026-01-02",
        "allow": 0,
        "review": 3,
        "deny": 0,
        "frauds": 1,
    }
    # Money (review 2, chargeback x1.5, margin 10 %): A flags frauds t02 t05 t08 (240 EUR), misses t03 t04 t11
    # (120), reviews 5 in 2 days, denies no genuine payment; B also flags t11 (80) and reviews 6.
    money = s["money"]
    assert money["costs"]["source"] == "command line"
    assert money["a"] == {
        "fraud_loss_avoided": 360.0,
        "missed_fraud_loss": 180.0,
        "false_decline_cost": 0.0,
        "review_cost": 10.0,
        "reviews": 5,
        "reviews_per_day": 2.5,
        "declines": 2,
        "decline_rate": round(2 / 12, 6),
        "net_value": 350.0,
    }
    assert (money["b"]["fraud_loss_avoided"], money["b"]["review_cost"], money["b"]["net_value"]) == (
        480.0,
        12.0,
        468.0,
    )
    assert money["delta"]["net_value"] == 118.0 and money["delta"]["reviews"] == 1
    page = (out / "report.html").read_text()
    assert page.count('<div class="pair">') == 2  # decision mix and active rules, A beside B
    assert "B: active rules, precision and recall" in page
    assert "What caused the changed decisions" in page
    assert "| +big_amount | 2 | 1 |" in (out / "summary.md").read_text()


COSTS_AND_GAPS = """\
costs: {review: 3, chargeback_factor: 2}
windows:
  - {name: card_count_1h, entity: card_id, aggregate: count, duration: 1h}
  - {name: card_categories_1d, entity: card_id, aggregate: distinct, field: merchant_category, duration: 1d}
features:
  - {name: categories_per_payment, value: "card_categories_1d / (card_count_1h + 1)"}
"""

GAP_RULES = """\
rules:
  - id: big_amount
    condition: "amount >= 100"
    action: review
    reason_code: BIG_AMOUNT
    message: 100 EUR or more.
  - id: many_categories
    condition: "categories_per_payment >= 2"
    action: review
    reason_code: MANY_CATEGORIES
    message: Many merchant categories.
  - id: grocery_or_big
    condition: "merchant_category == '5411' or amount >= 150"
    action: review
    reason_code: GROCERY_OR_BIG
    message: A grocery or 150 EUR or more.
    mode: shadow
"""


def test_warnings_name_rules_the_data_cannot_exercise_and_the_warm_up(case: dict[str, Path]) -> None:
    rules = case["tmp"] / "rules_gaps"
    rules.mkdir()
    (rules / "engine.yaml").write_text(ENGINE_YAML.split("windows:")[0] + COSTS_AND_GAPS)
    (rules / "rules.yaml").write_text(GAP_RULES)
    out = case["tmp"] / "out"
    assert run("--data", str(case["data"]), "--rules", str(rules), "--out", str(out)) == 0
    s = summary_of(out)
    w = s["warnings"]
    assert w["inputs"]["merchant_category"] == 0 and w["inputs"]["device_id"] == 12
    # many_categories reads a feature over a window of merchant_category: traced back to it.
    assert w["not_exercised"] == [
        {
            "rule_id": "many_categories",
            "mode": "active",
            "missing": ["merchant_category"],
            "hits": 0,
            "status": "not exercised by this data",
        },
        {
            "rule_id": "grocery_or_big",
            "mode": "shadow",
            "missing": ["merchant_category"],
            "hits": 2,  # t02 and t12 through its amount branch
            "status": "partly exercised",
        },
    ]
    # The windows over merchant_category stay empty: the warm-up is card_count_1h's hour, rows t01-t09.
    assert w["warm_up"] == {
        "from": "2026-01-01",
        "until": "2026-01-01",
        "days": 0.0,
        "longest_window": "card_count_1h",
        "rows": 9,
        "share": 0.75,
    }
    assert w["in_sample"] is None  # no model
    assert s["money"]["costs"] == {
        "review": 3.0,
        "chargeback_factor": 2.0,
        "false_decline_margin": 0.1,
        "review_capacity": None,
        "max_decline_rate": None,
        "source": "the rule set's costs:",
    }
    page = (out / "report.html").read_text()
    warnings = page[page.index('<section class="warnings">') : page.index("</section>")]
    assert "not exercise them: many_categories (merchant_category)" in warnings
    assert "grocery_or_big (merchant_category; shadow; partly: 2 hits through its other inputs)" in warnings
    assert "Windows warm up" in warnings


def test_since_and_until_keep_the_rows_of_the_period(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = case["tmp"] / "out"
    base = ["--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(out)]
    assert run(*base, "--since", "2026-01-01T00:10:00Z", "--until", "2026-01-02") == 0
    s = summary_of(out)
    assert (s["population"]["rows"], s["population"]["scored"]) == (7, 7)  # t03 .. t09
    assert s["inputs"]["since"] == 1_767_226_200_000
    ids = pq.read_table(out / "transactions.parquet").column("transaction_id").to_pylist()
    assert ids == ["t03", "t04", "t05", "t06", "t07", "t08", "t09"]
    # t05 is still card_burst's third payment on c3 within the hour (t03 t04 t05 are all in the period).
    assert s["decisions"]["deny"]["count"] == 2
    assert run(*base, "--since", "2026-01-02", "--limit", "1") == 0
    assert summary_of(out)["population"]["rows"] == 1

    assert run(*base, "--since", "2027-01-01") == 2
    assert "no row of the data lies in the period (the data runs from 2026-01-01T00:00:00Z" in capsys.readouterr().err
    assert run(*base, "--since", "2026-01-02", "--until", "2026-01-01") == 2
    assert "--until (2026-01-01) must be after --since (2026-01-02)" in capsys.readouterr().err
    assert run(*base, "--until", "yesterday") == 2
    assert "--until: not a date or time: 'yesterday'" in capsys.readouterr().err


def test_bad_costs_on_the_command_line_exit_2(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data", str(case["data"]), "--rules", str(case["a"]), "--out", str(case["tmp"] / "out")]
    for flag, value, message in (
        ("--review-cost", "-1", "must be 0 or more"),
        ("--false-decline-margin", "1.5", "must be from 0 to 1"),
        ("--max-decline-rate", "nan", "must be from 0 to 1"),
        ("--review-capacity", "lots", "not a number: 'lots'"),
    ):
        with pytest.raises(SystemExit) as exc:
            run(*base, flag, value)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_with_a_model_in_sample_rows_thresholds_and_a_second_model(
    trained_registry: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from engine.cli import main
    from tests.support import ROOT

    out = tmp_path / "out"
    argv = ["backtest", "--quiet", "--data", str(synthetic_data), "--rules", str(ROOT / "rules")]
    argv += ["--model", str(trained_registry), "--compare-model", str(trained_registry), "--out", str(out)]
    assert main([*argv, "--since", "2026-01-15", "--until", "2026-01-26", "--review-capacity", "20"]) == 0
    s = summary_of(out)
    scored = s["population"]["scored"]
    # The sweep decides every row as the replay did at the model's own thresholds.
    t = s["thresholds"]
    assert t["reproduces"] == {"rows": scored, "same": scored}
    assert t["recommended"] is not None and t["recommended"]["reviews_per_day"] <= 20
    assert t["recommended"]["net_value"] >= max(row["net_value"] for row in t["curve"] if row["fits"])
    # The test model trained on 2026-01-01..18 and stopped early on 01-19..22 (tests/support/served.py).
    ins = s["warnings"]["in_sample"]
    assert (ins["from"], ins["until"]) == ("2026-01-01", "2026-01-22")
    groups = ins["metrics"]
    assert groups["before"]["rows"] == 0  # --since 2026-01-15: no row before the training days
    assert groups["in_sample"]["rows"] == ins["rows"] > 0
    assert groups["in_sample"]["rows"] + groups["after"]["rows"] == scored
    # The same model twice: nothing changes, the same scores.
    cm = s["compare_model"]
    assert cm["changed"] == 0 and cm["transitions"] == {}
    assert cm["a"]["average_precision"] == cm["b"]["average_precision"]
    assert {"auc_roc", "average_precision", "card_precision_top_100"} <= set(cm["b"])
    # The model's row counts the rows its thresholds gave a reason to: those scored at or above review_at.
    model_row = s["rule_value"]["model"]
    scores = pq.read_table(out / "transactions.parquet").column("score").to_pylist()
    assert model_row["hits"] == sum(1 for x in scores if x >= t["current"]["review_at"])
    assert model_row["unique_frauds"] <= model_row["fraud_hits"]
    assert "Models side by side" in (out / "report.html").read_text()
