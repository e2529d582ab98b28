"""The backtest's honest warnings: rules the data cannot exercise, the model's in-sample rows, the windows' warm-up.

- **Inputs missing in the data.** Each rule's inputs are traced back to the
  transaction fields they come from: a field it reads (`ip_country` comes
  from `ip`; `ip_country_mismatch` from `ip` and `country`), the entity and
  field of each window it reads (and of windows inside the derived features
  it reads), `label` for label windows and `score` for the model. A field
  no scored row carries (empty, or `channel` unspecified) is missing; a rule
  reading one is *not exercised by this data* when it never fired, else
  *partly exercised* (another branch of its condition fired).
- **In-sample rows.** The model's metadata (`split`) gives its training and
  early-stopping days; rows on those days were seen while fitting it, so its
  metrics there are optimistic. The engine's and the model's metrics are
  given separately for rows before, inside and after that period.
- **Warm-up.** A window of duration D delayed by L is complete only D + L
  after the first event (plus the label delay for label windows); until the
  longest of them (among the windows that the model and the rules the data
  exercises read, whose inputs the data has), some windows are still
  filling and read low.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.model.predictor import Model
from engine.offline.runs import Run
from engine.rules.ruleset import SCORE, RuleSet
from engine.transaction import Action, Channel, Transaction
from engine.windows.spec import ATTRIBUTE_PREFIX

DAY_MS = 86_400_000

#: The transaction fields each enriched field comes from (fields not listed are always present).
FIELD_INPUTS: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id",),
    "card_id": ("card_id",),
    "device_id": ("device_id",),
    "has_device": ("device_id",),
    "ip": ("ip",),
    "has_ip": ("ip",),
    "ip_version": ("ip",),
    "ip_is_private": ("ip",),
    "ip_country": ("ip",),
    "ip_region": ("ip",),
    "ip_country_mismatch": ("ip", "country"),
    "country": ("country",),
    "merchant_id": ("merchant_id",),
    "merchant_category": ("merchant_category",),
    "channel": ("channel",),
    "attributes": ("attributes",),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def present_inputs(transactions: Sequence[Transaction], valid: np.ndarray, labels: np.ndarray | None) -> dict[str, int]:
    """Per transaction field that may be missing (and `label`): how many scored rows carry it."""
    counts = dict.fromkeys(
        ("user_id", "card_id", "device_id", "ip", "country", "merchant_id", "merchant_category", "channel"), 0
    )
    counts["attributes"] = 0
    unspecified = Channel.UNSPECIFIED
    for i in np.flatnonzero(valid).tolist():
        t = transactions[i]
        counts["user_id"] += t.user_id != ""
        counts["card_id"] += t.card_id != ""
        counts["device_id"] += t.device_id != ""
        counts["ip"] += t.ip != ""
        counts["country"] += t.country != ""
        counts["merchant_id"] += t.merchant_id != ""
        counts["merchant_category"] += t.merchant_category != ""
        counts["channel"] += t.channel is not unspecified
        counts["attributes"] += bool(t.attributes)
    counts["label"] = int((valid & ~np.isnan(labels)).sum()) if labels is not None else 0
    return counts


def _reached(ruleset: RuleSet, names: frozenset[str] | set[str]) -> set[str]:
    """The catalog names `names` read, themselves included: through derived features and windows' inputs."""
    windows = {spec.name: spec for spec in ruleset.windows.specs}
    features = {name: text for name, _, text in ruleset.features}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in windows:
            spec = windows[name]
            todo.extend(spec.entity)
            if spec.field:
                todo.append(spec.field)
            if spec.filter:
                todo.extend(n for n in _NAME.findall(spec.filter) if n in ruleset.catalog)
        elif name in features:
            todo.extend(n for n in _NAME.findall(features[name]) if n in ruleset.catalog and n != name)
    return seen


def inputs_of(ruleset: RuleSet, names: frozenset[str] | set[str], has_model: bool) -> set[str]:
    """The transaction fields (and `label`, `score`) that the catalog names come from."""
    windows = {spec.name: spec for spec in ruleset.windows.specs}
    out: set[str] = set()
    for name in _reached(ruleset, names):
        if name == SCORE:
            out.add("score")
        elif name.startswith(ATTRIBUTE_PREFIX):
            out.add("attributes")
        elif name in FIELD_INPUTS:
            out.update(FIELD_INPUTS[name])
        elif name in windows and windows[name].label is not None:
            out.add("label")
    if has_model:
        out.discard("score")
    return out


def missing_inputs(
    ruleset: RuleSet, present: dict[str, int], has_model: bool, fired: dict[str, int]
) -> list[dict[str, Any]]:
    """Rules reading a field the data lacks: rule id, the missing fields, and whether it fired at all."""
    missing = {name for name, count in present.items() if count == 0}
    if not has_model:
        missing.add("score")
    out = []
    for rule in ruleset.rules:
        lacking = sorted(inputs_of(ruleset, rule.reads, has_model) & missing)
        if lacking:
            hits = fired.get(rule.id, 0)
            out.append(
                {
                    "rule_id": rule.id,
                    "mode": rule.mode,
                    "missing": lacking,
                    "hits": hits,
                    "status": "partly exercised" if hits else "not exercised by this data",
                }
            )
    return out


def windows_read(ruleset: RuleSet, names: set[str] | frozenset[str]) -> set[str]:
    """The windows that catalog names read, through derived features."""
    return _reached(ruleset, names) & {spec.name for spec in ruleset.windows.specs}


def warm_up(
    ruleset: RuleSet, event_ms: np.ndarray, valid: np.ndarray, present: dict[str, int], model: Model | None
) -> dict[str, Any] | None:
    """The span at the start during which some window is still filling, and the rows in it.

    Over the windows that the model and the rules this data exercises read
    (all windows when they read none) and whose inputs the data has
    (`present`): the others stay empty throughout, or matter to nothing.
    """
    missing = {name for name, count in present.items() if count == 0}
    read = set(model.features) if model is not None else set()
    for rule in ruleset.rules:
        if not inputs_of(ruleset, rule.reads, model is not None) & missing:  # rules the data exercises
            read |= rule.reads
    used = windows_read(ruleset, read)
    specs = [
        s
        for s in ruleset.windows.specs
        if (not used or s.name in used) and not inputs_of(ruleset, {s.name}, True) & missing
    ]
    if not specs or not valid.any():
        return None

    def span(spec: Any) -> int:
        return int(spec.duration_ms + spec.delay_ms + (ruleset.label_delay_ms if spec.label is not None else 0))

    longest = max(specs, key=span)
    first = int(event_ms[valid].min())
    until = first + span(longest)
    return {
        "from": _day(first),
        "until": _day(until),
        "days": round(span(longest) / DAY_MS, 1),
        "longest_window": longest.name,
        "rows": int((valid & (event_ms < until)).sum()),
        "share": round(float((valid & (event_ms < until)).sum()) / int(valid.sum()), 4),
    }


def _day_ms(text: str) -> int:
    d = date.fromisoformat(text)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def model_period(model: Model | None) -> tuple[int, int, dict[str, list[str]]] | None:
    """[start, end) in epoch ms of the model's training and early-stopping days, and those spans; None if unknown."""
    if model is None:
        return None
    split = model.metadata.get("split") or {}
    spans = {k: split[k] for k in ("train", "early_stopping") if isinstance(split.get(k), list | tuple)}
    if not spans:
        return None
    try:
        starts = [_day_ms(s[0]) for s in spans.values()]
        ends = [_day_ms(s[1]) + DAY_MS for s in spans.values()]
    except (ValueError, TypeError, IndexError):
        return None
    return min(starts), max(ends), {k: list(v) for k, v in spans.items()}


def _group_metrics(run: Run, mask: np.ndarray, fraud: np.ndarray, labeled: np.ndarray) -> dict[str, Any]:
    rows = mask & run.valid
    lab = rows & labeled
    fr = rows & fraud
    out: dict[str, Any] = {"rows": int(rows.sum()), "labeled": int(lab.sum()), "frauds": int(fr.sum())}
    for name, hit in (("flagged", run.decision >= int(Action.REVIEW)), ("deny", run.decision == int(Action.DENY))):
        h = hit & lab
        out[f"{name}_precision"] = round(float((h & fraud).sum()) / int(h.sum()), 4) if h.any() else None
        out[f"{name}_recall"] = round(float((h & fraud).sum()) / int(fr.sum()), 4) if fr.any() else None
    scored = lab & ~np.isnan(run.score)
    y = fraud[scored]
    if scored.any() and 0 < y.sum() < len(y):
        out["auc_roc"] = round(float(roc_auc_score(y, run.score[scored])), 4)
        out["average_precision"] = round(float(average_precision_score(y, run.score[scored])), 4)
    else:
        out["auc_roc"] = out["average_precision"] = None
    return out


def in_sample(run: Run, model: Model | None, labels: np.ndarray | None, event_ms: np.ndarray) -> dict[str, Any] | None:
    """The rows inside the model's training and early-stopping days, and metrics before, inside and after them."""
    period = model_period(model)
    if period is None:
        return None
    start, end, spans = period
    lab = labels if labels is not None else np.full(len(run.valid), np.nan)
    labeled = run.valid & ~np.isnan(lab)
    fraud = labeled & (np.nan_to_num(lab) > 0.5)
    inside = (event_ms >= start) & (event_ms < end)
    groups = {
        "before": event_ms < start,
        "in_sample": inside,
        "after": event_ms >= end,
    }
    return {
        "model_version": model.version if model is not None else None,
        "spans": spans,
        "from": _day(start),
        "until": _day(end - DAY_MS),
        "rows": int((inside & run.valid).sum()),
        "share": round(float((inside & run.valid).sum()) / max(int(run.valid.sum()), 1), 4),
        "metrics": {name: _group_metrics(run, mask, fraud, labeled) for name, mask in groups.items()},
    }
