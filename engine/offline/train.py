"""Training: replay labeled history through the pipeline, then fit a LightGBM model.

The features of each transaction are exactly the fields the pipeline computed
for it during replay (`Scored.fields`), in event-time order with the
in-process store: the same code that serves live traffic. The split is by
time (train, early-stopping, a gap for the label delay, then test), never
random; seeds and LightGBM's deterministic mode make a rerun give the same
model, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.model.predictor import PROMOTED, window_to_dict
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.replay import ReplayStats, print_progress, replay
from engine.rules.ruleset import load_ruleset

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TrainConfig:
    name: str
    mapping: str
    features: tuple[str, ...]
    train: tuple[str, str]  # inclusive ISO dates
    early_stopping: tuple[str, str]
    test: tuple[str, str]
    params: dict[str, Any]
    num_boost_round: int
    early_stopping_rounds: int

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text())
        split = raw["split"]
        return cls(
            name=raw["name"],
            mapping=raw.get("mapping", "native"),
            features=tuple(raw["features"]),
            train=tuple(split["train"]),  # type: ignore[arg-type]
            early_stopping=tuple(split["early_stopping"]),  # type: ignore[arg-type]
            test=tuple(split["test"]),  # type: ignore[arg-type]
            params=dict(raw.get("params", {})),
            num_boost_round=int(raw.get("num_boost_round", 1000)),
            early_stopping_rounds=int(raw.get("early_stopping_rounds", 50)),
        )


def _day_ms(text: str) -> int:
    d = date.fromisoformat(text)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def _mask(times: np.ndarray, span: tuple[str, str]) -> np.ndarray:
    return (times >= _day_ms(span[0])) & (times < _day_ms(span[1]) + DAY_MS)


def card_precision_top_k(
    days: np.ndarray, cards: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 100
) -> float:
    """CP@k as in the handbook: per day, each card's max score and max label, top k cards.

    Cards found fraudulent on an earlier test day are left out of later days.
    """
    found: set[str] = set()
    daily = []
    for day in np.unique(days):
        sel = days == day
        best: dict[str, tuple[float, int]] = {}
        for card, score, label in zip(cards[sel], scores[sel], labels[sel], strict=True):
            if card in found:
                continue
            s, lab = best.get(card, (-1.0, 0))
            best[card] = (max(s, float(score)), max(lab, int(label)))
        ranked = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)[:k]
        hits = [card for card, (_, lab) in ranked if lab]
        daily.append(len(hits) / k)
        found.update(card for card, (_, lab) in best.items() if lab)
    return float(np.mean(daily)) if daily else 0.0


def train(
    data: str | Path,
    rules: str | Path,
    config_path: str | Path,
    out: str | Path,
    *,
    promote: bool = False,
    quiet: bool = False,
) -> Path:
    """Train a model and write a versioned model folder under `out`; return its path."""
    config = TrainConfig.load(config_path)
    ruleset = load_ruleset(rules)
    unknown = [f for f in config.features if f not in ruleset.numeric_features]
    if unknown:
        raise ValueError(f"features not produced by rule set {ruleset.version}: {', '.join(unknown)}")

    started = time.perf_counter()
    dataset = read_dataset(data, PRESETS[config.mapping])
    if dataset.labels is None:
        raise ValueError("the data has no label column in this mapping")
    ids = [t.transaction_id for t in dataset.transactions]
    if len(set(ids)) != len(ids):
        # Replay would merge them (a transaction counts once), but each would become a training row.
        raise ValueError(f"{data}: {len(ids) - len(set(ids))} repeated transaction ids; deduplicate the data first")
    n = len(dataset.transactions)
    x = np.full((n, len(config.features)), np.nan, dtype=np.float64)
    valid = np.zeros(n, dtype=bool)
    stats = ReplayStats()
    for i, scored in replay(dataset.transactions, ruleset, None, stats, None if quiet else print_progress):
        fields = scored.fields
        x[i] = [float(fields[f]) for f in config.features]
        valid[i] = True
    replay_seconds = time.perf_counter() - started
    if not quiet:
        print_progress(n, n)

    times = np.array([t.event_time_ms for t in dataset.transactions], dtype=np.int64)
    cards = np.array([t.card_id for t in dataset.transactions], dtype=object)
    y = dataset.labels.astype(np.float64)
    masks = {
        name: _mask(times, span) & valid
        for name, span in (("train", config.train), ("early_stopping", config.early_stopping), ("test", config.test))
    }
    for name, m in masks.items():
        if m.sum() == 0 or y[m].sum() == 0:
            raise ValueError(f"the {name} period {getattr(config, name)} has no rows or no frauds in {data}")

    params = {
        "objective": "binary",
        "verbosity": -1,
        "seed": 7,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        **config.params,
    }
    train_set = lightgbm.Dataset(
        x[masks["train"]], y[masks["train"]], feature_name=list(config.features), free_raw_data=False
    )
    es_set = lightgbm.Dataset(x[masks["early_stopping"]], y[masks["early_stopping"]], reference=train_set)
    fit_started = time.perf_counter()
    booster = lightgbm.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[es_set],
        callbacks=[lightgbm.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    fit_seconds = time.perf_counter() - fit_started

    metrics: dict[str, Any] = {}
    for name, m in masks.items():
        scores = np.asarray(booster.predict(x[m], num_iteration=booster.best_iteration))
        metrics[name] = {
            "rows": int(m.sum()),
            "frauds": int(y[m].sum()),
            "auc_roc": round(float(roc_auc_score(y[m], scores)), 4),
            "average_precision": round(float(average_precision_score(y[m], scores)), 4),
        }
        if name == "test":
            metrics[name]["card_precision_top_100"] = round(
                card_precision_top_k(times[m] // DAY_MS, cards[m], scores, y[m]), 4
            )

    text = booster.model_to_string(num_iteration=booster.best_iteration)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    version = f"{config.name}-{digest}"
    folder = Path(out) / version
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "model.txt").write_text(text)
    data_bytes = Path(data).read_bytes()
    windows = {s.name: s for s in ruleset.windows.specs}
    metadata = {
        "version": version,
        "features": list(config.features),
        "windows": [window_to_dict(windows[f]) for f in config.features if f in windows],
        "ruleset_version": ruleset.version,
        "base_currency": ruleset.enricher.money.base,
        "timezone": ruleset.enricher.timezone.key,
        "max_events_per_series": ruleset.windows.max_events_per_series,
        "training_data": {
            "file": Path(data).name,
            "sha256": hashlib.sha256(data_bytes).hexdigest(),
            "rows": n,
            "rejected": stats.rejected,
            "from": datetime.fromtimestamp(times.min() / 1000, UTC).isoformat(),
            "to": datetime.fromtimestamp(times.max() / 1000, UTC).isoformat(),
            "mapping": config.mapping,
        },
        "split": {"train": config.train, "early_stopping": config.early_stopping, "test": config.test},
        "params": params,
        "best_iteration": booster.best_iteration,
        "metrics": metrics,
        "timing_seconds": {"replay": round(replay_seconds, 1), "fit": round(fit_seconds, 1)},
        "library_versions": {
            "lightgbm": lightgbm.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if promote:
        (Path(out) / PROMOTED).write_text(version + "\n")
    return folder
