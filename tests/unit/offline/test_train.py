"""Training: the book's protocol pieces by hand, the threshold policy, and a prequential run on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.model.predictor import resolve_model_dir
from engine.offline.model_metrics import CP_MIN_CARDS_PER_DAY, evaluate_scores, known_compromised_mask, precision_top_k
from engine.offline.train import FEW_TREES, ThresholdPolicy, choose_thresholds, train, training_warnings
from tests.support import RULES
from tests.support.served import TEST_TRAIN_CONFIG


def test_known_compromised_cards_by_hand() -> None:
    # card z: fraud on day 0 (before the training week); a: day 1; b: day 5; c: never.
    days = np.array([0, 1, 5, 6, 9, 9, 9, 9, 13, 13])
    cards = np.array(["z", "a", "b", "c", "z", "a", "b", "c", "b", "a"], dtype=object)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0], dtype=np.float64)
    test = days >= 9
    # Test week from day 9, delay 7: the training week starts on day 1 (z's fraud is older).
    # Day 9: a's fraud (day 1) is before 9 - 7 = 2: known; b's (day 5) not yet; z: too old.
    # Day 13: b's fraud (day 5) is before 13 - 7 = 6: known; a too.
    got = known_compromised_mask(days, cards, labels, test, delay_days=7, since_day=1)
    assert got.tolist() == [False, False, False, False, False, True, False, False, True, True]


def test_thresholds_by_hand() -> None:
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=np.float64)
    got = choose_thresholds(scores, labels, ThresholdPolicy(review_rate=0.5, deny_precision=0.75, min_deny_count=2))
    # Review: top 50 % = 5 transactions, threshold 0.7 (4 frauds of 5, 4 of 5 frauds).
    assert got["review_at"] == pytest.approx(0.7)
    assert got["review_or_deny"] == {"threshold": 0.7, "rate": 0.5, "precision": 0.8, "recall": 0.8}
    # Deny: top-k precisions 1, 1, 1, 0.75, 0.8, 0.67, ...: the deepest k with >= 0.75 is
    # k = 5 (score 0.7), which is also as deep as deny may go (the review depth).
    assert got["deny_at"] == pytest.approx(0.7)
    strict = choose_thresholds(scores, labels, ThresholdPolicy(review_rate=0.5, deny_precision=0.9, min_deny_count=2))
    assert strict["deny_at"] == pytest.approx(0.9)  # k = 3, precision 1
    assert strict["deny"] == {"threshold": 0.9, "rate": 0.3, "precision": 1.0, "recall": 0.6}
    none = choose_thresholds(scores, labels, ThresholdPolicy(review_rate=0.5, deny_precision=0.9, min_deny_count=4))
    assert none["deny_at"] is None and none["deny"] is None


def test_warnings_for_few_trees_and_weeks_that_swing() -> None:
    def week(day: str, trees: int, ap: float) -> dict[str, object]:
        return {"test": [day, day], "best_iteration": trees, "average_precision": ap}

    steady = {"weeks": [week("2026-01-05", 300, 0.60), week("2026-01-12", 250, 0.70)]}
    assert training_warnings(FEW_TREES, steady) == []
    assert training_warnings(FEW_TREES, None) == []
    final = training_warnings(FEW_TREES - 13, steady)
    assert len(final) == 1 and final[0].startswith(f"the final model stopped at {FEW_TREES - 13} trees")
    swinging = {"weeks": [week("2026-01-05", 27, 0.30), week("2026-01-12", 300, 0.80)]}
    got = training_warnings(300, swinging)
    assert got == [
        f"validation weeks stopped under {FEW_TREES} trees: 2026-01-05 (27)",
        "validation AP swings between weeks: 0.300 to 0.800 (mean 0.550); "
        "the model's quality depends on the week it is tested on",
    ]


def test_card_precision_only_with_enough_cards_a_day() -> None:
    rng = np.random.default_rng(3)
    n = 4_000
    labels = (rng.random(n) < 0.05).astype(np.float64)
    scores = labels * 0.5 + rng.random(n)
    days = np.repeat([0, 1], n // 2)
    few = np.array([f"c{i % 300}" for i in range(n)], dtype=object)  # 300 cards a day
    got = evaluate_scores(scores, labels, days, few)
    assert "card_precision_top_100" not in got and got["top_k"] == 40
    assert got["precision_top_k"] == pytest.approx(precision_top_k(scores, labels, 40), abs=1e-4)
    top = np.argsort(-scores)[:40]
    assert got["precision_top_k"] == pytest.approx(labels[top].mean(), abs=1e-4)
    many = np.array([f"c{i}" for i in range(n)], dtype=object)  # 2,000 cards a day
    assert CP_MIN_CARDS_PER_DAY <= n // 2
    got = evaluate_scores(scores, labels, days, many)
    assert "card_precision_top_100" in got and "precision_top_k" not in got


@pytest.mark.slow
def test_prequential_training_writes_weekly_metrics_thresholds_and_a_report(
    tmp_path: Path, synthetic_data: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        TEST_TRAIN_CONFIG
        + """
validation:
  test_weeks: ["2026-01-16", "2026-01-23"]
  train_days: 10
  delay_days: 2
  early_stopping_days: 3
thresholds: {review_rate: 0.02, deny_precision: 0.8, min_deny_count: 3}
"""
    )
    folder = train(synthetic_data, RULES, config, tmp_path / "models", quiet=True)
    meta = json.loads((folder / "metadata.json").read_text())
    weeks = meta["validation"]["weeks"]
    assert [w["test"] for w in weeks] == [["2026-01-16", "2026-01-22"], ["2026-01-23", "2026-01-29"]]
    # Trained on the 10 days ending 2 days before the test week: 7 + 3 (early stopping).
    assert weeks[0]["train"] == ["2026-01-04", "2026-01-10"]
    assert weeks[0]["early_stopping"] == ["2026-01-11", "2026-01-13"]
    for w in weeks:
        assert 0.5 < w["auc_roc"] <= 1 and 0 < w["average_precision"] <= 1
    mean_ap = np.mean([w["average_precision"] for w in weeks])
    assert meta["validation"]["mean"]["average_precision"] == pytest.approx(mean_ap, abs=1e-4)
    t = meta["thresholds"]
    assert t["measured_on"] == "test" and t["policy"]["review_rate"] == 0.02
    assert t["review_or_deny"]["rate"] <= 0.02 + 1e-9
    assert t["deny_at"] is None or t["deny_at"] >= t["review_at"]
    report = (folder / "report.md").read_text()
    assert "prequential" in report and "| **mean ± std**" in report and "## Thresholds" in report
    # The same data and config give the same model, byte for byte.
    again = train(synthetic_data, RULES, config, tmp_path / "again", quiet=True)
    assert (again / "model.txt").read_bytes() == (folder / "model.txt").read_bytes()


@pytest.mark.slow
def test_training_report_importance_calibration_distribution_weeks_and_references(trained_registry: Path) -> None:
    folder = resolve_model_dir(trained_registry)
    meta = json.loads((folder / "metadata.json").read_text())
    d = meta["diagnostics"]
    test = meta["metrics"]["test"]
    assert d["measured_on"] == "test" and d["rows"] == test["rows"]

    # Importance: every feature once; gain shares sum to 1; a feature the trees never split on has
    # no gain and, exactly, no SHAP value; the SHAP values are those of the model's own explainer.
    imp = {r["feature"]: r for r in d["importance"]}
    assert set(imp) == set(meta["features"]) and len(d["importance"]) == len(meta["features"])
    assert sum(r["gain_share"] for r in imp.values()) == pytest.approx(1.0, abs=1e-3)
    assert [r["gain"] for r in d["importance"]] == sorted((r["gain"] for r in d["importance"]), reverse=True)
    for r in imp.values():
        assert (r["gain"] == 0) == (r["mean_abs_shap"] == 0), r
    assert max(imp.values(), key=lambda r: r["mean_abs_shap"])["gain"] > 0
    assert d["shap_rows"] == min(2000, test["rows"]) and d["explainer"] == "tables"

    # Calibration: bins of 0.1 covering every held-out row, in score order; the fraud rate rises overall.
    cal = d["calibration"]
    assert 2 <= len(cal) <= 10 and sum(b["rows"] for b in cal) == test["rows"]
    assert all(int(b["min_score"] * 10) == int(min(b["max_score"], 0.999) * 10) for b in cal)  # one bin each
    assert [b["mean_score"] for b in cal] == sorted(b["mean_score"] for b in cal)
    assert cal[-1]["fraud_rate"] > cal[0]["fraud_rate"]
    assert sum(b["fraud_rate"] * b["rows"] for b in cal) == pytest.approx(test["frauds"], abs=0.01)

    # Score distribution: shares per class sum to 1; frauds sit higher than genuine transactions.
    dist = d["score_distribution"]
    assert dist["frauds"] == test["frauds"] and dist["frauds"] + dist["genuines"] == test["rows"]
    assert sum(dist["fraud"]) == pytest.approx(1.0, abs=1e-4) and sum(dist["genuine"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(dist["fraud"][10:]) > sum(dist["genuine"][10:])

    # Per week of the test period (2026-01-23 .. 30: two slices), each with the three metrics.
    weeks = d["held_out_weeks"]
    assert weeks[0]["from"] == "2026-01-23" and sum(w["rows"] for w in weeks) <= test["rows"]
    # the ranking metric that fits this small data: P@k (too few cards a day for CP@100)
    assert all(0 <= w["precision_top_k"] <= 1 and 0.5 < w["auc_roc"] <= 1 for w in weeks)

    # Reference histograms for drift: the score and every feature, shares and missing summing to 1.
    ref = meta["reference"]
    assert ref["measured_on"] == "test" and ref["rows"] == test["rows"]
    for h in [ref["score"], *(ref["features"][f] for f in meta["features"])]:
        assert len(h["shares"]) == len(h["edges"]) + 1 and h["edges"] == sorted(h["edges"])
        assert sum(h["shares"]) + h["missing"] == pytest.approx(1.0, abs=1e-4)

    report = (folder / "report.md").read_text()
    for section in ("## Feature importance", "## Calibration", "## Score distribution", "## Per week", "## Thresholds"):
        assert section in report
    page = (folder / "report.html").read_text()
    assert page.count("<svg") == 4 and "Calibration" in page and "Feature importance" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page  # self-contained
