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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm
import numpy as np
import yaml

from engine.model.categories import CategoryMap, category_value
from engine.model.drift import reference_histograms
from engine.model.predictor import window_to_dict
from engine.model.registry import promote as promote_model
from engine.offline import training_report
from engine.offline.datasets import load_dataset, mapping_candidates
from engine.offline.model_metrics import (
    CP_MIN_CARDS_PER_DAY,
    DAY_MS,
    TOP_SHARE,
    book_test_rows,
    day_ms,
    evaluate_scores,
)
from engine.offline.period import Period, select_period
from engine.offline.rejections import DEFAULT_MAX_REJECTED, Rejections, check_rejections, find_rejections
from engine.offline.replay import LabelEvent, ReplayStats, label_events, print_progress, replay
from engine.offline.training_report import ranking
from engine.rules.loader import load_ruleset
from engine.transaction import Transaction

if TYPE_CHECKING:
    from engine.offline.spark.jobs import SparkOptions


#: LightGBM parameters a training config starts from (its `params` override each): the shipped model's,
#: chosen with the prequential protocol on the handbook data (docs/models.md). LightGBM's own defaults
#: (no L2 penalty, learning rate 0.1, 20 rows a leaf) went unstable after some 30 trees on a second data
#: set; L2 regularization and smaller steps hold for hundreds.
DEFAULT_PARAMS: dict[str, Any] = {
    "metric": "average_precision",  # early stopping watches AP, not log loss
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
}
#: Early stopping's patience: rounds without a better validation AP before training stops.
DEFAULT_PATIENCE = 50
#: A model that stops before this many trees gets a warning (it may have stopped on noise).
FEW_TREES = 40
#: Validation weeks whose AP lies further apart than this share of their mean get a warning.
AP_SWING = 0.5


@dataclass(frozen=True)
class Validation:
    """The handbook's prequential protocol: one model per test week, trained on the weeks before it.

    For a test week starting on day T, the model is trained on the
    `train_days` that end `delay_days` before T (the labels of the last
    week are not known yet when T starts), the last `early_stopping_days` of
    them held out for early stopping. Cards already known compromised (a
    fraud in the week before the delay, or in the delay up to `delay_days`
    before a test day) are dropped from that day's test rows, as the book does.
    """

    test_weeks: tuple[str, ...]  # first day of each 7-day test week (ISO dates)
    train_days: int = 56
    delay_days: int = 7
    early_stopping_days: int = 7
    test_days: int = 7


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the review and deny thresholds are chosen, on held-out scores of the model.

    review: the highest threshold that sends at most `review_rate` of all
    transactions to review or deny; deny: the lowest threshold at which at
    least `deny_precision` of the transactions at or above it are fraud
    (at least `min_deny_count` of them), never below the review threshold.
    """

    review_rate: float = 0.01
    deny_precision: float = 0.9
    min_deny_count: int = 20


@dataclass(frozen=True)
class TrainConfig:
    name: str
    mapping: str | None  # a preset or mapping file; None: the rule set's data_mapping
    features: tuple[str, ...]
    train: tuple[str, str]  # inclusive ISO dates
    early_stopping: tuple[str, str]
    test: tuple[str, str] | None
    params: dict[str, Any]
    num_boost_round: int
    early_stopping_rounds: int
    validation: Validation | None = None
    thresholds: ThresholdPolicy = ThresholdPolicy()
    #: Attributes read as categorical features (`engine.model.categories`), after `features`.
    categorical: tuple[str, ...] = ()

    @property
    def all_features(self) -> tuple[str, ...]:
        """The model's features in its order: the numeric ones, then the categorical ones."""
        return self.features + self.categorical

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text())
        split = raw["split"]
        # The dataclasses hold the defaults; the file gives what it sets.
        validation = None
        t: dict[str, Any] = dict(raw.get("thresholds", {}))
        try:
            if "validation" in raw:
                v: dict[str, Any] = dict(raw["validation"])
                weeks = tuple(str(w) for w in v.pop("test_weeks"))
                validation = Validation(weeks, **{key: int(value) for key, value in v.items()})
            typed: dict[str, Any] = {k: int(x) if k == "min_deny_count" else float(x) for k, x in t.items()}
            policy = ThresholdPolicy(**typed)
        except (TypeError, KeyError) as exc:  # an unknown or missing key
            raise ValueError(f"{path}: validation or thresholds: {exc}") from None
        if not 0 < policy.review_rate < 1 or not 0 < policy.deny_precision <= 1:
            raise ValueError(f"{path}: thresholds: review_rate must be in (0, 1), deny_precision in (0, 1]")
        return cls(
            name=raw["name"],
            mapping=raw.get("mapping"),
            features=tuple(raw["features"]),
            train=tuple(split["train"]),  # type: ignore[arg-type]
            early_stopping=tuple(split["early_stopping"]),  # type: ignore[arg-type]
            test=tuple(split["test"]) if split.get("test") else None,  # type: ignore[arg-type]
            params=dict(raw.get("params", {})),
            num_boost_round=int(raw.get("num_boost_round", 1000)),
            early_stopping_rounds=int(raw.get("early_stopping_rounds", DEFAULT_PATIENCE)),
            validation=validation,
            thresholds=policy,
            categorical=tuple(str(c) for c in raw.get("categorical") or ()),
        )


def _mask(times: np.ndarray, span: tuple[str, str]) -> np.ndarray:
    return (times >= day_ms(span[0])) & (times < day_ms(span[1]) + DAY_MS)


def choose_thresholds(scores: np.ndarray, labels: np.ndarray, policy: ThresholdPolicy) -> dict[str, Any]:
    """Review and deny thresholds by the policy, and what they give on these held-out scores."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order] > 0.5
    n, frauds = len(ranked), max(int(hits.sum()), 1)
    k_review = max(int(policy.review_rate * n), 1)
    review_at = float(ranked[k_review - 1])
    precision_at_k = np.cumsum(hits) / np.arange(1, n + 1)
    # Deny: the deepest k (lowest threshold) whose top-k precision meets the target; the
    # threshold must also separate: the score at k must be above the next one.
    ok = np.flatnonzero(precision_at_k >= policy.deny_precision)
    ok = ok[(ok + 1 >= policy.min_deny_count) & (ok + 1 <= k_review)]
    deny_at = float(ranked[ok[-1]]) if len(ok) else None

    def at(threshold: float | None) -> dict[str, float] | None:
        if threshold is None:
            return None
        flagged = scores >= threshold
        tp = int((flagged & (labels > 0.5)).sum())
        return {
            "threshold": round(threshold, 6),
            "rate": round(float(flagged.mean()), 6),
            "precision": round(tp / max(int(flagged.sum()), 1), 4),
            "recall": round(tp / frauds, 4),
        }

    return {
        "review_at": round(review_at, 6),
        "deny_at": None if deny_at is None else round(deny_at, 6),
        "policy": {
            "review_rate": policy.review_rate,
            "deny_precision": policy.deny_precision,
            "min_deny_count": policy.min_deny_count,
        },
        "review_or_deny": at(review_at),
        "deny": at(deny_at),
    }


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    train_mask: np.ndarray,
    es_mask: np.ndarray,
    config: TrainConfig,
    params: dict[str, Any],
) -> lightgbm.Booster:
    train_set = lightgbm.Dataset(
        x[train_mask],
        y[train_mask],
        feature_name=list(config.all_features),
        categorical_feature=list(config.categorical) or "auto",
        free_raw_data=False,
    )
    es_set = lightgbm.Dataset(x[es_mask], y[es_mask], reference=train_set)
    return lightgbm.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[es_set],
        callbacks=[lightgbm.early_stopping(config.early_stopping_rounds, verbose=False)],
    )


def _iso(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).date().isoformat()


def validate_prequential(
    x: np.ndarray,
    y: np.ndarray,
    days: np.ndarray,
    cards: np.ndarray,
    valid: np.ndarray,
    config: TrainConfig,
    params: dict[str, Any],
    quiet: bool = True,
) -> dict[str, Any]:
    """One model per test week (config.validation), scored with the book's protocol; metrics per week and mean."""
    v = config.validation
    assert v is not None
    weeks = []
    for week in v.test_weeks:
        test_start = day_ms(week) // DAY_MS
        train_end = test_start - v.delay_days  # exclusive
        es_start = train_end - v.early_stopping_days
        train_start = train_end - v.train_days
        train_mask = valid & (days >= train_start) & (days < es_start)
        es_mask = valid & (days >= es_start) & (days < train_end)
        test_mask = book_test_rows(days, cards, y, valid, week, v.test_days, v.delay_days)
        for name, m in (("train", train_mask), ("early stopping", es_mask), ("test", test_mask)):
            if m.sum() == 0 or y[m].sum() == 0:
                raise ValueError(f"validation week {week}: the {name} period has no rows or no frauds")
        booster = _fit(x, y, train_mask, es_mask, config, params)
        scores = np.asarray(booster.predict(x[test_mask], num_iteration=booster.best_iteration))
        result = evaluate_scores(scores, y[test_mask], days[test_mask], cards[test_mask])
        weeks.append(
            {
                "test": [_iso(test_start), _iso(test_start + v.test_days - 1)],
                "train": [_iso(train_start), _iso(es_start - 1)],
                "early_stopping": [_iso(es_start), _iso(train_end - 1)],
                "best_iteration": booster.best_iteration,
                **result,
            }
        )
        if not quiet:
            print(
                f"  week {week}: AUC {result['auc_roc']:.3f}  AP {result['average_precision']:.3f}  {ranking(result)}",
                flush=True,
            )
    mean = {}
    keys = ("auc_roc", "average_precision", "card_precision_top_100", "precision_top_k")
    for key in [k for k in keys if all(k in w for w in weeks)]:
        values = np.array([w[key] for w in weeks], dtype=np.float64)
        mean[key] = round(float(values.mean()), 4)
        mean[f"{key}_std"] = round(float(values.std()), 4)
    return {
        "protocol": {
            "train_days": v.train_days,
            "delay_days": v.delay_days,
            "early_stopping_days": v.early_stopping_days,
            "test_days": v.test_days,
            "known_compromised_cards_dropped": True,
        },
        "weeks": weeks,
        "mean": mean,
    }


def train(
    data: str | Path,
    rules: str | Path,
    config_path: str | Path,
    out: str | Path,
    *,
    promote: bool = False,
    quiet: bool = False,
    spark: SparkOptions | None = None,
    period: Period | None = None,
    max_rejected: float = DEFAULT_MAX_REJECTED,
) -> Path:
    """Train a model and write a versioned model folder under `out`; return its path.

    Replays the data once (with its labels fed back as they became known),
    then: the prequential validation weeks when configured, the final model
    on `split`, its thresholds by the policy on its held-out scores (the test
    period when there is one, else the early-stopping period), a metrics
    report, and the folder.

    `spark`: the replay runs on the Spark engine (`engine.offline.spark`),
    which gives the same features, hence the same model, byte for byte; the
    model is fitted here, on the collected features.

    Rows rejected by validation are summarized by field and reason in the
    metadata and the report; over `max_rejected` of the rows, nothing is
    fitted and TooManyRejected (a DatasetError, hence a ValueError) is raised.
    """
    config = TrainConfig.load(config_path)
    ruleset = load_ruleset(rules)
    unknown = [f for f in config.features if f not in ruleset.numeric_features]
    if unknown:
        raise ValueError(f"features not produced by rule set {ruleset.version}: {', '.join(unknown)}")
    clash = [c for c in config.categorical if c in config.features or not c.isidentifier()]
    if clash:
        raise ValueError(f"categorical features must be attribute names not among the features: {', '.join(clash)}")
    if config.categorical and spark is not None:
        raise ValueError("categorical features are computed on the local engine only (drop --engine spark)")

    started = time.perf_counter()
    candidates = mapping_candidates(ruleset, config.mapping)
    mapping_name, dataset = load_dataset(data, candidates)
    if period is not None and period.bounded:  # --since / --until: only these rows are replayed
        if spark is not None:
            raise ValueError("--since and --until run on the local engine only (drop --engine spark)")
        dataset = select_period(dataset, period)
    if dataset.labels is None:
        raise ValueError("the data has no label column in this mapping")
    ids = [t.transaction_id for t in dataset.transactions]
    if len(set(ids)) != len(ids):
        # Replay would merge them (a transaction counts once), but each would become a training row.
        raise ValueError(f"{data}: {len(ids) - len(set(ids))} repeated transaction ids; deduplicate the data first")
    n = len(dataset.transactions)
    x = np.full((n, len(config.all_features)), np.nan, dtype=np.float64)
    numeric = len(config.features)
    raw_categories: list[list[str]] = [[""] * n for _ in config.categorical]
    valid = np.zeros(n, dtype=bool)
    stats = ReplayStats()
    labels = label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)
    if spark is not None:
        from engine.offline.spark.commands import features_on_spark

        found = features_on_spark(data, rules, ruleset, dict(candidates)[mapping_name], config.features, spark)
        if len(found.valid) != n:
            raise ValueError(f"{data}: Spark read {len(found.valid)} rows, the local reader {n}")
        x, valid = found.x, found.valid
        stats.rejected = int((~valid).sum())
        stats.labels = _labels_fed(dataset.transactions, labels, valid)
    else:
        for i, scored in replay(
            dataset.transactions, ruleset, None, stats, None if quiet else print_progress, labels=labels
        ):
            fields = scored.fields
            x[i, :numeric] = [float(fields[f]) for f in config.features]
            for column, attribute in zip(raw_categories, config.categorical, strict=True):
                column[i] = category_value(fields, attribute)
            valid[i] = True
        if not quiet:
            print_progress(n, n)
    replay_seconds = time.perf_counter() - started
    rejections = find_rejections(dataset.transactions, valid, ruleset, dataset.file_rows)
    check_rejections(rejections, max_rejected)

    times = np.array([t.event_time_ms for t in dataset.transactions], dtype=np.int64)
    days = times // DAY_MS
    cards = np.array([t.card_id for t in dataset.transactions], dtype=object)
    y = np.nan_to_num(dataset.labels.astype(np.float64), nan=0.0)
    valid &= ~np.isnan(dataset.labels)  # unlabeled rows take no part in training or metrics
    spans = {"train": config.train, "early_stopping": config.early_stopping}
    if config.test is not None:
        spans["test"] = config.test
    masks = {name: _mask(times, span) & valid for name, span in spans.items()}
    for name, m in masks.items():
        if m.sum() == 0 or y[m].sum() == 0:
            raise ValueError(f"the {name} period {spans[name]} has no rows or no frauds in {data}")
    # Category maps from the training period, then every row coded as serving codes it (`feature_row`).
    categories: dict[str, CategoryMap] = {}
    train_rows = np.flatnonzero(masks["train"]).tolist()
    for k, (attribute, column) in enumerate(zip(config.categorical, raw_categories, strict=True)):
        categories[attribute] = cmap = CategoryMap.build(attribute, (column[i] for i in train_rows))
        x[:, numeric + k] = [cmap.code(v) for v in column]

    params = {
        "objective": "binary",
        "verbosity": -1,
        "seed": 7,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        **DEFAULT_PARAMS,
        **config.params,
    }
    fit_started = time.perf_counter()
    validation = None
    if config.validation is not None:
        validation = validate_prequential(x, y, days, cards, valid, config, params, quiet)
    booster = _fit(x, y, masks["train"], masks["early_stopping"], config, params)
    fit_seconds = time.perf_counter() - fit_started

    metrics: dict[str, Any] = {}
    held_out = "test" if "test" in masks else "early_stopping"
    held_scores = np.zeros(0)
    for name, m in masks.items():
        scores = np.asarray(booster.predict(x[m], num_iteration=booster.best_iteration))
        metrics[name] = evaluate_scores(scores, y[m], days[m], cards[m])
        if name == held_out:
            held_scores = scores
    thresholds = choose_thresholds(held_scores, y[masks[held_out]], config.thresholds)
    thresholds["measured_on"] = held_out
    held = masks[held_out]
    reference = reference_histograms(x[held], config.features, held_scores, held_out)
    diagnostics = training_report.diagnostics(
        booster, config.features, x[held], y[held], held_scores, days[held], cards[held], evaluate_scores, held_out
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
    derived = {name for name, _, _ in ruleset.features}
    metadata = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": list(config.all_features),
        "windows": [window_to_dict(windows[f]) for f in config.features if f in windows],
        "derived_features": [f for f in config.features if f in derived],
        "ruleset_version": ruleset.version,
        "base_currency": ruleset.enricher.money.base,
        "timezone": ruleset.enricher.timezone.key,
        "max_events_per_series": ruleset.windows.max_events_per_series,
        "label_delay_ms": ruleset.label_delay_ms,
        "training_data": {
            "file": Path(data).name,
            "sha256": hashlib.sha256(data_bytes).hexdigest(),
            "rows": n,
            "rejected": stats.rejected,
            "rejections": rejections.to_json(),
            "labels_fed_back": stats.labels,
            "from": datetime.fromtimestamp(times.min() / 1000, UTC).isoformat(),
            "to": datetime.fromtimestamp(times.max() / 1000, UTC).isoformat(),
            "mapping": Path(mapping_name).name,
        },
        "split": {"train": config.train, "early_stopping": config.early_stopping, "test": config.test},
        "params": params,
        "best_iteration": booster.best_iteration,
        "metrics": metrics,
        "validation": validation,
        "thresholds": thresholds,
        "reference": reference,
        "diagnostics": diagnostics,
        "timing_seconds": {"replay": round(replay_seconds, 1), "fit": round(fit_seconds, 1)},
        "library_versions": {
            "lightgbm": lightgbm.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    if categories:
        metadata["categorical"] = {name: cmap.to_json() for name, cmap in categories.items()}
    warnings = training_warnings(booster.best_iteration, validation)
    if warnings:
        metadata["warnings"] = warnings
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    report = metrics_report(metadata) + "\n" + training_report.to_markdown(diagnostics)
    (folder / "report.md").write_text(report)
    (folder / "report.html").write_text(training_report.to_html(metadata, report))
    if promote:
        promote_model(Path(out), version, ruleset)  # checked against the rules, PROMOTED replaced atomically
    return folder


def training_warnings(best_iteration: int, validation: dict[str, Any] | None) -> list[str]:
    """What in a training run suggests the model is not to be trusted as it is (the report lists them).

    A model (the final one or a validation week's) whose best iteration is
    under `FEW_TREES`: early stopping found nothing better after its first
    trees, often a sign of too high a learning rate or too little
    regularization. Validation weeks whose AP spans more than `AP_SWING` of
    their mean: the model's quality depends on the week.
    """
    out = []
    if best_iteration < FEW_TREES:
        out.append(
            f"the final model stopped at {best_iteration} trees (under {FEW_TREES}): early stopping found no gain "
            "after its first trees; try a lower learning_rate or more regularization (lambda_l2, min_data_in_leaf)"
        )
    if validation:
        short = [
            f"{w['test'][0]} ({w['best_iteration']})" for w in validation["weeks"] if w["best_iteration"] < FEW_TREES
        ]
        if short:
            out.append(f"validation weeks stopped under {FEW_TREES} trees: {', '.join(short)}")
        aps = [w["average_precision"] for w in validation["weeks"]]
        mean = sum(aps) / len(aps) if aps else 0.0
        if len(aps) > 1 and mean > 0 and (max(aps) - min(aps)) / mean > AP_SWING:
            out.append(
                f"validation AP swings between weeks: {min(aps):.3f} to {max(aps):.3f} (mean {mean:.3f}); "
                "the model's quality depends on the week it is tested on"
            )
    return out


def _labels_fed(transactions: Sequence[Transaction], labels: Sequence[LabelEvent], valid: np.ndarray) -> int:
    """How many labels a local replay feeds back (`ReplayStats.labels`), from which transactions it scored.

    Replay feeds a label before the first transaction at or after the time it
    became known (so never one known after the last transaction), and
    refuses it when its transaction is invalid or it was known before it.
    """
    last = max((t.event_time_ms for t in transactions), default=0)
    return sum(1 for known, i, _ in labels if known <= last and valid[i] and known >= transactions[i].event_time_ms)


def metrics_report(metadata: dict[str, Any]) -> str:
    """The model folder's report.md: what it was trained on, how well it does, and its thresholds."""
    lines = [f"# Model {metadata['version']}", ""]
    data = metadata["training_data"]
    lines += [
        f"- **data**: {data['file']} ({data['rows']:,} rows, {data['from'][:10]} to {data['to'][:10]}, "
        f"sha256 {data['sha256'][:12]}), mapping {data['mapping']}",
        f"- **rule set**: {metadata['ruleset_version']} ({len(metadata['features'])} features, "
        f"{len(metadata['windows'])} windows, labels fed back: {data['labels_fed_back']:,})",
        f"- **final model**: trained on {metadata['split']['train'][0]} to {metadata['split']['train'][1]}, "
        f"early stopping on {metadata['split']['early_stopping'][0]} to {metadata['split']['early_stopping'][1]} "
        f"(best iteration {metadata['best_iteration']})",
        f"- **time**: replay {metadata['timing_seconds']['replay']} s, fitting {metadata['timing_seconds']['fit']} s",
        "",
    ]
    if data.get("rejections"):
        head, *by_reason = Rejections.from_json(data["rejections"]).lines()
        lines[-1:-1] = [f"- **{head}**", *(f"  - {line.strip()}" for line in by_reason)]
    validation = metadata.get("validation")
    if validation:
        p = validation["protocol"]
        lines += [
            "## Validation (the handbook's prequential protocol)",
            "",
            f"One model per test week, trained on the {p['train_days']} days that end {p['delay_days']} days "
            f"before it (the last {p['early_stopping_days']} for early stopping); cards known compromised "
            "before a test day are dropped from it.",
            "",
            "| test week | trained on | rows | frauds | AUC ROC | AP | ranking |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in validation["weeks"]:
            lines.append(
                f"| {w['test'][0]} to {w['test'][1]} | {w['train'][0]} to {w['early_stopping'][1]} | {w['rows']:,} "
                f"| {w['frauds']:,} | {w['auc_roc']:.3f} | {w['average_precision']:.3f} | {ranking(w)} |"
            )
        m = validation["mean"]
        rank_key = "card_precision_top_100" if "card_precision_top_100" in m else "precision_top_k"
        rank_mean = f"**{m[rank_key]:.3f}** ± {m[rank_key + '_std']:.3f}" if rank_key in m else ""
        lines += [
            f"| **mean ± std** | | | | **{m['auc_roc']:.3f}** ± {m['auc_roc_std']:.3f} "
            f"| **{m['average_precision']:.3f}** ± {m['average_precision_std']:.3f} | {rank_mean} |",
            "",
        ]
    if metadata.get("warnings"):
        lines += ["## Warnings", "", *(f"- {w}" for w in metadata["warnings"]), ""]
    lines += ["## Final model", "", "| period | rows | frauds | AUC ROC | AP | ranking |", "|---|---|---|---|---|---|"]
    for name, m in metadata["metrics"].items():
        lines.append(
            f"| {name} | {m['rows']:,} | {m['frauds']:,} | {m['auc_roc']:.3f} | {m['average_precision']:.3f} "
            f"| {ranking(m)} |"
        )
    lines += [
        "",
        f"Ranking: CP@100 (the data README's card precision) where the median day has {CP_MIN_CARDS_PER_DAY:,} "
        f"cards or more; otherwise P@k, the share of frauds among the top {TOP_SHARE:.0%} of transactions by score.",
    ]
    t = metadata["thresholds"]
    pol = t["policy"]
    lines += [
        "",
        "## Thresholds",
        "",
        f"Policy: review the top {pol['review_rate']:.2%} of transactions by score; deny where at least "
        f"{pol['deny_precision']:.0%} of the transactions at or above the threshold are fraud (at least "
        f"{pol['min_deny_count']} of them). Measured on the {t['measured_on'].replace('_', ' ')} period.",
        "",
        "| threshold | score | share of transactions | precision | recall |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("review (or deny)", "review_or_deny"), ("deny", "deny")):
        at = t[key]
        if at is None:
            lines.append(f"| {label} | none: the policy's precision is not reached | | | |")
        else:
            lines.append(
                f"| {label} | {at['threshold']:.4f} | {at['rate']:.3%} | {at['precision']:.1%} | {at['recall']:.1%} |"
            )
    return "\n".join(lines) + "\n"
