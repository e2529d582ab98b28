"""Category maps: the training period's frequent values, then "other" for the rest and for anything new."""

from __future__ import annotations

import math

import pytest

from engine.model.categories import OTHER, CategoryMap, categories_of, feature_row


def test_frequent_values_first_the_rest_and_new_ones_are_other() -> None:
    seen = ["food"] * 30 + ["taxi"] * 12 + ["fuel"] * 12 + ["hotel"] * 3 + [""] * 5 + [OTHER] * 40
    cmap = CategoryMap.build("category", seen, min_count=10)
    assert cmap.values == ("food", "fuel", "taxi", OTHER)  # by count, ties by name; rare and empty ones left out
    assert [cmap.code(v) for v in ("food", "fuel", "taxi", "hotel", "never_seen", OTHER)] == [0, 1, 2, 3, 3, 3]
    assert math.isnan(cmap.code(""))  # no attribute: missing, not "other"
    assert CategoryMap.build("c", ["a", "b", "c"], min_count=1, max_values=3).values == ("a", "b", OTHER)


def test_the_metadata_round_trip_and_its_checks() -> None:
    cmap = CategoryMap("category", ("food", OTHER))
    metadata = {"categorical": {"category": cmap.to_json()}}
    assert categories_of(metadata) == {"category": cmap}
    assert categories_of({}) == {}
    with pytest.raises(ValueError, match="the last value must be 'other'"):
        CategoryMap.from_json({"attribute": "category", "values": ["food"]})


def test_feature_row_reads_numbers_and_codes_categories_in_the_model_order() -> None:
    categories = {"category": CategoryMap("category", ("food", OTHER))}
    fields = {"amount": 12.5, "is_night": True, "attributes": {"category": "food"}}
    assert feature_row(("amount", "category", "is_night"), categories)(fields) == (12.5, 0.0, True)
    assert feature_row(("amount", "is_night"), {})(fields) == (12.5, True)
    assert feature_row(("amount",), {})(fields) == (12.5,)
