"""Drift: how far the scores and features served in the last hour are from the ones the model was trained with.

This module owns the reference histograms a model carries in its metadata
(`reference_histograms`, written by `risk-engine train` from the held-out
period) and the population stability index (PSI) of live traffic against
them (`DriftMonitor`).

A reference histogram of one variable (the score, or a feature) has the
interior bin edges at its deciles on the reference rows (duplicates
removed, so a 0/1 feature has one edge), the share of rows in each bin
(bins are right-closed: `(-inf, e1], (e1, e2], ..., (ek, inf)`) and the
share of missing values (NaN), which is a bin of its own.

PSI = Σ (a − e) · ln(a / e) over the bins, `e` the reference share and `a`
the live one, both floored at `PSI_FLOOR` so an empty bin counts without
dividing by zero. By the usual reading, below 0.1 is stable, 0.1 to 0.25 a
shift worth a look, above 0.25 a shift that changes what the model sees.

Serving stays cheap: `DriftMonitor.record` appends the model, the time, the
score and the model's feature row (a tuple the model's own item getter
builds) to a bounded deque and returns; nothing else runs on the request
path. A background thread (`start`), or a direct `refresh`, drains the deque
into per-minute bin counts and recomputes the PSI of every variable over the
last `window_s`. Rows beyond the deque's bound between two refreshes are
dropped and counted (`dropped`). When another model is served, the counts
start again for it (a reload of the same model folder, as after a rules
change, keeps them); a model without reference histograms in its
metadata (trained before they existed) has no drift values.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.model.predictor import Model

log = logging.getLogger("risk_engine.drift")

#: The variable name of the model's score in the references and the drift values.
SCORE = "score"
#: Shares below this count as this in the PSI (an empty bin would divide by zero).
PSI_FLOOR = 1e-4
#: Deciles: the reference edges.
BINS = 10


def histogram_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior edges at the quantiles of the non-missing values (unique, ascending; empty when none)."""
    present = values[~np.isnan(values)]
    if not len(present):
        return np.zeros(0)
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1], method="lower")
    return np.unique(quantiles)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (`len(edges) + 1` right-closed bins), then the count of missing values."""
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    return np.append(counts, float(missing.sum()))


def reference_histogram(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """The reference of one variable: interior edges, the share per bin, the share missing."""
    values = np.asarray(values, dtype=np.float64)
    edges = histogram_edges(values, bins)
    counts = bin_counts(values, edges)
    shares = counts / max(len(values), 1)
    return {
        "edges": [float(e) for e in edges],
        "shares": [round(float(s), 6) for s in shares[:-1]],
        "missing": round(float(shares[-1]), 6),
    }


def reference_histograms(
    matrix: np.ndarray, features: Sequence[str], scores: np.ndarray, measured_on: str
) -> dict[str, Any]:
    """The metadata's `reference`: the score's and each feature's histogram on the reference rows."""
    return {
        "measured_on": measured_on,
        "rows": len(scores),
        SCORE: reference_histogram(scores),
        "features": {name: reference_histogram(matrix[:, j]) for j, name in enumerate(features)},
    }


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of `actual` shares against `expected` ones (same bins; each sums to 1)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class _Variable:
    name: str
    edges: np.ndarray
    expected: np.ndarray  # shares per bin, then missing


def _variables(reference: Mapping[str, Any], features: Sequence[str]) -> list[_Variable] | None:
    """The score (first), then each feature in the model's order; None when the reference is unusable."""
    try:
        hists = [(SCORE, reference[SCORE])] + [(f, reference["features"][f]) for f in features]
        out = []
        for name, h in hists:
            edges = np.array(h["edges"], dtype=np.float64)
            expected = np.array([*h["shares"], h["missing"]], dtype=np.float64)
            if len(expected) != len(edges) + 2 or not np.all(np.isfinite(expected)):
                return None
            out.append(_Variable(name, edges, expected))
        return out
    except (KeyError, TypeError, ValueError):
        return None


def _values(rows: Sequence[tuple[Model, float, float, tuple[Any, ...]]]) -> np.ndarray:
    """One row per transaction: the score, then the model's features (bools as 0/1, missing as NaN).

    Read with `np.fromiter` (no tuple per row, no dtype discovery per element: a third of the time
    of `np.array` on a list of rows, and this runs with the GIL held while the server scores); a
    value it cannot take as a float (None) falls back to `np.array`, which makes it NaN.
    """
    width = 1 + len(rows[0][3])
    try:
        features = np.fromiter(
            itertools.chain.from_iterable(row for _, _, _, row in rows), np.float64, len(rows) * (width - 1)
        )
    except (TypeError, ValueError):
        return np.array([(score, *row) for _, _, score, row in rows], dtype=np.float64)
    values = np.empty((len(rows), width))
    values[:, 0] = np.fromiter((score for _, _, score, _ in rows), np.float64, len(rows))
    values[:, 1:] = features.reshape(len(rows), width - 1)
    return values


class DriftMonitor:
    """The PSI of the score and each feature of the served model over the last `window_s`, against its references."""

    def __init__(
        self,
        window_s: float = 3600.0,
        slot_s: float = 60.0,
        max_pending: int = 50_000,
        interval_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.slot_s = slot_s
        self.interval_s = interval_s
        self.clock = clock
        self._pending: deque[tuple[Model, float, float, tuple[Any, ...]]] = deque(maxlen=max_pending)
        self.dropped = 0
        self._lock = threading.Lock()  # held by refresh (the thread, or a caller)
        self._model: Model | None = None
        self._variables: list[_Variable] | None = None
        self._slots: dict[int, list[np.ndarray]] = {}  # slot number -> counts per variable
        self._values: dict[str, float] = {}
        self._rows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path -------------------------------------------------------

    def record(self, model: Model, fields: Mapping[str, Any], score: float) -> None:
        """Keep one scored transaction for the next refresh (a tuple appended to a bounded deque)."""
        pending = self._pending
        if len(pending) == pending.maxlen:
            self.dropped += 1
        pending.append((model, self.clock(), score, model.row(fields)))

    # -- off the request path ---------------------------------------------------

    def refresh(self) -> dict[str, float]:
        """Drain the recorded rows into the per-minute counts and recompute every PSI; return them."""
        with self._lock:
            batch = []
            while True:
                try:
                    batch.append(self._pending.popleft())
                except IndexError:
                    break
            start = 0
            while start < len(batch):  # runs of rows of one model (a reload starts a new run)
                model = batch[start][0]
                end = start
                while end < len(batch) and batch[end][0] is model:
                    end += 1
                if model is not self._model:
                    self._switch(model)  # another model, or the same one loaded again (a rules reload)
                self._count(batch[start:end])
                start = end
            self._compute()
            return dict(self._values)

    def _count(self, rows: Sequence[tuple[Model, float, float, tuple[Any, ...]]]) -> None:
        """Add rows of the current model to the counts of their minutes."""
        if self._variables is None or not rows:
            return
        slots = (np.fromiter((when for _, when, _, _ in rows), np.float64, len(rows)) // self.slot_s).astype(np.int64)
        values = _values(rows)
        for slot in np.unique(slots).tolist():
            in_slot = values[slots == slot]
            counts = self._slots.get(slot)
            if counts is None:
                counts = self._slots[slot] = [np.zeros(len(v.expected)) for v in self._variables]
            for j, variable in enumerate(self._variables):
                counts[j] += bin_counts(in_slot[:, j], variable.edges)

    def _switch(self, model: Model) -> None:
        same = self._model is not None and (self._model.version, self._model.path) == (model.version, model.path)
        self._model = model
        if same and self._variables is not None:
            return  # a reload of the same model folder (the rules changed): the counts go on
        self._slots = {}
        reference = model.metadata.get("reference")
        self._variables = _variables(reference, model.features) if isinstance(reference, Mapping) else None
        if self._variables is None:
            log.info(
                "drift: model %s has no reference histograms in its metadata; no drift values",
                model.version,
                extra={"event": "drift"},
            )

    def _compute(self) -> None:
        oldest = int((self.clock() - self.window_s) // self.slot_s)
        for slot in [s for s in self._slots if s <= oldest]:
            del self._slots[slot]
        self._values, self._rows = {}, 0
        if self._variables is None or not self._slots:
            return
        for j, variable in enumerate(self._variables):
            total = np.sum([counts[j] for counts in self._slots.values()], axis=0)
            rows = float(total.sum())
            self._rows = int(rows)
            self._values[variable.name] = round(psi(variable.expected, total / rows), 6)

    def values(self) -> dict[str, float]:
        """The last computed PSI per variable (`score`, then the features); empty before rows or references."""
        return dict(self._values)

    @property
    def rows(self) -> int:
        """The rows behind the last computed values."""
        return self._rows

    @property
    def model_version(self) -> str:
        return self._model.version if self._model is not None else ""

    def start(self) -> None:
        """Refresh every `interval_s` seconds on a daemon thread, until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # drift must never take the server down
                log.exception("drift: refresh failed", extra={"event": "drift"})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
