"""Loading a model folder and scoring one transaction.

A model folder holds `model.txt` (LightGBM's text format) and
`metadata.json`: the version, the ordered feature names, the definitions of
the windows those features come from, the training data, the metrics and
optionally the score thresholds chosen at training (`thresholds: {review_at,
deny_at}`). A registry folder (`models/`) holds model folders and a
`PROMOTED` file naming the one to serve (`engine.model.registry`).

Which thresholds apply is decided by the decision policy
(`engine.decision.thresholds`): a threshold the rule set's `model:` section
sets (an analyst's explicit override) wins; otherwise the model's own.
`applicable_thresholds` hands it the two.

At load the model is checked against the rule set it will serve with: every
feature must be a numeric field the pipeline produces, every window it uses
must be defined exactly as when it was trained, and the base currency and
time zone (which amount and time features depend on) must be the same.
Otherwise it is refused with a message that says which feature and why.

One transaction is scored through LightGBM's own single-row C entry point
(`LGBM_BoosterPredictForMatSingleRowFast`), set up once at load: the same
trees and code as `Booster.predict`, so the same score to the last bit, in
about a quarter of the time (`benchmarks/model_step.py`). When that entry
point cannot be set up, `predict` falls back to `Booster.predict`. Batches
(`predict_many`: replay, backtest, training) stay on `Booster.predict`.

`explain` gives the features that pushed one score toward fraud, from the
model's exact per-feature contributions (`engine.model.explain`): computed
only when asked, from tables built on the first call or by
`prepare_explanations` (a few hundred milliseconds, so a server calls it when
it loads a model, off the request path).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import operator
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from engine.decision import Thresholds, thresholds
from engine.model.categories import categories_of, feature_row
from engine.model.explain import METHODS, Contribution, Explainer, build_explainer, top_contributions
from engine.rules.ruleset import RuleSet
from engine.windows.spec import WindowSpec

PROMOTED = "PROMOTED"
log = logging.getLogger("risk_engine.model")

# LightGBM C API constants (c_api.h)
_PREDICT_NORMAL = 0
_PREDICT_CONTRIB = 3
_DTYPE_FLOAT64 = 1


class ModelInvalid(Exception):
    """The model cannot be served with this rule set (or cannot be read)."""


def model_thresholds(metadata: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(review_at, deny_at) from a model's metadata (`thresholds`), each None when absent.

    Raises ModelInvalid when they are present but not numbers in [0, 1], or review_at > deny_at.
    """
    raw = metadata.get("thresholds")
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise ModelInvalid(f"metadata 'thresholds' must be a mapping with review_at and/or deny_at, got {raw!r}")
    values: list[float | None] = []
    for key in ("review_at", "deny_at"):
        value = raw.get(key)
        if value is None:
            values.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ModelInvalid(f"metadata thresholds.{key} must be a number in [0, 1], got {value!r}")
        values.append(float(value))
    review, deny = values
    if review is not None and deny is not None and review > deny:
        raise ModelInvalid(f"metadata thresholds: review_at {review} is above deny_at {deny}")
    return review, deny


def applicable_thresholds(ruleset: RuleSet, model: Model | None) -> Thresholds:
    """The thresholds that apply to a model's score: each the rule set's when it sets it, else the model's."""
    policy = ruleset.model_policy
    return thresholds((policy.review_at, policy.deny_at), model.thresholds if model is not None else (None, None))


def window_to_dict(spec: WindowSpec) -> dict[str, Any]:
    """How a window is defined, as a model's metadata records it (filter and delay only when set)."""
    out: dict[str, Any] = {
        "name": spec.name,
        "entity": list(spec.entity),
        "aggregate": spec.aggregate.value,
        "field": spec.field,
        "duration_ms": spec.duration_ms,
    }
    if spec.filter is not None:
        out["filter"] = spec.filter
    if spec.delay_ms:
        out["delay_ms"] = spec.delay_ms
    return out


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a registry folder whose PROMOTED file names one."""
    path = Path(path)
    if (path / "model.txt").is_file():
        return path
    promoted = path / PROMOTED
    if promoted.is_file():
        version = promoted.read_text().strip()
        target = path / version
        if not (target / "model.txt").is_file():
            raise ModelInvalid(f"{promoted} names {version!r}, but {target}/model.txt does not exist")
        return target
    versions = sorted(
        (p for p in path.glob("*/model.txt") if p.is_file()), key=lambda p: (-p.stat().st_mtime, p.parent.name)
    )
    if versions:
        names = ", ".join(p.parent.name for p in versions)
        raise ModelInvalid(
            f"{path} is a registry with no promoted model; it holds {len(versions)} version(s), newest first: "
            f"{names} (pass --model {path / versions[0].parent.name}, or promote one: "
            f"risk-engine models promote VERSION --dir {path})"
        )
    raise ModelInvalid(f"{path} is neither a model folder (model.txt) nor a registry (PROMOTED)")


def _free_fast_config(handle: ctypes.c_void_p, _booster: lightgbm.Booster) -> None:
    from lightgbm.basic import _LIB

    _LIB.LGBM_FastConfigFree(handle)


class SingleRowPredictor:
    """LightGBM's fast single-row prediction, set up once: one C call per row, no per-call parsing.

    `LGBM_BoosterPredictForMatSingleRowFastInit` parses the prediction
    parameters and builds the single-row predictor at load;
    `LGBM_BoosterPredictForMatSingleRowFast` then only reads the row and walks
    the trees (LightGBM serializes calls on one booster with its own lock).
    Each thread gets its own row and output buffers, since ctypes lets other
    threads run during the C call. Raises `OSError` (or `AttributeError` on a
    LightGBM without the entry point) when it cannot be set up.

    `predict_type` is the C API's: the score (`C_API_PREDICT_NORMAL`, the
    default), or the feature contributions (`C_API_PREDICT_CONTRIB`: one per
    feature then the expected value, read with `outputs`).
    """

    def __init__(self, booster: lightgbm.Booster, predict_type: int = _PREDICT_NORMAL) -> None:
        from lightgbm.basic import _LIB  # the library `Booster` itself calls

        self.num_features = booster.num_feature()
        self.num_outputs = self.num_features + 1 if predict_type == _PREDICT_CONTRIB else 1
        self._call = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._call.restype = ctypes.c_int
        handle = ctypes.c_void_p()
        status = _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle,  # the C handle, as lightgbm's own predict passes it
            ctypes.c_int(predict_type),
            ctypes.c_int(0),  # start_iteration
            ctypes.c_int(booster.best_iteration if booster.best_iteration > 0 else -1),  # as Booster.predict
            ctypes.c_int(_DTYPE_FLOAT64),
            ctypes.c_int32(self.num_features),
            ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(handle),
        )
        if status != 0 or not handle.value:
            raise OSError(f"LGBM_BoosterPredictForMatSingleRowFastInit failed: {_LIB.LGBM_GetLastError().decode()}")
        self._handle = handle
        # Free the C config when this object goes, keeping the booster alive until then.
        weakref.finalize(self, _free_fast_config, handle, booster)
        self._local = threading.local()

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, Any, Any, Any]:
        row = np.zeros(self.num_features, dtype=np.float64)
        out = np.zeros(self.num_outputs, dtype=np.float64)
        out_len = ctypes.c_int64()
        buffers = (
            row,
            out,
            row.ctypes.data_as(ctypes.c_void_p),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            ctypes.byref(out_len),
        )
        self._local.buffers = buffers
        return buffers

    def _run(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """This thread's output buffer, filled for one row of feature values."""
        try:
            row, out, row_p, out_p, len_p = self._local.buffers
        except AttributeError:
            row, out, row_p, out_p, len_p = self._buffers()
        row[:] = values  # NumPy converts each bool, int and float exactly as float() does
        if self._call(self._handle, row_p, len_p, out_p) != 0:
            from lightgbm.basic import _LIB

            raise RuntimeError(f"LightGBM single-row prediction failed: {_LIB.LGBM_GetLastError().decode()}")
        return out

    def __call__(self, values: Sequence[Any]) -> float:
        """The model's output (a probability for a binary model) for one row of feature values."""
        return float(self._run(values)[0])

    def outputs(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """All the outputs for one row of feature values (a copy: the buffer is reused)."""
        return self._run(values).copy()


def single_row_predictor(booster: lightgbm.Booster) -> SingleRowPredictor | None:
    """The fast single-row path for a booster, or None (scores then go through `Booster.predict`)."""
    if booster.num_model_per_iteration() != 1:
        return None  # one score per row only
    try:
        return SingleRowPredictor(booster)
    except (OSError, AttributeError) as exc:
        log.warning("LightGBM's fast single-row prediction is unavailable, using Booster.predict: %s", exc)
        return None


def explainer(booster: lightgbm.Booster, methods: Sequence[str] = METHODS) -> Explainer:
    """The fastest of `methods` that can explain this booster's scores (`engine.model.explain`)."""
    return build_explainer(booster, lambda: SingleRowPredictor(booster, _PREDICT_CONTRIB).outputs, methods)


@dataclass(frozen=True)
class Model:
    version: str
    features: tuple[str, ...]
    metadata: dict[str, Any]
    booster: lightgbm.Booster
    path: Path
    #: LightGBM's fast single-row path (None: `predict` goes through `Booster.predict`)
    single_row: SingleRowPredictor | None = field(default=None, compare=False, repr=False)
    #: how `explain` computes contributions (None: set up on first use, see `prepare_explanations`)
    explainer: Explainer | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The row of one transaction's fields, always a tuple (`engine.model.categories.feature_row`).
        categories = categories_of(self.metadata)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "_row", feature_row(self.features, categories))
        object.__setattr__(self, "_thresholds", model_thresholds(self.metadata))
        # held while this model sets up its explanations, so that only one thread does
        object.__setattr__(self, "_explainer_setup", threading.Lock())

    @property
    def thresholds(self) -> tuple[float | None, float | None]:
        """(review_at, deny_at) chosen at training (metadata `thresholds`), each None when not given."""
        return self._thresholds  # type: ignore[attr-defined, no-any-return]

    def row(self, fields: Mapping[str, Any]) -> tuple[Any, ...]:
        """The raw feature values in the model's order, as read from the fields (no conversion)."""
        return self._row(fields)  # type: ignore[attr-defined, no-any-return]

    def vector(self, fields: Mapping[str, Any]) -> np.ndarray:
        """The feature row in the model's order (bools as 0/1, missing as NaN)."""
        return self.matrix((fields,))

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One feature row per field map, in the model's order (bools as 0/1, missing as NaN)."""
        # NumPy converts each bool, int and float exactly as float() does.
        row: Callable[[Mapping[str, Any]], Any] = operator.itemgetter(*self.features)
        if self.categories:  # type: ignore[attr-defined]
            row = self._row  # type: ignore[attr-defined]
        return np.array(list(map(row, rows)), dtype=np.float64).reshape(len(rows), len(self.features))

    def predict(self, fields: Mapping[str, Any]) -> float:
        """The score of one transaction: the same value `predict_many` gives it, through the fast path."""
        if self.single_row is None:
            return self.predict_many((fields,))[0]
        score = self.single_row(self._row(fields))  # type: ignore[attr-defined]
        return score if math.isfinite(score) else float("nan")

    def prepare_explanations(self) -> Explainer:
        """Set up the explanations now rather than on the first `explain` (idempotent, thread-safe)."""
        if self.explainer is None:
            with self._explainer_setup:  # type: ignore[attr-defined]
                if self.explainer is None:
                    object.__setattr__(self, "explainer", explainer(self.booster))
        assert self.explainer is not None
        return self.explainer

    def contributions(self, fields: Mapping[str, Any]) -> np.ndarray:
        """Each feature's contribution to the raw score (log-odds) of one transaction, then the expected value.

        Exact path-dependent TreeSHAP: the values of `Booster.predict(X,
        pred_contrib=True)`, in the order of `features`; they sum to the raw
        score (`Booster.predict(X, raw_score=True)`).
        """
        return self.prepare_explanations().contributions(self.vector(fields)[0])

    def explain(self, fields: Mapping[str, Any], top_k: int = 3) -> tuple[Contribution, ...]:
        """The top_k features pushing this transaction's score toward fraud, largest contribution first.

        Only features with a positive contribution (ties by feature name);
        the value is the one the model read (bools as 0/1, NaN when missing).
        """
        row = self.vector(fields)[0]
        contributions = self.prepare_explanations().contributions(row)
        return top_contributions(self.features, row.tolist(), contributions.tolist(), top_k)

    def predict_many(self, rows: Sequence[Mapping[str, Any]]) -> list[float]:
        """Scores for many transactions with one model call: each as `predict` would give it alone.

        LightGBM scores each row on its own (the same trees, summed in the
        same order), so a row's score does not depend on the rows beside it.
        """
        scores = self.booster.predict(self.matrix(rows), num_threads=1)
        return [score if math.isfinite(score) else float("nan") for score in np.asarray(scores).tolist()]


def load_model(path: str | Path, ruleset: RuleSet) -> Model:
    """Load and check a model folder (or the promoted model of a registry)."""
    folder = resolve_model_dir(path)
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"cannot read {folder / 'metadata.json'}: {exc}") from None
    features = tuple(metadata.get("features") or ())
    version = str(metadata.get("version") or "")
    if not features or not version:
        raise ModelInvalid(f"{folder / 'metadata.json'} must list 'features' and give a 'version'")

    produced = ruleset.numeric_features
    try:
        categorical = categories_of(metadata)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelInvalid(f"{folder / 'metadata.json'}: 'categorical' is malformed: {exc}") from None
    missing = [f for f in features if f not in produced and f not in categorical]
    if missing:
        raise ModelInvalid(
            f"model {version} needs features the pipeline does not produce with rule set "
            f"{ruleset.version}: {', '.join(missing)} (define these windows in the rules, or train a new model)"
        )
    defined = {s.name: window_to_dict(s) for s in ruleset.windows.specs}
    trained = {w.get("name"): w for w in metadata.get("windows", [])}
    for name in features:
        if name not in defined:
            continue
        if name not in trained:
            raise ModelInvalid(f"model {version} uses window {name} but its metadata does not say how it was defined")
        if defined[name] != trained[name]:
            raise ModelInvalid(
                f"model {version} was trained with window {name} = {trained[name]}, "
                f"but rule set {ruleset.version} defines it as {defined[name]}"
            )
    # Amount features are in the base currency, time features in the rule set's time
    # zone, and value windows capped: a model trained under other settings would read
    # shifted values.
    settings = (
        ("base_currency", ruleset.enricher.money.base),
        ("timezone", ruleset.enricher.timezone.key),
        ("max_events_per_series", ruleset.windows.max_events_per_series),
    )
    for key, current in settings:
        if metadata.get(key) != current:
            trained_with = metadata.get(key)
            raise ModelInvalid(
                f"model {version} was trained with {key} {trained_with!r}, rule set {ruleset.version} uses {current!r}"
            )
    try:
        booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
    except Exception as exc:  # noqa: BLE001 - LightGBM raises its own and OS errors
        raise ModelInvalid(f"cannot load {folder / 'model.txt'}: {exc}") from None
    if tuple(booster.feature_name()) != features:
        raise ModelInvalid(
            f"{folder / 'model.txt'} has features {booster.feature_name()}, metadata.json lists {list(features)}"
        )
    return Model(
        version=version,
        features=features,
        metadata=metadata,
        booster=booster,
        path=folder,
        single_row=single_row_predictor(booster),
    )
