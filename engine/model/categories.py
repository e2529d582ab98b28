"""Categorical model features: an attribute's text as a LightGBM category, coded alike in training and serving.

A categorical feature reads one attribute of the transaction (`attributes.KEY`
in rules; the `extra` columns of a mapping, docs/data.md). Training builds a
`CategoryMap` from the training period (the values seen at least
`min_count` times, most frequent first, at most `max_values`) and stores it
in the model's metadata (`categorical`); every other value, and any value
first seen in serving, is `OTHER`. An absent attribute is missing (NaN), as a
missing number is. `feature_row` is the one function that turns a
transaction's fields into the model's row, in training and in serving.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The category of every value the map does not hold.
OTHER = "other"
#: Defaults of `CategoryMap.build`.
MIN_COUNT = 10
MAX_VALUES = 100


@dataclass(frozen=True)
class CategoryMap:
    """The codes of one categorical feature: `values[i]` is code i; the last value is `OTHER`."""

    attribute: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.values or self.values[-1] != OTHER:
            raise ValueError(f"categorical feature {self.attribute}: the last value must be {OTHER!r}")
        object.__setattr__(self, "_codes", {v: float(i) for i, v in enumerate(self.values)})

    def code(self, value: str) -> float:
        """The value's code; `OTHER`'s for a value not in the map; NaN (missing) for no value."""
        if not value:
            return math.nan
        codes: dict[str, float] = self._codes  # type: ignore[attr-defined]
        return codes.get(value, codes[OTHER])

    @classmethod
    def build(
        cls, attribute: str, values: Iterable[str], min_count: int = MIN_COUNT, max_values: int = MAX_VALUES
    ) -> CategoryMap:
        """The map of the values seen at least `min_count` times (most frequent first, ties by name), then `OTHER`."""
        counts = Counter(v for v in values if v and v != OTHER)
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        return cls(attribute, (*kept[: max(max_values - 1, 0)], OTHER))

    def to_json(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "values": list(self.values)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CategoryMap:
        return cls(str(raw["attribute"]), tuple(str(v) for v in raw["values"]))


def categories_of(metadata: Mapping[str, Any]) -> dict[str, CategoryMap]:
    """A model's category maps by feature name (metadata `categorical`; none for a model without)."""
    return {name: CategoryMap.from_json(raw) for name, raw in (metadata.get("categorical") or {}).items()}


def category_value(fields: Mapping[str, Any], attribute: str) -> str:
    """The text a categorical feature reads: the attribute (`attributes.KEY` in rules), '' when absent."""
    value: str = fields["attributes"].get(attribute, "")
    return value


def feature_row(
    features: Sequence[str], categories: Mapping[str, CategoryMap]
) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The function from a transaction's fields to the model's row: numbers as they are, categories as codes."""
    if not categories:
        getter = operator.itemgetter(*features)
        return getter if len(features) > 1 else lambda fields: (getter(fields),)
    getters: list[Callable[[Mapping[str, Any]], Any]] = []
    for name in features:
        cmap = categories.get(name)
        if cmap is None:
            getters.append(operator.itemgetter(name))
        else:
            getters.append(_coder(cmap))
    return lambda fields: tuple(get(fields) for get in getters)


def _coder(cmap: CategoryMap) -> Callable[[Mapping[str, Any]], float]:
    attribute = cmap.attribute
    return lambda fields: cmap.code(category_value(fields, attribute))
