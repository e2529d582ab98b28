"""The model registry: which models a registry folder holds, which one serves, and which one challenges it.

A registry folder (`models/`) holds one folder per model (`model.txt` and
`metadata.json`, written by `risk-engine train`) and two small files that
this module owns:

- `PROMOTED`: the version (folder name) of the model that decides, the
  champion. `promote` first loads the model against the rule set it will
  serve with (the same checks as the server: every feature produced, every
  window defined as at training) and refuses it with the loader's message;
  only then does it replace the file.
- `CHALLENGER` (optional): a second model that runs beside the champion,
  as YAML or JSON: `{version: V, mode: shadow}` (scored on every
  transaction and recorded, never acted on) or `{version: V, mode: split,
  share: 0.1}` (decides the share of transactions whose stable bucket of the
  transaction id falls below it; the champion decides the rest). No file: no
  challenger. `set_challenger` checks the model the same way as `promote`.

Both files are written atomically (a temporary file in the same folder,
then `os.replace`), so a running server's reloader never reads half a file;
it watches both and swaps in the new pair only when both load
(`engine.reload`). `list_models` reads each model's metadata for the
`risk-engine models list` table, tolerating missing keys.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from engine.model.predictor import PROMOTED, Model, ModelInvalid, load_model
from engine.rollout import BUCKETS, rollout_bucket
from engine.rules.ruleset import RuleSet

CHALLENGER = "CHALLENGER"
MODES = ("shadow", "split")
#: The key the challenger split hashes with the transaction id (through the rule rollout's
#: `rollout_bucket`): not a rule id, so the split is independent of every rule's rollout, and
#: the same for every challenger version, so a larger share keeps the transactions of a smaller one.
SPLIT_KEY = "@model-challenger"


class RegistryError(Exception):
    """A registry request that cannot be carried out (unknown version, bad challenger settings, ...)."""


@dataclass(frozen=True, slots=True)
class ChallengerConfig:
    """What the CHALLENGER file says."""

    version: str
    mode: str  # "shadow" or "split"
    share: float = 0.0  # split: the share of transactions the challenger decides, in [0, 1]

    def describe(self) -> str:
        return f"split {self.share:.0%}" if self.mode == "split" else "shadow"


@dataclass(frozen=True, slots=True)
class Challenger:
    """A loaded challenger, as the pipeline runs it."""

    model: Model
    mode: str  # "shadow" or "split"
    share: float = 0.0

    def decides(self, transaction_id: str) -> bool:
        """Whether the challenger decides this transaction: split mode and its stable bucket within the share."""
        if self.mode != "split" or self.share <= 0.0:
            return False
        return self.share >= 1.0 or rollout_bucket(SPLIT_KEY, transaction_id) < self.share * BUCKETS

    def describe(self) -> str:
        return ChallengerConfig(self.model.version, self.mode, self.share).describe()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder of a registry, as `risk-engine models list` shows it."""

    version: str
    path: Path
    created: str  # ISO 8601, UTC: metadata `created_at`/`created`, else the folder's modification time
    data_from: str  # training data range ('' when the metadata does not say)
    data_to: str
    rows: int | None
    features: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict)  # metadata `metrics` (e.g. train/early_stopping/test)
    validation: dict[str, Any] = field(default_factory=dict)  # metadata `validation`
    thresholds: dict[str, Any] = field(default_factory=dict)  # metadata `thresholds`
    promoted: bool = False
    challenger: str = ""  # "", "shadow" or "split 10%"
    problem: str = ""  # why the folder could not be read ('' when it could)

    @property
    def validation_ap(self) -> float | None:
        """Mean average precision of the prequential validation weeks (None when the metadata has none).

        `train` writes it as `validation.mean.average_precision`; a flat
        `validation.average_precision` (older metadata) is read too.
        """
        return validation_metric(self.validation, "average_precision")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "created": self.created,
            "training_data": {"from": self.data_from, "to": self.data_to, "rows": self.rows},
            "features": list(self.features),
            "metrics": self.metrics,
            "validation": self.validation,
            "validation_ap": self.validation_ap,
            "thresholds": self.thresholds,
            "promoted": self.promoted,
            "challenger": self.challenger,
            "problem": self.problem,
        }


def validation_metric(validation: dict[str, Any], key: str) -> float | None:
    """A metric's mean over the validation weeks of a model's metadata `validation` (None when absent)."""
    mean = validation.get("mean")
    value = mean.get(key) if isinstance(mean, dict) else validation.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a temporary file in the same folder, fsynced, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_registry(path: Path) -> bool:
    """A registry folder, not a single model folder."""
    return path.is_dir() and not (path / "model.txt").is_file()


def promoted_version(registry: Path) -> str:
    """The version PROMOTED names ('' when there is no PROMOTED file)."""
    try:
        return (Path(registry) / PROMOTED).read_text().strip()
    except FileNotFoundError:
        return ""


def _model_folder(registry: Path, version: str) -> Path:
    if not version or "/" in version or version.startswith("."):
        raise RegistryError(f"{version!r} is not a model version")
    folder = Path(registry) / version
    if not (folder / "model.txt").is_file():
        known = ", ".join(e.version for e in list_models(registry)) or "none"
        raise RegistryError(f"no model {version!r} in {registry} (models: {known})")
    return folder


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def parse_challenger(data: Any, where: str = "") -> ChallengerConfig:
    """Check the content of a CHALLENGER file (already parsed); RegistryError says what is wrong."""
    if not isinstance(data, dict):
        raise RegistryError(f"{_at(where)}expected a mapping with version, mode and (for split) share")
    unknown = sorted(set(data) - {"version", "mode", "share"})
    if unknown:
        raise RegistryError(f"{_at(where)}unknown key(s) {', '.join(map(str, unknown))} (version, mode, share)")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RegistryError(f"{_at(where)}'version' must name a model folder")
    mode = data.get("mode")
    if mode not in MODES:
        raise RegistryError(f"{_at(where)}'mode' must be shadow or split, got {mode!r}")
    share = data.get("share")
    if mode == "shadow":
        if share is not None:
            raise RegistryError(f"{_at(where)}'share' applies to split mode only (shadow scores every transaction)")
        return ChallengerConfig(version.strip(), mode)
    if share is None:
        raise RegistryError(f"{_at(where)}split mode needs 'share' (0 to 1)")
    check_share(share, where)
    return ChallengerConfig(version.strip(), mode, float(share))


def check_share(share: Any, where: str) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
        raise RegistryError(f"{_at(where)}share must be a number from 0 to 1, got {share!r}")
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"{_at(where)}share must be from 0 to 1, got {share}")


def read_challenger(registry: Path) -> ChallengerConfig | None:
    """The challenger settings of a registry (None: no CHALLENGER file). RegistryError when it is invalid."""
    path = Path(registry) / CHALLENGER
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML or JSON: {exc}") from None
    return parse_challenger(data, str(path))


def _when(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return ""


def _entry(folder: Path) -> ModelEntry:
    problem = ""
    try:
        meta = json.loads((folder / "metadata.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        meta, problem = {}, f"cannot read metadata.json: {exc}"
    created = _when(meta.get("created_at") or meta.get("created"))
    if not created:
        stamp = max(p.stat().st_mtime for p in (folder / "metadata.json", folder / "model.txt") if p.exists())
        created = _when(stamp)
    raw_data = meta.get("training_data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    rows = data.get("rows")

    def mapping(key: str) -> dict[str, Any]:
        value = meta.get(key)
        return value if isinstance(value, dict) else {}

    return ModelEntry(
        version=folder.name,
        path=folder,
        created=created,
        data_from=str(data.get("from") or ""),
        data_to=str(data.get("to") or ""),
        rows=rows if isinstance(rows, int) else None,
        features=tuple(str(f) for f in meta.get("features") or ()),
        metrics=mapping("metrics"),
        validation=mapping("validation"),
        thresholds=mapping("thresholds"),
        problem=problem,
    )


def list_models(registry: Path) -> list[ModelEntry]:
    """The model folders of a registry, oldest first, with which one is promoted and which one challenges."""
    registry = Path(registry)
    if not registry.is_dir():
        raise RegistryError(f"{registry}: no such folder")
    promoted = promoted_version(registry)
    try:
        challenger = read_challenger(registry)
    except RegistryError:
        challenger = None  # `list` still lists; the server refuses the file, with the reason
    entries = []
    for folder in sorted(registry.iterdir()):
        if not folder.is_dir() or not (folder / "model.txt").is_file():
            continue
        entry = _entry(folder)
        role = challenger.describe() if challenger is not None and challenger.version == entry.version else ""
        entries.append(replace(entry, promoted=entry.version == promoted, challenger=role))
    return sorted(entries, key=lambda e: (e.created, e.version))


#: The validation metrics a promotion compares (docs/models.md), and the one that decides "worse".
COMPARED = (("auc_roc", "AUC ROC"), ("average_precision", "AP"))
DECIDING = "average_precision"
#: The ranking metric shown beside them when every shared week of both models has it: CP@100 where the data
#: has enough cards a day, else the precision of the top transactions (`engine.offline.train.evaluate_scores`).
RANKINGS = (("card_precision_top_100", "CP@100"), ("precision_top_k", "P@k"))


@dataclass(frozen=True, slots=True)
class WeekPair:
    """One validation week both models were scored on: its test days and each model's metrics."""

    test: tuple[str, str]
    rows: int
    frauds: int
    candidate: dict[str, float]
    champion: dict[str, float]


@dataclass(frozen=True, slots=True)
class Comparison:
    """A candidate against the champion on the validation weeks both report, with the same test rows.

    The metrics are each model's prequential validation (one model per test
    week, trained with the model's own config before that week): the same
    test rows, so the numbers compare. `note` says why there is nothing to
    compare ('' when there is).
    """

    candidate: str
    champion: str
    weeks: tuple[WeekPair, ...]
    note: str = ""

    def mean(self, which: str, key: str) -> float:
        return float(sum(getattr(w, which)[key] for w in self.weeks) / len(self.weeks))

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """The metrics shown: AUC ROC and AP, and the ranking metric every shared week of both models has."""
        for key, label in RANKINGS:
            if all(key in w.candidate and key in w.champion for w in self.weeks):
                return (*COMPARED, (key, label))
        return COMPARED

    @property
    def worse(self) -> bool:
        """The candidate's mean AP over the shared weeks is below the champion's (rounded to 4 digits)."""
        if not self.weeks:
            return False
        return round(self.mean("candidate", DECIDING), 4) < round(self.mean("champion", DECIDING), 4)

    def render(self) -> str:
        """The side-by-side table `models promote` prints."""
        if not self.weeks:
            return f"not compared with the champion {self.champion}: {self.note}"
        lines = [
            f"candidate {self.candidate} against the champion {self.champion}, "
            f"on {len(self.weeks)} validation week(s) with the same test rows:",
            f"  {'test week':26} {'model':10}" + "".join(f"{label:>9}" for _, label in self.columns),
        ]

        def row(when: str, who: str, values: list[float], sign: str = "") -> str:
            return f"  {when:26} {who:10}" + "".join(f"{v:>{sign}9.4f}" for v in values)

        for w in self.weeks:
            when = f"{w.test[0]} .. {w.test[1]}"
            lines.append(row(when, "candidate", [w.candidate[k] for k, _ in self.columns]))
            lines.append(row("", "champion", [w.champion[k] for k, _ in self.columns]))
        means = {who: [self.mean(who, k) for k, _ in self.columns] for who in ("candidate", "champion")}
        lines.append(row("mean", "candidate", means["candidate"]))
        lines.append(row("", "champion", means["champion"]))
        lines.append(
            row("", "difference", [c - h for c, h in zip(means["candidate"], means["champion"], strict=True)], "+")
        )
        verdict = "worse" if self.worse else "not worse"
        lines.append(f"the candidate is {verdict} than the champion by mean validation AP")
        return "\n".join(lines)


class CandidateWorse(RegistryError):
    """The candidate's validation is worse than the champion's (promote with force to override)."""

    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison
        delta = comparison.mean("candidate", DECIDING) - comparison.mean("champion", DECIDING)
        super().__init__(
            f"{comparison.candidate} has a lower mean validation AP than the champion {comparison.champion} "
            f"({delta:+.4f} on {len(comparison.weeks)} week(s))"
        )


def _validation_weeks(folder: Path) -> dict[tuple[str, str, int, int], dict[str, float]]:
    """A model's validation weeks, keyed by (test from, test to, rows, frauds): its metrics on each."""
    validation = _entry(folder).validation
    weeks = validation.get("weeks")
    out: dict[tuple[str, str, int, int], dict[str, float]] = {}
    for week in weeks if isinstance(weeks, list) else ():
        try:
            key = (str(week["test"][0]), str(week["test"][1]), int(week["rows"]), int(week["frauds"]))
            metrics = {k: float(week[k]) for k, _ in COMPARED}
            metrics.update({k: float(week[k]) for k, _ in RANKINGS if k in week})
            out[key] = metrics
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a week the metadata does not describe fully is not compared
    return out


def compare_with_champion(registry: Path, version: str) -> Comparison | None:
    """`version` against the promoted model on their shared validation weeks (None: no other champion).

    A week is shared when both models report it with the same test days,
    rows and frauds (so the same data under the same protocol).
    """
    registry = Path(registry)
    candidate = _model_folder(registry, version)
    champion = promoted_version(registry)
    if not champion or champion == version or not (registry / champion / "model.txt").is_file():
        return None
    mine, theirs = _validation_weeks(candidate), _validation_weeks(registry / champion)
    shared = sorted(set(mine) & set(theirs))
    weeks = tuple(WeekPair((k[0], k[1]), k[2], k[3], mine[k], theirs[k]) for k in shared)
    note = ""
    if not weeks:
        if not mine or not theirs:
            which = (
                "neither model has"
                if not mine and not theirs
                else f"the {'candidate' if not mine else 'champion'} has no"
            )
            note = f"{which} validation weeks in its metadata (train with a `validation:` section)"
        else:
            note = "no validation week with the same test days and rows (other weeks or other data)"
    return Comparison(version, champion, weeks, note)


def promote(registry: Path, version: str, ruleset: RuleSet, *, refuse_worse: bool = False) -> Model:
    """Make `version` the served model: load it against the rule set, then write PROMOTED atomically.

    Raises RegistryError (no such model), ModelInvalid (the loader's
    refusal) or, with `refuse_worse`, CandidateWorse (a lower mean
    validation AP than the champion on their shared weeks,
    `compare_with_champion`); PROMOTED is then unchanged. Promoting the
    current challenger ends the challenge: CHALLENGER is removed too.
    """
    registry = Path(registry)
    folder = _model_folder(registry, version)
    model = load_model(folder, ruleset)
    if refuse_worse:
        comparison = compare_with_champion(registry, version)
        if comparison is not None and comparison.worse:
            raise CandidateWorse(comparison)
    write_atomic(registry / PROMOTED, version + "\n")
    try:
        current = read_challenger(registry)
    except RegistryError:
        current = None
    if current is not None and current.version == version:
        clear_challenger(registry)
    return model


def set_challenger(registry: Path, version: str, mode: str, share: float | None, ruleset: RuleSet) -> ChallengerConfig:
    """Run `version` beside the promoted model (shadow, or split with `share`); checked like `promote`.

    Raises RegistryError (unknown version, the promoted model itself, bad
    mode or share) or ModelInvalid (refused by the loader); CHALLENGER is
    then unchanged.
    """
    registry = Path(registry)
    data: dict[str, Any] = {"version": version, "mode": mode}
    if share is not None:
        data["share"] = share
    config = parse_challenger(data)
    folder = _model_folder(registry, config.version)
    if config.version == promoted_version(registry):
        raise RegistryError(f"{config.version} is the promoted model; a challenger must be another model")
    load_model(folder, ruleset)
    write_atomic(registry / CHALLENGER, json.dumps(data) + "\n")
    return config


def clear_challenger(registry: Path) -> bool:
    """Stop the challenger (remove CHALLENGER). False when there was none."""
    try:
        (Path(registry) / CHALLENGER).unlink()
    except FileNotFoundError:
        return False
    return True


def load_challenger(path: Path, ruleset: RuleSet) -> Challenger | None:
    """The challenger a model path serves with: None for a model folder or a registry without CHALLENGER.

    Raises ModelInvalid when the CHALLENGER file is invalid or its model is
    refused, so that a server does not start, and a reload is refused, as
    with a bad promoted model.
    """
    path = Path(path)
    if not is_registry(path):
        return None
    try:
        config = read_challenger(path)
        if config is None:
            return None
        folder = _model_folder(path, config.version)
    except RegistryError as exc:
        raise ModelInvalid(f"challenger: {exc}") from None
    try:
        model = load_model(folder, ruleset)
    except ModelInvalid as exc:
        raise ModelInvalid(f"challenger: {exc}") from None
    return Challenger(model, config.mode, config.share)
