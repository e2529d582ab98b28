"""Rows of a data file that validation rejected: by field and reason, with example rows, and the threshold.

`find_rejections` gives each rejected row its reason (the pipeline's own
validation, `engine.enrich.prepare`, run again on those rows only) and groups
them by field and reason; quoted values in a reason are folded (`'XX' is not
an ISO 3166-1 alpha-2 code` counts with every other country), one example
value kept. Row numbers are the file's data rows counting from 1.

`check_rejections` fails a command (`TooManyRejected`) when the rejected share
exceeds its `--max-rejected` threshold (`DEFAULT_MAX_REJECTED`, 1 %): a
backtest or a model must never quietly cover another population than the
file's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import numpy as np

from engine.enrich import prepare
from engine.offline.datasets import DatasetError
from engine.rules.ruleset import RuleSet
from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits

#: The share of rejected rows above which train and backtest fail (`--max-rejected`).
DEFAULT_MAX_REJECTED = 0.01
#: Example rows kept per field and reason.
EXAMPLES = 3

_QUOTED = re.compile(r"'[^']*'")


@dataclass
class Reason:
    field: str
    reason: str
    count: int = 0
    examples: list[dict[str, Any]] = default(default_factory=list)  # {"row": file row from 1, "id", "value"}


@dataclass
class Rejections:
    """What validation rejected in a file of `rows` rows."""

    rows: int
    rejected: int = 0
    reasons: list[Reason] = default(default_factory=list)  # most frequent first

    @property
    def share(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rejected": self.rejected,
            "share": round(self.share, 6),
            "by_reason": [
                {"field": r.field, "reason": r.reason, "count": r.count, "examples": r.examples} for r in self.reasons
            ],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Rejections:
        reasons = [Reason(r["field"], r["reason"], r["count"], list(r["examples"])) for r in raw["by_reason"]]
        return cls(rows=raw["rows"], rejected=raw["rejected"], reasons=reasons)

    def lines(self) -> list[str]:
        """The summary as text: a headline, then a line per field and reason with example rows."""
        if not self.rejected:
            return [f"rejected by validation: none of {self.rows:,} rows"]
        out = [f"rejected by validation: {self.rejected:,} of {self.rows:,} rows ({self.share:.2%})"]
        for r in self.reasons:
            examples = ", ".join(
                f"row {e['row']} ({e['value']!r})" if e["value"] else f"row {e['row']}" for e in r.examples
            )
            out.append(f"  {r.field}: {r.reason}: {r.count:,} rows, e.g. {examples}")
        return out


class TooManyRejected(DatasetError):
    """More rows rejected than the command allows; the message carries the summary."""

    def __init__(self, rejections: Rejections, max_rejected: float, note: str = "") -> None:
        self.rejections = rejections
        summary = "\n".join(rejections.lines())
        super().__init__(
            f"{rejections.share:.2%} of the rows were rejected, more than the allowed {max_rejected:.2%} "
            f"(fix the data or the mapping, or raise --max-rejected){note}\n{summary}"
        )


def _value_of(txn: Transaction, name: str) -> str:
    value = getattr(txn, name, None)
    if isinstance(value, str):
        return value[:40]
    return ""


def find_rejections(
    transactions: Sequence[Transaction],
    valid: np.ndarray,
    ruleset: RuleSet,
    file_rows: np.ndarray | None = None,
    limits: Limits | None = None,
) -> Rejections:
    """The reasons of the rows that replay did not score (`valid` False), grouped, most frequent first.

    `file_rows`: each transaction's row in the file (from 0), when the data
    was reordered (`Dataset.file_rows`); else the transaction's own index.
    """
    limits = limits or Limits()
    groups: dict[tuple[str, str], Reason] = {}
    rejected = np.flatnonzero(~valid)
    for i in rejected.tolist():
        txn = transactions[i]
        try:
            prepare(ruleset.enricher, txn, limits, None)
        except InvalidTransaction as exc:
            key = (exc.field, _QUOTED.sub("'…'", exc.reason))
        else:
            key = ("transaction", "rejected by the replay")  # e.g. a label known before its transaction
        group = groups.get(key)
        if group is None:
            group = groups[key] = Reason(*key)
        group.count += 1
        if len(group.examples) < EXAMPLES:
            row = int(file_rows[i]) if file_rows is not None else i
            group.examples.append({"row": row + 1, "id": txn.transaction_id[:40], "value": _value_of(txn, key[0])})
    reasons = sorted(groups.values(), key=lambda r: (-r.count, r.field, r.reason))
    return Rejections(rows=len(transactions), rejected=len(rejected), reasons=reasons)


def check_rejections(rejections: Rejections, max_rejected: float) -> None:
    """Raise TooManyRejected when the rejected share is above `max_rejected` (a fraction, 0 to 1)."""
    if rejections.share > max_rejected:
        raise TooManyRejected(rejections, max_rejected)


def parse_share(text: str) -> float:
    """`--max-rejected`: a percentage (`5%`) or a fraction (`0.05`), from 0 to 1. Raises ValueError."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a share (e.g. 1% or 0.01)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not between 0 and 100 %")
    return value
