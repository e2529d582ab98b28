"""Model explanations (`engine.model.explain`, `Model.explain`) against LightGBM's own contributions.

Every method (the per-leaf tables, LightGBM's single-row C entry point,
`Booster.predict`) must give the values of `Booster.predict(X,
pred_contrib=True)` to 1e-9, summing to the raw score, on the shipped model,
a model trained by the project's own command, and small models trained here
for what those two lack (missing values read as NaN or as zero, categorical
splits, a constant tree). Rows include NaN, zeros, -0.0, every split
threshold and one ulp either side, infinities and huge and tiny values.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import lightgbm
import numpy as np
import pytest

from engine.model.explain import (
    Contribution,
    PathTables,
    Unsupported,
    build_explainer,
    top_contributions,
)
from engine.model.predictor import Model, explainer, load_model
from engine.rules import load_ruleset
from tests.support import ROOT, RULES
from tests.support.models import hard_rows

EXTREMES = [np.inf, -np.inf, 1e300, -1e300, 1e-36, -1e-36, 5e-324, -0.0, np.nan]


def models(trained_registry: Path) -> list[Model]:
    ruleset = load_ruleset(RULES)
    return [load_model(ROOT / "models", ruleset), load_model(trained_registry, ruleset)]


def rows_for(booster: lightgbm.Booster, n: int, seed: int) -> np.ndarray:
    """Hard rows (thresholds, NaN, zeros) and rows with an extreme value in each feature."""
    x = hard_rows(booster, n, seed)
    rng = np.random.default_rng(seed + 1)
    extreme = x[: len(EXTREMES) * booster.num_feature()].copy()
    for i, row in enumerate(extreme):
        row[i % booster.num_feature()] = EXTREMES[i // booster.num_feature()]
        row[rng.random(len(row)) < 0.2] = EXTREMES[rng.integers(0, len(EXTREMES))]
    return np.vstack([x, extreme])


def assert_like_lightgbm(compute, booster: lightgbm.Booster, x: np.ndarray) -> None:
    """compute(row) equals Booster.predict(pred_contrib=True) to 1e-9 and sums to the raw score."""
    expected = booster.predict(x, pred_contrib=True, num_threads=1)
    raw = booster.predict(x, raw_score=True, num_threads=1)
    for i, row in enumerate(x):
        got = compute(row)
        assert got.shape == (booster.num_feature() + 1,)
        assert np.max(np.abs(got - expected[i])) <= 1e-9, (i, row.tolist(), got - expected[i])
        assert abs(got.sum() - raw[i]) <= 1e-9, (i, row.tolist(), got.sum(), raw[i])


def missing_type_counts(booster: lightgbm.Booster) -> dict[int, int]:
    """How many splits read missing values as None (0), Zero (1) and NaN (2)."""
    counts = {0: 0, 1: 0, 2: 0}
    for line in booster.model_to_string().splitlines():
        if line.startswith("decision_type="):
            for kind in line.partition("=")[2].split():
                counts[(int(kind) >> 2) & 3] += 1
    return counts


def small_booster(seed: int, *, zero_as_missing: bool = False, categorical: bool = False) -> lightgbm.Booster:
    """A small binary model trained here, its data holding NaN and zeros (and a categorical column)."""
    rng = np.random.default_rng(seed)
    n = 3000
    x = rng.normal(size=(n, 6)) * 10
    x[:, 5] = rng.integers(0, 8, size=n)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:, 1][rng.random(n) < 0.3] = 0.0
    logit = 0.2 * np.nan_to_num(x[:, 0]) - 0.3 * np.nan_to_num(x[:, 1]) + np.isnan(x[:, 2]) + (x[:, 5] == 3)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {
        "objective": "binary",
        "num_leaves": 31,
        "min_data_in_leaf": 10,
        "verbose": -1,
        "zero_as_missing": zero_as_missing,
        "seed": seed,
        "num_threads": 1,
    }
    data = lightgbm.Dataset(x, y, categorical_feature=[5] if categorical else "auto")
    return lightgbm.train(params, data, num_boost_round=40)


def test_model_contributions_equal_lightgbm(trained_registry: Path) -> None:
    for model in models(trained_registry):
        assert model.explainer is None, "nothing is set up before the first explanation"
        assert model.prepare_explanations().method == "tables"
        x = rows_for(model.booster, 3000, seed=len(model.version))
        assert_like_lightgbm(lambda row, m=model: m.contributions(dict(zip(m.features, row.tolist(), strict=True))),
                             model.booster, x)  # fmt: skip


def test_tables_with_missing_values_read_as_nan_or_as_zero() -> None:
    for seed, zero_as_missing in ((1, False), (2, True)):
        booster = small_booster(seed, zero_as_missing=zero_as_missing)
        kinds = missing_type_counts(booster)
        assert kinds[1 if zero_as_missing else 2] > 0, kinds  # the model really has such splits
        assert_like_lightgbm(PathTables(booster), booster, rows_for(booster, 1500, seed))


def test_tables_with_a_constant_tree_and_best_iteration() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] > 0).astype(int)
    # a first tree that cannot split (min_data_in_leaf too high), then normal trees on a reset parameter
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 400, "num_threads": 1},
        lightgbm.Dataset(x, y),
        num_boost_round=1,
    )
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1},
        lightgbm.Dataset(x, y),
        num_boost_round=10,
        init_model=booster,
    )
    assert "num_leaves=1" in booster.model_to_string()
    assert_like_lightgbm(PathTables(booster), booster, rows_for(booster, 300, 3))
    booster.best_iteration = 4  # Booster.predict then uses the first 4 trees: so must the tables
    assert_like_lightgbm(PathTables(booster), booster, rows_for(booster, 300, 4))


def test_lightgbm_single_row_contributions_equal_booster_predict(trained_registry: Path) -> None:
    model = models(trained_registry)[1]
    fast = explainer(model.booster, methods=("lightgbm-single-row",))
    assert fast.method == "lightgbm-single-row"
    assert_like_lightgbm(fast.contributions, model.booster, rows_for(model.booster, 500, 7))


def test_fallbacks_when_the_tables_or_the_c_entry_point_cannot_be_set_up() -> None:
    booster = small_booster(4, categorical=True)
    with pytest.raises(Unsupported, match="categorical"):
        PathTables(booster)
    with pytest.raises(Unsupported, match="budget"):
        PathTables(small_booster(5), max_values=10)
    chosen = explainer(booster)
    assert chosen.method == "lightgbm-single-row"
    x = rows_for(booster, 300, 5)
    x[:, 5] = np.where(np.isnan(x[:, 5]), np.nan, np.abs(np.round(np.nan_to_num(x[:, 5]))) % 10)  # categories
    assert_like_lightgbm(chosen.contributions, booster, x)

    def unavailable() -> None:
        raise OSError("no LGBM_BoosterPredictForMatSingleRowFastInit here")

    last = build_explainer(booster, unavailable)  # type: ignore[arg-type]
    assert last.method == "booster-predict"
    assert_like_lightgbm(last.contributions, booster, x[:50])
    with pytest.raises(ValueError, match="unknown explanation method"):
        build_explainer(booster, methods=("magic",))


def test_model_explain_through_every_method_gives_the_same_reasons(trained_registry: Path) -> None:
    model = models(trained_registry)[0]
    x = rows_for(model.booster, 300, 9)
    variants = [replace(model, explainer=explainer(model.booster, methods=(m,))) for m in
                ("tables", "lightgbm-single-row", "booster-predict")]  # fmt: skip
    assert [v.prepare_explanations().method for v in variants] == ["tables", "lightgbm-single-row", "booster-predict"]
    for row in x:
        fields = dict(zip(model.features, row.tolist(), strict=True))
        reasons = [v.explain(fields, top_k=5) for v in variants]
        for other in reasons[1:]:
            assert [r.feature for r in other] == [r.feature for r in reasons[0]]
            assert all(abs(a.contribution - b.contribution) <= 1e-9 for a, b in zip(other, reasons[0], strict=True))


def test_explain_gives_the_largest_positive_contributions_with_the_values_read(trained_registry: Path) -> None:
    model = models(trained_registry)[1]
    x = rows_for(model.booster, 400, 12)
    seen_nan = False
    for row in x:
        fields: dict[str, object] = dict(zip(model.features, row.tolist(), strict=True))
        fields[model.features[0]] = True  # a bool is read as 1.0
        contributions = model.contributions(fields)[:-1]
        reasons = model.explain(fields, top_k=3)
        positive = sorted((c for c in contributions if c > 0), reverse=True)
        assert [r.contribution for r in reasons] == positive[:3]
        assert all(isinstance(r, Contribution) and r.contribution > 0 for r in reasons)
        for r in reasons:
            index = model.features.index(r.feature)
            assert r.contribution == contributions[index]
            read = 1.0 if index == 0 else row[index]
            assert r.value == read or (math.isnan(r.value) and math.isnan(read))
            seen_nan = seen_nan or math.isnan(r.value)
        assert model.explain(fields, top_k=0) == ()
        assert len(model.explain(fields, top_k=50)) == len(positive)
    assert seen_nan, "a missing feature value can be a reason (LightGBM routes missing values)"


def test_top_contributions_order_filter_and_ties() -> None:
    features = ("b", "a", "c", "d", "e")
    values = (1.0, 2.0, float("nan"), 4.0, 5.0)
    contributions = (0.5, 0.5, 0.9, -1.0, 0.0, 123.0)  # the expected value last: ignored
    assert top_contributions(features, values, contributions, 3) == (
        Contribution("c", values[2], 0.9),
        Contribution("a", 2.0, 0.5),  # a tie: by feature name
        Contribution("b", 1.0, 0.5),
    )
    assert top_contributions(features, values, contributions, 1)[0].feature == "c"
    assert [c.feature for c in top_contributions(features, values, contributions, 10)] == ["c", "a", "b"]
    assert top_contributions(features, values, (-1.0, 0.0, float("nan"), -2.0, -0.0), 3) == ()
    with pytest.raises(ValueError, match="top_k"):
        top_contributions(features, values, contributions, -1)


def explain_from_threads(model: Model, rows: list[dict[str, float]], expected: np.ndarray) -> list[object]:
    """8 threads set up (racing) and use the model's explanations at once; returns what each set up."""
    errors: list[str] = []
    set_up: list[object] = []
    start = threading.Barrier(8)

    def work(offset: int) -> None:
        start.wait()
        set_up.append(model.prepare_explanations())
        for k in range(2):
            for i in range(offset, len(rows), 8):
                got = model.contributions(rows[i])
                if not np.max(np.abs(got - expected[i])) <= 1e-9:
                    errors.append(f"row {i} pass {k}: {got - expected[i]}")
                model.explain(rows[i])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    return set_up


def test_explanations_from_many_threads_at_once(trained_registry: Path) -> None:
    model = models(trained_registry)[0]
    x = rows_for(model.booster, 400, 13)
    expected = model.booster.predict(x, pred_contrib=True, num_threads=1)
    rows = [dict(zip(model.features, row.tolist(), strict=True)) for row in x]
    assert model.explainer is None  # the threads race to set the tables up
    set_up = explain_from_threads(model, rows, expected)
    assert len({id(e) for e in set_up}) == 1 and model.explainer is set_up[0], "set up once per model"
    assert model.explainer.method == "tables"
    c_api = replace(model, explainer=explainer(model.booster, methods=("lightgbm-single-row",)))
    explain_from_threads(c_api, rows, expected)


def test_scoring_sets_nothing_up_for_explanations(trained_registry: Path) -> None:
    model = models(trained_registry)[1]
    fields = {name: 1.0 for name in model.features}
    model.predict(fields)
    model.predict_many([fields])
    assert model.explainer is None
    model.explain(fields)
    assert model.explainer is not None and model.explainer.method == "tables"
