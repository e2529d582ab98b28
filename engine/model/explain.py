"""Why the model scored a transaction as it did: exact per-feature contributions for one row.

This module owns the explanation of one score: the SHAP value of every
feature (path-dependent TreeSHAP, the values `Booster.predict(X,
pred_contrib=True)` gives, in raw log-odds space, last column the expected
value), computed only when asked, and the top features pushing the score
toward fraud (`top_contributions`, the reasons a review or deny carries).

LightGBM's own TreeSHAP costs most of a millisecond per row on the shipped
model, through `Booster.predict` and through its single-row C entry point
alike: it redoes the Shapley weighting of every root-to-leaf path for every
row. But for one leaf that weighting depends on the row only through which
of the leaf's path features the row satisfies (for each distinct feature on
the path: does the row's value fall in the interval the path's splits on it
define?). `PathTables` therefore computes, once per model, the contributions
of every leaf for every pattern of satisfied path features; explaining a row
is then a few vectorized steps: test each (leaf, path feature) interval,
form each leaf's pattern, look its contributions up and add them per
feature. Same values as LightGBM's to rounding (tests check 1e-9), in about
a quarter of the time (`benchmarks/explain_cost.py`: ~0.2 ms a row against
~0.8 ms on the shipped model).

The tables hold, per leaf with d distinct path features, d·2^d doubles
(15 MB for the shipped model, built from its text format in about 0.3 s;
`Model.prepare_explanations` does it off the request path). A model they do
not fit (categorical or linear trees, several scores per row, averaged
output, tables over `MAX_TABLE_VALUES`) is explained through LightGBM's
single-row C entry point with `C_API_PREDICT_CONTRIB` (the predictor's
`SingleRowPredictor`: per-thread buffers, LightGBM's own lock), or, when
that cannot be set up, `Booster.predict`. The tables are read-only once
built and every call works on its own arrays, so threads share them freely.

The math: for a leaf with value v and distinct path features j, let z_j be
the product of the cover ratios (child count / parent count) of the path's
splits on j and o_j ∈ {0, 1} whether the row follows all of them. Feature
i's share of the leaf is v·(o_i − z_i)·Σ_k w(k, d)·[t^k] Π_{j≠i}(z_j + o_j·t),
w(k, d) = k!(d−k−1)!/d!: the Shapley value of the game whose value for a
feature set S is v·Π_{j∈S} o_j·Π_{j∉S} z_j, which is what LightGBM's
extend/unwind recursion computes.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np

from engine.transaction import Contribution

log = logging.getLogger("risk_engine.model")

#: Largest table (doubles, all leaves together) `PathTables` builds: 64 MB (the shipped model needs 15).
MAX_TABLE_VALUES = 8 * 1024 * 1024
#: LightGBM's kZeroThreshold (1e-35f): values this close to 0 are read as 0.
_ZERO = float(np.float32(1e-35))
#: Elements of scratch arrays per chunk while building the tables.
_BUILD_CHUNK = 1 << 22

#: The ways `Explainer` can compute contributions, fastest first.
METHODS = ("tables", "lightgbm-single-row", "booster-predict")


class Unsupported(Exception):
    """`PathTables` cannot explain this model (another method must)."""


@dataclass
class _Leaf:
    """One root-to-leaf path, merged per distinct feature (the unit the tables are built for)."""

    value: float
    features: list[int]
    zero: list[float]  # z_j: product of the cover ratios of the path's splits on feature j
    low: list[float]  # the row follows every split on j iff low < x <= high
    high: list[float]
    default_ok: list[bool]  # ... or, for a missing value, iff every split on j sends missing this way
    missing: list[int]  # LightGBM's missing type of the splits on j (0 None, 1 Zero, 2 NaN)


def _num_iteration(booster: lightgbm.Booster) -> int:
    """The iterations `Booster.predict` uses by default (its best iteration, else all)."""
    return booster.best_iteration if booster.best_iteration > 0 else -1


def _model_text(booster: lightgbm.Booster) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(header, trees) of the booster's text format (the iterations `Booster.predict` uses), as key=value maps.

    The text format holds every threshold and leaf value with 17 significant
    digits, which read back to the same doubles (`dump_model` gives the same
    but takes ten times as long).
    """
    text = booster.model_to_string(num_iteration=_num_iteration(booster))
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
        elif line == "end of trees":
            break
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
        elif line:
            current[line] = ""  # a flag such as average_output
    return header, trees


def _tree_leaves(tree: dict[str, str]) -> tuple[float, list[_Leaf]]:
    """(expected value, leaves) of one tree of the text format (see LightGBM's Tree::ExpectedValue)."""
    leaf_value = [float(v) for v in tree["leaf_value"].split()]
    if int(tree["num_leaves"]) == 1:  # a constant: no feature contributes
        return leaf_value[0], []
    if int(tree.get("num_cat", "0")) or int(tree.get("is_linear", "0")):
        raise Unsupported("categorical or linear trees")
    feature = [int(v) for v in tree["split_feature"].split()]
    threshold = [float(v) for v in tree["threshold"].split()]
    decision = [int(v) for v in tree["decision_type"].split()]
    children = ([int(v) for v in tree["left_child"].split()], [int(v) for v in tree["right_child"].split()])
    leaf_count = [float(v) for v in tree["leaf_count"].split()]
    internal_count = [float(v) for v in tree["internal_count"].split()]
    if min(internal_count) <= 0:
        raise Unsupported("a split with no training rows")
    expected = sum(count / internal_count[0] * value for count, value in zip(leaf_count, leaf_value, strict=True))

    leaves: list[_Leaf] = []
    # (node, per feature split on the way there: (z, low, high, default_ok, missing type))
    stack: list[tuple[int, dict[int, tuple[float, float, float, bool, int]]]] = [(0, {})]
    while stack:
        node, merged = stack.pop()
        if node < 0:
            leaf = _Leaf(leaf_value[~node], list(merged), [], [], [], [], [])
            for z, low, high, default_ok, missing in merged.values():
                leaf.zero.append(z)
                leaf.low.append(low)
                leaf.high.append(high)
                leaf.default_ok.append(default_ok)
                leaf.missing.append(missing)
            leaves.append(leaf)
            continue
        f, t, kind = feature[node], threshold[node], decision[node]
        if kind & 1:
            raise Unsupported(f"categorical split on feature {f}")
        default_left, missing = bool(kind & 2), (kind >> 2) & 3  # missing type: 0 None, 1 Zero, 2 NaN
        z, low, high, default_ok, before = merged.get(f, (1.0, -math.inf, math.inf, True, missing))
        if before != missing:
            raise Unsupported(f"feature {f} split with different missing types on one path")
        for left in (False, True):
            child = children[0][node] if left else children[1][node]
            count = internal_count[child] if child >= 0 else leaf_count[~child]
            taken = dict(merged)
            taken[f] = (
                z * (count / internal_count[node]),
                low if left else max(low, t),
                min(high, t) if left else high,
                default_ok and default_left == left,
                missing,
            )
            stack.append((child, taken))
    return expected, leaves


def leaf_tables(zero: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Contributions of leaves with d distinct path features, for every pattern of satisfied ones.

    `zero` is (n, d) (z_j per leaf), `values` (n,) the leaf values. Returns
    (n, 2^d, d): entry [l, p, i] is feature i's share of leaf l when the row
    satisfies exactly the path features whose bits are set in p.

    The Shapley weights are Beta integrals, w(k, d) = ∫₀¹ u^k (1−u)^(d−1−k) du,
    so Σ_k w(k, d)·[t^k] Π_{j≠i}(z_j + o_j·t) = ∫₀¹ Π_{j≠i}(z_j·(1−u) + o_j·u) du:
    a polynomial of degree d−1 in u, which Gauss–Legendre quadrature with
    ⌈d/2⌉ nodes integrates exactly (to rounding).
    """
    n, d = zero.shape
    patterns = 1 << d
    ones = ((np.arange(patterns)[:, None] >> np.arange(d)) & 1).astype(np.float64)  # (2^d, d): o_j
    nodes, weights = np.polynomial.legendre.leggauss((d + 1) // 2)
    out = np.empty((n, patterns, d))
    step = max(1, _BUILD_CHUNK // (patterns * d))
    for start in range(0, n, step):
        z = zero[start : start + step, None, :]  # (l, 1, j)
        integral = np.zeros((z.shape[0], patterns, d))
        for node, weight in zip(nodes, weights, strict=True):
            u = (node + 1.0) / 2.0
            factor = z * (1.0 - u) + ones[None] * u  # (l, p, j)
            # the product of the factors of every j but i: prefix times suffix products
            before = np.ones_like(factor)
            np.cumprod(factor[..., :-1], axis=-1, out=before[..., 1:])
            after = np.ones_like(factor)
            np.cumprod(factor[..., :0:-1], axis=-1, out=after[..., -2::-1])
            integral += (weight / 2.0) * before * after
        out[start : start + step] = values[start : start + step, None, None] * (ones[None] - z) * integral
    return out


class PathTables:
    """Exact TreeSHAP for one row from per-leaf tables built once (see the module docstring).

    Read-only after construction; each call works on its own arrays, so any
    number of threads can call it at once.
    """

    def __init__(self, booster: lightgbm.Booster, max_values: int = MAX_TABLE_VALUES) -> None:
        """Build the tables; raises `Unsupported` for a model they cannot explain."""
        header, trees = _model_text(booster)
        if header.get("num_tree_per_iteration", "1") != "1" or header.get("num_class", "1") != "1":
            raise Unsupported("more than one score per row")
        if "average_output" in header:
            raise Unsupported("averaged output (random forest)")
        self.num_features = booster.num_feature()
        bias = 0.0
        leaves: list[_Leaf] = []
        for tree in trees:
            expected, tree_leaves = _tree_leaves(tree)
            bias += expected
            leaves.extend(tree_leaves)
        size = sum(len(leaf.features) << len(leaf.features) for leaf in leaves)
        if size > max_values:
            raise Unsupported(f"the tables would hold {size} values, over the budget of {max_values}")
        self.bias = bias
        self.table_values = size

        # The tables, leaf after leaf (fewest path features first): a leaf with d
        # path features has a block of 2^d rows (patterns) of d values (shares).
        leaves.sort(key=lambda leaf: len(leaf.features))
        widths = np.array([len(leaf.features) for leaf in leaves], dtype=np.int64)
        blocks = [np.zeros(0)]
        for d in sorted(set(widths.tolist())):
            group = [leaf for leaf in leaves if len(leaf.features) == d]
            zero = np.array([leaf.zero for leaf in group], dtype=np.float64)
            values = np.array([leaf.value for leaf in group], dtype=np.float64)
            blocks.append(leaf_tables(zero, values).ravel())
        self._table = np.concatenate(blocks)
        offsets = np.cumsum(widths << widths) - (widths << widths)

        # One entry per (leaf, distinct path feature) pair, ordered by feature.
        def flat(attribute: str, dtype: Any) -> np.ndarray:
            return np.array([x for leaf in leaves for x in getattr(leaf, attribute)], dtype=dtype)

        slot = np.concatenate([np.arange(w) for w in widths.tolist()]) if leaves else np.zeros(0, dtype=np.int64)
        feature = flat("features", np.int64)
        order = np.argsort(feature, kind="stable")
        self._pair_feature = feature[order]
        self._pair_leaf = np.repeat(np.arange(len(leaves)), widths)[order]
        # where the leaf's block starts, plus the pair's column in it
        self._pair_base = (np.repeat(offsets, widths) + slot)[order]
        # what the pair adds to its leaf's row offset in the block when the row satisfies it: d·2^slot
        self._pair_step = (np.repeat(widths, widths) << slot)[order].astype(np.float64)
        self._low = flat("low", np.float64)[order]
        self._high = flat("high", np.float64)[order]
        self._default_ok = flat("default_ok", bool)[order]
        missing = flat("missing", np.int64)[order]
        self._has_missing_types = bool(missing.any())
        # index into [never, missing-as-Zero, missing-as-NaN] flags per feature (see __call__)
        self._pair_missing = missing * self.num_features + self._pair_feature
        self._num_leaves = len(leaves)
        self._feature_pairs = np.bincount(self._pair_feature, minlength=self.num_features)
        self._used = np.flatnonzero(self._feature_pairs)
        self._used_start = (np.cumsum(self._feature_pairs) - self._feature_pairs)[self._used]

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """Contributions for one row (length num_features + 1, the last the expected value)."""
        x = np.asarray(row, dtype=np.float64)
        out = np.zeros(self.num_features + 1)
        out[-1] = self.bias
        if not self._num_leaves:
            return out
        nan = np.isnan(x)
        zero = np.abs(x) <= _ZERO  # LightGBM reads these as 0 (NaN compares False)
        # Missing type None reads NaN as 0; -inf as the lowest double (the same side of every threshold).
        value = np.maximum(np.where(nan | zero, 0.0, x), -sys.float_info.max)
        pair_value = np.repeat(value, self._feature_pairs)
        satisfied = (pair_value > self._low) & (pair_value <= self._high)
        if self._has_missing_types:
            # Missing type Zero: NaN and 0 take the default direction; NaN: NaN does.
            default = np.concatenate((np.zeros_like(nan), nan | zero, nan))[self._pair_missing]
            satisfied = np.where(default, self._default_ok, satisfied)
        # each leaf's row in its block: d × (the pattern of path features the row satisfies)
        rows = np.bincount(self._pair_leaf, weights=satisfied * self._pair_step, minlength=self._num_leaves)
        shares = np.take(self._table, np.take(rows.astype(np.intp), self._pair_leaf) + self._pair_base)
        out[self._used] = np.add.reduceat(shares, self._used_start)
        return out


def booster_contributions(booster: lightgbm.Booster, row: np.ndarray) -> np.ndarray:
    """LightGBM's `Booster.predict(pred_contrib=True)` for one row (the reference, and the last resort)."""
    matrix = np.asarray(row, dtype=np.float64).reshape(1, -1)
    return np.asarray(booster.predict(matrix, pred_contrib=True, num_threads=1), dtype=np.float64)[0]


class Explainer:
    """Per-feature contributions for one row by the fastest method the model allows (`method` says which)."""

    def __init__(self, method: str, compute: Callable[[np.ndarray], np.ndarray]) -> None:
        self.method = method
        self.compute = compute  # a PathTables for method "tables"

    def contributions(self, row: np.ndarray) -> np.ndarray:
        """Raw-score contributions of each feature of the row, then the expected value (they sum to the raw score)."""
        return self.compute(row)


def build_explainer(
    booster: lightgbm.Booster,
    single_row: Callable[[], Callable[[np.ndarray], np.ndarray]] | None = None,
    methods: Sequence[str] = METHODS,
) -> Explainer:
    """The first of `methods` that can be set up for this booster.

    `single_row` sets up LightGBM's single-row C entry point for
    contributions (raising `OSError` or `AttributeError` when it cannot);
    `Booster.predict` always works.
    """
    for method in methods:
        if method == "tables":
            try:
                return Explainer(method, PathTables(booster))
            except Unsupported as exc:
                log.info("explanations: no path tables for this model (%s)", exc)
        elif method == "lightgbm-single-row":
            if single_row is None:
                continue
            try:
                return Explainer(method, single_row())
            except (OSError, AttributeError) as exc:
                log.warning("explanations: LightGBM's single-row contributions are unavailable: %s", exc)
        elif method == "booster-predict":
            return Explainer(method, lambda row: booster_contributions(booster, row))
        else:
            raise ValueError(f"unknown explanation method {method!r} (one of {', '.join(METHODS)})")
    raise ValueError(f"none of the explanation methods {list(methods)} can be set up")


def top_contributions(
    features: Sequence[str], values: Sequence[float], contributions: Sequence[float], top_k: int
) -> tuple[Contribution, ...]:
    """The top_k features pushing toward fraud: contribution > 0, largest first, ties by feature name.

    `contributions` is in the order of `features` (an expected value after them is ignored).
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, not {top_k}")
    per_feature = contributions[: len(features)]  # without the expected value, when given
    pushing = [(-float(c), name, float(v)) for name, v, c in zip(features, values, per_feature, strict=True) if c > 0]
    pushing.sort()
    return tuple(Contribution(name, v, -c) for c, name, v in pushing[:top_k])
