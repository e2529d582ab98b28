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

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "created": self.created,
            "training_data": {"from": self.data_from, "to": self.data_to, "rows": self.rows},
            "features": list(self.features),
            "metrics": self.metrics,
            "validation": self.validation,
            "thresholds": self.thresholds,
            "promoted": self.promoted,
            "challenger": self.challenger,
            "problem": self.problem,
        }


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


def promote(registry: Path, version: str, ruleset: RuleSet) -> Model:
    """Make `version` the served model: load it against the rule set, then write PROMOTED atomically.

    Raises RegistryError (no such model) or ModelInvalid (the loader's
    refusal); PROMOTED is then unchanged. Promoting the current challenger
    ends the challenge: CHALLENGER is removed too.
    """
    registry = Path(registry)
    folder = _model_folder(registry, version)
    model = load_model(folder, ruleset)
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
