"""What each rule adds: unique catches, the overlap of rules and the model, and the causes of changed decisions.

All of it is read from a replay's own output (`engine.offline.runs.Run`):
which rules acted on each row (their reasons in the response), which fired
in shadow, and whether the model's threshold added its reason. Nothing here
evaluates a rule.

- A source *flags* a row when it asks for review or deny on it: an active
  rule with action review or deny whose reason is in the response, or the
  model's review/deny threshold (its reason MODEL_SCORE_ELEVATED or
  MODEL_SCORE_HIGH). Allow rules flag nothing.
- A rule's *unique catches*: the labeled frauds (and their amount) it flags
  and no other source flags: what would be lost without it.
- A shadow rule's unique catches: the frauds it hit in shadow that no active
  source flags: what acting on it would add.
- The overlap matrix: for each pair of sources, the rows (and frauds) both flag.
- The causes of a changed decision (compare mode): the rules whose reason is
  in one answer and not the other (`+id`: only in B, `-id`: only in A), and
  `model` when the model's reason differs; `other` when none does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.offline.runs import Run
from engine.transaction import Action

#: The reason codes the model's thresholds add (engine.decision.model_reasons).
MODEL_CODES = ("MODEL_SCORE_HIGH", "MODEL_SCORE_ELEVATED")
MODEL = "model"


def model_flags(run: Run) -> np.ndarray:
    """Per row: the model's threshold added its reason (review or deny)."""
    n = len(run.valid)
    counts = np.diff(run.reason_offsets)
    if not run.reason_codes:
        return np.zeros(n, dtype=bool)
    codes = np.array(run.reason_codes, dtype=object)
    is_model = np.isin(codes, MODEL_CODES)
    rows = np.repeat(np.arange(n), counts)
    out = np.zeros(n, dtype=bool)
    out[rows[is_model]] = True
    return out


def flagging_rules(run: Run) -> list[int]:
    """Columns of the rules whose action flags (review or deny)."""
    return [k for k, rule in enumerate(run.ruleset.rules) if rule.action in (Action.REVIEW, Action.DENY)]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def rule_value(run: Run, labels: np.ndarray | None, scale: float) -> dict[str, Any]:
    """Per rule (and the model): hits, precision, recall, amount recall, unique catches; the overlap matrix.

    `scale` turns minor units of the base currency into major units.
    """
    valid = run.valid
    lab = labels if labels is not None else np.full(len(valid), np.nan)
    labeled = valid & ~np.isnan(lab)
    fraud = labeled & (np.nan_to_num(lab) > 0.5)
    amount = np.where(valid, run.amount_minor, 0)
    total_frauds = int(fraud.sum())
    total_fraud_amount = int(amount[fraud].sum())
    flag_cols = flagging_rules(run)
    model = model_flags(run) & valid
    flags = run.active_hits[:, flag_cols] & valid[:, None]
    count = flags.sum(axis=1) + model
    active_any = count > 0

    def stats(hit: np.ndarray, unique: np.ndarray | None) -> dict[str, Any]:
        hit = hit & valid
        fh = hit & fraud
        out: dict[str, Any] = {
            "hits": int(hit.sum()),
            "fraud_hits": int(fh.sum()),
            "precision": _ratio(int(fh.sum()), int((hit & labeled).sum())),
            "recall": _ratio(int(fh.sum()), total_frauds),
            "amount_recall": _ratio(int(amount[fh].sum()), total_fraud_amount),
        }
        if unique is not None:
            uf = unique & fraud
            out["unique_hits"] = int(unique.sum())
            out["unique_frauds"] = int(uf.sum())
            out["unique_fraud_amount"] = round(int(amount[uf].sum()) * scale, 2)
        else:
            out["unique_hits"] = out["unique_frauds"] = out["unique_fraud_amount"] = None
        return out

    rules = []
    for k, rule in enumerate(run.ruleset.rules):
        acts = run.active_hits[:, k]
        flags_it = k in flag_cols
        unique = (acts & valid & (count == 1)) if flags_it else None
        shadow = run.shadow_hits[:, k] & valid
        shadow_unique = shadow & ~active_any
        sfh = shadow & fraud
        rules.append(
            {
                "rule_id": rule.id,
                "action": rule.action.name.lower(),
                "mode": rule.mode,
                "rollout": float(rule.rollout),
                **stats(acts, unique),
                "shadow_hits": int(shadow.sum()),
                "shadow_precision": _ratio(int(sfh.sum()), int((shadow & labeled).sum())),
                "shadow_recall": _ratio(int(sfh.sum()), total_frauds),
                "shadow_unique_frauds": int((shadow_unique & fraud).sum()),
                "shadow_unique_fraud_amount": round(int(amount[shadow_unique & fraud].sum()) * scale, 2),
            }
        )
    model_row = {"rule_id": MODEL, "action": "review/deny", "mode": "model", **stats(model, model & (count == 1))}
    # The overlap matrix: every source that flagged something.
    names = [run.ruleset.rules[k].id for k in flag_cols]
    columns = [flags[:, j] for j in range(len(flag_cols))]
    sources = [(name, col) for name, col in zip(names, columns, strict=True) if col.any()]
    if model.any():
        sources.append((MODEL, model))
    if sources:
        matrix = np.column_stack([col for _, col in sources]).astype(np.int64)
        both = matrix.T @ matrix
        frauds_both = (matrix * fraud[:, None]).T @ matrix
    else:
        both = frauds_both = np.zeros((0, 0), dtype=np.int64)
    return {
        "rules": rules,
        "model": model_row if not np.isnan(run.score[valid]).all() else None,
        "flagged_by_none_frauds": int((fraud & ~active_any).sum()),
        "overlap": {
            "sources": [name for name, _ in sources],
            "rows": both.tolist(),
            "frauds": frauds_both.tolist(),
        },
    }


def change_causes(a: Run, b: Run, changed: np.ndarray) -> list[list[str]]:
    """For each changed row (in row order), the sources whose reason differs between A and B (see the docstring)."""
    ids_a = {rid: k for k, rid in enumerate(a.rule_ids)}
    ids_b = {rid: k for k, rid in enumerate(b.rule_ids)}
    all_ids = list(a.rule_ids) + [r for r in b.rule_ids if r not in ids_a]
    rows = np.flatnonzero(changed)
    n = len(rows)
    none = np.zeros(n, dtype=bool)
    diffs: list[tuple[str, np.ndarray]] = []
    for rid in all_ids:
        in_a = a.active_hits[rows, ids_a[rid]] if rid in ids_a else none
        in_b = b.active_hits[rows, ids_b[rid]] if rid in ids_b else none
        diffs.append((f"+{rid}", in_b & ~in_a))
        diffs.append((f"-{rid}", in_a & ~in_b))
    diffs.append((MODEL, model_flags(a)[rows] != model_flags(b)[rows]))
    causes: list[list[str]] = [[] for _ in range(n)]
    for name, mask in diffs:
        for i in np.flatnonzero(mask).tolist():
            causes[i].append(name)
    return [c or ["other"] for c in causes]


def cause_counts(causes: list[list[str]], rows: np.ndarray, labels: np.ndarray | None) -> list[dict[str, Any]]:
    """Per cause: the changed decisions it took part in, and how many of them are labeled fraud."""
    fraud = (np.nan_to_num(labels[rows]) > 0.5) & ~np.isnan(labels[rows]) if labels is not None else None
    counts: dict[str, list[int]] = {}
    for i, names in enumerate(causes):
        is_fraud = bool(fraud[i]) if fraud is not None else False
        for name in names:
            c = counts.setdefault(name, [0, 0])
            c[0] += 1
            c[1] += int(is_fraud)
    ranked = sorted(counts.items(), key=lambda item: -item[1][0])
    return [
        {"cause": name, "changed": c[0], "changed_frauds": c[1] if labels is not None else None} for name, c in ranked
    ]
