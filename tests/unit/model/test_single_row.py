"""The served single-row model path (LightGBM's fast single-row C call) against `Booster.predict`.

Rows: random values, NaNs, zeros (and -0.0), every split threshold of the
model exactly and one ulp either side, on the shipped model and a freshly
trained one; also from many threads at once (each thread has its own buffers).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.model.predictor import Model, load_model
from engine.rules import load_ruleset
from tests.support import ROOT, RULES
from tests.support.models import hard_rows


def models(trained_registry: Path) -> list[Model]:
    ruleset = load_ruleset(RULES)
    return [load_model(ROOT / "models", ruleset), load_model(trained_registry, ruleset)]


def test_fast_single_row_equals_booster_predict(trained_registry: Path) -> None:
    for model in models(trained_registry):
        assert model.single_row is not None, "the fast path must be set up for a binary LightGBM model"
        booster = model.booster
        x = hard_rows(booster, 4000, seed=len(model.version))
        expected = booster.predict(x, num_threads=1)
        for i, row in enumerate(x):
            fields = dict(zip(model.features, row.tolist(), strict=True))
            got = model.predict(fields)
            assert abs(got - expected[i]) <= 1e-9, (model.version, i, row.tolist(), got, expected[i])
        # and the batch path (replay, training) gives each row the same score
        rows = [dict(zip(model.features, row.tolist(), strict=True)) for row in x[:500]]
        batch = model.predict_many(rows)
        assert all(abs(a - model.predict(r)) <= 1e-9 for a, r in zip(batch, rows, strict=True))


def test_fast_path_reads_bools_ints_and_missing_like_the_batch_path(trained_registry: Path) -> None:
    model = models(trained_registry)[1]
    rng = np.random.default_rng(5)
    for _ in range(200):
        fields: dict[str, object] = {}
        for name in model.features:
            choice = rng.integers(0, 4)
            fields[name] = [True, int(rng.integers(0, 50)), float("nan"), float(rng.uniform(0, 500))][choice]
        assert model.predict(fields) == pytest.approx(model.predict_many([fields])[0], abs=1e-12)


def test_fast_path_from_many_threads_at_once(trained_registry: Path) -> None:
    model = models(trained_registry)[0]
    x = hard_rows(model.booster, 800, seed=11)
    expected = model.booster.predict(x, num_threads=1)
    rows = [dict(zip(model.features, row.tolist(), strict=True)) for row in x]
    errors: list[str] = []

    def work(offset: int) -> None:
        for k in range(3):
            for i in range(offset, len(rows), 8):
                got = model.predict(rows[i])
                if not abs(got - expected[i]) <= 1e-9:
                    errors.append(f"row {i} pass {k}: {got} != {expected[i]}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_without_the_fast_path_predict_falls_back_to_booster_predict(trained_registry: Path) -> None:
    from dataclasses import replace

    model = models(trained_registry)[1]
    slow = replace(model, single_row=None)
    fields = {name: 1.5 for name in model.features}
    assert slow.predict(fields) == model.predict(fields)
    assert not math.isnan(slow.predict(fields))
