"""Feature rows that probe a LightGBM model at its edges (split thresholds, NaN, zeros)."""

from __future__ import annotations

import lightgbm
import numpy as np


def thresholds(booster: lightgbm.Booster) -> dict[int, list[float]]:
    """Every numerical split threshold of the booster, per feature index."""
    out: dict[int, list[float]] = {}

    def walk(node: dict) -> None:
        if "split_index" not in node:
            return
        if node["decision_type"] == "<=":
            out.setdefault(node["split_feature"], []).append(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def hard_rows(booster: lightgbm.Booster, n: int, seed: int) -> np.ndarray:
    """n rows mixing the training range, NaN, zeros and values at or next to split thresholds."""
    rng = np.random.default_rng(seed)
    nf = booster.num_feature()
    at = thresholds(booster)
    x = rng.uniform(0, 300, size=(n, nf))
    for j in range(nf):
        cut = np.array(at.get(j, [1.0]))
        pick = rng.integers(0, len(cut), size=n)
        edge = cut[pick]
        kind = rng.integers(0, 8, size=n)
        x[:, j] = np.select(
            [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
            [edge, np.nextafter(edge, -np.inf), np.nextafter(edge, np.inf), np.nan, 0.0, -0.0],
            x[:, j],
        )
    x[: nf + 1] = np.nan  # whole rows of NaN, and rows of zeros
    x[nf + 1 : 2 * nf + 2] = 0.0
    return x
