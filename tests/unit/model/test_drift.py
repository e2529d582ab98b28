"""Drift: reference histograms and the PSI by hand, and the monitor on a model trained by the project."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.model.drift import DriftMonitor, _values, bin_counts, psi, reference_histogram
from engine.model.predictor import load_model, resolve_model_dir
from engine.rules import load_ruleset
from tests.support import RULES


def test_psi_by_hand() -> None:
    # 0.25·ln(0.75/0.5) + (−0.25)·ln(0.25/0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.75, 0.25])) == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2))
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0
    # An empty bin counts at the floor instead of dividing by zero.
    assert psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(
        0.5 * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    )


def test_reference_histogram_deciles_missing_and_right_closed_bins() -> None:
    values = np.append(np.arange(100, dtype=np.float64), [np.nan] * 25)
    h = reference_histogram(values)
    assert h["edges"] == [9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0]
    assert h["shares"] == [0.08] * 10 and h["missing"] == 0.2  # 10 of 125 per bin, 25 of 125 missing
    # Right-closed: 9 falls in the first bin, 9.5 in the second; NaN in the last slot.
    assert bin_counts(np.array([9.0, 9.5, np.nan, -1e9, 1e9]), np.array(h["edges"])).tolist() == [
        2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1
    ]  # fmt: skip
    binary = reference_histogram(np.array([0.0] * 70 + [1.0] * 30))
    assert binary["edges"] == [0.0, 1.0] and binary["shares"] == [0.7, 0.3, 0.0]


@pytest.mark.slow
def test_monitor_measures_shifted_rows_against_the_models_references(trained_registry: Path) -> None:
    model = load_model(trained_registry, load_ruleset(RULES))
    reference = model.metadata["reference"]
    assert set(reference["features"]) == set(model.features) and reference["rows"] > 1000
    amount = reference["features"]["amount"]
    edges = amount["edges"]
    now = [1_000_000.0]
    monitor = DriftMonitor(window_s=3600, slot_s=60, clock=lambda: now[0])
    rng = np.random.default_rng(3)

    def rows(n: int, amounts: np.ndarray) -> None:
        for a in amounts[:n]:
            fields = {f: 1.0 for f in model.features} | {"amount": float(a)}
            monitor.record(model, fields, 0.01)

    # Amounts drawn from the reference bins themselves: a small PSI on amount.
    inner = [(lo + hi) / 2 for lo, hi in itertools.pairwise(edges)]
    middles = np.array([edges[0] - 1.0, *inner, edges[-1] + 1.0])
    drawn = rng.choice(middles, size=2000, p=np.array(amount["shares"]) / sum(amount["shares"]))
    rows(2000, drawn)
    first = monitor.refresh()
    assert monitor.rows == 2000 and set(first) == {"score", *model.features}
    assert first["amount"] < 0.02
    # Then the same number of rows, all far above the reference: the amount's PSI jumps.
    now[0] += 120
    rows(2000, np.full(2000, edges[-1] * 50))
    second = monitor.refresh()
    assert monitor.rows == 4000 and second["amount"] > 0.5 > first["amount"]
    # An hour later the first rows are out of the window: only the shifted ones remain.
    now[0] += 3600 - 60
    third = monitor.refresh()
    assert monitor.rows == 2000 and third["amount"] > second["amount"]
    now[0] += 3600
    assert monitor.refresh() == {} and monitor.rows == 0


@pytest.mark.slow
def test_a_model_without_references_has_no_drift_values(trained_registry: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(resolve_model_dir(trained_registry), folder)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["reference"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    model = load_model(folder, load_ruleset(RULES))
    monitor = DriftMonitor()
    monitor.record(model, {f: 1.0 for f in model.features}, 0.5)
    assert monitor.refresh() == {} and monitor.rows == 0


@pytest.mark.slow
def test_the_counts_survive_a_reload_of_the_same_model_and_restart_for_another(
    trained_registry: Path, tmp_path: Path
) -> None:
    ruleset = load_ruleset(RULES)
    model, reloaded = load_model(trained_registry, ruleset), load_model(trained_registry, ruleset)
    other_folder = tmp_path / "other"
    shutil.copytree(resolve_model_dir(trained_registry), other_folder)
    meta = json.loads((other_folder / "metadata.json").read_text())
    (other_folder / "metadata.json").write_text(json.dumps({**meta, "version": "other"}))
    other = load_model(other_folder, ruleset)
    monitor = DriftMonitor()
    fields = {f: 1.0 for f in model.features}
    monitor.record(model, fields, 0.5)
    monitor.refresh()
    monitor.record(reloaded, fields, 0.5)  # a rules reload loads the same folder again
    monitor.refresh()
    assert monitor.rows == 2 and monitor.model_version == model.version
    monitor.record(other, fields, 0.5)
    assert monitor.refresh() and monitor.rows == 1 and monitor.model_version == "other"


def test_the_rows_are_read_as_numpy_would_read_them() -> None:
    """`_values` (np.fromiter, for speed) gives what np.array gives: bools as 0/1, NaN kept; None falls back to NaN."""
    rows = [(None, float(i), 0.5 * i, (True, float("nan"), i / 3, False)) for i in range(50)]
    expected = np.array([(score, *row) for _, _, score, row in rows], dtype=np.float64)
    assert np.array_equal(_values(rows), expected, equal_nan=True)  # type: ignore[arg-type]
    with_none = [(None, 1.0, 0.2, (None, 1.0, True, 2.5))]
    assert np.array_equal(_values(with_none), np.array([[0.2, np.nan, 1.0, 1.0, 2.5]]), equal_nan=True)  # type: ignore[arg-type]
